// Llama (and every checkpoint that says model_type "llama": SmolLM2, TinyLlama, Llama 2/3), read
// top to bottom as transformers' models/llama/modeling_llama.py: config, RMSNorm, rotary
// embedding, MLP, eager attention, attention, decoder layer, model, causal-LM head, registration.
//
// Submodules carry the checkpoint's names (model.layers.0.self_attn.q_proj.weight), so loading needs
// no renaming table. Infrastructure (loading, attention dispatch, masks, caches, rotary
// frequencies) lives in models/*.h; model behaviour lives here.
//
// The `// ---- block: Name ----` lines delimit the blocks a modular shard (modular_<name>.cpp)
// inherits, edits or replaces; see tools/modular/README.md.

// ---- block: Includes ----
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
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
#include "models/kernelize.h"
#include "models/layers.h"
#include "models/masks.h"
#include "models/modeling_utils.h"
#include "models/rope.h"

namespace flotilla::models::llama {

// ---- block: LlamaConfig ----
// configuration_llama.py: field names and defaults as transformers has them.
struct LlamaConfig : PretrainedConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // default: num_attention_heads
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  bool attention_bias = false;
  double attention_dropout = 0.0;
  bool mlp_bias = false;
  int64_t head_dim = 128;  // default: hidden_size / num_attention_heads
  RopeParameters rope_parameters;

  static absl::StatusOr<std::shared_ptr<LlamaConfig>> FromJson(const nlohmann::json& json) {
    auto config = std::make_shared<LlamaConfig>();
    ConfigReader reader(json, "config.json");
    config->bos_token_id = 1;
    config->eos_token_id = {2};
    reader.Common(*config);
    if (!reader.Has("bos_token_id")) config->bos_token_id = 1;
    if (!reader.Has("eos_token_id")) config->eos_token_id = {2};
    config->vocab_size = reader.Int("vocab_size", 32000);
    config->hidden_size = reader.Int("hidden_size", 4096);
    config->intermediate_size = reader.Int("intermediate_size", 11008);
    config->num_hidden_layers = reader.Int("num_hidden_layers", 32);
    config->num_attention_heads = reader.Int("num_attention_heads", 32);
    config->num_key_value_heads = reader.Int("num_key_value_heads", config->num_attention_heads);
    config->hidden_act = reader.String("hidden_act", "silu");
    config->max_position_embeddings = reader.Int("max_position_embeddings", 2048);
    config->rms_norm_eps = reader.Double("rms_norm_eps", 1e-6);
    config->attention_bias = reader.Bool("attention_bias", false);
    config->attention_dropout = reader.Double("attention_dropout", 0.0);
    config->mlp_bias = reader.Bool("mlp_bias", false);
    if (config->num_attention_heads <= 0 || config->hidden_size % config->num_attention_heads != 0) {
      reader.Fail(absl::StrCat("hidden_size (", config->hidden_size, ") must be a multiple of num_attention_heads (",
                               config->num_attention_heads, ")"));
    } else if (config->num_key_value_heads <= 0 || config->num_attention_heads % config->num_key_value_heads != 0) {
      reader.Fail(absl::StrCat("num_attention_heads (", config->num_attention_heads,
                               ") must be a multiple of num_key_value_heads (", config->num_key_value_heads, ")"));
    }
    config->head_dim = reader.Int("head_dim", config->num_attention_heads > 0
                                                  ? config->hidden_size / config->num_attention_heads : 0);
    config->rope_parameters = ParseRopeParameters(reader, /*default_theta=*/10000.0, config->max_position_embeddings);
    if (config->hidden_act != "silu") reader.Fail(absl::StrCat("hidden_act: only silu is supported, got ", config->hidden_act));
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    return config;
  }
};

// ---- block: LlamaRMSNorm ----
class LlamaRMSNormImpl : public torch::nn::Module {
 public:
  LlamaRMSNormImpl(int64_t hidden_size, double eps) : variance_epsilon(eps) {
    weight = register_parameter("weight", at::empty({hidden_size}), /*requires_grad=*/false);
  }

  at::Tensor forward(const at::Tensor& hidden_states_in) {
    DebugScope debug(this, {{"hidden_states", hidden_states_in}});
    const auto input_dtype = hidden_states_in.scalar_type();
    at::Tensor hidden_states = hidden_states_in.to(at::kFloat);
    at::Tensor variance = hidden_states.pow(2).mean(-1, /*keepdim=*/true);
    hidden_states = hidden_states * at::rsqrt(variance + variance_epsilon);
    return debug.Output(weight * hidden_states.to(input_dtype));
  }

  at::Tensor weight;
  double variance_epsilon;
};
// Replaceable by an "RMSNorm" kernel (models/kernelize.h), as @use_kernel_forward_from_hub("RMSNorm").
using LlamaRMSNorm = UseKernelForward<LlamaRMSNormImpl, KernelLayer::kRmsNorm>;

// ---- block: LlamaRotaryEmbedding ----
class LlamaRotaryEmbeddingImpl : public torch::nn::Module {
 public:
  explicit LlamaRotaryEmbeddingImpl(std::shared_ptr<LlamaConfig> config) : config_(std::move(config)) {
    frequencies_ = ComputeRopeFrequencies(config_->rope_parameters, config_->head_dim, config_->max_position_embeddings);
    dynamic_state_.max_seq_len_cached = config_->max_position_embeddings;
    dynamic_state_.original_max_seq_len = config_->max_position_embeddings;
    dynamic_state_.original = frequencies_;
  }

  // Returns (cos, sin), each [batch, length, head_dim], computed in float32 and cast to x's dtype.
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& position_ids) {
    DebugScope debug(this, {{"position_ids", position_ids}});
    DynamicRopeUpdate(config_->rope_parameters, config_->head_dim, config_->max_position_embeddings, position_ids,
                      dynamic_state_, frequencies_);
    at::Tensor inv_freq = frequencies_.inv_freq.to(x.device());
    at::Tensor freqs = position_ids.unsqueeze(-1).to(at::kFloat) * inv_freq;
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    at::Tensor cos = emb.cos() * frequencies_.attention_scaling;
    at::Tensor sin = emb.sin() * frequencies_.attention_scaling;
    debug.Outputs({{"cos", cos}, {"sin", sin}});
    return {cos.to(x.scalar_type()), sin.to(x.scalar_type())};
  }

 private:
  std::shared_ptr<LlamaConfig> config_;
  RopeFrequencies frequencies_;
  DynamicRopeState dynamic_state_;
};

// ---- block: ApplyRotaryPosEmb ----
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// cos/sin: [batch, length, head_dim], unsqueezed to broadcast over the heads of q/k
// ([batch, heads, length, head_dim]).
std::pair<at::Tensor, at::Tensor> ApplyRotaryPosEmb(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos_in,
                                                    const at::Tensor& sin_in) {
  at::Tensor cos = cos_in.unsqueeze(1);
  at::Tensor sin = sin_in.unsqueeze(1);
  at::Tensor q_embed = (q * cos) + (RotateHalf(q) * sin);
  at::Tensor k_embed = (k * cos) + (RotateHalf(k) * sin);
  return {q_embed, k_embed};
}
// Replaceable by a "RotaryEmbedding" kernel (models/kernelize.h), which rotates q and k in place.
const UseKernelRotary ApplyRotaryPosEmbWithKernel{ApplyRotaryPosEmb};

// ---- block: LlamaMLP ----
class LlamaMLPImpl : public torch::nn::Module {
 public:
  explicit LlamaMLPImpl(const LlamaConfig& config) {
    gate_proj = register_module("gate_proj", Linear(config.hidden_size, config.intermediate_size, config.mlp_bias));
    up_proj = register_module("up_proj", Linear(config.hidden_size, config.intermediate_size, config.mlp_bias));
    down_proj = register_module("down_proj", Linear(config.intermediate_size, config.hidden_size, config.mlp_bias));
  }

  at::Tensor forward(const at::Tensor& x) {
    DebugScope debug(this, {{"x", x}});
    return debug.Output(down_proj->forward(at::silu(gate_proj->forward(x)) * up_proj->forward(x)));
  }

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
// Replaceable by a "SiluAndMul" kernel (models/kernelize.h): down_proj(kernel(gate_proj(x), up_proj(x))).
using LlamaMLP = UseKernelForward<LlamaMLPImpl, KernelLayer::kSiluAndMul>;

// ---- block: EagerAttentionForward ----
// The reference attention: scores, additive mask, float32 softmax, weighted values.
std::pair<at::Tensor, at::Tensor> EagerAttentionForward(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const std::optional<at::Tensor>& attention_mask,
                                                        const AttentionArguments& arguments) {
  at::Tensor key_states = RepeatKeyValue(key, arguments.num_key_value_groups);
  at::Tensor value_states = RepeatKeyValue(value, arguments.num_key_value_groups);
  at::Tensor attn_weights = at::matmul(query, key_states.transpose(2, 3)) * arguments.scaling;
  if (attention_mask.has_value()) attn_weights = attn_weights + *attention_mask;
  attn_weights = at::softmax(attn_weights, -1, at::kFloat).to(query.scalar_type());
  at::Tensor attn_output = at::matmul(attn_weights, value_states).transpose(1, 2).contiguous();
  return {attn_output, attn_weights};
}

// ---- block: LlamaAttention ----
class LlamaAttentionImpl : public torch::nn::Module {
 public:
  LlamaAttentionImpl(std::shared_ptr<LlamaConfig> config, int64_t layer_idx)
      : config_(std::move(config)), layer_idx_(layer_idx) {
    const LlamaConfig& c = *config_;
    head_dim = c.head_dim;
    num_key_value_groups = c.num_attention_heads / c.num_key_value_heads;
    scaling = std::pow(static_cast<double>(head_dim), -0.5);
    q_proj = register_module("q_proj", Linear(c.hidden_size, c.num_attention_heads * head_dim, c.attention_bias));
    k_proj = register_module("k_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, c.attention_bias));
    v_proj = register_module("v_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, c.attention_bias));
    o_proj = register_module("o_proj", Linear(c.num_attention_heads * head_dim, c.hidden_size, c.attention_bias));
  }

  // Returns the attention output [batch, length, hidden] and the weights (eager only).
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& hidden_states,
                                            const std::pair<at::Tensor, at::Tensor>& position_embeddings,
                                            const std::optional<at::Tensor>& attention_mask, KVCache* past_key_values,
                                            bool output_attentions) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    const int64_t batch = hidden_states.size(0);
    const int64_t length = hidden_states.size(1);
    at::Tensor query_states = q_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor key_states = k_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor value_states = v_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);

    const auto& [cos, sin] = position_embeddings;
    std::tie(query_states, key_states) = ApplyRotaryPosEmbWithKernel(query_states, key_states, cos, sin);

    if (past_key_values != nullptr) {
      std::tie(key_states, value_states) = past_key_values->Update(key_states, value_states, layer_idx_);
    }

    AttentionFunction attention_interface = GetAttentionFunction(config_->attn_implementation, EagerAttentionForward);
    AttentionArguments arguments;
    arguments.scaling = scaling;
    arguments.num_key_value_groups = num_key_value_groups;
    arguments.output_attentions = output_attentions;
    auto [attn_output, attn_weights] =
        attention_interface(query_states, key_states, value_states, attention_mask, arguments);

    attn_output = attn_output.reshape({batch, length, -1}).contiguous();
    attn_output = o_proj->forward(attn_output);
    debug.Output(attn_output);
    return {attn_output, attn_weights};
  }

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t head_dim;
  int64_t num_key_value_groups;
  double scaling;

 private:
  std::shared_ptr<LlamaConfig> config_;
  int64_t layer_idx_;
};

// ---- block: LlamaDecoderLayer ----
class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  LlamaDecoderLayerImpl(std::shared_ptr<LlamaConfig> config, int64_t layer_idx) {
    self_attn = register_module("self_attn", std::make_shared<LlamaAttentionImpl>(config, layer_idx));
    mlp = register_module("mlp", std::make_shared<LlamaMLP>(*config));
    input_layernorm = register_module("input_layernorm",
                                      std::make_shared<LlamaRMSNorm>(config->hidden_size, config->rms_norm_eps));
    post_attention_layernorm = register_module(
        "post_attention_layernorm", std::make_shared<LlamaRMSNorm>(config->hidden_size, config->rms_norm_eps));
  }

  at::Tensor forward(const at::Tensor& hidden_states_in, const std::optional<at::Tensor>& attention_mask,
                     const std::pair<at::Tensor, at::Tensor>& position_embeddings, KVCache* past_key_values,
                     bool output_attentions, at::Tensor* attn_weights) {
    DebugScope debug(this, {{"hidden_states", hidden_states_in}});
    at::Tensor residual = hidden_states_in;
    at::Tensor hidden_states = input_layernorm->forward(hidden_states_in);
    // Self Attention
    auto [attn_output, weights] =
        self_attn->forward(hidden_states, position_embeddings, attention_mask, past_key_values, output_attentions);
    if (attn_weights != nullptr) *attn_weights = weights;
    // Fully Connected: residual = residual + attn_output, normalised for the MLP (eager: the add,
    // then the norm's forward; a builtin "RMSNorm" kernel does both in one pass).
    std::tie(hidden_states, residual) = post_attention_layernorm->AddAndForward(attn_output, residual);
    hidden_states = mlp->forward(hidden_states);
    hidden_states = residual + hidden_states;
    return debug.Output(hidden_states);
  }

  std::shared_ptr<LlamaAttentionImpl> self_attn;
  std::shared_ptr<LlamaMLP> mlp;
  std::shared_ptr<LlamaRMSNorm> input_layernorm;
  std::shared_ptr<LlamaRMSNorm> post_attention_layernorm;
};

// ---- block: LlamaModel ----
// The bare decoder: embeddings, layers, final norm. Also loadable on its own ("LlamaModel").
class LlamaModel : public PreTrainedModel {
 public:
  explicit LlamaModel(std::shared_ptr<LlamaConfig> config) : config_(std::move(config)) {
    embed_tokens = register_module("embed_tokens", Embedding(config_->vocab_size, config_->hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t layer_idx = 0; layer_idx < config_->num_hidden_layers; ++layer_idx) {
      decoder_layers.push_back(std::make_shared<LlamaDecoderLayerImpl>(config_, layer_idx));
      layers->push_back(decoder_layers.back());
    }
    norm = register_module("norm", std::make_shared<LlamaRMSNorm>(config_->hidden_size, config_->rms_norm_eps));
    rotary_emb = register_module("rotary_emb", std::make_shared<LlamaRotaryEmbeddingImpl>(config_));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    TORCH_CHECK(inputs.input_ids.dim() == 2, "LlamaModel: input_ids must be [batch, length], got ",
                inputs.input_ids.sizes());
    at::Tensor inputs_embeds = embed_tokens->forward(inputs.input_ids);
    const int64_t batch = inputs_embeds.size(0);
    const int64_t length = inputs_embeds.size(1);

    const int64_t past_seen_tokens = inputs.past_key_values ? inputs.past_key_values->GetSeqLength() : 0;
    at::Tensor position_ids = inputs.position_ids.has_value()
                                  ? *inputs.position_ids
                                  : (at::arange(length, at::TensorOptions().dtype(at::kLong).device(inputs_embeds.device())) +
                                     past_seen_tokens).unsqueeze(0);

    MaskArguments mask_arguments;
    mask_arguments.batch_size = batch;
    mask_arguments.query_length = length;
    mask_arguments.past_length = past_seen_tokens;
    mask_arguments.attention_mask = inputs.attention_mask;
    mask_arguments.implementation = config_->attn_implementation;
    mask_arguments.dtype = inputs_embeds.scalar_type();
    mask_arguments.device = inputs_embeds.device();
    std::optional<at::Tensor> causal_mask = CreateCausalMask(mask_arguments);

    at::Tensor hidden_states = inputs_embeds;
    auto position_embeddings = rotary_emb->forward(hidden_states, position_ids);

    ModelOutput output;
    for (auto& decoder_layer : decoder_layers) {
      if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
      at::Tensor attn_weights;
      hidden_states = decoder_layer->forward(hidden_states, causal_mask, position_embeddings, inputs.past_key_values,
                                             inputs.output_attentions, &attn_weights);
      if (inputs.output_attentions) output.attentions.push_back(attn_weights);
    }
    hidden_states = norm->forward(hidden_states);
    // As transformers: the last hidden state recorded is the normed one.
    if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
    output.last_hidden_state = debug.Output(hidden_states, "last_hidden_state");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return ""; }
  TensorParallelPlan BaseModelTensorParallelPlan() const override {
    TensorParallelPlan plan;
    plan.Add("layers.*.self_attn.q_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.self_attn.k_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.self_attn.v_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.self_attn.o_proj", ParallelStyle::kRowwise);
    plan.Add("layers.*.mlp.gate_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.mlp.up_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.mlp.down_proj", ParallelStyle::kRowwise);
    return plan;
  }

  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<std::shared_ptr<LlamaDecoderLayerImpl>> decoder_layers;
  std::shared_ptr<LlamaRMSNorm> norm;
  std::shared_ptr<LlamaRotaryEmbeddingImpl> rotary_emb;

 private:
  std::shared_ptr<LlamaConfig> config_;
};

// ---- block: LlamaForCausalLM ----
class LlamaForCausalLM : public PreTrainedModel {
 public:
  explicit LlamaForCausalLM(std::shared_ptr<LlamaConfig> config) : config_(std::move(config)) {
    model = register_module("model", std::make_shared<LlamaModel>(config_));
    lm_head = register_module("lm_head", Linear(config_->hidden_size, config_->vocab_size, /*bias=*/false));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    ModelOutput output = model->Forward(inputs);
    at::Tensor hidden_states = HiddenStatesForLogits(output.last_hidden_state, inputs);
    output.logits = debug.Output(lm_head->forward(hidden_states), "logits");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  TensorParallelPlan BaseModelTensorParallelPlan() const override { return model->BaseModelTensorParallelPlan(); }
  std::map<std::string, std::string> TiedWeights() const override {
    return {{"lm_head.weight", "model.embed_tokens.weight"}};
  }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = LlamaConfig::FromJson(json);
    if (!config.ok()) return config.status();
    return std::make_shared<LlamaForCausalLM>(*config);
  }

  std::shared_ptr<LlamaModel> model;
  Linear lm_head{nullptr};

 private:
  std::shared_ptr<LlamaConfig> config_;
};

// ---- block: LlamaForSequenceClassification ----
// transformers' GenericForSequenceClassification: a bias-free `score` on every position's hidden
// state, then each row's logits at its rightmost token that is not pad_token_id (left or right
// padding alike); without a pad token only a batch of one is defined. logits [batch, num_labels].
class LlamaForSequenceClassification : public PreTrainedModel {
 public:
  explicit LlamaForSequenceClassification(std::shared_ptr<LlamaConfig> config) : config_(std::move(config)) {
    model = register_module("model", std::make_shared<LlamaModel>(config_));
    score = register_module("score", Linear(config_->hidden_size, config_->num_labels, /*bias=*/false));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    ModelOutput output = model->Forward(inputs);
    at::Tensor logits = score->forward(output.last_hidden_state);
    const int64_t batch = inputs.input_ids.size(0);
    at::Tensor last_non_pad_token;
    if (config_->pad_token_id.has_value()) {
      at::Tensor non_pad_mask = inputs.input_ids.ne(*config_->pad_token_id).to(at::kInt);
      at::Tensor token_indices = at::arange(inputs.input_ids.size(1), non_pad_mask.options());
      last_non_pad_token = (token_indices * non_pad_mask).argmax(-1);
    } else {
      TORCH_CHECK(batch == 1, "LlamaForSequenceClassification: config.json has no pad_token_id, so only a batch of "
                  "one sequence is defined; got ", batch);
      last_non_pad_token = at::full({1}, logits.size(1) - 1, at::kLong);
    }
    output.logits = debug.Output(logits.index({at::arange(batch), last_non_pad_token}), "logits");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  TensorParallelPlan BaseModelTensorParallelPlan() const override { return model->BaseModelTensorParallelPlan(); }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = LlamaConfig::FromJson(json);
    if (!config.ok()) return config.status();
    return std::make_shared<LlamaForSequenceClassification>(*config);
  }

  std::shared_ptr<LlamaModel> model;
  Linear score{nullptr};

 private:
  std::shared_ptr<LlamaConfig> config_;
};

// ---- block: Registration ----
absl::StatusOr<std::shared_ptr<PreTrainedModel>> LlamaModelFromConfig(const nlohmann::json& json) {
  auto config = LlamaConfig::FromJson(json);
  if (!config.ok()) return config.status();
  return std::make_shared<LlamaModel>(*config);
}

FLOTILLA_REGISTER_MODEL("llama", "LlamaForCausalLM", LlamaForCausalLM::FromConfig);
FLOTILLA_REGISTER_MODEL("llama", "LlamaModel", LlamaModelFromConfig);
FLOTILLA_REGISTER_MODEL("llama", "LlamaForSequenceClassification", LlamaForSequenceClassification::FromConfig);

}  // namespace flotilla::models::llama
