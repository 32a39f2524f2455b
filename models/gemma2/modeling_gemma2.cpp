// Gemma 2 (model_type "gemma2"), read top to bottom as transformers'
// models/gemma2/modeling_gemma2.py: config, RMSNorm ((1 + weight), in float32), MLP
// (gelu_pytorch_tanh), rotary embedding, eager attention (logit softcapping), attention
// (query_pre_attn_scalar, sliding window on "sliding_attention" layers), decoder layer (norms
// before and after attention and feed-forward), scaled embedding, model, causal-LM head (final
// logit softcapping), registration.
//
// transformers runs Gemma 2 with eager attention only (sdpa has no softcapping), so a config.json
// without attn_implementation loads as eager here too; asking for sdpa works only when
// attn_logit_softcapping is null. Submodules carry the checkpoint's names, so loading needs no
// renaming table.

// ---- block: Includes ----
#include <cmath>
#include <map>
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
#include "models/rope.h"

namespace flotilla::models::gemma2 {

// ---- block: Gemma2Config ----
// configuration_gemma2.py: field names and defaults as transformers has them.
struct Gemma2Config : PretrainedConfig {
  int64_t vocab_size = 256000;
  int64_t hidden_size = 2304;
  int64_t intermediate_size = 9216;
  int64_t num_hidden_layers = 26;
  int64_t num_attention_heads = 8;
  int64_t num_key_value_heads = 4;
  int64_t head_dim = 256;
  std::string hidden_activation = "gelu_pytorch_tanh";
  int64_t max_position_embeddings = 8192;
  double rms_norm_eps = 1e-6;
  bool attention_bias = false;
  double attention_dropout = 0.0;
  double query_pre_attn_scalar = 256;
  std::optional<int64_t> sliding_window = 4096;
  std::vector<std::string> layer_types;  // default: sliding, full, sliding, full, ...
  std::optional<double> final_logit_softcapping = 30.0;
  std::optional<double> attn_logit_softcapping = 50.0;
  RopeParameters rope_parameters;

  static absl::StatusOr<std::shared_ptr<Gemma2Config>> FromJson(const nlohmann::json& json) {
    auto config = std::make_shared<Gemma2Config>();
    ConfigReader reader(json, "config.json");
    config->tie_word_embeddings = true;
    reader.Common(*config);
    // transformers does not offer sdpa for Gemma 2: eager unless the config or the caller says otherwise.
    if (!reader.Has("attn_implementation") && !reader.Has("_attn_implementation")) config->attn_implementation = "eager";
    if (!json.contains("pad_token_id")) config->pad_token_id = 0;
    if (!json.contains("eos_token_id")) config->eos_token_id = {1};
    if (!json.contains("bos_token_id")) config->bos_token_id = 2;
    config->vocab_size = reader.Int("vocab_size", 256000);
    config->hidden_size = reader.Int("hidden_size", 2304);
    config->intermediate_size = reader.Int("intermediate_size", 9216);
    config->num_hidden_layers = reader.Int("num_hidden_layers", 26);
    config->num_attention_heads = reader.Int("num_attention_heads", 8);
    config->num_key_value_heads = reader.Int("num_key_value_heads", 4);
    config->head_dim = reader.Int("head_dim", 256);
    config->hidden_activation = reader.String("hidden_activation", "gelu_pytorch_tanh");
    config->max_position_embeddings = reader.Int("max_position_embeddings", 8192);
    config->rms_norm_eps = reader.Double("rms_norm_eps", 1e-6);
    config->attention_bias = reader.Bool("attention_bias", false);
    config->attention_dropout = reader.Double("attention_dropout", 0.0);
    config->query_pre_attn_scalar = reader.Double("query_pre_attn_scalar", 256);
    // A key present as null disables the feature; an absent key takes transformers' default.
    config->sliding_window = json.contains("sliding_window") ? reader.OptionalInt("sliding_window") : 4096;
    config->final_logit_softcapping =
        json.contains("final_logit_softcapping") ? reader.OptionalDouble("final_logit_softcapping") : 30.0;
    config->attn_logit_softcapping =
        json.contains("attn_logit_softcapping") ? reader.OptionalDouble("attn_logit_softcapping") : 50.0;
    config->layer_types = reader.Strings("layer_types");
    if (config->layer_types.empty()) {
      for (int64_t i = 0; i < config->num_hidden_layers; ++i) {
        config->layer_types.push_back((i + 1) % 2 ? "sliding_attention" : "full_attention");
      }
    }
    if (static_cast<int64_t>(config->layer_types.size()) != config->num_hidden_layers) {
      reader.Fail(absl::StrCat("layer_types has ", config->layer_types.size(), " entries but num_hidden_layers is ",
                               config->num_hidden_layers));
    }
    for (const auto& layer_type : config->layer_types) {
      if (layer_type != "full_attention" && layer_type != "sliding_attention") {
        reader.Fail(absl::StrCat("layer_types: expected full_attention or sliding_attention, got ", layer_type));
      }
    }
    if (config->num_key_value_heads <= 0 || config->num_attention_heads % config->num_key_value_heads != 0) {
      reader.Fail(absl::StrCat("num_attention_heads (", config->num_attention_heads,
                               ") must be a multiple of num_key_value_heads (", config->num_key_value_heads, ")"));
    }
    if (reader.Bool("use_bidirectional_attention", false)) {
      reader.Fail("use_bidirectional_attention: only causal attention is supported");
    }
    config->rope_parameters = ParseRopeParameters(reader, /*default_theta=*/10000.0, config->max_position_embeddings);
    if (config->hidden_activation != "gelu_pytorch_tanh" && config->hidden_activation != "gelu_new" &&
        config->hidden_activation != "silu") {
      reader.Fail(absl::StrCat("hidden_activation: expected gelu_pytorch_tanh, gelu_new or silu, got ",
                               config->hidden_activation));
    }
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    return config;
  }
};

// ---- block: Gemma2RMSNorm ----
// Unlike Llama's: the weight is an offset from 1 (zeros at init) and the product is taken in
// float32 before casting back.
class Gemma2RMSNormImpl : public torch::nn::Module {
 public:
  Gemma2RMSNormImpl(int64_t dim, double eps) : eps(eps) {
    weight = register_parameter("weight", at::empty({dim}), /*requires_grad=*/false);
  }

  at::Tensor forward(const at::Tensor& x) {
    DebugScope debug(this, {{"x", x}});
    at::Tensor input = x.to(at::kFloat);
    at::Tensor output = input * at::rsqrt(input.pow(2).mean(-1, /*keepdim=*/true) + eps);
    output = output * (1.0 + weight.to(at::kFloat));
    return debug.Output(output.to(x.scalar_type()));
  }

  at::Tensor weight;
  double eps;
};

// ---- block: Gemma2MLP ----
at::Tensor Activation(const std::string& name, const at::Tensor& x) {
  if (name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "gelu_new") return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * at::pow(x, 3.0))));
  return at::silu(x);
}

class Gemma2MLPImpl : public torch::nn::Module {
 public:
  explicit Gemma2MLPImpl(const Gemma2Config& config) : activation_(config.hidden_activation) {
    gate_proj = register_module("gate_proj", Linear(config.hidden_size, config.intermediate_size, false));
    up_proj = register_module("up_proj", Linear(config.hidden_size, config.intermediate_size, false));
    down_proj = register_module("down_proj", Linear(config.intermediate_size, config.hidden_size, false));
  }

  at::Tensor forward(const at::Tensor& x) {
    DebugScope debug(this, {{"x", x}});
    return debug.Output(down_proj->forward(Activation(activation_, gate_proj->forward(x)) * up_proj->forward(x)));
  }

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};

 private:
  std::string activation_;
};

// ---- block: Gemma2RotaryEmbedding ----
class Gemma2RotaryEmbeddingImpl : public torch::nn::Module {
 public:
  explicit Gemma2RotaryEmbeddingImpl(std::shared_ptr<Gemma2Config> config) : config_(std::move(config)) {
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
  std::shared_ptr<Gemma2Config> config_;
  RopeFrequencies frequencies_;
  DynamicRopeState dynamic_state_;
};

// ---- block: ApplyRotaryPosEmb ----
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// cos/sin: [batch, length, head_dim], unsqueezed to broadcast over the heads of q/k.
std::pair<at::Tensor, at::Tensor> ApplyRotaryPosEmb(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos_in,
                                                    const at::Tensor& sin_in) {
  at::Tensor cos = cos_in.unsqueeze(1);
  at::Tensor sin = sin_in.unsqueeze(1);
  at::Tensor q_embed = (q * cos) + (RotateHalf(q) * sin);
  at::Tensor k_embed = (k * cos) + (RotateHalf(k) * sin);
  return {q_embed, k_embed};
}

// ---- block: EagerAttentionForward ----
// Llama's eager attention plus tanh softcapping of the scores before the mask.
std::pair<at::Tensor, at::Tensor> EagerAttentionForward(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const std::optional<at::Tensor>& attention_mask,
                                                        const AttentionArguments& arguments) {
  at::Tensor key_states = RepeatKeyValue(key, arguments.num_key_value_groups);
  at::Tensor value_states = RepeatKeyValue(value, arguments.num_key_value_groups);
  at::Tensor attn_weights = at::matmul(query, key_states.transpose(2, 3)) * arguments.scaling;
  if (arguments.softcap.has_value()) {
    attn_weights = attn_weights / *arguments.softcap;
    attn_weights = at::tanh(attn_weights);
    attn_weights = attn_weights * *arguments.softcap;
  }
  if (attention_mask.has_value()) attn_weights = attn_weights + *attention_mask;
  attn_weights = at::softmax(attn_weights, -1, at::kFloat).to(query.scalar_type());
  at::Tensor attn_output = at::matmul(attn_weights, value_states).transpose(1, 2).contiguous();
  return {attn_output, attn_weights};
}

// ---- block: Gemma2Attention ----
class Gemma2AttentionImpl : public torch::nn::Module {
 public:
  Gemma2AttentionImpl(std::shared_ptr<Gemma2Config> config, int64_t layer_idx)
      : config_(std::move(config)), layer_idx_(layer_idx) {
    const Gemma2Config& c = *config_;
    head_dim = c.head_dim;
    num_key_value_groups = c.num_attention_heads / c.num_key_value_heads;
    scaling = std::pow(c.query_pre_attn_scalar, -0.5);
    if (c.layer_types[layer_idx] == "sliding_attention") sliding_window = c.sliding_window;
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
    std::tie(query_states, key_states) = ApplyRotaryPosEmb(query_states, key_states, cos, sin);

    if (past_key_values != nullptr) {
      std::tie(key_states, value_states) = past_key_values->Update(key_states, value_states, layer_idx_);
    }

    AttentionFunction attention_interface = GetAttentionFunction(config_->attn_implementation, EagerAttentionForward);
    AttentionArguments arguments;
    arguments.scaling = scaling;
    arguments.num_key_value_groups = num_key_value_groups;
    arguments.output_attentions = output_attentions;
    arguments.sliding_window = sliding_window;
    arguments.softcap = config_->attn_logit_softcapping;
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
  std::optional<int64_t> sliding_window;

 private:
  std::shared_ptr<Gemma2Config> config_;
  int64_t layer_idx_;
};

// ---- block: Gemma2DecoderLayer ----
class Gemma2DecoderLayerImpl : public torch::nn::Module {
 public:
  Gemma2DecoderLayerImpl(std::shared_ptr<Gemma2Config> config, int64_t layer_idx) {
    const int64_t hidden_size = config->hidden_size;
    const double eps = config->rms_norm_eps;
    self_attn = register_module("self_attn", std::make_shared<Gemma2AttentionImpl>(config, layer_idx));
    mlp = register_module("mlp", std::make_shared<Gemma2MLPImpl>(*config));
    input_layernorm = register_module("input_layernorm", std::make_shared<Gemma2RMSNormImpl>(hidden_size, eps));
    post_attention_layernorm =
        register_module("post_attention_layernorm", std::make_shared<Gemma2RMSNormImpl>(hidden_size, eps));
    pre_feedforward_layernorm =
        register_module("pre_feedforward_layernorm", std::make_shared<Gemma2RMSNormImpl>(hidden_size, eps));
    post_feedforward_layernorm =
        register_module("post_feedforward_layernorm", std::make_shared<Gemma2RMSNormImpl>(hidden_size, eps));
  }

  at::Tensor forward(const at::Tensor& hidden_states_in, const std::optional<at::Tensor>& attention_mask,
                     const std::pair<at::Tensor, at::Tensor>& position_embeddings, KVCache* past_key_values,
                     bool output_attentions, at::Tensor* attn_weights) {
    DebugScope debug(this, {{"hidden_states", hidden_states_in}});
    at::Tensor residual = hidden_states_in;
    at::Tensor hidden_states = input_layernorm->forward(hidden_states_in);
    auto [attn_output, weights] =
        self_attn->forward(hidden_states, position_embeddings, attention_mask, past_key_values, output_attentions);
    if (attn_weights != nullptr) *attn_weights = weights;
    hidden_states = post_attention_layernorm->forward(attn_output);
    hidden_states = residual + hidden_states;

    residual = hidden_states;
    hidden_states = pre_feedforward_layernorm->forward(hidden_states);
    hidden_states = mlp->forward(hidden_states);
    hidden_states = post_feedforward_layernorm->forward(hidden_states);
    hidden_states = residual + hidden_states;
    return debug.Output(hidden_states);
  }

  std::shared_ptr<Gemma2AttentionImpl> self_attn;
  std::shared_ptr<Gemma2MLPImpl> mlp;
  std::shared_ptr<Gemma2RMSNormImpl> input_layernorm;
  std::shared_ptr<Gemma2RMSNormImpl> post_attention_layernorm;
  std::shared_ptr<Gemma2RMSNormImpl> pre_feedforward_layernorm;
  std::shared_ptr<Gemma2RMSNormImpl> post_feedforward_layernorm;
};

// ---- block: Gemma2TextScaledWordEmbedding ----
// An embedding multiplied by sqrt(hidden_size), the scale cast to the weight's dtype first (so
// bfloat16 models multiply by the bfloat16-rounded scale, as transformers does).
class Gemma2TextScaledWordEmbeddingImpl : public EmbeddingImpl {
 public:
  Gemma2TextScaledWordEmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim, double embed_scale)
      : EmbeddingImpl(num_embeddings, embedding_dim), embed_scale(embed_scale) {}

  at::Tensor forward(const at::Tensor& input_ids) {
    at::Tensor scale = at::scalar_tensor(embed_scale, at::TensorOptions().dtype(at::kFloat)).to(weight.scalar_type());
    return EmbeddingImpl::forward(input_ids) * scale.to(weight.device());
  }

  double embed_scale;
};

// ---- block: Gemma2Model ----
// The bare decoder: scaled embeddings, layers, final norm. Also loadable on its own ("Gemma2Model").
class Gemma2Model : public PreTrainedModel {
 public:
  explicit Gemma2Model(std::shared_ptr<Gemma2Config> config) : config_(std::move(config)) {
    embed_tokens = register_module(
        "embed_tokens", std::make_shared<Gemma2TextScaledWordEmbeddingImpl>(
                            config_->vocab_size, config_->hidden_size, std::sqrt(static_cast<double>(config_->hidden_size))));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t layer_idx = 0; layer_idx < config_->num_hidden_layers; ++layer_idx) {
      decoder_layers.push_back(std::make_shared<Gemma2DecoderLayerImpl>(config_, layer_idx));
      layers->push_back(decoder_layers.back());
    }
    norm = register_module("norm", std::make_shared<Gemma2RMSNormImpl>(config_->hidden_size, config_->rms_norm_eps));
    rotary_emb = register_module("rotary_emb", std::make_shared<Gemma2RotaryEmbeddingImpl>(config_));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    TORCH_CHECK(inputs.input_ids.dim() == 2, "Gemma2Model: input_ids must be [batch, length], got ",
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
    // One mask per layer type; sliding layers see only the last sliding_window positions.
    std::map<std::string, std::optional<at::Tensor>> causal_mask_mapping;
    causal_mask_mapping["full_attention"] = CreateCausalMask(mask_arguments);
    mask_arguments.sliding_window = config_->sliding_window;
    causal_mask_mapping["sliding_attention"] = CreateCausalMask(mask_arguments);

    at::Tensor hidden_states = inputs_embeds;
    auto position_embeddings = rotary_emb->forward(hidden_states, position_ids);

    ModelOutput output;
    for (size_t layer_idx = 0; layer_idx < decoder_layers.size(); ++layer_idx) {
      if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
      at::Tensor attn_weights;
      hidden_states = decoder_layers[layer_idx]->forward(
          hidden_states, causal_mask_mapping[config_->layer_types[layer_idx]], position_embeddings,
          inputs.past_key_values, inputs.output_attentions, &attn_weights);
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

  std::shared_ptr<Gemma2TextScaledWordEmbeddingImpl> embed_tokens;
  torch::nn::ModuleList layers{nullptr};
  std::vector<std::shared_ptr<Gemma2DecoderLayerImpl>> decoder_layers;
  std::shared_ptr<Gemma2RMSNormImpl> norm;
  std::shared_ptr<Gemma2RotaryEmbeddingImpl> rotary_emb;

 private:
  std::shared_ptr<Gemma2Config> config_;
};

// ---- block: Gemma2ForCausalLM ----
class Gemma2ForCausalLM : public PreTrainedModel {
 public:
  explicit Gemma2ForCausalLM(std::shared_ptr<Gemma2Config> config) : config_(std::move(config)) {
    model = register_module("model", std::make_shared<Gemma2Model>(config_));
    lm_head = register_module("lm_head", Linear(config_->hidden_size, config_->vocab_size, /*bias=*/false));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    ModelOutput output = model->Forward(inputs);
    at::Tensor hidden_states = HiddenStatesForLogits(output.last_hidden_state, inputs);
    at::Tensor logits = lm_head->forward(hidden_states);
    if (config_->final_logit_softcapping.has_value()) {
      logits = logits / *config_->final_logit_softcapping;
      logits = at::tanh(logits);
      logits = logits * *config_->final_logit_softcapping;
    }
    output.logits = debug.Output(logits, "logits");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  TensorParallelPlan BaseModelTensorParallelPlan() const override { return model->BaseModelTensorParallelPlan(); }
  std::map<std::string, std::string> TiedWeights() const override {
    return {{"lm_head.weight", "model.embed_tokens.weight"}};
  }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = Gemma2Config::FromJson(json);
    if (!config.ok()) return config.status();
    return std::make_shared<Gemma2ForCausalLM>(*config);
  }

  std::shared_ptr<Gemma2Model> model;
  Linear lm_head{nullptr};

 private:
  std::shared_ptr<Gemma2Config> config_;
};

// ---- block: Registration ----
absl::StatusOr<std::shared_ptr<PreTrainedModel>> Gemma2ModelFromConfig(const nlohmann::json& json) {
  auto config = Gemma2Config::FromJson(json);
  if (!config.ok()) return config.status();
  return std::make_shared<Gemma2Model>(*config);
}

FLOTILLA_REGISTER_MODEL("gemma2", "Gemma2ForCausalLM", Gemma2ForCausalLM::FromConfig);
FLOTILLA_REGISTER_MODEL("gemma2", "Gemma2Model", Gemma2ModelFromConfig);

}  // namespace flotilla::models::gemma2
