// Modular shard for Qwen3: Qwen2 with an RMSNorm on each head's queries and keys (q_norm, k_norm,
// over head_dim, before the rotary embedding), an explicit head_dim (default 128) and
// attention_bias (default false) in the config. Compare transformers' models/qwen3/modular_qwen3.py.

//! parent: qwen2
//! rename: Qwen2 -> Qwen3
//! rename: qwen2 -> qwen3

//! header
// Qwen3 (model_type "qwen3"), read top to bottom as transformers' models/qwen3/modeling_qwen3.py:
// config, RMSNorm, rotary embedding, MLP, eager attention, attention (per-head q/k RMSNorm,
// sliding window per layer type), decoder layer, model, causal-LM head.
//
// Submodules carry the checkpoint's names (model.layers.0.self_attn.q_norm.weight), so loading
// needs no renaming table. Infrastructure lives in models/*.h; model behaviour lives here.

//! end

//! edit block Qwen3Config
//! find
  int64_t head_dim = 128;  // hidden_size / num_attention_heads
//! with
  int64_t head_dim = 128;
  bool attention_bias = false;
//! find
    config->head_dim = config->num_attention_heads > 0 ? config->hidden_size / config->num_attention_heads : 0;
//! with
    config->head_dim = reader.Int("head_dim", 128);
    config->attention_bias = reader.Bool("attention_bias", false);
//! end

//! edit block Qwen3Attention
//! find
    q_proj = register_module("q_proj", Linear(c.hidden_size, c.num_attention_heads * head_dim, /*bias=*/true));
    k_proj = register_module("k_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, /*bias=*/true));
    v_proj = register_module("v_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, /*bias=*/true));
    o_proj = register_module("o_proj", Linear(c.num_attention_heads * head_dim, c.hidden_size, /*bias=*/false));
//! with
    q_proj = register_module("q_proj", Linear(c.hidden_size, c.num_attention_heads * head_dim, c.attention_bias));
    k_proj = register_module("k_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, c.attention_bias));
    v_proj = register_module("v_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, c.attention_bias));
    o_proj = register_module("o_proj", Linear(c.num_attention_heads * head_dim, c.hidden_size, c.attention_bias));
    // Unlike OLMo, only over head_dim, so no reshape is needed after the norm.
    q_norm = register_module("q_norm", std::make_shared<Qwen3RMSNormImpl>(head_dim, c.rms_norm_eps));
    k_norm = register_module("k_norm", std::make_shared<Qwen3RMSNormImpl>(head_dim, c.rms_norm_eps));
//! find
    at::Tensor query_states = q_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor key_states = k_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
//! with
    at::Tensor query_states =
        q_norm->forward(q_proj->forward(hidden_states).view({batch, length, -1, head_dim})).transpose(1, 2);
    at::Tensor key_states =
        k_norm->forward(k_proj->forward(hidden_states).view({batch, length, -1, head_dim})).transpose(1, 2);
//! find
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
//! with
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  std::shared_ptr<Qwen3RMSNormImpl> q_norm, k_norm;
//! end
