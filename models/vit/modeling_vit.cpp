// ViT (model_type "vit": google/vit-base-patch16-224 and its fine-tunes), read top to bottom as
// transformers' models/vit/modeling_vit.py: config, patch embeddings, embeddings (CLS token,
// learned positions, optional bicubic interpolation), eager attention, attention, MLP, layer,
// pooler, model, image-classification head, registration.
//
// Submodules carry the checkpoint's names. transformers 5.23 flattens ViT's modules at run time
// (layers.0.attention.q_proj) and renames on load and save through conversion_mapping.py's
// "ViTModel" entry, but the files it writes and every checkpoint on the Hub keep the original
// layout (encoder.layer.0.attention.attention.query, .attention.output.dense, .intermediate.dense,
// .output.dense). This file registers that layout, so checkpoints load with no renaming table; the
// classes below compute exactly what 5.23's ViTAttention, ViTMLP and ViTLayer compute.
//
// Inputs: ForwardInputs::pixel_values [batch, num_channels, image_size, image_size] (float, as the
// image processor writes it); interpolate_pos_encoding allows other sizes.

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
#include "models/modeling_utils.h"

namespace flotilla::models::vit {

// ---- block: ViTConfig ----
// configuration_vit.py: field names and defaults as transformers has them.
struct ViTConfig : PretrainedConfig {
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double layer_norm_eps = 1e-12;
  int64_t image_height = 224, image_width = 224;  // image_size: an int or [height, width]
  int64_t patch_height = 16, patch_width = 16;    // patch_size: an int or [height, width]
  int64_t num_channels = 3;
  bool qkv_bias = true;
  int64_t pooler_output_size = 768;  // default: hidden_size
  std::string pooler_act = "tanh";

  static absl::StatusOr<std::shared_ptr<ViTConfig>> FromJson(const nlohmann::json& json) {
    auto config = std::make_shared<ViTConfig>();
    ConfigReader reader(json, "config.json");
    reader.Common(*config);
    config->hidden_size = reader.Int("hidden_size", 768);
    config->num_hidden_layers = reader.Int("num_hidden_layers", 12);
    config->num_attention_heads = reader.Int("num_attention_heads", 12);
    config->intermediate_size = reader.Int("intermediate_size", 3072);
    config->hidden_act = reader.String("hidden_act", "gelu");
    config->layer_norm_eps = reader.Double("layer_norm_eps", 1e-12);
    ReadPair(reader, "image_size", 224, config->image_height, config->image_width);
    ReadPair(reader, "patch_size", 16, config->patch_height, config->patch_width);
    config->num_channels = reader.Int("num_channels", 3);
    config->qkv_bias = reader.Bool("qkv_bias", true);
    std::optional<int64_t> pooler_output_size = reader.OptionalInt("pooler_output_size");
    config->pooler_output_size = pooler_output_size.value_or(0) > 0 ? *pooler_output_size : config->hidden_size;
    config->pooler_act = reader.String("pooler_act", "tanh");
    if (config->num_attention_heads <= 0 || config->hidden_size % config->num_attention_heads != 0) {
      reader.Fail(absl::StrCat("hidden_size (", config->hidden_size, ") must be a multiple of num_attention_heads (",
                               config->num_attention_heads, ")"));
    }
    if (config->patch_height <= 0 || config->patch_width <= 0) reader.Fail("patch_size must be positive");
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    return config;
  }

 private:
  static void ReadPair(ConfigReader& reader, const std::string& key, int64_t default_value, int64_t& height,
                       int64_t& width) {
    nlohmann::json value = reader.Raw(key);
    if (value.is_null()) {
      height = width = default_value;
    } else if (value.is_number_integer()) {
      height = width = value.get<int64_t>();
    } else if (value.is_array() && value.size() == 2 && value[0].is_number_integer() && value[1].is_number_integer()) {
      height = value[0].get<int64_t>();
      width = value[1].get<int64_t>();
    } else {
      reader.Fail(absl::StrCat("key ", key, ": expected an integer or [height, width] but got ", value.dump()));
    }
  }
};

// ---- block: Activation ----
// ACT2FN for the activations ViT checkpoints use.
at::Tensor Activation(const std::string& name, const at::Tensor& x) {
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (name == "gelu_new") {
    return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * at::pow(x, 3.0))));
  }
  if (name == "quick_gelu") return x * at::sigmoid(1.702 * x);
  if (name == "relu") return at::relu(x);
  if (name == "silu" || name == "swish") return at::silu(x);
  if (name == "tanh") return at::tanh(x);
  TORCH_CHECK(false, "ViT: unsupported activation \"", name, "\"");
}

// ---- block: LayerNorm ----
// nn.LayerNorm with the checkpoint's weight and bias.
class ViTLayerNormImpl : public torch::nn::Module {
 public:
  ViTLayerNormImpl(int64_t hidden_size, double eps) : eps(eps) {
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

// ---- block: ViTPatchEmbeddings ----
// pixel_values [batch, channels, height, width] -> [batch, num_patches, hidden] by a strided conv.
class ViTPatchEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ViTPatchEmbeddingsImpl(const ViTConfig& config) : num_channels(config.num_channels) {
    patch_size = {config.patch_height, config.patch_width};
    num_patches = (config.image_height / config.patch_height) * (config.image_width / config.patch_width);
    projection = register_module("projection", std::make_shared<Conv2dImpl>(config));
  }

  at::Tensor forward(const at::Tensor& pixel_values) {
    DebugScope debug(this, {{"pixel_values", pixel_values}});
    TORCH_CHECK(pixel_values.size(1) == num_channels,
                "Make sure that the channel dimension of the pixel values match with the one set in the "
                "configuration. Expected ", num_channels, " but got ", pixel_values.size(1), ".");
    return debug.Output(projection->forward(pixel_values).flatten(2).transpose(1, 2));
  }

  // nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size).
  class Conv2dImpl : public torch::nn::Module {
   public:
    explicit Conv2dImpl(const ViTConfig& config) : stride({config.patch_height, config.patch_width}) {
      weight = register_parameter(
          "weight", at::empty({config.hidden_size, config.num_channels, config.patch_height, config.patch_width}),
          /*requires_grad=*/false);
      bias = register_parameter("bias", at::empty({config.hidden_size}), /*requires_grad=*/false);
    }
    at::Tensor forward(const at::Tensor& input) {
      DebugScope debug(this, {{"input", input}});
      return debug.Output(at::conv2d(input, weight, bias, stride));
    }
    at::Tensor weight, bias;
    std::vector<int64_t> stride;
  };

  std::shared_ptr<Conv2dImpl> projection;
  std::vector<int64_t> patch_size;
  int64_t num_patches;
  int64_t num_channels;
};

// ---- block: ViTEmbeddings ----
// CLS token + patch embeddings + learned position embeddings (bicubically interpolated for other
// image sizes when asked). The mask token (ViTForMaskedImageModeling) is not ported.
class ViTEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ViTEmbeddingsImpl(const ViTConfig& config)
      : image_height(config.image_height), image_width(config.image_width),
        patch_height(config.patch_height), patch_width(config.patch_width) {
    cls_token = register_parameter("cls_token", at::empty({1, 1, config.hidden_size}), /*requires_grad=*/false);
    patch_embeddings = register_module("patch_embeddings", std::make_shared<ViTPatchEmbeddingsImpl>(config));
    position_embeddings = register_parameter(
        "position_embeddings", at::empty({1, patch_embeddings->num_patches + 1, config.hidden_size}),
        /*requires_grad=*/false);
  }

  // As interpolate_pos_encoding in modeling_vit.py (DINO's): the patch grid of positions resized
  // bicubically (align_corners=False) to the new grid; the CLS position kept.
  at::Tensor InterpolatePosEncoding(const at::Tensor& embeddings, int64_t height, int64_t width) {
    const int64_t num_patches = embeddings.size(1) - 1;
    const int64_t num_positions = position_embeddings.size(1) - 1;
    if (num_patches == num_positions && height == width) return position_embeddings;
    at::Tensor class_pos_embed = position_embeddings.narrow(1, 0, 1);
    at::Tensor patch_pos_embed = position_embeddings.narrow(1, 1, num_positions);
    const int64_t dim = embeddings.size(-1);
    const int64_t new_height = height / patch_height;
    const int64_t new_width = width / patch_width;
    const auto sqrt_num_positions = static_cast<int64_t>(std::sqrt(static_cast<double>(num_positions)));
    patch_pos_embed = patch_pos_embed.reshape({1, sqrt_num_positions, sqrt_num_positions, dim}).permute({0, 3, 1, 2});
    patch_pos_embed = at::upsample_bicubic2d(patch_pos_embed, {new_height, new_width}, /*align_corners=*/false);
    patch_pos_embed = patch_pos_embed.permute({0, 2, 3, 1}).reshape({1, -1, dim});
    return at::cat({class_pos_embed, patch_pos_embed}, 1);
  }

  at::Tensor forward(const at::Tensor& pixel_values, bool interpolate_pos_encoding) {
    DebugScope debug(this, {{"pixel_values", pixel_values}});
    const int64_t batch_size = pixel_values.size(0);
    const int64_t height = pixel_values.size(2);
    const int64_t width = pixel_values.size(3);
    at::Tensor embeddings = patch_embeddings->forward(pixel_values);
    at::Tensor cls_tokens = cls_token.expand({batch_size, -1, -1});
    embeddings = at::cat({cls_tokens, embeddings}, 1);
    if (interpolate_pos_encoding) {
      embeddings = embeddings + InterpolatePosEncoding(embeddings, height, width);
    } else {
      TORCH_CHECK(height == image_height && width == image_width, "Input image size (", height, "*", width,
                  ") doesn't match model (", image_height, "*", image_width, ").");
      embeddings = embeddings + position_embeddings;
    }
    return debug.Output(embeddings);
  }

  at::Tensor cls_token, position_embeddings;
  std::shared_ptr<ViTPatchEmbeddingsImpl> patch_embeddings;
  int64_t image_height, image_width, patch_height, patch_width;
};

// ---- block: EagerAttentionForward ----
// The reference attention: scores, additive mask, float32 softmax, weighted values.
std::pair<at::Tensor, at::Tensor> EagerAttentionForward(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const std::optional<at::Tensor>& attention_mask,
                                                        const AttentionArguments& arguments) {
  at::Tensor attn_weights = at::matmul(query, key.transpose(2, 3)) * arguments.scaling;
  if (attention_mask.has_value()) attn_weights = attn_weights + *attention_mask;
  attn_weights = at::softmax(attn_weights, -1, at::kFloat).to(query.scalar_type());
  at::Tensor attn_output = at::matmul(attn_weights, value).transpose(1, 2).contiguous();
  return {attn_output, attn_weights};
}

// ---- block: ViTAttention ----
// 5.23's ViTAttention (q_proj, k_proj, v_proj, o_proj) in the checkpoint's layout:
// attention.attention.{query,key,value} and attention.output.dense.
class ViTSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit ViTSelfAttentionImpl(const ViTConfig& config) {
    const int64_t all_head_size = config.hidden_size;
    query = register_module("query", Linear(config.hidden_size, all_head_size, config.qkv_bias));
    key = register_module("key", Linear(config.hidden_size, all_head_size, config.qkv_bias));
    value = register_module("value", Linear(config.hidden_size, all_head_size, config.qkv_bias));
  }
  Linear query{nullptr}, key{nullptr}, value{nullptr};
};

class ViTSelfOutputImpl : public torch::nn::Module {
 public:
  explicit ViTSelfOutputImpl(const ViTConfig& config) {
    dense = register_module("dense", Linear(config.hidden_size, config.hidden_size, /*bias=*/true));
  }
  Linear dense{nullptr};
};

class ViTAttentionImpl : public torch::nn::Module {
 public:
  explicit ViTAttentionImpl(std::shared_ptr<ViTConfig> config) : config_(std::move(config)) {
    head_dim = config_->hidden_size / config_->num_attention_heads;
    scaling = std::pow(static_cast<double>(head_dim), -0.5);
    attention = register_module("attention", std::make_shared<ViTSelfAttentionImpl>(*config_));
    output = register_module("output", std::make_shared<ViTSelfOutputImpl>(*config_));
  }

  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& hidden_states,
                                            const std::optional<at::Tensor>& attention_mask, bool output_attentions) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    const int64_t batch = hidden_states.size(0);
    const int64_t length = hidden_states.size(1);
    at::Tensor query_states = attention->query->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor key_states = attention->key->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);
    at::Tensor value_states = attention->value->forward(hidden_states).view({batch, length, -1, head_dim}).transpose(1, 2);

    AttentionFunction attention_interface = GetAttentionFunction(config_->attn_implementation, EagerAttentionForward);
    AttentionArguments arguments;
    arguments.scaling = scaling;
    arguments.is_causal = false;
    arguments.output_attentions = output_attentions;
    auto [attn_output, attn_weights] =
        attention_interface(query_states, key_states, value_states, attention_mask, arguments);
    attn_output = attn_output.reshape({batch, length, -1}).contiguous();
    attn_output = output->dense->forward(attn_output);
    debug.Output(attn_output);
    return {attn_output, attn_weights};
  }

  std::shared_ptr<ViTSelfAttentionImpl> attention;
  std::shared_ptr<ViTSelfOutputImpl> output;
  int64_t head_dim;
  double scaling;

 private:
  std::shared_ptr<ViTConfig> config_;
};

// ---- block: ViTMLP ----
// 5.23's ViTMLP (fc1, activation, fc2) in the checkpoint's layout: intermediate.dense, output.dense.
class ViTDenseImpl : public torch::nn::Module {
 public:
  ViTDenseImpl(int64_t in_features, int64_t out_features) {
    dense = register_module("dense", Linear(in_features, out_features, /*bias=*/true));
  }
  Linear dense{nullptr};
};

// ---- block: ViTLayer ----
// Pre-norm: x + attention(layernorm_before(x)), then x + mlp(layernorm_after(x)).
class ViTLayerImpl : public torch::nn::Module {
 public:
  explicit ViTLayerImpl(std::shared_ptr<ViTConfig> config) : hidden_act_(config->hidden_act) {
    attention = register_module("attention", std::make_shared<ViTAttentionImpl>(config));
    intermediate = register_module("intermediate",
                                   std::make_shared<ViTDenseImpl>(config->hidden_size, config->intermediate_size));
    output = register_module("output", std::make_shared<ViTDenseImpl>(config->intermediate_size, config->hidden_size));
    layernorm_before = register_module("layernorm_before",
                                       std::make_shared<ViTLayerNormImpl>(config->hidden_size, config->layer_norm_eps));
    layernorm_after = register_module("layernorm_after",
                                      std::make_shared<ViTLayerNormImpl>(config->hidden_size, config->layer_norm_eps));
  }

  at::Tensor forward(const at::Tensor& hidden_states_in, const std::optional<at::Tensor>& attention_mask,
                     bool output_attentions, at::Tensor* attn_weights) {
    DebugScope debug(this, {{"hidden_states", hidden_states_in}});
    at::Tensor residual = hidden_states_in;
    at::Tensor hidden_states = layernorm_before->forward(hidden_states_in);
    auto [attn_output, weights] = attention->forward(hidden_states, attention_mask, output_attentions);
    if (attn_weights != nullptr) *attn_weights = weights;
    hidden_states = attn_output + residual;

    residual = hidden_states;
    hidden_states = layernorm_after->forward(hidden_states);
    // ViTMLP: fc1 (intermediate.dense), activation, fc2 (output.dense).
    hidden_states = Activation(hidden_act_, intermediate->dense->forward(hidden_states));
    hidden_states = output->dense->forward(hidden_states);
    hidden_states = hidden_states + residual;
    return debug.Output(hidden_states);
  }

  std::shared_ptr<ViTAttentionImpl> attention;
  std::shared_ptr<ViTDenseImpl> intermediate, output;
  std::shared_ptr<ViTLayerNormImpl> layernorm_before, layernorm_after;

 private:
  std::string hidden_act_;
};

// The checkpoint's `encoder.layer` list (5.23's `layers`).
class ViTEncoderImpl : public torch::nn::Module {
 public:
  explicit ViTEncoderImpl(std::shared_ptr<ViTConfig> config) {
    layer = register_module("layer", torch::nn::ModuleList());
    for (int64_t index = 0; index < config->num_hidden_layers; ++index) {
      layers.push_back(std::make_shared<ViTLayerImpl>(config));
      layer->push_back(layers.back());
    }
  }
  torch::nn::ModuleList layer{nullptr};
  std::vector<std::shared_ptr<ViTLayerImpl>> layers;
};

// ---- block: ViTPooler ----
// The first (CLS) token through dense + activation (tanh by default).
class ViTPoolerImpl : public torch::nn::Module {
 public:
  explicit ViTPoolerImpl(const ViTConfig& config) : pooler_act_(config.pooler_act) {
    dense = register_module("dense", Linear(config.hidden_size, config.pooler_output_size, /*bias=*/true));
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    at::Tensor first_token_tensor = hidden_states.select(1, 0);
    return debug.Output(Activation(pooler_act_, dense->forward(first_token_tensor)));
  }

  Linear dense{nullptr};

 private:
  std::string pooler_act_;
};

// ---- block: ViTModel ----
// Embeddings, pre-norm layers, final layernorm, pooler (ViTModel's add_pooling_layer=True; the
// classification head builds it without). Loadable on its own ("ViTModel").
class ViTModel : public PreTrainedModel {
 public:
  ViTModel(std::shared_ptr<ViTConfig> config, bool add_pooling_layer) : config_(std::move(config)) {
    embeddings = register_module("embeddings", std::make_shared<ViTEmbeddingsImpl>(*config_));
    encoder = register_module("encoder", std::make_shared<ViTEncoderImpl>(config_));
    layernorm = register_module("layernorm",
                                std::make_shared<ViTLayerNormImpl>(config_->hidden_size, config_->layer_norm_eps));
    if (add_pooling_layer) pooler = register_module("pooler", std::make_shared<ViTPoolerImpl>(*config_));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    TORCH_CHECK(inputs.pixel_values.has_value() && inputs.pixel_values->dim() == 4,
                "ViTModel: pixel_values must be [batch, channels, height, width]",
                inputs.pixel_values.has_value() ? absl::StrCat(", got ", inputs.pixel_values->dim(), " dimensions")
                                                : std::string(", got none"));
    DebugScope debug(this, {{"pixel_values", *inputs.pixel_values}});
    // As transformers: pixel values are cast to the patch projection's dtype.
    at::Tensor pixel_values = inputs.pixel_values->to(embeddings->patch_embeddings->projection->weight.scalar_type());
    at::Tensor hidden_states = embeddings->forward(pixel_values, inputs.interpolate_pos_encoding);
    // No attention_mask for images: create_bidirectional_mask returns None, every patch sees every patch.
    const std::optional<at::Tensor> attention_mask;

    ModelOutput output;
    if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
    for (auto& layer : encoder->layers) {
      at::Tensor attn_weights;
      hidden_states = layer->forward(hidden_states, attention_mask, inputs.output_attentions, &attn_weights);
      if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
      if (inputs.output_attentions) output.attentions.push_back(attn_weights);
    }
    // As transformers (tie_last_hidden_states=False): hidden_states ends with the last layer's
    // output; last_hidden_state is after the final layernorm.
    at::Tensor sequence_output = layernorm->forward(hidden_states);
    output.last_hidden_state = debug.Output(sequence_output, "last_hidden_state");
    if (pooler) output.pooler_output = debug.Output(pooler->forward(sequence_output), "pooler_output");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return ""; }
  // A ViTForImageClassification checkpoint holds the base model under vit. (without a pooler:
  // DropMissingModule builds ViTModel without it, instead of transformers' random initialisation).
  std::string CheckpointBasePrefix() const override { return "vit."; }
  bool DropMissingModule(const std::string& name) override {
    if (name != "pooler" || !pooler) return false;
    unregister_module("pooler");
    pooler = nullptr;
    return true;
  }

  std::shared_ptr<ViTEmbeddingsImpl> embeddings;
  std::shared_ptr<ViTEncoderImpl> encoder;
  std::shared_ptr<ViTLayerNormImpl> layernorm;
  std::shared_ptr<ViTPoolerImpl> pooler;

 private:
  std::shared_ptr<ViTConfig> config_;
};

// ---- block: ViTForImageClassification ----
// A linear classifier on the final hidden state of the CLS token; logits [batch, num_labels].
class ViTForImageClassification : public PreTrainedModel {
 public:
  explicit ViTForImageClassification(std::shared_ptr<ViTConfig> config) : config_(std::move(config)) {
    TORCH_CHECK(config_->num_labels > 0, "ViTForImageClassification: num_labels must be positive, got ",
                config_->num_labels);
    vit = register_module("vit", std::make_shared<ViTModel>(config_, /*add_pooling_layer=*/false));
    classifier = register_module("classifier", Linear(config_->hidden_size, config_->num_labels, /*bias=*/true));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {});
    ModelOutput output = vit->Forward(inputs);
    at::Tensor pooled_output = output.last_hidden_state.select(1, 0);
    output.logits = debug.Output(classifier->forward(pooled_output), "logits");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return "vit."; }

  static absl::StatusOr<std::shared_ptr<PreTrainedModel>> FromConfig(const nlohmann::json& json) {
    auto config = ViTConfig::FromJson(json);
    if (!config.ok()) return config.status();
    return std::make_shared<ViTForImageClassification>(*config);
  }

  std::shared_ptr<ViTModel> vit;
  Linear classifier{nullptr};

 private:
  std::shared_ptr<ViTConfig> config_;
};

// ---- block: Registration ----
absl::StatusOr<std::shared_ptr<PreTrainedModel>> ViTModelFromConfig(const nlohmann::json& json) {
  auto config = ViTConfig::FromJson(json);
  if (!config.ok()) return config.status();
  return std::make_shared<ViTModel>(*config, /*add_pooling_layer=*/true);
}

FLOTILLA_REGISTER_MODEL("vit", "ViTModel", ViTModelFromConfig);
FLOTILLA_REGISTER_MODEL("vit", "ViTForImageClassification", ViTForImageClassification::FromConfig);

}  // namespace flotilla::models::vit
