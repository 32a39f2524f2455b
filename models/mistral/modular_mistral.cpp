// Modular shard for Mistral: Llama with a sliding window on every layer (config.sliding_window,
// default 4096; null disables it), no biases, and Mistral's config defaults. Compare
// transformers' models/mistral/modular_mistral.py.

//! parent: llama
//! rename: Llama -> Mistral
//! rename: llama -> mistral

//! header
// Mistral (model_type "mistral"), read top to bottom as transformers'
// models/mistral/modeling_mistral.py: config, RMSNorm, rotary embedding, MLP, eager attention,
// attention (sliding window), decoder layer, model, causal-LM head.
//
// Submodules carry the checkpoint's names (model.layers.0.self_attn.q_proj.weight), so loading
// needs no renaming table. Infrastructure lives in models/*.h; model behaviour lives here.

//! end

//! edit block MistralConfig
//! find
// configuration_mistral.py: field names and defaults as transformers has them.
//! with
// configuration_mistral.py: field names and defaults as transformers has them (Mistral has no
// attention_bias / mlp_bias keys: both stay false).
//! find
  int64_t intermediate_size = 11008;
//! with
  int64_t intermediate_size = 14336;
//! find
  int64_t num_key_value_heads = 32;  // default: num_attention_heads
//! with
  int64_t num_key_value_heads = 8;
//! find
  int64_t max_position_embeddings = 2048;
//! with
  int64_t max_position_embeddings = 4096 * 32;
  std::optional<int64_t> sliding_window = 4096;
//! find
    config->intermediate_size = reader.Int("intermediate_size", 11008);
//! with
    config->intermediate_size = reader.Int("intermediate_size", 14336);
//! find
    config->num_key_value_heads = reader.Int("num_key_value_heads", config->num_attention_heads);
//! with
    config->num_key_value_heads = reader.Int("num_key_value_heads", 8);
//! find
    config->max_position_embeddings = reader.Int("max_position_embeddings", 2048);
    config->rms_norm_eps = reader.Double("rms_norm_eps", 1e-6);
    config->attention_bias = reader.Bool("attention_bias", false);
    config->attention_dropout = reader.Double("attention_dropout", 0.0);
    config->mlp_bias = reader.Bool("mlp_bias", false);
//! with
    config->max_position_embeddings = reader.Int("max_position_embeddings", 4096 * 32);
    config->rms_norm_eps = reader.Double("rms_norm_eps", 1e-6);
    config->attention_dropout = reader.Double("attention_dropout", 0.0);
    config->sliding_window = reader.OptionalInt("sliding_window", 4096);
//! end

//! edit block MistralAttention
//! find
    arguments.output_attentions = output_attentions;
//! with
    arguments.output_attentions = output_attentions;
    arguments.sliding_window = config_->sliding_window;  // main diff with Llama
//! end

//! edit block MistralModel
//! find
    std::optional<at::Tensor> causal_mask = CreateCausalMask(mask_arguments);
//! with
    mask_arguments.sliding_window = config_->sliding_window;
    std::optional<at::Tensor> causal_mask = CreateCausalMask(mask_arguments);
//! end
