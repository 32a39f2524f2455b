// Modular shard for Qwen2: Llama with biases on q/k/v (none on o_proj or the MLP), Qwen2's config
// defaults, and optional sliding-window layers (use_sliding_window, max_window_layers,
// layer_types). tools/modular/modular.py expands it into modeling_qwen2.cpp; compare
// transformers' models/qwen2/modular_qwen2.py.

//! parent: llama
//! rename: Llama -> Qwen2
//! rename: llama -> qwen2

//! header
// Qwen2 (model_type "qwen2": Qwen2, Qwen2.5), read top to bottom as transformers'
// models/qwen2/modeling_qwen2.py: config, RMSNorm, rotary embedding, MLP, eager attention,
// attention (q/k/v biases, sliding window per layer type), decoder layer, model, causal-LM head.
//
// Submodules carry the checkpoint's names (model.layers.0.self_attn.q_proj.bias), so loading needs
// no renaming table. Infrastructure lives in models/*.h; model behaviour lives here.

//! end

//! replace block Qwen2Config
// configuration_qwen2.py: field names and defaults as transformers has them.
struct Qwen2Config : PretrainedConfig {
  int64_t vocab_size = 151936;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 22016;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 32768;
  double rms_norm_eps = 1e-6;
  double attention_dropout = 0.0;
  bool use_sliding_window = false;
  std::optional<int64_t> sliding_window = 4096;  // None unless use_sliding_window
  int64_t max_window_layers = 28;
  std::vector<std::string> layer_types;  // "full_attention" / "sliding_attention" per layer
  int64_t head_dim = 128;  // hidden_size / num_attention_heads
  RopeParameters rope_parameters;

  static absl::StatusOr<std::shared_ptr<Qwen2Config>> FromJson(const nlohmann::json& json) {
    auto config = std::make_shared<Qwen2Config>();
    ConfigReader reader(json, "config.json");
    reader.Common(*config);
    config->vocab_size = reader.Int("vocab_size", 151936);
    config->hidden_size = reader.Int("hidden_size", 4096);
    config->intermediate_size = reader.Int("intermediate_size", 22016);
    config->num_hidden_layers = reader.Int("num_hidden_layers", 32);
    config->num_attention_heads = reader.Int("num_attention_heads", 32);
    config->num_key_value_heads = reader.Int("num_key_value_heads", 32);
    config->hidden_act = reader.String("hidden_act", "silu");
    config->max_position_embeddings = reader.Int("max_position_embeddings", 32768);
    config->rms_norm_eps = reader.Double("rms_norm_eps", 1e-6);
    config->attention_dropout = reader.Double("attention_dropout", 0.0);
    config->use_sliding_window = reader.Bool("use_sliding_window", false);
    config->sliding_window = reader.OptionalInt("sliding_window", 4096);
    if (!config->use_sliding_window) config->sliding_window.reset();
    config->max_window_layers = reader.Int("max_window_layers", 28);
    config->layer_types = reader.Strings("layer_types");
    if (config->layer_types.empty()) {
      for (int64_t i = 0; i < config->num_hidden_layers; ++i) {
        config->layer_types.push_back(config->sliding_window.has_value() && i >= config->max_window_layers
                                          ? "sliding_attention" : "full_attention");
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
    if (config->num_attention_heads <= 0 || config->hidden_size % config->num_attention_heads != 0) {
      reader.Fail(absl::StrCat("hidden_size (", config->hidden_size, ") must be a multiple of num_attention_heads (",
                               config->num_attention_heads, ")"));
    } else if (config->num_key_value_heads <= 0 || config->num_attention_heads % config->num_key_value_heads != 0) {
      reader.Fail(absl::StrCat("num_attention_heads (", config->num_attention_heads,
                               ") must be a multiple of num_key_value_heads (", config->num_key_value_heads, ")"));
    }
    config->head_dim = config->num_attention_heads > 0 ? config->hidden_size / config->num_attention_heads : 0;
    config->rope_parameters = ParseRopeParameters(reader, /*default_theta=*/10000.0, config->max_position_embeddings);
    if (config->hidden_act != "silu") reader.Fail(absl::StrCat("hidden_act: only silu is supported, got ", config->hidden_act));
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    return config;
  }
};

//! end

//! edit block Qwen2MLP
//! find
    gate_proj = register_module("gate_proj", Linear(config.hidden_size, config.intermediate_size, config.mlp_bias));
    up_proj = register_module("up_proj", Linear(config.hidden_size, config.intermediate_size, config.mlp_bias));
    down_proj = register_module("down_proj", Linear(config.intermediate_size, config.hidden_size, config.mlp_bias));
//! with
    gate_proj = register_module("gate_proj", Linear(config.hidden_size, config.intermediate_size, /*bias=*/false));
    up_proj = register_module("up_proj", Linear(config.hidden_size, config.intermediate_size, /*bias=*/false));
    down_proj = register_module("down_proj", Linear(config.intermediate_size, config.hidden_size, /*bias=*/false));
//! end

//! edit block Qwen2Attention
//! find
    q_proj = register_module("q_proj", Linear(c.hidden_size, c.num_attention_heads * head_dim, c.attention_bias));
    k_proj = register_module("k_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, c.attention_bias));
    v_proj = register_module("v_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, c.attention_bias));
    o_proj = register_module("o_proj", Linear(c.num_attention_heads * head_dim, c.hidden_size, c.attention_bias));
//! with
    q_proj = register_module("q_proj", Linear(c.hidden_size, c.num_attention_heads * head_dim, /*bias=*/true));
    k_proj = register_module("k_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, /*bias=*/true));
    v_proj = register_module("v_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, /*bias=*/true));
    o_proj = register_module("o_proj", Linear(c.num_attention_heads * head_dim, c.hidden_size, /*bias=*/false));
    if (c.layer_types[layer_idx] == "sliding_attention") sliding_window = c.sliding_window;
//! find
    arguments.output_attentions = output_attentions;
//! with
    arguments.output_attentions = output_attentions;
    arguments.sliding_window = sliding_window;  // main diff with Llama
//! find
  double scaling;
//! with
  double scaling;
  std::optional<int64_t> sliding_window;
//! end

//! edit block Qwen2Model
//! find
    std::optional<at::Tensor> causal_mask = CreateCausalMask(mask_arguments);
//! with
    // One mask per layer type; sliding layers see only the last sliding_window positions.
    std::map<std::string, std::optional<at::Tensor>> causal_mask_mapping;
    causal_mask_mapping["full_attention"] = CreateCausalMask(mask_arguments);
    if (has_sliding_layers) {
      mask_arguments.sliding_window = config_->sliding_window;
      causal_mask_mapping["sliding_attention"] = CreateCausalMask(mask_arguments);
    }
//! find
    for (auto& decoder_layer : decoder_layers) {
      if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
      at::Tensor attn_weights;
      hidden_states = decoder_layer->forward(hidden_states, causal_mask, position_embeddings, inputs.past_key_values,
                                             inputs.output_attentions, &attn_weights);
//! with
    for (size_t layer_idx = 0; layer_idx < decoder_layers.size(); ++layer_idx) {
      if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
      at::Tensor attn_weights;
      hidden_states = decoder_layers[layer_idx]->forward(
          hidden_states, causal_mask_mapping[config_->layer_types[layer_idx]], position_embeddings,
          inputs.past_key_values, inputs.output_attentions, &attn_weights);
//! find
    rotary_emb = register_module("rotary_emb", std::make_shared<Qwen2RotaryEmbeddingImpl>(config_));
//! with
    rotary_emb = register_module("rotary_emb", std::make_shared<Qwen2RotaryEmbeddingImpl>(config_));
    for (const auto& layer_type : config_->layer_types) has_sliding_layers |= layer_type == "sliding_attention";
//! find
  std::shared_ptr<Qwen2RotaryEmbeddingImpl> rotary_emb;
//! with
  std::shared_ptr<Qwen2RotaryEmbeddingImpl> rotary_emb;
  bool has_sliding_layers = false;
//! end
