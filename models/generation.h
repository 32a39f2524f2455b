// Greedy generation with a dynamic KV cache, as transformers' GenerationMixin does it for
// do_sample=False: positions from the attention mask (left padding supported), logits only for
// the last position, finished sequences padded with pad_token_id (else the first EOS id), stop
// when every sequence has produced an EOS id or after max_new_tokens. A model whose
// DropsCacheBeforeGenerationStep says so (Phi-3 longrope) gets the whole sequence recomputed once.
//
//   GenerationOptions options{.max_new_tokens = 32};
//   ASSIGN_OR_RETURN(at::Tensor new_ids, GenerateGreedy(*model, prompt_ids, attention_mask, options));
//
// Thread-safety: as PreTrainedModel::Forward; each call owns its cache.
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "models/modeling_utils.h"

namespace flotilla::models {

struct GenerationOptions {
  int64_t max_new_tokens = 20;
  // Overrides config.json's eos_token_id when set (an empty list disables stopping).
  std::optional<std::vector<int64_t>> eos_token_id;
  std::optional<int64_t> pad_token_id;
};

// prompt_ids: [batch, length] int64, left-padded where attention_mask is 0. Returns the new tokens
// [batch, generated] (generated <= max_new_tokens).
absl::StatusOr<at::Tensor> GenerateGreedy(PreTrainedModel& model, const at::Tensor& prompt_ids,
                                          const std::optional<at::Tensor>& attention_mask,
                                          const GenerationOptions& options);

}  // namespace flotilla::models
