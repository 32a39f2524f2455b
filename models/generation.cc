#include "models/generation.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "models/config.h"

namespace flotilla::models {

absl::StatusOr<at::Tensor> GenerateGreedy(PreTrainedModel& model, const at::Tensor& prompt_ids,
                                          const std::optional<at::Tensor>& attention_mask_in,
                                          const GenerationOptions& options) {
  if (prompt_ids.dim() != 2 || prompt_ids.size(1) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("GenerateGreedy: prompt_ids must be [batch, length>0], got [",
                                                   absl::StrJoin(prompt_ids.sizes(), ", "), "]"));
  }
  c10::InferenceMode inference_mode;
  const int64_t batch = prompt_ids.size(0);
  const int64_t prompt_length = prompt_ids.size(1);
  const std::vector<int64_t> eos = options.eos_token_id.value_or(model.config().eos_token_id);
  const int64_t pad = options.pad_token_id.value_or(model.config().pad_token_id.value_or(eos.empty() ? 0 : eos[0]));
  const int64_t total_length = prompt_length + options.max_new_tokens;

  // The attention mask grows by one column per step: keep it preallocated, as the cache is.
  at::Tensor mask_buffer = at::ones({batch, total_length}, at::kLong);
  if (attention_mask_in) mask_buffer.narrow(1, 0, prompt_length).copy_(*attention_mask_in);
  const bool padded = attention_mask_in.has_value() && !attention_mask_in->all().item<bool>();

  DynamicCache cache;
  cache.Reserve(batch, total_length);
  at::Tensor prompt_mask = mask_buffer.narrow(1, 0, prompt_length);
  // transformers: position_ids = attention_mask.cumsum(-1) - 1, padding positions set to 1.
  at::Tensor position_ids = prompt_mask.cumsum(-1) - 1;
  position_ids.masked_fill_(prompt_mask == 0, 1);
  at::Tensor next_position = position_ids.narrow(1, prompt_length - 1, 1) + 1;

  ForwardInputs inputs;
  inputs.input_ids = prompt_ids;
  if (padded) inputs.attention_mask = prompt_mask;
  inputs.position_ids = position_ids;
  inputs.past_key_values = &cache;
  inputs.logits_to_keep = 1;

  at::Tensor generated = at::empty({batch, options.max_new_tokens}, at::kLong);
  at::Tensor unfinished = at::ones({batch}, at::kBool);
  at::Tensor eos_tensor = at::tensor(eos, at::kLong);
  int64_t step = 0;
  for (; step < options.max_new_tokens; ++step) {
    ModelOutput output = model.Forward(inputs);
    at::Tensor next_tokens = output.logits.select(1, -1).argmax(-1);
    if (!eos.empty()) next_tokens = at::where(unfinished, next_tokens, at::full_like(next_tokens, pad));
    generated.select(1, step).copy_(next_tokens);
    if (!eos.empty()) {
      unfinished.logical_and_(at::isin(next_tokens, eos_tensor).logical_not());
      if (!unfinished.any().item<bool>()) {
        ++step;
        break;
      }
    }
    const int64_t sequence_length = prompt_length + step + 1;
    if (model.DropsCacheBeforeGenerationStep(sequence_length, cache.GetSeqLength())) {
      // The model's prepare_inputs_for_generation drops the cache (Phi-3 longrope): recompute the
      // whole sequence, positions from the mask as for the prompt.
      cache = DynamicCache();
      cache.Reserve(batch, total_length);
      at::Tensor sequence_mask = mask_buffer.narrow(1, 0, sequence_length);
      inputs.input_ids = at::cat({prompt_ids, generated.narrow(1, 0, step + 1)}, 1);
      inputs.position_ids = sequence_mask.cumsum(-1) - 1;
      inputs.position_ids->masked_fill_(sequence_mask == 0, 1);
    } else {
      inputs.input_ids = next_tokens.view({batch, 1});
      inputs.position_ids = next_position.clone();
    }
    next_position.add_(1);
    if (padded) inputs.attention_mask = mask_buffer.narrow(1, 0, sequence_length);
  }
  return generated.narrow(1, 0, step);
}

}  // namespace flotilla::models
