// CLIP (model_type "clip", "clip_text_model", "clip_vision_model": openai/clip-vit-*), read top to
// bottom as transformers' models/clip/modeling_clip.py: configs, vision embeddings (class
// embedding, conv patches, learned positions), text embeddings, eager attention, attention, MLP
// (quick_gelu), encoder layer, encoder, text model (causal mask + padding, EOS pooling), vision
// model (pre-layernorm, CLS pooling), CLIPModel (projections, normalised embeddings, logit_scale,
// logits_per_image / logits_per_text), the towers with projections (CLIPTextModelWithProjection,
// CLIPVisionModelWithProjection), registration. The classes with projections also answer
// GetTextFeatures / GetImageFeatures (get_text_features / get_image_features; `flotilla embed`).
//
// Submodules carry the checkpoint's names (text_model.encoder.layers.0.self_attn.q_proj.weight,
// vision_model.pre_layrnorm.weight — transformers' spelling), so loading needs no renaming table.
//
// Inputs: input_ids (+ attention_mask) for the text tower, pixel_values for the vision tower;
// CLIPModel takes both. Outputs (CLIPModel): logits = logits_per_image [images, texts];
// named_outputs holds logits_per_text, text_embeds, image_embeds (normalised) and each tower's
// last_hidden_state, pooler_output and hidden_states.<i> under "text_model." / "vision_model.".

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
#include "models/config.h"
#include "models/debugger.h"
#include "models/layers.h"
#include "models/masks.h"
#include "models/modeling_utils.h"

namespace flotilla::models::clip {

// ---- block: CLIPConfig ----
// configuration_clip.py: the two towers' configs (fields both share first) and the joint config.
struct CLIPEncoderConfig : PretrainedConfig {
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t projection_dim = 512;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;

  void ReadEncoder(ConfigReader& reader, int64_t hidden_size_default, int64_t intermediate_size_default,
                   int64_t num_attention_heads_default) {
    hidden_size = reader.Int("hidden_size", hidden_size_default);
    intermediate_size = reader.Int("intermediate_size", intermediate_size_default);
    projection_dim = reader.Int("projection_dim", 512);
    num_hidden_layers = reader.Int("num_hidden_layers", 12);
    num_attention_heads = reader.Int("num_attention_heads", num_attention_heads_default);
    hidden_act = reader.String("hidden_act", "quick_gelu");
    layer_norm_eps = reader.Double("layer_norm_eps", 1e-5);
    if (num_attention_heads <= 0 || hidden_size % num_attention_heads != 0) {
      reader.Fail(absl::StrCat("hidden_size (", hidden_size, ") must be a multiple of num_attention_heads (",
                               num_attention_heads, ")"));
    }
  }
};

struct CLIPTextConfig : CLIPEncoderConfig {
  int64_t vocab_size = 49408;
  int64_t max_position_embeddings = 77;

  static absl::StatusOr<std::shared_ptr<CLIPTextConfig>> FromJson(const nlohmann::json& json,
                                                                  const std::string& file_name) {
    auto config = std::make_shared<CLIPTextConfig>();
    ConfigReader reader(json, file_name);
    reader.Common(*config);
    if (!reader.Has("pad_token_id")) config->pad_token_id = 1;
    if (!reader.Has("bos_token_id")) config->bos_token_id = 49406;
    if (!reader.Has("eos_token_id")) config->eos_token_id = {49407};
    config->ReadEncoder(reader, 512, 2048, 8);
    config->vocab_size = reader.Int("vocab_size", 49408);
    config->max_position_embeddings = reader.Int("max_position_embeddings", 77);
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    return config;
  }
};

struct CLIPVisionConfig : CLIPEncoderConfig {
  int64_t num_channels = 3;
  int64_t image_size = 224;
  int64_t patch_size = 32;

  static absl::StatusOr<std::shared_ptr<CLIPVisionConfig>> FromJson(const nlohmann::json& json,
                                                                    const std::string& file_name) {
    auto config = std::make_shared<CLIPVisionConfig>();
    ConfigReader reader(json, file_name);
    reader.Common(*config);
    config->ReadEncoder(reader, 768, 3072, 12);
    config->num_channels = reader.Int("num_channels", 3);
    config->image_size = reader.Int("image_size", 224);
    config->patch_size = reader.Int("patch_size", 32);
    if (config->patch_size <= 0) reader.Fail(absl::StrCat("patch_size must be positive, got ", config->patch_size));
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    return config;
  }
};

struct CLIPConfig : PretrainedConfig {
  std::shared_ptr<CLIPTextConfig> text_config;
  std::shared_ptr<CLIPVisionConfig> vision_config;
  int64_t projection_dim = 512;
  double logit_scale_init_value = 2.6592;

  static absl::StatusOr<std::shared_ptr<CLIPConfig>> FromJson(const nlohmann::json& json) {
    auto config = std::make_shared<CLIPConfig>();
    ConfigReader reader(json, "config.json");
    reader.Common(*config);
    config->projection_dim = reader.Int("projection_dim", 512);
    config->logit_scale_init_value = reader.Double("logit_scale_init_value", 2.6592);
    nlohmann::json text = reader.Raw("text_config");
    nlohmann::json vision = reader.Raw("vision_config");
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    auto text_config = CLIPTextConfig::FromJson(text.is_object() ? text : nlohmann::json::object(),
                                                "config.json text_config");
    if (!text_config.ok()) return text_config.status();
    auto vision_config = CLIPVisionConfig::FromJson(vision.is_object() ? vision : nlohmann::json::object(),
                                                    "config.json vision_config");
    if (!vision_config.ok()) return vision_config.status();
    config->text_config = *text_config;
    config->vision_config = *vision_config;
    // Callers that pad token ids (the CLI) read the top-level config; the text tower's pad id is it.
    if (!config->pad_token_id.has_value()) config->pad_token_id = config->text_config->pad_token_id;
    return config;
  }
};

// ---- block: TowerConfigJson ----
// A tower's config.json contents: itself, or the CLIPConfig's text_config / vision_config when the
// file is a full CLIP checkpoint's (transformers' base_config_key, so CLIPTextModel.from_pretrained
// works on a CLIPModel folder). The top-level attn_implementation (the loader's option) carries over.
nlohmann::json TowerConfigJson(const nlohmann::json& json, const char* base_config_key) {
  if (!json.is_object() || json.value("model_type", std::string()) != "clip") return json;
  nlohmann::json tower = json.contains(base_config_key) && json[base_config_key].is_object() ? json[base_config_key]
                                                                                              : nlohmann::json::object();
  if (json.contains("attn_implementation")) tower["attn_implementation"] = json["attn_implementation"];
  return tower;
}

// ---- block: Activation ----
// ACT2FN for the activations CLIP checkpoints use (quick_gelu for OpenAI's, gelu for others).
at::Tensor Activation(const std::string& name, const at::Tensor& x) {
  if (name == "quick_gelu") return x * at::sigmoid(1.702 * x);
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "gelu_new") {
    return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * at::pow(x, 3.0))));
  }
  if (name == "relu") return at::relu(x);
  TORCH_CHECK(false, "CLIP: unsupported activation \"", name, "\"");
}

// ---- block: LayerNorm ----
// nn.LayerNorm with the checkpoint's weight and bias.
class CLIPLayerNormImpl : public torch::nn::Module {
 public:
  CLIPLayerNormImpl(int64_t hidden_size, double eps) : eps(eps) {
    weight = register_parameter("weight", at::empty({hidden_size}), /*requires_grad=*/false);
    bias = register_parameter("bias", at::empty({hidden_size}), /*requires_grad=*/false);
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    return debug.Output(at::layer_norm(hidden_states, {weight.size(0)}, weight, bias, eps));
  }

  at::Tensor weight, bias;
  double eps;
};

// ---- block: CLIPVisionEmbeddings ----
// class_embedding [hidden] + conv patches (no bias) + position_embedding (an nn.Embedding over
// num_patches + 1 positions), bicubically interpolated for other image sizes when asked.
class CLIPVisionEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit CLIPVisionEmbeddingsImpl(const CLIPVisionConfig& config)
      : image_size(config.image_size), patch_size(config.patch_size) {
    class_embedding = register_parameter("class_embedding", at::empty({config.hidden_size}), /*requires_grad=*/false);
    patch_embedding = register_module("patch_embedding", std::make_shared<PatchConvImpl>(config));
    num_patches = (image_size / patch_size) * (image_size / patch_size);
    position_embedding = register_module("position_embedding", Embedding(num_patches + 1, config.hidden_size));
  }

  at::Tensor InterpolatePosEncoding(const at::Tensor& embeddings, int64_t height, int64_t width) {
    at::Tensor positions = position_embedding->weight.unsqueeze(0);
    const int64_t num_positions = positions.size(1) - 1;
    if (embeddings.size(1) - 1 == num_positions && height == width) return positions;
    at::Tensor class_pos_embed = positions.narrow(1, 0, 1);
    at::Tensor patch_pos_embed = positions.narrow(1, 1, num_positions);
    const int64_t dim = embeddings.size(-1);
    const auto sqrt_num_positions = static_cast<int64_t>(std::sqrt(static_cast<double>(num_positions)));
    patch_pos_embed = patch_pos_embed.reshape({1, sqrt_num_positions, sqrt_num_positions, dim}).permute({0, 3, 1, 2});
    patch_pos_embed =
        at::upsample_bicubic2d(patch_pos_embed, {height / patch_size, width / patch_size}, /*align_corners=*/false);
    patch_pos_embed = patch_pos_embed.permute({0, 2, 3, 1}).reshape({1, -1, dim});
    return at::cat({class_pos_embed, patch_pos_embed}, 1);
  }

  at::Tensor forward(const at::Tensor& pixel_values, bool interpolate_pos_encoding) {
    DebugScope debug(this, {{"pixel_values", pixel_values}});
    const int64_t batch_size = pixel_values.size(0);
    const int64_t height = pixel_values.size(2);
    const int64_t width = pixel_values.size(3);
    TORCH_CHECK(interpolate_pos_encoding || (height == image_size && width == image_size), "Input image size (",
                height, "*", width, ") doesn't match model (", image_size, "*", image_size, ").");
    at::Tensor patch_embeds = patch_embedding->forward(pixel_values.to(patch_embedding->weight.scalar_type()));
    patch_embeds = patch_embeds.flatten(2).transpose(1, 2);
    at::Tensor class_embeds = class_embedding.expand({batch_size, 1, -1});
    at::Tensor embeddings = at::cat({class_embeds, patch_embeds}, 1);
    if (interpolate_pos_encoding) {
      embeddings = embeddings + InterpolatePosEncoding(embeddings, height, width);
    } else {
      embeddings = embeddings + position_embedding->weight.unsqueeze(0);
    }
    return debug.Output(embeddings);
  }

  // nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=False).
  class PatchConvImpl : public torch::nn::Module {
   public:
    explicit PatchConvImpl(const CLIPVisionConfig& config) : patch_size(config.patch_size) {
      weight = register_parameter(
          "weight", at::empty({config.hidden_size, config.num_channels, config.patch_size, config.patch_size}),
          /*requires_grad=*/false);
    }
    at::Tensor forward(const at::Tensor& input) {
      DebugScope debug(this, {{"input", input}});
      TORCH_CHECK(input.size(1) == weight.size(1), "CLIPVisionEmbeddings: pixel_values have ", input.size(1),
                  " channels but the model expects ", weight.size(1));
      return debug.Output(at::conv2d(input, weight, /*bias=*/{}, {patch_size, patch_size}));
    }
    at::Tensor weight;
    int64_t patch_size;
  };

  at::Tensor class_embedding;
  std::shared_ptr<PatchConvImpl> patch_embedding;
  Embedding position_embedding{nullptr};
  int64_t image_size, patch_size, num_patches;
};

// ---- block: CLIPTextEmbeddings ----
class CLIPTextEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit CLIPTextEmbeddingsImpl(const CLIPTextConfig& config) {
    token_embedding = register_module("token_embedding", Embedding(config.vocab_size, config.hidden_size));
    position_embedding =
        register_module("position_embedding", Embedding(config.max_position_embeddings, config.hidden_size));
  }

  at::Tensor forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& position_ids_in) {
    DebugScope debug(this, {{"input_ids", input_ids}});
    const int64_t seq_length = input_ids.size(-1);
    const int64_t max_position_embedding = position_embedding->weight.size(0);
    TORCH_CHECK(seq_length <= max_position_embedding,
                "Sequence length must be less than max_position_embeddings (got `sequence length`: ", seq_length,
                " and max_position_embeddings: ", max_position_embedding);
    at::Tensor position_ids =
        position_ids_in.has_value()
            ? *position_ids_in
            : at::arange(seq_length, at::TensorOptions().dtype(at::kLong).device(input_ids.device())).unsqueeze(0);
    at::Tensor inputs_embeds = token_embedding->forward(input_ids);
    return debug.Output(inputs_embeds + position_embedding->forward(position_ids));
  }

  Embedding token_embedding{nullptr}, position_embedding{nullptr};
};

// ---- block: EagerAttentionForward ----
// The reference attention: scores, additive mask, float32 softmax, weighted values.
std::pair<at::Tensor, at::Tensor> EagerAttentionForward(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const std::optional<at::Tensor>& attention_mask,
                                                        const AttentionArguments& arguments) {
  at::Tensor attn_weights = at::matmul(query, key.transpose(-1, -2)) * arguments.scaling;
  if (attention_mask.has_value()) attn_weights = attn_weights + *attention_mask;
  attn_weights = at::softmax(attn_weights, -1, at::kFloat).to(query.scalar_type());
  at::Tensor attn_output = at::matmul(attn_weights, value).transpose(1, 2).contiguous();
  return {attn_output, attn_weights};
}

// ---- block: CLIPAttention ----
// Multi-head attention with biased q/k/v/out projections. `root_config` is the loaded model's
// config, whose attn_implementation both towers follow (SetAttentionImplementation switches it).
class CLIPAttentionImpl : public torch::nn::Module {
 public:
  CLIPAttentionImpl(const CLIPEncoderConfig& config, std::shared_ptr<PretrainedConfig> root_config)
      : root_config_(std::move(root_config)) {
    const int64_t embed_dim = config.hidden_size;
    head_dim = embed_dim / config.num_attention_heads;
    scale = std::pow(static_cast<double>(head_dim), -0.5);
    k_proj = register_module("k_proj", Linear(embed_dim, embed_dim, /*bias=*/true));
    v_proj = register_module("v_proj", Linear(embed_dim, embed_dim, /*bias=*/true));
    q_proj = register_module("q_proj", Linear(embed_dim, embed_dim, /*bias=*/true));
    out_proj = register_module("out_proj", Linear(embed_dim, embed_dim, /*bias=*/true));
  }

  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& hidden_states,
                                            const std::optional<at::Tensor>& attention_mask, bool is_causal,
                                            bool output_attentions) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    const int64_t batch = hidden_states.size(0);
    const int64_t length = hidden_states.size(1);
    at::Tensor queries = q_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor keys = k_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor values = v_proj->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);

    AttentionFunction attention_interface =
        GetAttentionFunction(root_config_->attn_implementation, EagerAttentionForward);
    AttentionArguments arguments;
    arguments.scaling = scale;
    arguments.is_causal = is_causal;
    arguments.output_attentions = output_attentions;
    auto [attn_output, attn_weights] = attention_interface(queries, keys, values, attention_mask, arguments);
    attn_output = attn_output.reshape({batch, length, -1}).contiguous();
    attn_output = out_proj->forward(attn_output);
    debug.Output(attn_output);
    return {attn_output, attn_weights};
  }

  Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
  int64_t head_dim;
  double scale;

 private:
  std::shared_ptr<PretrainedConfig> root_config_;
};

// ---- block: CLIPMLP ----
class CLIPMLPImpl : public torch::nn::Module {
 public:
  explicit CLIPMLPImpl(const CLIPEncoderConfig& config) : hidden_act_(config.hidden_act) {
    fc1 = register_module("fc1", Linear(config.hidden_size, config.intermediate_size, /*bias=*/true));
    fc2 = register_module("fc2", Linear(config.intermediate_size, config.hidden_size, /*bias=*/true));
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    return debug.Output(fc2->forward(Activation(hidden_act_, fc1->forward(hidden_states))));
  }

  Linear fc1{nullptr}, fc2{nullptr};

 private:
  std::string hidden_act_;
};

// ---- block: CLIPEncoderLayer ----
// Pre-norm: x + self_attn(layer_norm1(x)), then x + mlp(layer_norm2(x)).
class CLIPEncoderLayerImpl : public torch::nn::Module {
 public:
  CLIPEncoderLayerImpl(const CLIPEncoderConfig& config, std::shared_ptr<PretrainedConfig> root_config) {
    self_attn = register_module("self_attn", std::make_shared<CLIPAttentionImpl>(config, std::move(root_config)));
    layer_norm1 = register_module("layer_norm1",
                                  std::make_shared<CLIPLayerNormImpl>(config.hidden_size, config.layer_norm_eps));
    mlp = register_module("mlp", std::make_shared<CLIPMLPImpl>(config));
    layer_norm2 = register_module("layer_norm2",
                                  std::make_shared<CLIPLayerNormImpl>(config.hidden_size, config.layer_norm_eps));
  }

  at::Tensor forward(const at::Tensor& hidden_states_in, const std::optional<at::Tensor>& attention_mask,
                     bool is_causal, bool output_attentions, at::Tensor* attn_weights) {
    DebugScope debug(this, {{"hidden_states", hidden_states_in}});
    at::Tensor residual = hidden_states_in;
    at::Tensor hidden_states = layer_norm1->forward(hidden_states_in);
    auto [attn_output, weights] = self_attn->forward(hidden_states, attention_mask, is_causal, output_attentions);
    if (attn_weights != nullptr) *attn_weights = weights;
    hidden_states = residual + attn_output;
    residual = hidden_states;
    hidden_states = layer_norm2->forward(hidden_states);
    hidden_states = mlp->forward(hidden_states);
    return debug.Output(residual + hidden_states);
  }

  std::shared_ptr<CLIPAttentionImpl> self_attn;
  std::shared_ptr<CLIPLayerNormImpl> layer_norm1;
  std::shared_ptr<CLIPMLPImpl> mlp;
  std::shared_ptr<CLIPLayerNormImpl> layer_norm2;
};

// ---- block: CLIPEncoder ----
// The layers; hidden_states (when asked) are the encoder's input then each layer's output.
class CLIPEncoderImpl : public torch::nn::Module {
 public:
  CLIPEncoderImpl(const CLIPEncoderConfig& config, const std::shared_ptr<PretrainedConfig>& root_config) {
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t index = 0; index < config.num_hidden_layers; ++index) {
      encoder_layers.push_back(std::make_shared<CLIPEncoderLayerImpl>(config, root_config));
      layers->push_back(encoder_layers.back());
    }
  }

  at::Tensor forward(const at::Tensor& inputs_embeds, const std::optional<at::Tensor>& attention_mask, bool is_causal,
                     const ForwardInputs& inputs, ModelOutput& output) {
    DebugScope debug(this, {{"inputs_embeds", inputs_embeds}});
    at::Tensor hidden_states = inputs_embeds;
    if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
    for (auto& layer : encoder_layers) {
      at::Tensor attn_weights;
      hidden_states = layer->forward(hidden_states, attention_mask, is_causal, inputs.output_attentions, &attn_weights);
      if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
      if (inputs.output_attentions) output.attentions.push_back(attn_weights);
    }
    return debug.Output(hidden_states);
  }

  torch::nn::ModuleList layers{nullptr};
  std::vector<std::shared_ptr<CLIPEncoderLayerImpl>> encoder_layers;
};

// ---- block: CLIPTextTransformer ----
// CLIPTextModel's body: embeddings, causal encoder (with the padding mask), final_layer_norm, and
// the pooled output at each row's EOS token, by transformers' rule: when eos_token_id is 2 (configs
// older than the fix), the position of the highest id (the EOS in OpenAI's vocabulary); otherwise
// the first position holding eos_token_id.
class CLIPTextTransformerImpl : public torch::nn::Module {
 public:
  CLIPTextTransformerImpl(std::shared_ptr<CLIPTextConfig> config, std::shared_ptr<PretrainedConfig> root_config)
      : config_(std::move(config)), root_config_(root_config) {
    embeddings = register_module("embeddings", std::make_shared<CLIPTextEmbeddingsImpl>(*config_));
    encoder = register_module("encoder", std::make_shared<CLIPEncoderImpl>(*config_, root_config));
    final_layer_norm = register_module(
        "final_layer_norm", std::make_shared<CLIPLayerNormImpl>(config_->hidden_size, config_->layer_norm_eps));
  }

  ModelOutput forward(const ForwardInputs& inputs) {
    TORCH_CHECK(inputs.input_ids.defined(), "CLIPTextModel: You have to specify input_ids");
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    at::Tensor input_ids = inputs.input_ids.view({-1, inputs.input_ids.size(-1)});
    at::Tensor hidden_states = embeddings->forward(input_ids, inputs.position_ids);

    MaskArguments mask_arguments;
    mask_arguments.batch_size = hidden_states.size(0);
    mask_arguments.query_length = hidden_states.size(1);
    mask_arguments.attention_mask = inputs.attention_mask;
    mask_arguments.implementation = root_config_->attn_implementation;
    mask_arguments.dtype = hidden_states.scalar_type();
    mask_arguments.device = hidden_states.device();
    std::optional<at::Tensor> attention_mask = CreateCausalMask(mask_arguments);

    ModelOutput output;
    at::Tensor last_hidden_state = encoder->forward(hidden_states, attention_mask, /*is_causal=*/true, inputs, output);
    last_hidden_state = final_layer_norm->forward(last_hidden_state);

    const int64_t eos_token_id = config_->eos_token_id.empty() ? 2 : config_->eos_token_id[0];
    at::Tensor ids = input_ids.to(at::TensorOptions().dtype(at::kInt).device(last_hidden_state.device()));
    at::Tensor eos_positions = eos_token_id == 2 ? ids.argmax(-1) : ids.eq(eos_token_id).to(at::kInt).argmax(-1);
    at::Tensor rows = at::arange(last_hidden_state.size(0), at::TensorOptions().dtype(at::kLong).device(ids.device()));
    output.pooler_output = debug.Output(last_hidden_state.index({rows, eos_positions}), "pooler_output");
    output.last_hidden_state = debug.Output(last_hidden_state, "last_hidden_state");
    return output;
  }

  std::shared_ptr<CLIPTextEmbeddingsImpl> embeddings;
  std::shared_ptr<CLIPEncoderImpl> encoder;
  std::shared_ptr<CLIPLayerNormImpl> final_layer_norm;

 private:
  std::shared_ptr<CLIPTextConfig> config_;
  std::shared_ptr<PretrainedConfig> root_config_;
};

// ---- block: CLIPVisionTransformer ----
// CLIPVisionModel's body: embeddings, pre_layrnorm, encoder (no mask), and the CLS token through
// post_layernorm as the pooled output (last_hidden_state itself is not post-normed).
class CLIPVisionTransformerImpl : public torch::nn::Module {
 public:
  CLIPVisionTransformerImpl(std::shared_ptr<CLIPVisionConfig> config, std::shared_ptr<PretrainedConfig> root_config)
      : config_(std::move(config)) {
    embeddings = register_module("embeddings", std::make_shared<CLIPVisionEmbeddingsImpl>(*config_));
    pre_layrnorm = register_module("pre_layrnorm",
                                   std::make_shared<CLIPLayerNormImpl>(config_->hidden_size, config_->layer_norm_eps));
    encoder = register_module("encoder", std::make_shared<CLIPEncoderImpl>(*config_, root_config));
    post_layernorm = register_module(
        "post_layernorm", std::make_shared<CLIPLayerNormImpl>(config_->hidden_size, config_->layer_norm_eps));
  }

  ModelOutput forward(const ForwardInputs& inputs) {
    TORCH_CHECK(inputs.pixel_values.has_value() && inputs.pixel_values->dim() == 4,
                "CLIPVisionModel: pixel_values must be [batch, channels, height, width]",
                inputs.pixel_values.has_value() ? absl::StrCat(", got ", inputs.pixel_values->dim(), " dimensions")
                                                : std::string(", got none"));
    DebugScope debug(this, {{"pixel_values", *inputs.pixel_values}});
    at::Tensor hidden_states = embeddings->forward(*inputs.pixel_values, inputs.interpolate_pos_encoding);
    hidden_states = pre_layrnorm->forward(hidden_states);
    ModelOutput output;
    at::Tensor last_hidden_state =
        encoder->forward(hidden_states, /*attention_mask=*/std::nullopt, /*is_causal=*/false, inputs, output);
    output.pooler_output = debug.Output(post_layernorm->forward(last_hidden_state.select(1, 0)), "pooler_output");
    output.last_hidden_state = debug.Output(last_hidden_state, "last_hidden_state");
    return output;
  }

  std::shared_ptr<CLIPVisionEmbeddingsImpl> embeddings;
  std::shared_ptr<CLIPLayerNormImpl> pre_layrnorm;
  std::shared_ptr<CLIPEncoderImpl> encoder;
  std::shared_ptr<CLIPLayerNormImpl> post_layernorm;

 private:
  std::shared_ptr<CLIPVisionConfig> config_;
};

// ---- block: CLIPTextModel ----
// Checkpoints written by transformers 5.23's CLIPTextModel hold the body's tensors at the top
// level (embeddings.*, encoder.*, final_layer_norm.*), so the body's children are registered here.
class CLIPTextModel : public PreTrainedModel {
 public:
  explicit CLIPTextModel(std::shared_ptr<CLIPTextConfig> config) : config_(std::move(config)) {
    body_ = std::make_shared<CLIPTextTransformerImpl>(config_, config_);
    register_module("embeddings", body_->embeddings);
    register_module("encoder", body_->encoder);
    register_module("final_layer_norm", body_->final_layer_norm);
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    return body_->forward(inputs);
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return ""; }
  // Loaded from a CLIPModel (or CLIPTextModelWithProjection) checkpoint, the tower's tensors sit
  // under text_model.; the rest of that checkpoint is reported as unused.
  std::string CheckpointBasePrefix() const override { return "text_model."; }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = CLIPTextConfig::FromJson(TowerConfigJson(json, "text_config"), "config.json");
    if (!config.ok()) return config.status();
    return std::make_shared<CLIPTextModel>(*config);
  }

 private:
  std::shared_ptr<CLIPTextConfig> config_;
  std::shared_ptr<CLIPTextTransformerImpl> body_;
};

// ---- block: CLIPVisionModel ----
class CLIPVisionModel : public PreTrainedModel {
 public:
  explicit CLIPVisionModel(std::shared_ptr<CLIPVisionConfig> config) : config_(std::move(config)) {
    body_ = std::make_shared<CLIPVisionTransformerImpl>(config_, config_);
    register_module("embeddings", body_->embeddings);
    register_module("pre_layrnorm", body_->pre_layrnorm);
    register_module("encoder", body_->encoder);
    register_module("post_layernorm", body_->post_layernorm);
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    return body_->forward(inputs);
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return ""; }
  std::string CheckpointBasePrefix() const override { return "vision_model."; }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = CLIPVisionConfig::FromJson(TowerConfigJson(json, "vision_config"), "config.json");
    if (!config.ok()) return config.status();
    return std::make_shared<CLIPVisionModel>(*config);
  }

 private:
  std::shared_ptr<CLIPVisionConfig> config_;
  std::shared_ptr<CLIPVisionTransformerImpl> body_;
};

// ---- block: CLIPTextModelWithProjection ----
// The text tower under text_model. and text_projection (no bias): text_embeds is the projected
// pooled output (unnormalised), as get_text_features. Outputs: last_hidden_state, hidden_states,
// named_outputs["text_embeds"] (CLIPTextModelOutput has no pooler_output). Its checkpoint keys are
// CLIPModel's, so it also loads from a CLIPModel folder.
class CLIPTextModelWithProjection : public PreTrainedModel {
 public:
  explicit CLIPTextModelWithProjection(std::shared_ptr<CLIPTextConfig> config) : config_(std::move(config)) {
    text_model = register_module("text_model", std::make_shared<CLIPTextTransformerImpl>(config_, config_));
    text_projection =
        register_module("text_projection", Linear(config_->hidden_size, config_->projection_dim, /*bias=*/false));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    ModelOutput output = text_model->forward(inputs);
    output.named_outputs["text_embeds"] = debug.Output(text_projection->forward(output.pooler_output), "text_embeds");
    output.pooler_output = at::Tensor();
    return output;
  }

  // text_embeds alone (what `flotilla embed --text` prints).
  bool EmbedsText() const override { return true; }
  at::Tensor GetTextFeatures(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    return text_projection->forward(text_model->forward(inputs).pooler_output);
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return "text_model."; }
  std::string CheckpointBasePrefix() const override { return ""; }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = CLIPTextConfig::FromJson(TowerConfigJson(json, "text_config"), "config.json");
    if (!config.ok()) return config.status();
    return std::make_shared<CLIPTextModelWithProjection>(*config);
  }

  std::shared_ptr<CLIPTextTransformerImpl> text_model;
  Linear text_projection{nullptr};

 private:
  std::shared_ptr<CLIPTextConfig> config_;
};

// ---- block: CLIPVisionModelWithProjection ----
// The vision tower under vision_model. and visual_projection (no bias): image_embeds is the
// projected pooled output (unnormalised), as get_image_features. Outputs: last_hidden_state,
// hidden_states, named_outputs["image_embeds"].
class CLIPVisionModelWithProjection : public PreTrainedModel {
 public:
  explicit CLIPVisionModelWithProjection(std::shared_ptr<CLIPVisionConfig> config) : config_(std::move(config)) {
    vision_model = register_module("vision_model", std::make_shared<CLIPVisionTransformerImpl>(config_, config_));
    visual_projection =
        register_module("visual_projection", Linear(config_->hidden_size, config_->projection_dim, /*bias=*/false));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {});
    ModelOutput output = vision_model->forward(inputs);
    output.named_outputs["image_embeds"] =
        debug.Output(visual_projection->forward(output.pooler_output), "image_embeds");
    output.pooler_output = at::Tensor();
    return output;
  }

  // image_embeds alone (what `flotilla embed --image` prints).
  bool EmbedsImages() const override { return true; }
  at::Tensor GetImageFeatures(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    return visual_projection->forward(vision_model->forward(inputs).pooler_output);
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return "vision_model."; }
  std::string CheckpointBasePrefix() const override { return ""; }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = CLIPVisionConfig::FromJson(TowerConfigJson(json, "vision_config"), "config.json");
    if (!config.ok()) return config.status();
    return std::make_shared<CLIPVisionModelWithProjection>(*config);
  }

  std::shared_ptr<CLIPVisionTransformerImpl> vision_model;
  Linear visual_projection{nullptr};

 private:
  std::shared_ptr<CLIPVisionConfig> config_;
};

// ---- block: CLIPModel ----
// Both towers, their projections (no bias) and logit_scale. With pixel_values and input_ids:
// embeddings normalised by their L2 norm, logits_per_text = text_embeds . image_embeds^T *
// exp(logit_scale), logits_per_image its transpose. With one input only, that tower's projected
// features (get_text_features / get_image_features) as text_embeds or image_embeds, unnormalised.
// As transformers 5.23, each tower's pooler_output is replaced by its projection (CLIPOutput's
// text_model_output.pooler_output is get_text_features' result).
class CLIPModel : public PreTrainedModel {
 public:
  explicit CLIPModel(std::shared_ptr<CLIPConfig> config) : config_(std::move(config)) {
    text_model = register_module("text_model",
                                 std::make_shared<CLIPTextTransformerImpl>(config_->text_config, config_));
    vision_model = register_module("vision_model",
                                   std::make_shared<CLIPVisionTransformerImpl>(config_->vision_config, config_));
    visual_projection = register_module(
        "visual_projection", Linear(config_->vision_config->hidden_size, config_->projection_dim, /*bias=*/false));
    text_projection = register_module(
        "text_projection", Linear(config_->text_config->hidden_size, config_->projection_dim, /*bias=*/false));
    logit_scale = register_parameter("logit_scale", at::empty({}), /*requires_grad=*/false);
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    const bool has_text = inputs.input_ids.defined();
    const bool has_image = inputs.pixel_values.has_value();
    TORCH_CHECK(has_text || has_image, "CLIPModel: needs input_ids, pixel_values or both");
    DebugScope debug(this, {});
    ModelOutput output;
    at::Tensor text_embeds, image_embeds;
    if (has_image) {
      ModelOutput vision_outputs = ImageFeatures(inputs);
      image_embeds = vision_outputs.pooler_output;
      AddTower("vision_model.", vision_outputs, output);
      output.last_hidden_state = vision_outputs.last_hidden_state;
      output.pooler_output = vision_outputs.pooler_output;
      output.hidden_states = vision_outputs.hidden_states;
    }
    if (has_text) {
      ModelOutput text_outputs = TextFeatures(inputs);
      text_embeds = text_outputs.pooler_output;
      AddTower("text_model.", text_outputs, output);
      if (!has_image) {
        output.last_hidden_state = text_outputs.last_hidden_state;
        output.pooler_output = text_outputs.pooler_output;
        output.hidden_states = text_outputs.hidden_states;
      }
    }
    if (has_text && has_image) {
      image_embeds = image_embeds / VectorNorm(image_embeds);
      text_embeds = text_embeds / VectorNorm(text_embeds);
      at::Tensor logits_per_text = at::matmul(text_embeds, image_embeds.t()) * logit_scale.exp();
      output.named_outputs["logits_per_text"] = debug.Output(logits_per_text, "logits_per_text");
      output.logits = debug.Output(logits_per_text.t(), "logits_per_image");
      output.named_outputs["logits_per_image"] = output.logits;
    }
    if (text_embeds.defined()) output.named_outputs["text_embeds"] = debug.Output(text_embeds, "text_embeds");
    if (image_embeds.defined()) output.named_outputs["image_embeds"] = debug.Output(image_embeds, "image_embeds");
    return output;
  }

  // get_text_features / get_image_features: the projected, unnormalised embeddings that Forward
  // normalises before taking the cosine similarities.
  bool EmbedsText() const override { return true; }
  bool EmbedsImages() const override { return true; }
  at::Tensor GetTextFeatures(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    return TextFeatures(inputs).pooler_output;
  }
  at::Tensor GetImageFeatures(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    return ImageFeatures(inputs).pooler_output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return ""; }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = CLIPConfig::FromJson(json);
    if (!config.ok()) return config.status();
    return std::make_shared<CLIPModel>(*config);
  }

  std::shared_ptr<CLIPTextTransformerImpl> text_model;
  std::shared_ptr<CLIPVisionTransformerImpl> vision_model;
  Linear visual_projection{nullptr}, text_projection{nullptr};
  at::Tensor logit_scale;

 private:
  // As transformers 5.23's get_text_features / get_image_features: the tower's outputs with its
  // pooler_output replaced by the projection of it (CLIPOutput's text_model_output.pooler_output is
  // that projection too).
  ModelOutput TextFeatures(const ForwardInputs& inputs) {
    ModelOutput text_outputs = text_model->forward(inputs);
    text_outputs.pooler_output = text_projection->forward(text_outputs.pooler_output);
    return text_outputs;
  }
  ModelOutput ImageFeatures(const ForwardInputs& inputs) {
    ModelOutput vision_outputs = vision_model->forward(inputs);
    vision_outputs.pooler_output = visual_projection->forward(vision_outputs.pooler_output);
    return vision_outputs;
  }

  // _get_vector_norm: sqrt(sum(x^2)) over the last dimension, as transformers computes it.
  static at::Tensor VectorNorm(const at::Tensor& tensor) {
    return at::pow(at::sum(at::pow(tensor, 2), -1, /*keepdim=*/true), 0.5);
  }

  static void AddTower(const std::string& prefix, const ModelOutput& tower, ModelOutput& output) {
    output.named_outputs[prefix + "last_hidden_state"] = tower.last_hidden_state;
    output.named_outputs[prefix + "pooler_output"] = tower.pooler_output;
    for (size_t index = 0; index < tower.hidden_states.size(); ++index) {
      output.named_outputs[absl::StrCat(prefix, "hidden_states.", index)] = tower.hidden_states[index];
    }
  }

  std::shared_ptr<CLIPConfig> config_;
};

// ---- block: Registration ----
FLOTILLA_REGISTER_MODEL("clip", "CLIPModel", CLIPModel::FromConfig);
FLOTILLA_REGISTER_MODEL("clip_text_model", "CLIPTextModel", CLIPTextModel::FromConfig);
FLOTILLA_REGISTER_MODEL("clip_vision_model", "CLIPVisionModel", CLIPVisionModel::FromConfig);
FLOTILLA_REGISTER_MODEL("clip_text_model", "CLIPTextModelWithProjection", CLIPTextModelWithProjection::FromConfig);
FLOTILLA_REGISTER_MODEL("clip_vision_model", "CLIPVisionModelWithProjection", CLIPVisionModelWithProjection::FromConfig);
// A CLIPModel folder also loads as one tower (with or without its projection), as
// <Tower>.from_pretrained(clip_checkpoint) does: LoadOptions::architecture / `--architecture`.
FLOTILLA_REGISTER_MODEL("clip", "CLIPTextModel", CLIPTextModel::FromConfig);
FLOTILLA_REGISTER_MODEL("clip", "CLIPVisionModel", CLIPVisionModel::FromConfig);
FLOTILLA_REGISTER_MODEL("clip", "CLIPTextModelWithProjection", CLIPTextModelWithProjection::FromConfig);
FLOTILLA_REGISTER_MODEL("clip", "CLIPVisionModelWithProjection", CLIPVisionModelWithProjection::FromConfig);

}  // namespace flotilla::models::clip
