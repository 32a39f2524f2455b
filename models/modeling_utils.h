// What every model shares: the forward inputs, the one output struct, and PreTrainedModel (the
// base of every `...ForCausalLM`, `...Model`, `...ForMaskedLM`), so callers, the debugger and the
// tests see one surface. Model behaviour stays in the model files.
//
//   ForwardInputs inputs{.input_ids = ids, .attention_mask = mask, .output_hidden_states = true};
//   ModelOutput output = model->Forward(inputs);
//   output.logits;            // [batch, length, vocab] (heads with logits)
//   output.hidden_states;     // embeddings + one per layer (last one after the final norm)
//
// Thread-safety: Forward may run concurrently on one model (weights are read-only) as long as
// each call has its own cache; SetAttentionImplementation must not race with Forward.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include "models/cache.h"
#include "models/config.h"
#include "models/tp_plan.h"

namespace flotilla::models {

struct ForwardInputs {
  at::Tensor input_ids;                      // [batch, length] int64
  std::optional<at::Tensor> attention_mask;  // [batch, past + length]; 1 = token, 0 = padding
  std::optional<at::Tensor> position_ids;    // [batch or 1, length]; default: past + arange(length)
  std::optional<at::Tensor> token_type_ids;  // encoders
  KVCache* past_key_values = nullptr;        // decoders: appended to by the forward
  bool output_hidden_states = false;
  bool output_attentions = false;
  // Compute logits for only the last N positions (0 = all), as transformers' logits_to_keep.
  int64_t logits_to_keep = 0;
  // Compute logits only at these positions of the (packed) row, int64 [S], as transformers'
  // logits_to_keep given a tensor; wins over logits_to_keep. A serving step passes the last token
  // of each sequence that samples (paged_attention.h).
  std::optional<at::Tensor> logits_indices;
  std::optional<at::Tensor> pixel_values;  // vision encoders: [batch, channels, height, width] float
  bool interpolate_pos_encoding = false;   // vision encoders: accept other image sizes (bicubic positions)
};

struct ModelOutput {
  at::Tensor logits;                      // heads: [batch, length, vocab or labels]
  at::Tensor last_hidden_state;           // [batch, length, hidden]
  at::Tensor pooler_output;               // encoders with a pooler
  std::vector<at::Tensor> hidden_states;  // when output_hidden_states
  std::vector<at::Tensor> attentions;     // when output_attentions (eager only)
  // Model-specific named outputs (CLIP: logits_per_text, text_embeds, image_embeds, and each
  // tower's outputs as "text_model.last_hidden_state", "vision_model.hidden_states.<i>").
  std::map<std::string, at::Tensor> named_outputs;
};

// The hidden states a causal-LM head turns into logits: the positions in inputs.logits_indices
// ([batch, S, hidden]) when set, else the last inputs.logits_to_keep positions (all when 0).
// Infrastructure every ...ForCausalLM calls, so a head never re-implements the rule.
at::Tensor HiddenStatesForLogits(const at::Tensor& hidden_states, const ForwardInputs& inputs);

class PreTrainedModel : public torch::nn::Module {
 public:
  virtual ModelOutput Forward(const ForwardInputs& inputs) = 0;
  virtual const PretrainedConfig& config() const = 0;
  virtual PretrainedConfig& mutable_config() = 0;

  // The model's default plan; config.json's base_model_tp_plan overrides it.
  virtual TensorParallelPlan BaseModelTensorParallelPlan() const { return {}; }
  // transformers' _tied_weights_keys: parameter -> the parameter it shares (when tied in config).
  virtual std::map<std::string, std::string> TiedWeights() const { return {}; }
  // Prefix of the base model's parameters ("model."), as base_model_prefix.
  virtual std::string BaseModelPrefix() const { return "model."; }
  // transformers' base_model_prefix with a dot: the prefix of the base model's keys in a head's
  // checkpoint ("model.", GPT-2's "transformer."). The loader tries each key with and without it.
  virtual std::string CheckpointBasePrefix() const { return "model."; }

  // Generation hook, as a model's prepare_inputs_for_generation override in transformers: true when
  // the next step must drop the KV cache and recompute the whole sequence (prompt and generated
  // tokens, `sequence_length` of them) instead of appending one token to the `past_length` cached.
  // Phi-3 does this once, when longrope switches from short to long factors.
  virtual bool DropsCacheBeforeGenerationStep(int64_t sequence_length, int64_t past_length) const { return false; }

  // Called by the loader when the checkpoint lacks every weight of the top-level submodule `name`
  // (a bare BertModel / ViTModel from a head checkpoint built without the pooler): returns true when
  // the model can do without it and has dropped it (that output is then not computed).
  virtual bool DropMissingModule(const std::string& name) { return false; }

  // Joint text-image embedding models (CLIP): transformers' get_text_features(input_ids,
  // attention_mask) and get_image_features(pixel_values), the projected pooled output
  // [batch, projection_dim], unnormalised. EmbedsText / EmbedsImages say whether the class has them
  // (CLIPModel both, CLIPTextModelWithProjection text, CLIPVisionModelWithProjection images);
  // `flotilla embed` asks before tokenizing or decoding. The defaults fail a TORCH_CHECK.
  virtual bool EmbedsText() const { return false; }
  virtual bool EmbedsImages() const { return false; }
  virtual at::Tensor GetTextFeatures(const ForwardInputs& inputs);
  virtual at::Tensor GetImageFeatures(const ForwardInputs& inputs);

  // Switches the attention function (any registered name or "eager") without reloading weights.
  void SetAttentionImplementation(const std::string& name);
  const std::string& attention_implementation() const { return config().attn_implementation; }
  TensorParallelPlan tensor_parallel_plan() const;
};

}  // namespace flotilla::models
