// Modular shard for Gemma 3 text (Gemma3ForCausalLM, model_type "gemma3_text"): Gemma 2 with an
// RMSNorm on each head's queries and keys (q_norm, k_norm), one rotary embedding per layer type
// (full_attention: rope_theta 1e6 and any scaling; sliding_attention: the local base 1e4), five
// sliding layers per full one by default, no softcapping by default (so sdpa works), and Gemma
// 3's config defaults. Compare transformers' models/gemma3/modular_gemma3.py.

//! parent: gemma2
//! rename: Gemma2Model -> Gemma3TextModel
//! rename: Gemma2 -> Gemma3
//! rename: gemma2 -> gemma3

//! header
// Gemma 3 text (model_type "gemma3_text", Gemma3ForCausalLM: gemma-3-1b and the text towers of
// the larger Gemma 3 checkpoints once extracted), read top to bottom as transformers'
// models/gemma3/modeling_gemma3.py: config, RMSNorm ((1 + weight), in float32), MLP
// (gelu_pytorch_tanh), rotary embedding per layer type, eager attention (optional softcapping),
// attention (q/k norm, query_pre_attn_scalar, sliding window on "sliding_attention" layers),
// decoder layer (norms before and after attention and feed-forward), scaled embedding, model,
// causal-LM head (optional final logit softcapping), registration.
//
// Submodules carry the checkpoint's names (model.layers.0.self_attn.q_norm.weight), so loading
// needs no renaming table. Infrastructure lives in models/*.h; model behaviour lives here.

//! end

//! replace block Gemma3Config
// configuration_gemma3.py (Gemma3TextConfig): field names and defaults as transformers has them.
struct Gemma3Config : PretrainedConfig {
  int64_t vocab_size = 262208;
  int64_t hidden_size = 2304;
  int64_t intermediate_size = 9216;
  int64_t num_hidden_layers = 26;
  int64_t num_attention_heads = 8;
  int64_t num_key_value_heads = 4;
  int64_t head_dim = 256;
  std::string hidden_activation = "gelu_pytorch_tanh";
  int64_t max_position_embeddings = 131072;
  double rms_norm_eps = 1e-6;
  bool attention_bias = false;
  double attention_dropout = 0.0;
  double query_pre_attn_scalar = 256;
  std::optional<int64_t> sliding_window = 4096;
  std::vector<std::string> layer_types;  // default: 5 sliding then 1 full (sliding_window_pattern 6)
  std::optional<double> final_logit_softcapping;
  std::optional<double> attn_logit_softcapping;
  // One set of rotary parameters per layer type ("full_attention", "sliding_attention").
  std::map<std::string, RopeParameters> rope_parameters;

  static absl::StatusOr<std::shared_ptr<Gemma3Config>> FromJson(const nlohmann::json& json) {
    auto config = std::make_shared<Gemma3Config>();
    ConfigReader reader(json, "config.json");
    config->tie_word_embeddings = true;
    reader.Common(*config);
    if (!json.contains("pad_token_id")) config->pad_token_id = 0;
    if (!json.contains("eos_token_id")) config->eos_token_id = {1};
    if (!json.contains("bos_token_id")) config->bos_token_id = 2;
    config->vocab_size = reader.Int("vocab_size", 262208);
    config->hidden_size = reader.Int("hidden_size", 2304);
    config->intermediate_size = reader.Int("intermediate_size", 9216);
    config->num_hidden_layers = reader.Int("num_hidden_layers", 26);
    config->num_attention_heads = reader.Int("num_attention_heads", 8);
    config->num_key_value_heads = reader.Int("num_key_value_heads", 4);
    config->head_dim = reader.Int("head_dim", 256);
    config->hidden_activation = reader.String("hidden_activation", "gelu_pytorch_tanh");
    config->max_position_embeddings = reader.Int("max_position_embeddings", 131072);
    config->rms_norm_eps = reader.Double("rms_norm_eps", 1e-6);
    config->attention_bias = reader.Bool("attention_bias", false);
    config->attention_dropout = reader.Double("attention_dropout", 0.0);
    config->query_pre_attn_scalar = reader.Double("query_pre_attn_scalar", 256);
    // A key present as null disables the feature; an absent key takes transformers' default.
    config->sliding_window = json.contains("sliding_window") ? reader.OptionalInt("sliding_window") : 4096;
    config->final_logit_softcapping = reader.OptionalDouble("final_logit_softcapping");
    config->attn_logit_softcapping = reader.OptionalDouble("attn_logit_softcapping");
    const int64_t sliding_window_pattern = reader.Int("sliding_window_pattern", 6);
    config->layer_types = reader.Strings("layer_types");
    if (config->layer_types.empty()) {
      for (int64_t i = 0; i < config->num_hidden_layers; ++i) {
        config->layer_types.push_back((i + 1) % sliding_window_pattern ? "sliding_attention" : "full_attention");
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
    // Gemma3TextConfig.convert_rope_params_to_dict: rope_parameters nested by layer type, or the
    // legacy rope_theta (global, default 1e6) + rope_scaling (full layers) + rope_local_base_freq
    // (sliding layers, default 1e4).
    nlohmann::json nested = reader.Raw("rope_parameters");
    const nlohmann::json rope_scaling = reader.Raw("rope_scaling");
    const nlohmann::json rope_theta = reader.Raw("rope_theta");
    const nlohmann::json rope_local_base_freq = reader.Raw("rope_local_base_freq");
    if (!nested.is_object() || !(nested.contains("full_attention") || nested.contains("sliding_attention"))) {
      nlohmann::json full = rope_scaling.is_object() ? rope_scaling
                            : nested.is_object()     ? nested
                                                     : nlohmann::json::object();
      nested = {{"full_attention", full}, {"sliding_attention", nlohmann::json::object()}};
    }
    const std::map<std::string, std::pair<nlohmann::json, double>> defaults = {
        {"full_attention", {rope_theta, 1000000.0}}, {"sliding_attention", {rope_local_base_freq, 10000.0}}};
    for (const auto& [layer_type, fallback] : defaults) {
      nlohmann::json parameters = nested.contains(layer_type) && nested[layer_type].is_object()
                                      ? nested[layer_type] : nlohmann::json::object();
      if (!parameters.contains("rope_type") && !parameters.contains("type")) parameters["rope_type"] = "default";
      if (!parameters.contains("rope_theta")) {
        parameters["rope_theta"] = fallback.first.is_number() ? fallback.first.get<double>() : fallback.second;
      }
      nlohmann::json sub_json = {{"rope_parameters", parameters}};
      ConfigReader sub_reader(sub_json, absl::StrCat("config.json rope_parameters.", layer_type));
      config->rope_parameters[layer_type] =
          ParseRopeParameters(sub_reader, fallback.second, config->max_position_embeddings);
      PretrainedConfig scratch;
      absl::Status sub_status = sub_reader.Finish(scratch);
      if (!sub_status.ok()) reader.Fail(std::string(sub_status.message()));
    }
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

//! end

//! replace block Gemma3RotaryEmbedding
// One set of frequencies (and dynamic-update state) per layer type.
class Gemma3RotaryEmbeddingImpl : public torch::nn::Module {
 public:
  explicit Gemma3RotaryEmbeddingImpl(std::shared_ptr<Gemma3Config> config) : config_(std::move(config)) {
    for (const auto& [layer_type, parameters] : config_->rope_parameters) {
      LayerTypeState& state = states_[layer_type];
      state.frequencies = ComputeRopeFrequencies(parameters, config_->head_dim, config_->max_position_embeddings);
      state.dynamic.max_seq_len_cached = config_->max_position_embeddings;
      state.dynamic.original_max_seq_len = config_->max_position_embeddings;
      state.dynamic.original = state.frequencies;
    }
  }

  // Returns (cos, sin) for `layer_type`, each [batch, length, head_dim], computed in float32 and
  // cast to x's dtype.
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& position_ids,
                                            const std::string& layer_type) {
    DebugScope debug(this, {{"position_ids", position_ids}});
    LayerTypeState& state = states_.at(layer_type);
    DynamicRopeUpdate(config_->rope_parameters.at(layer_type), config_->head_dim, config_->max_position_embeddings,
                      position_ids, state.dynamic, state.frequencies);
    at::Tensor inv_freq = state.frequencies.inv_freq.to(x.device());
    at::Tensor freqs = position_ids.unsqueeze(-1).to(at::kFloat) * inv_freq;
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    at::Tensor cos = emb.cos() * state.frequencies.attention_scaling;
    at::Tensor sin = emb.sin() * state.frequencies.attention_scaling;
    debug.Outputs({{"cos", cos}, {"sin", sin}});
    return {cos.to(x.scalar_type()), sin.to(x.scalar_type())};
  }

 private:
  struct LayerTypeState {
    RopeFrequencies frequencies;
    DynamicRopeState dynamic;
  };
  std::shared_ptr<Gemma3Config> config_;
  std::map<std::string, LayerTypeState> states_;
};

//! end

//! edit block Gemma3Attention
//! find
    o_proj = register_module("o_proj", Linear(c.num_attention_heads * head_dim, c.hidden_size, c.attention_bias));
//! with
    o_proj = register_module("o_proj", Linear(c.num_attention_heads * head_dim, c.hidden_size, c.attention_bias));
    q_norm = register_module("q_norm", std::make_shared<Gemma3RMSNormImpl>(head_dim, c.rms_norm_eps));
    k_norm = register_module("k_norm", std::make_shared<Gemma3RMSNormImpl>(head_dim, c.rms_norm_eps));
//! find
    const auto& [cos, sin] = position_embeddings;
//! with
    query_states = q_norm->forward(query_states);
    key_states = k_norm->forward(key_states);

    const auto& [cos, sin] = position_embeddings;
//! find
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
//! with
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  std::shared_ptr<Gemma3RMSNormImpl> q_norm, k_norm;
//! end

//! edit block Gemma3TextModel
//! find
    auto position_embeddings = rotary_emb->forward(hidden_states, position_ids);
//! with
    // Each layer type rotates with its own base (global vs local).
    std::map<std::string, std::pair<at::Tensor, at::Tensor>> position_embeddings;
    for (const auto& layer_type : config_->layer_types) {
      if (!position_embeddings.count(layer_type)) {
        position_embeddings[layer_type] = rotary_emb->forward(hidden_states, position_ids, layer_type);
      }
    }
//! find
          hidden_states, causal_mask_mapping[config_->layer_types[layer_idx]], position_embeddings,
//! with
          hidden_states, causal_mask_mapping[config_->layer_types[layer_idx]],
          position_embeddings[config_->layer_types[layer_idx]],
//! end

//! replace block Registration
absl::StatusOr<std::shared_ptr<PreTrainedModel>> Gemma3TextModelFromConfig(const nlohmann::json& json) {
  auto config = Gemma3Config::FromJson(json);
  if (!config.ok()) return config.status();
  return std::make_shared<Gemma3TextModel>(*config);
}

FLOTILLA_REGISTER_MODEL("gemma3_text", "Gemma3ForCausalLM", Gemma3ForCausalLM::FromConfig);
FLOTILLA_REGISTER_MODEL("gemma3_text", "Gemma3TextModel", Gemma3TextModelFromConfig);

}  // namespace flotilla::models::gemma3
//! end
