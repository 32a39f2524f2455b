// GPT-2 (model_type "gpt2": gpt2, distilgpt2, and checkpoints that say so), read top to bottom as
// transformers' models/gpt2/modeling_gpt2.py: config, Conv1D, eager attention, attention (fused
// c_attn), MLP (gelu_new), block, model (learned absolute positions), LM head, registration.
//
// Conv1D keeps OpenAI's weight layout [in_features, out_features] (the transpose of a Linear), so
// checkpoint keys and tensors load unchanged. The LM head's base model is called `transformer`;
// the original hub checkpoints store its tensors without that prefix, which the loader accepts
// (auto.cc tries the key with and without the base model prefix).

// ---- block: Includes ----
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include "absl/strings/str_cat.h"
#include "models/attention.h"
#include "models/auto.h"
#include "models/cache.h"
#include "models/config.h"
#include "models/debugger.h"
#include "models/layers.h"
#include "models/masks.h"
#include "models/modeling_utils.h"

namespace flotilla::models::gpt2 {

// ---- block: GPT2Config ----
// configuration_gpt2.py: field names and defaults as transformers has them. hidden_size,
// max_position_embeddings, num_attention_heads and num_hidden_layers are attribute_map aliases of
// n_embd, n_positions, n_head and n_layer; either spelling is read.
struct GPT2Config : PretrainedConfig {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_inner = 4 * 768;  // default: 4 * n_embd
  std::string activation_function = "gelu_new";
  double layer_norm_epsilon = 1e-5;
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  bool reorder_and_upcast_attn = false;

  static absl::StatusOr<std::shared_ptr<GPT2Config>> FromJson(const nlohmann::json& json) {
    auto config = std::make_shared<GPT2Config>();
    ConfigReader reader(json, "config.json");
    config->tie_word_embeddings = true;
    reader.Common(*config);
    if (!json.contains("bos_token_id")) config->bos_token_id = 50256;
    if (!json.contains("eos_token_id")) config->eos_token_id = {50256};
    config->vocab_size = reader.Int("vocab_size", 50257);
    config->n_positions = reader.Int("n_positions", reader.Int("max_position_embeddings", 1024));
    config->n_embd = reader.Int("n_embd", reader.Int("hidden_size", 768));
    config->n_layer = reader.Int("n_layer", reader.Int("num_hidden_layers", 12));
    config->n_head = reader.Int("n_head", reader.Int("num_attention_heads", 12));
    config->n_inner = reader.OptionalInt("n_inner").value_or(4 * config->n_embd);
    config->activation_function = reader.String("activation_function", "gelu_new");
    config->layer_norm_epsilon = reader.Double("layer_norm_epsilon", 1e-5);
    config->scale_attn_weights = reader.Bool("scale_attn_weights", true);
    config->scale_attn_by_inverse_layer_idx = reader.Bool("scale_attn_by_inverse_layer_idx", false);
    config->reorder_and_upcast_attn = reader.Bool("reorder_and_upcast_attn", false);
    if (config->n_head <= 0 || config->n_embd % config->n_head != 0) {
      reader.Fail(absl::StrCat("n_embd (", config->n_embd, ") must be a multiple of n_head (", config->n_head, ")"));
    }
    const std::string& act = config->activation_function;
    if (act != "gelu_new" && act != "gelu_pytorch_tanh" && act != "gelu" && act != "relu" && act != "silu" &&
        act != "gelu_fast") {
      reader.Fail(absl::StrCat("activation_function: expected one of gelu_new, gelu_pytorch_tanh, gelu_fast, gelu, "
                               "relu, silu, got ", act));
    }
    if (reader.Bool("add_cross_attention", false)) {
      reader.Fail("add_cross_attention: cross-attention (GPT-2 as an encoder-decoder's decoder) is not supported");
    }
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    return config;
  }
};

// ---- block: Conv1D ----
// Conv1D (transformers' pytorch_utils.Conv1D, weight stored [in, out]) is shared: models/layers.h.

// ---- block: Activation ----
// activations.py's ACT2FN entries a GPT-2 config may name.
at::Tensor Activation(const std::string& name, const at::Tensor& input) {
  if (name == "gelu_new") {
    // NewGELUActivation, written out as transformers does (not at::gelu's tanh kernel).
    return 0.5 * input * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (input + 0.044715 * at::pow(input, 3.0))));
  }
  if (name == "gelu_fast") {
    return 0.5 * input * (1.0 + at::tanh(input * 0.7978845608 * (1.0 + 0.044715 * input * input)));
  }
  if (name == "gelu_pytorch_tanh") return at::gelu(input, "tanh");
  if (name == "gelu") return at::gelu(input);
  if (name == "relu") return at::relu(input);
  return at::silu(input);
}

// ---- block: EagerAttentionForward ----
// GPT-2's eager attention: unlike Llama's, the softmax runs in the scores' dtype, then casts to
// the values' dtype. No grouped-query attention (num_key_value_groups is 1).
std::pair<at::Tensor, at::Tensor> EagerAttentionForward(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const std::optional<at::Tensor>& attention_mask,
                                                        const AttentionArguments& arguments) {
  at::Tensor attn_weights = at::matmul(query, key.transpose(-1, -2)) * arguments.scaling;
  if (attention_mask.has_value()) attn_weights = attn_weights + *attention_mask;
  attn_weights = at::softmax(attn_weights, -1).to(value.scalar_type());
  at::Tensor attn_output = at::matmul(attn_weights, value).transpose(1, 2);
  return {attn_output, attn_weights};
}

// _upcast_and_reordered_attn (eager with reorder_and_upcast_attn): scores in float32 with the
// scaling folded into the matmul.
std::pair<at::Tensor, at::Tensor> UpcastAndReorderedAttention(const at::Tensor& query, const at::Tensor& key,
                                                              const at::Tensor& value,
                                                              const std::optional<at::Tensor>& attention_mask,
                                                              double scaling) {
  const int64_t batch = query.size(0), heads = query.size(1), query_length = query.size(2), dim = query.size(3);
  const int64_t key_length = key.size(2);
  at::Tensor q = query.reshape({-1, query_length, dim}).to(at::kFloat);
  at::Tensor k = key.transpose(-1, -2).reshape({-1, dim, key_length}).to(at::kFloat);
  at::Tensor attn_weights = at::empty({batch * heads, query_length, key_length}, q.options());
  attn_weights = at::baddbmm(attn_weights, q, k, /*beta=*/0, /*alpha=*/scaling);
  attn_weights = attn_weights.reshape({batch, heads, query_length, key_length});
  if (attention_mask.has_value()) attn_weights = attn_weights + *attention_mask;
  attn_weights = at::softmax(attn_weights, -1).to(value.scalar_type());
  at::Tensor attn_output = at::matmul(attn_weights, value).transpose(1, 2);
  return {attn_output, attn_weights};
}

// ---- block: GPT2Attention ----
class GPT2AttentionImpl : public torch::nn::Module {
 public:
  GPT2AttentionImpl(std::shared_ptr<GPT2Config> config, int64_t layer_idx)
      : config_(std::move(config)), layer_idx_(layer_idx) {
    embed_dim = config_->n_embd;
    head_dim = embed_dim / config_->n_head;
    scaling = 1.0;
    if (config_->scale_attn_weights) scaling = std::pow(static_cast<double>(head_dim), -0.5);
    if (config_->scale_attn_by_inverse_layer_idx) scaling /= static_cast<double>(layer_idx + 1);
    c_attn = register_module("c_attn", std::make_shared<Conv1DImpl>(3 * embed_dim, embed_dim));
    c_proj = register_module("c_proj", std::make_shared<Conv1DImpl>(embed_dim, embed_dim));
  }

  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& hidden_states, KVCache* past_key_values,
                                            const std::optional<at::Tensor>& attention_mask, bool output_attentions) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    const int64_t batch = hidden_states.size(0);
    const int64_t length = hidden_states.size(1);
    std::vector<at::Tensor> qkv = c_attn->forward(hidden_states).chunk(3, 2);
    at::Tensor query_states = qkv[0].view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor key_states = qkv[1].view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor value_states = qkv[2].view({batch, length, -1, head_dim}).transpose(1, 2);

    if (past_key_values != nullptr) {
      std::tie(key_states, value_states) = past_key_values->Update(key_states, value_states, layer_idx_);
    }

    at::Tensor attn_output, attn_weights;
    if (config_->attn_implementation == "eager" && config_->reorder_and_upcast_attn) {
      std::tie(attn_output, attn_weights) =
          UpcastAndReorderedAttention(query_states, key_states, value_states, attention_mask, scaling);
    } else {
      AttentionFunction attention_interface = GetAttentionFunction(config_->attn_implementation, EagerAttentionForward);
      AttentionArguments arguments;
      arguments.scaling = scaling;
      arguments.output_attentions = output_attentions;
      std::tie(attn_output, attn_weights) =
          attention_interface(query_states, key_states, value_states, attention_mask, arguments);
    }

    attn_output = attn_output.reshape({batch, length, -1}).contiguous();
    attn_output = c_proj->forward(attn_output);
    debug.Output(attn_output);
    return {attn_output, attn_weights};
  }

  std::shared_ptr<Conv1DImpl> c_attn, c_proj;
  int64_t embed_dim;
  int64_t head_dim;
  double scaling;

 private:
  std::shared_ptr<GPT2Config> config_;
  int64_t layer_idx_;
};

// ---- block: GPT2MLP ----
class GPT2MLPImpl : public torch::nn::Module {
 public:
  GPT2MLPImpl(int64_t intermediate_size, const GPT2Config& config) : activation_function_(config.activation_function) {
    c_fc = register_module("c_fc", std::make_shared<Conv1DImpl>(intermediate_size, config.n_embd));
    c_proj = register_module("c_proj", std::make_shared<Conv1DImpl>(config.n_embd, intermediate_size));
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    return debug.Output(c_proj->forward(Activation(activation_function_, c_fc->forward(hidden_states))));
  }

  std::shared_ptr<Conv1DImpl> c_fc, c_proj;

 private:
  std::string activation_function_;
};

// ---- block: LayerNorm ----
// nn.LayerNorm with the checkpoint's names (weight, bias).
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t hidden_size, double eps) : hidden_size_(hidden_size), eps_(eps) {
    weight = register_parameter("weight", at::empty({hidden_size}), /*requires_grad=*/false);
    bias = register_parameter("bias", at::empty({hidden_size}), /*requires_grad=*/false);
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    return debug.Output(at::layer_norm(hidden_states, {hidden_size_}, weight, bias, eps_));
  }

  at::Tensor weight, bias;

 private:
  int64_t hidden_size_;
  double eps_;
};

// ---- block: GPT2Block ----
class GPT2BlockImpl : public torch::nn::Module {
 public:
  GPT2BlockImpl(std::shared_ptr<GPT2Config> config, int64_t layer_idx) {
    ln_1 = register_module("ln_1", std::make_shared<LayerNormImpl>(config->n_embd, config->layer_norm_epsilon));
    attn = register_module("attn", std::make_shared<GPT2AttentionImpl>(config, layer_idx));
    ln_2 = register_module("ln_2", std::make_shared<LayerNormImpl>(config->n_embd, config->layer_norm_epsilon));
    mlp = register_module("mlp", std::make_shared<GPT2MLPImpl>(config->n_inner, *config));
  }

  at::Tensor forward(const at::Tensor& hidden_states_in, KVCache* past_key_values,
                     const std::optional<at::Tensor>& attention_mask, bool output_attentions, at::Tensor* attn_weights) {
    DebugScope debug(this, {{"hidden_states", hidden_states_in}});
    at::Tensor residual = hidden_states_in;
    at::Tensor hidden_states = ln_1->forward(hidden_states_in);
    auto [attn_output, weights] = attn->forward(hidden_states, past_key_values, attention_mask, output_attentions);
    if (attn_weights != nullptr) *attn_weights = weights;
    // residual connection
    hidden_states = attn_output + residual;

    residual = hidden_states;
    hidden_states = ln_2->forward(hidden_states);
    at::Tensor feed_forward_hidden_states = mlp->forward(hidden_states);
    // residual connection
    hidden_states = residual + feed_forward_hidden_states;
    return debug.Output(hidden_states);
  }

  std::shared_ptr<LayerNormImpl> ln_1;
  std::shared_ptr<GPT2AttentionImpl> attn;
  std::shared_ptr<LayerNormImpl> ln_2;
  std::shared_ptr<GPT2MLPImpl> mlp;
};

// ---- block: GPT2Model ----
// The bare decoder: token and position embeddings, blocks, final layer norm ("GPT2Model").
class GPT2Model : public PreTrainedModel {
 public:
  explicit GPT2Model(std::shared_ptr<GPT2Config> config) : config_(std::move(config)) {
    wte = register_module("wte", Embedding(config_->vocab_size, config_->n_embd));
    wpe = register_module("wpe", Embedding(config_->n_positions, config_->n_embd));
    h = register_module("h", torch::nn::ModuleList());
    for (int64_t layer_idx = 0; layer_idx < config_->n_layer; ++layer_idx) {
      blocks.push_back(std::make_shared<GPT2BlockImpl>(config_, layer_idx));
      h->push_back(blocks.back());
    }
    ln_f = register_module("ln_f", std::make_shared<LayerNormImpl>(config_->n_embd, config_->layer_norm_epsilon));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    TORCH_CHECK(inputs.input_ids.dim() == 2, "GPT2Model: input_ids must be [batch, length], got ",
                inputs.input_ids.sizes());
    at::Tensor inputs_embeds = wte->forward(inputs.input_ids);
    const int64_t batch = inputs_embeds.size(0);
    const int64_t length = inputs_embeds.size(1);

    const int64_t past_seen_tokens = inputs.past_key_values ? inputs.past_key_values->GetSeqLength() : 0;
    at::Tensor position_ids = inputs.position_ids.has_value()
                                  ? *inputs.position_ids
                                  : (at::arange(length, at::TensorOptions().dtype(at::kLong).device(inputs_embeds.device())) +
                                     past_seen_tokens).unsqueeze(0);
    at::Tensor position_embeds = wpe->forward(position_ids);
    at::Tensor hidden_states = inputs_embeds + position_embeds;

    MaskArguments mask_arguments;
    mask_arguments.batch_size = batch;
    mask_arguments.query_length = length;
    mask_arguments.past_length = past_seen_tokens;
    mask_arguments.attention_mask = inputs.attention_mask;
    mask_arguments.implementation = config_->attn_implementation;
    mask_arguments.dtype = inputs_embeds.scalar_type();
    mask_arguments.device = inputs_embeds.device();
    std::optional<at::Tensor> causal_mask = CreateCausalMask(mask_arguments);

    if (inputs.token_type_ids.has_value()) hidden_states = hidden_states + wte->forward(*inputs.token_type_ids);

    ModelOutput output;
    for (auto& block : blocks) {
      if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
      at::Tensor attn_weights;
      hidden_states = block->forward(hidden_states, inputs.past_key_values, causal_mask, inputs.output_attentions,
                                     &attn_weights);
      if (inputs.output_attentions) output.attentions.push_back(attn_weights);
    }
    hidden_states = ln_f->forward(hidden_states);
    // As transformers: the last hidden state recorded is the normed one.
    if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
    output.last_hidden_state = debug.Output(hidden_states, "last_hidden_state");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return ""; }
  std::string CheckpointBasePrefix() const override { return "transformer."; }
  // transformers' GPT2Config has no base_model_tp_plan; this is Flotilla's (config.json's
  // base_model_tp_plan overrides it). Conv1D weights are [in, out], so the splits use the conv1d_*
  // styles (tp_plan.h): c_attn's fused q | k | v columns each split across ranks (every rank gets
  // whole heads of all three), c_fc's columns, and the input rows of both c_proj (their outputs
  // are summed across ranks).
  TensorParallelPlan BaseModelTensorParallelPlan() const override {
    TensorParallelPlan plan;
    plan.Add("h.*.attn.c_attn", ParallelStyle::kConv1DPackedColwise);
    plan.Add("h.*.attn.c_proj", ParallelStyle::kConv1DRowwise);
    plan.Add("h.*.mlp.c_fc", ParallelStyle::kConv1DColwise);
    plan.Add("h.*.mlp.c_proj", ParallelStyle::kConv1DRowwise);
    return plan;
  }

  Embedding wte{nullptr};
  Embedding wpe{nullptr};
  torch::nn::ModuleList h{nullptr};
  std::vector<std::shared_ptr<GPT2BlockImpl>> blocks;
  std::shared_ptr<LayerNormImpl> ln_f;

 private:
  std::shared_ptr<GPT2Config> config_;
};

// ---- block: GPT2LMHeadModel ----
class GPT2LMHeadModel : public PreTrainedModel {
 public:
  explicit GPT2LMHeadModel(std::shared_ptr<GPT2Config> config) : config_(std::move(config)) {
    transformer = register_module("transformer", std::make_shared<GPT2Model>(config_));
    lm_head = register_module("lm_head", Linear(config_->n_embd, config_->vocab_size, /*bias=*/false));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    ModelOutput output = transformer->Forward(inputs);
    at::Tensor hidden_states = HiddenStatesForLogits(output.last_hidden_state, inputs);
    output.logits = debug.Output(lm_head->forward(hidden_states), "logits");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return "transformer."; }
  std::string CheckpointBasePrefix() const override { return "transformer."; }
  TensorParallelPlan BaseModelTensorParallelPlan() const override { return transformer->BaseModelTensorParallelPlan(); }
  std::map<std::string, std::string> TiedWeights() const override {
    return {{"lm_head.weight", "transformer.wte.weight"}};
  }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = GPT2Config::FromJson(json);
    if (!config.ok()) return config.status();
    return std::make_shared<GPT2LMHeadModel>(*config);
  }

  std::shared_ptr<GPT2Model> transformer;
  Linear lm_head{nullptr};

 private:
  std::shared_ptr<GPT2Config> config_;
};

// ---- block: Registration ----
absl::StatusOr<std::shared_ptr<PreTrainedModel>> GPT2ModelFromConfig(const nlohmann::json& json) {
  auto config = GPT2Config::FromJson(json);
  if (!config.ok()) return config.status();
  return std::make_shared<GPT2Model>(*config);
}

FLOTILLA_REGISTER_MODEL("gpt2", "GPT2LMHeadModel", GPT2LMHeadModel::FromConfig);
FLOTILLA_REGISTER_MODEL("gpt2", "GPT2Model", GPT2ModelFromConfig);

}  // namespace flotilla::models::gpt2
