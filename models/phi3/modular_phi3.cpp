// Modular shard for Phi-3: Llama with fused projections (qkv_proj, gate_up_proj), partial rotary
// (partial_rotary_factor), longrope scaling (short/long factors switched at
// original_max_position_embeddings), an optional sliding window on every layer, and Phi-3's
// config defaults. Compare transformers' models/phi3/modular_phi3.py.

//! parent: llama
//! rename: Llama -> Phi3
//! rename: llama -> phi3

//! header
// Phi-3 (model_type "phi3": Phi-3 / Phi-3.5 / Phi-4-mini text models), read top to bottom as
// transformers' models/phi3/modeling_phi3.py: config, RMSNorm, rotary embedding (default or
// longrope), MLP (fused gate_up_proj), eager attention, attention (fused qkv_proj, partial rotary,
// optional sliding window), decoder layer, model, causal-LM head.
//
// Submodules carry the checkpoint's names (model.layers.0.self_attn.qkv_proj.weight), so loading
// needs no renaming table. Infrastructure lives in models/*.h; model behaviour lives here.
//
// Generation: as transformers' Phi3ForCausalLM.prepare_inputs_for_generation, the KV cache is
// dropped once, when the sequence first grows past original_max_position_embeddings (the cached
// keys were rotated with longrope's short factors; the whole sequence is recomputed with the long
// ones). See DropsCacheBeforeGenerationStep and GenerateGreedy (models/generation.cc).

//! end

//! replace block Phi3Config
// configuration_phi3.py: field names and defaults as transformers has them.
struct Phi3Config : PretrainedConfig {
  int64_t vocab_size = 32064;
  int64_t hidden_size = 3072;
  int64_t intermediate_size = 8192;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // default: num_attention_heads
  std::string hidden_act = "silu";
  int64_t max_position_embeddings = 4096;
  int64_t original_max_position_embeddings = 4096;
  double rms_norm_eps = 1e-5;
  double attention_dropout = 0.0;
  int64_t head_dim = 96;  // hidden_size / num_attention_heads unless config.json has head_dim
  std::optional<int64_t> sliding_window;
  RopeParameters rope_parameters;

  static absl::StatusOr<std::shared_ptr<Phi3Config>> FromJson(const nlohmann::json& json_in) {
    // Phi3Config.convert_rope_params_to_dict: the rope types "su" and "yarn" mean longrope here.
    nlohmann::json json = json_in;
    for (const char* key : {"rope_parameters", "rope_scaling"}) {
      if (!json.contains(key) || !json[key].is_object()) continue;
      for (const char* type_key : {"rope_type", "type"}) {
        auto& rope = json[key];
        if (rope.contains(type_key) && (rope[type_key] == "su" || rope[type_key] == "yarn")) rope[type_key] = "longrope";
      }
    }
    auto config = std::make_shared<Phi3Config>();
    ConfigReader reader(json, "config.json");
    reader.Common(*config);
    if (!json.contains("bos_token_id")) config->bos_token_id = 1;
    if (!json.contains("eos_token_id")) config->eos_token_id = {32000};
    if (!json.contains("pad_token_id")) config->pad_token_id = 32000;
    config->vocab_size = reader.Int("vocab_size", 32064);
    config->hidden_size = reader.Int("hidden_size", 3072);
    config->intermediate_size = reader.Int("intermediate_size", 8192);
    config->num_hidden_layers = reader.Int("num_hidden_layers", 32);
    config->num_attention_heads = reader.Int("num_attention_heads", 32);
    config->num_key_value_heads = reader.OptionalInt("num_key_value_heads").value_or(config->num_attention_heads);
    config->hidden_act = reader.String("hidden_act", "silu");
    config->max_position_embeddings = reader.Int("max_position_embeddings", 4096);
    config->original_max_position_embeddings = reader.Int("original_max_position_embeddings", 4096);
    config->rms_norm_eps = reader.Double("rms_norm_eps", 1e-5);
    config->attention_dropout = reader.Double("attention_dropout", 0.0);
    config->sliding_window = reader.OptionalInt("sliding_window");
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
    const std::string& rope_type = config->rope_parameters.rope_type;
    if (rope_type != "default" && rope_type != "longrope") {
      reader.Fail(absl::StrCat("key rope_parameters.rope_type: Phi-3 supports default and longrope, got ", rope_type));
    }
    // standardize_rope_params: Phi-3's top-level original_max_position_embeddings wins.
    if (rope_type == "longrope") {
      config->rope_parameters.original_max_position_embeddings = config->original_max_position_embeddings;
    }
    if (config->hidden_act != "silu") reader.Fail(absl::StrCat("hidden_act: only silu is supported, got ", config->hidden_act));
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    return config;
  }
};

//! end

//! replace block ApplyRotaryPosEmb
at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// cos/sin: [batch, length, rotary_dim]; only the first rotary_dim features of each head rotate
// (partial_rotary_factor < 1), the rest pass through.
std::pair<at::Tensor, at::Tensor> ApplyRotaryPosEmb(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos_in,
                                                    const at::Tensor& sin_in) {
  at::Tensor cos = cos_in.unsqueeze(1);
  at::Tensor sin = sin_in.unsqueeze(1);
  const int64_t rotary_dim = cos.size(-1);
  at::Tensor q_rot = q.narrow(-1, 0, rotary_dim);
  at::Tensor q_pass = q.narrow(-1, rotary_dim, q.size(-1) - rotary_dim);
  at::Tensor k_rot = k.narrow(-1, 0, rotary_dim);
  at::Tensor k_pass = k.narrow(-1, rotary_dim, k.size(-1) - rotary_dim);
  at::Tensor q_embed = at::cat({(q_rot * cos) + (RotateHalf(q_rot) * sin), q_pass}, -1);
  at::Tensor k_embed = at::cat({(k_rot * cos) + (RotateHalf(k_rot) * sin), k_pass}, -1);
  return {q_embed, k_embed};
}
// Replaceable by a "RotaryEmbedding" kernel (models/kernelize.h) when the rotary covers whole heads
// (partial_rotary_factor 1); a partial rotary keeps this eager function.
const UseKernelRotary ApplyRotaryPosEmbWithKernel{ApplyRotaryPosEmb};

//! end

//! replace block Phi3MLP
class Phi3MLPImpl : public torch::nn::Module {
 public:
  explicit Phi3MLPImpl(const Phi3Config& config) {
    gate_up_proj = register_module("gate_up_proj", Linear(config.hidden_size, 2 * config.intermediate_size, false));
    down_proj = register_module("down_proj", Linear(config.intermediate_size, config.hidden_size, false));
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    std::vector<at::Tensor> gate_up = gate_up_proj->forward(hidden_states).chunk(2, -1);
    at::Tensor up_states = gate_up[1] * at::silu(gate_up[0]);
    return debug.Output(down_proj->forward(up_states));
  }

  Linear gate_up_proj{nullptr}, down_proj{nullptr};
};
// Replaceable by a "SiluAndMul" kernel (models/kernelize.h): down_proj(kernel(gate, up)) over the
// two halves of gate_up_proj.
using Phi3MLP = UseKernelForward<Phi3MLPImpl, KernelLayer::kSiluAndMul>;

//! end

//! edit block Phi3Attention
//! find
    q_proj = register_module("q_proj", Linear(c.hidden_size, c.num_attention_heads * head_dim, c.attention_bias));
    k_proj = register_module("k_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, c.attention_bias));
    v_proj = register_module("v_proj", Linear(c.hidden_size, c.num_key_value_heads * head_dim, c.attention_bias));
    o_proj = register_module("o_proj", Linear(c.num_attention_heads * head_dim, c.hidden_size, c.attention_bias));
//! with
    query_size = c.num_attention_heads * head_dim;
    key_value_size = c.num_key_value_heads * head_dim;
    o_proj = register_module("o_proj", Linear(c.num_attention_heads * head_dim, c.hidden_size, /*bias=*/false));
    qkv_proj = register_module("qkv_proj", Linear(c.hidden_size, query_size + 2 * key_value_size, /*bias=*/false));
//! find
    at::Tensor query_states = q_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor key_states = k_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor value_states = v_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
//! with
    at::Tensor qkv = qkv_proj->forward(hidden_states);
    at::Tensor query_states = qkv.narrow(-1, 0, query_size).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor key_states =
        qkv.narrow(-1, query_size, key_value_size).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor value_states =
        qkv.narrow(-1, query_size + key_value_size, key_value_size).view({batch, length, -1, head_dim}).transpose(1, 2);
//! find
    arguments.output_attentions = output_attentions;
//! with
    arguments.output_attentions = output_attentions;
    arguments.sliding_window = config_->sliding_window;
//! find
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
//! with
  Linear o_proj{nullptr}, qkv_proj{nullptr};
  int64_t query_size;
  int64_t key_value_size;
//! end

//! edit block Phi3Model
//! find
    std::optional<at::Tensor> causal_mask = CreateCausalMask(mask_arguments);
//! with
    mask_arguments.sliding_window = config_->sliding_window;
    std::optional<at::Tensor> causal_mask = CreateCausalMask(mask_arguments);
//! find
    plan.Add("layers.*.self_attn.q_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.self_attn.k_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.self_attn.v_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.self_attn.o_proj", ParallelStyle::kRowwise);
    plan.Add("layers.*.mlp.gate_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.mlp.up_proj", ParallelStyle::kColwise);
    plan.Add("layers.*.mlp.down_proj", ParallelStyle::kRowwise);
//! with
    // configuration_phi3.py's base_model_tp_plan: the fused outputs are gathered (their slicing and
    // chunk need every column), the following projections take their slice of the replicated input.
    // Attention runs whole on every rank, so each rank caches every key/value head.
    plan.Add("layers.*.self_attn.qkv_proj", ParallelStyle::kColwiseGatherOutput);
    plan.Add("layers.*.self_attn.o_proj", ParallelStyle::kRowwiseSplitInput);
    plan.Add("layers.*.mlp.gate_up_proj", ParallelStyle::kColwiseGatherOutput);
    plan.Add("layers.*.mlp.down_proj", ParallelStyle::kRowwiseSplitInput);
//! end

//! edit block Phi3ForCausalLM
//! find
  TensorParallelPlan BaseModelTensorParallelPlan() const override { return model->BaseModelTensorParallelPlan(); }
//! with
  TensorParallelPlan BaseModelTensorParallelPlan() const override { return model->BaseModelTensorParallelPlan(); }
  // prepare_inputs_for_generation's override: the first time the sequence reaches
  // original_max_position_embeddings + 1 tokens while the cache holds at most that many, the cache
  // is dropped and the whole sequence recomputed (the rotary switches to the long factors there).
  // As transformers, the check does not look at the rope type. A paged serving step
  // (paged_attention.h) cannot honour this per sequence: the packed row's positions pick one set of
  // longrope factors for the whole batch, and no per-sequence recompute happens there.
  bool DropsCacheBeforeGenerationStep(int64_t sequence_length, int64_t past_length) const override {
    return sequence_length >= config_->original_max_position_embeddings + 1 &&
           past_length <= config_->original_max_position_embeddings;
  }
//! end
