// BERT (model_type "bert": bert-base, MiniLM, all-MiniLM-L6-v2 and other sentence encoders), read
// top to bottom as transformers' models/bert/modeling_bert.py: config, LayerNorm, activation,
// embeddings (word + token type + absolute position), eager attention, self-attention, attention
// output, intermediate, layer output, layer, encoder, pooler, bare model, masked-LM head,
// sequence-classification head, registration.
//
// Submodules carry the checkpoint's names (bert.encoder.layer.0.attention.self.query.weight), so
// loading needs no renaming table. Attention is bidirectional; padding comes in through the
// attention mask (masks.h). Infrastructure lives in models/*.h; model behaviour lives here.
// Sentence embeddings (mean pooling, normalisation) are not model behaviour: see models/pooling.h.
//
// The `// ---- block: Name ----` lines delimit the blocks a modular shard (modular_<name>.cpp)
// inherits, edits, replaces or removes; see tools/modular/README.md.

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

namespace flotilla::models::bert {

// ---- block: BertConfig ----
// configuration_bert.py: field names and defaults as transformers has them.
struct BertConfig : PretrainedConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;

  static absl::StatusOr<std::shared_ptr<BertConfig>> FromJson(const nlohmann::json& json) {
    auto config = std::make_shared<BertConfig>();
    ConfigReader reader(json, "config.json");
    config->tie_word_embeddings = true;
    reader.Common(*config);
    if (!reader.Has("pad_token_id")) config->pad_token_id = 0;
    config->vocab_size = reader.Int("vocab_size", 30522);
    config->hidden_size = reader.Int("hidden_size", 768);
    config->num_hidden_layers = reader.Int("num_hidden_layers", 12);
    config->num_attention_heads = reader.Int("num_attention_heads", 12);
    config->intermediate_size = reader.Int("intermediate_size", 3072);
    config->hidden_act = reader.String("hidden_act", "gelu");
    config->max_position_embeddings = reader.Int("max_position_embeddings", 512);
    config->type_vocab_size = reader.Int("type_vocab_size", 2);
    config->layer_norm_eps = reader.Double("layer_norm_eps", 1e-12);
    if (reader.Bool("is_decoder", false)) reader.Fail("is_decoder: only the bidirectional encoder is supported");
    if (config->num_attention_heads <= 0 || config->hidden_size % config->num_attention_heads != 0) {
      reader.Fail(absl::StrCat("hidden_size (", config->hidden_size, ") must be a multiple of num_attention_heads (",
                               config->num_attention_heads, ")"));
    }
    if (!IsSupportedActivation(config->hidden_act)) {
      reader.Fail(absl::StrCat("hidden_act: expected gelu, gelu_new, gelu_pytorch_tanh, relu, silu or tanh, got ",
                               config->hidden_act));
    }
    absl::Status status = reader.Finish(*config);
    if (!status.ok()) return status;
    return config;
  }

  static bool IsSupportedActivation(const std::string& name) {
    return name == "gelu" || name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast" ||
           name == "relu" || name == "silu" || name == "swish" || name == "tanh";
  }
};

// ---- block: Activation ----
// transformers' ACT2FN for the names BertConfig accepts: "gelu" is the exact (erf) GELU; the
// gelu_new family is the tanh approximation.
at::Tensor Activation(const std::string& name, const at::Tensor& x) {
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") return at::gelu(x, "tanh");
  if (name == "relu") return at::relu(x);
  if (name == "silu" || name == "swish") return at::silu(x);
  return at::tanh(x);
}

// ---- block: BertLayerNorm ----
// nn.LayerNorm with checkpoint names (weight, bias).
class BertLayerNormImpl : public torch::nn::Module {
 public:
  BertLayerNormImpl(int64_t hidden_size, double eps) : hidden_size_(hidden_size), eps_(eps) {
    weight = register_parameter("weight", at::empty({hidden_size}), /*requires_grad=*/false);
    bias = register_parameter("bias", at::empty({hidden_size}), /*requires_grad=*/false);
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    return at::layer_norm(hidden_states, {hidden_size_}, weight, bias, eps_);
  }

  at::Tensor weight;
  at::Tensor bias;

 private:
  int64_t hidden_size_;
  double eps_;
};

// ---- block: BertEmbeddings ----
// Word + token type + absolute position embeddings, then LayerNorm (dropout is identity here).
class BertEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit BertEmbeddingsImpl(const BertConfig& config) : padding_idx_(config.pad_token_id.value_or(0)) {
    word_embeddings = register_module("word_embeddings", Embedding(config.vocab_size, config.hidden_size));
    position_embeddings =
        register_module("position_embeddings", Embedding(config.max_position_embeddings, config.hidden_size));
    token_type_embeddings =
        register_module("token_type_embeddings", Embedding(config.type_vocab_size, config.hidden_size));
    LayerNorm = register_module("LayerNorm", std::make_shared<BertLayerNormImpl>(config.hidden_size,
                                                                                  config.layer_norm_eps));
  }

  at::Tensor forward(const at::Tensor& input_ids, const std::optional<at::Tensor>& token_type_ids_in,
                     const std::optional<at::Tensor>& position_ids_in) {
    DebugScope debug(this, {{"input_ids", input_ids}});
    const int64_t length = input_ids.size(1);
    at::Tensor position_ids = position_ids_in.has_value() ? *position_ids_in : CreatePositionIds(input_ids);
    // transformers gathers its all-zero token_type_ids buffer: zeros when none are given.
    at::Tensor token_type_ids = token_type_ids_in.has_value()
                                    ? *token_type_ids_in
                                    : at::zeros({input_ids.size(0), length}, input_ids.options().dtype(at::kLong));
    at::Tensor inputs_embeds = word_embeddings->forward(input_ids);
    at::Tensor embeddings = inputs_embeds + token_type_embeddings->forward(token_type_ids);
    embeddings = embeddings + position_embeddings->forward(position_ids);
    embeddings = LayerNorm->forward(embeddings);
    return debug.Output(embeddings);
  }

  // Absolute positions 0..length-1, whatever the padding (as transformers' position_ids buffer).
  at::Tensor CreatePositionIds(const at::Tensor& input_ids) {
    return at::arange(input_ids.size(1), input_ids.options().dtype(at::kLong)).unsqueeze(0);
  }

  Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  std::shared_ptr<BertLayerNormImpl> LayerNorm;

 private:
  int64_t padding_idx_;
};

// ---- block: EagerAttentionForward ----
// The reference attention: scores, additive mask, softmax in the query's dtype (BERT's eager does
// not upcast), weighted values.
std::pair<at::Tensor, at::Tensor> EagerAttentionForward(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const std::optional<at::Tensor>& attention_mask,
                                                        const AttentionArguments& arguments) {
  at::Tensor attn_weights = at::matmul(query, key.transpose(2, 3)) * arguments.scaling;
  if (attention_mask.has_value()) attn_weights = attn_weights + *attention_mask;
  attn_weights = at::softmax(attn_weights, -1);
  at::Tensor attn_output = at::matmul(attn_weights, value).transpose(1, 2).contiguous();
  return {attn_output, attn_weights};
}

// ---- block: BertSelfAttention ----
class BertSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit BertSelfAttentionImpl(std::shared_ptr<BertConfig> config) : config_(std::move(config)) {
    const BertConfig& c = *config_;
    attention_head_size = c.hidden_size / c.num_attention_heads;
    const int64_t all_head_size = c.num_attention_heads * attention_head_size;
    scaling = std::pow(static_cast<double>(attention_head_size), -0.5);
    query = register_module("query", Linear(c.hidden_size, all_head_size, /*bias=*/true));
    key = register_module("key", Linear(c.hidden_size, all_head_size, /*bias=*/true));
    value = register_module("value", Linear(c.hidden_size, all_head_size, /*bias=*/true));
  }

  // Returns the attention output [batch, length, hidden] and the weights (eager only).
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& hidden_states,
                                            const std::optional<at::Tensor>& attention_mask, bool output_attentions) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    const int64_t batch = hidden_states.size(0);
    const int64_t length = hidden_states.size(1);
    at::Tensor query_layer = query->forward(hidden_states).view({batch, length, -1, attention_head_size}).transpose(1, 2);
    at::Tensor key_layer = key->forward(hidden_states).view({batch, length, -1, attention_head_size}).transpose(1, 2);
    at::Tensor value_layer = value->forward(hidden_states).view({batch, length, -1, attention_head_size}).transpose(1, 2);

    AttentionFunction attention_interface = GetAttentionFunction(config_->attn_implementation, EagerAttentionForward);
    AttentionArguments arguments;
    arguments.scaling = scaling;
    arguments.is_causal = false;
    arguments.output_attentions = output_attentions;
    auto [attn_output, attn_weights] = attention_interface(query_layer, key_layer, value_layer, attention_mask, arguments);
    attn_output = attn_output.reshape({batch, length, -1}).contiguous();
    debug.Output(attn_output);
    return {attn_output, attn_weights};
  }

  Linear query{nullptr}, key{nullptr}, value{nullptr};
  int64_t attention_head_size;
  double scaling;

 private:
  std::shared_ptr<BertConfig> config_;
};

// ---- block: BertSelfOutput ----
class BertSelfOutputImpl : public torch::nn::Module {
 public:
  explicit BertSelfOutputImpl(const BertConfig& config) {
    dense = register_module("dense", Linear(config.hidden_size, config.hidden_size, /*bias=*/true));
    LayerNorm = register_module("LayerNorm", std::make_shared<BertLayerNormImpl>(config.hidden_size,
                                                                                  config.layer_norm_eps));
  }

  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& input_tensor) {
    DebugScope debug(this, {{"hidden_states", hidden_states}, {"input_tensor", input_tensor}});
    return debug.Output(LayerNorm->forward(dense->forward(hidden_states) + input_tensor));
  }

  Linear dense{nullptr};
  std::shared_ptr<BertLayerNormImpl> LayerNorm;
};

// ---- block: BertAttention ----
class BertAttentionImpl : public torch::nn::Module {
 public:
  explicit BertAttentionImpl(std::shared_ptr<BertConfig> config) {
    self = register_module("self", std::make_shared<BertSelfAttentionImpl>(config));
    output = register_module("output", std::make_shared<BertSelfOutputImpl>(*config));
  }

  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& hidden_states,
                                            const std::optional<at::Tensor>& attention_mask, bool output_attentions) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    auto [attention_output, attn_weights] = self->forward(hidden_states, attention_mask, output_attentions);
    attention_output = output->forward(attention_output, hidden_states);
    debug.Output(attention_output);
    return {attention_output, attn_weights};
  }

  std::shared_ptr<BertSelfAttentionImpl> self;
  std::shared_ptr<BertSelfOutputImpl> output;
};

// ---- block: BertIntermediate ----
class BertIntermediateImpl : public torch::nn::Module {
 public:
  explicit BertIntermediateImpl(const BertConfig& config) : hidden_act_(config.hidden_act) {
    dense = register_module("dense", Linear(config.hidden_size, config.intermediate_size, /*bias=*/true));
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    return debug.Output(Activation(hidden_act_, dense->forward(hidden_states)));
  }

  Linear dense{nullptr};

 private:
  std::string hidden_act_;
};

// ---- block: BertOutput ----
class BertOutputImpl : public torch::nn::Module {
 public:
  explicit BertOutputImpl(const BertConfig& config) {
    dense = register_module("dense", Linear(config.intermediate_size, config.hidden_size, /*bias=*/true));
    LayerNorm = register_module("LayerNorm", std::make_shared<BertLayerNormImpl>(config.hidden_size,
                                                                                  config.layer_norm_eps));
  }

  at::Tensor forward(const at::Tensor& hidden_states, const at::Tensor& input_tensor) {
    DebugScope debug(this, {{"hidden_states", hidden_states}, {"input_tensor", input_tensor}});
    return debug.Output(LayerNorm->forward(dense->forward(hidden_states) + input_tensor));
  }

  Linear dense{nullptr};
  std::shared_ptr<BertLayerNormImpl> LayerNorm;
};

// ---- block: BertLayer ----
class BertLayerImpl : public torch::nn::Module {
 public:
  explicit BertLayerImpl(std::shared_ptr<BertConfig> config) {
    attention = register_module("attention", std::make_shared<BertAttentionImpl>(config));
    intermediate = register_module("intermediate", std::make_shared<BertIntermediateImpl>(*config));
    output = register_module("output", std::make_shared<BertOutputImpl>(*config));
  }

  at::Tensor forward(const at::Tensor& hidden_states, const std::optional<at::Tensor>& attention_mask,
                     bool output_attentions, at::Tensor* attn_weights) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    auto [attention_output, weights] = attention->forward(hidden_states, attention_mask, output_attentions);
    if (attn_weights != nullptr) *attn_weights = weights;
    // feed_forward_chunk (chunk_size_feed_forward only trades memory for time; the result is the same).
    at::Tensor intermediate_output = intermediate->forward(attention_output);
    return debug.Output(output->forward(intermediate_output, attention_output));
  }

  std::shared_ptr<BertAttentionImpl> attention;
  std::shared_ptr<BertIntermediateImpl> intermediate;
  std::shared_ptr<BertOutputImpl> output;
};

// ---- block: BertEncoder ----
class BertEncoderImpl : public torch::nn::Module {
 public:
  explicit BertEncoderImpl(std::shared_ptr<BertConfig> config) {
    layer = register_module("layer", torch::nn::ModuleList());
    for (int64_t layer_idx = 0; layer_idx < config->num_hidden_layers; ++layer_idx) {
      layers.push_back(std::make_shared<BertLayerImpl>(config));
      layer->push_back(layers.back());
    }
  }

  // Appends the input of every layer and the last output to output.hidden_states when asked (as
  // transformers records them: embeddings, then each layer's output).
  at::Tensor forward(const at::Tensor& hidden_states_in, const std::optional<at::Tensor>& attention_mask,
                     const ForwardInputs& inputs, ModelOutput& output) {
    DebugScope debug(this, {{"hidden_states", hidden_states_in}});
    at::Tensor hidden_states = hidden_states_in;
    for (auto& layer_module : layers) {
      if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
      at::Tensor attn_weights;
      hidden_states = layer_module->forward(hidden_states, attention_mask, inputs.output_attentions, &attn_weights);
      if (inputs.output_attentions) output.attentions.push_back(attn_weights);
    }
    if (inputs.output_hidden_states) output.hidden_states.push_back(hidden_states);
    return debug.Output(hidden_states);
  }

  torch::nn::ModuleList layer{nullptr};
  std::vector<std::shared_ptr<BertLayerImpl>> layers;
};

// ---- block: BertPooler ----
// The first token's hidden state through dense + tanh.
class BertPoolerImpl : public torch::nn::Module {
 public:
  explicit BertPoolerImpl(const BertConfig& config) {
    dense = register_module("dense", Linear(config.hidden_size, config.hidden_size, /*bias=*/true));
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    at::Tensor first_token_tensor = hidden_states.select(1, 0);
    return debug.Output(at::tanh(dense->forward(first_token_tensor)));
  }

  Linear dense{nullptr};
};

// ---- block: BertModel ----
// The bare encoder: embeddings, layers, pooler (when add_pooling_layer). Also loadable on its own
// ("BertModel", as sentence-transformers checkpoints are).
class BertModel : public PreTrainedModel {
 public:
  BertModel(std::shared_ptr<BertConfig> config, bool add_pooling_layer) : config_(std::move(config)) {
    embeddings = register_module("embeddings", std::make_shared<BertEmbeddingsImpl>(*config_));
    encoder = register_module("encoder", std::make_shared<BertEncoderImpl>(config_));
    if (add_pooling_layer) pooler = register_module("pooler", std::make_shared<BertPoolerImpl>(*config_));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    TORCH_CHECK(inputs.input_ids.dim() == 2, "BertModel: input_ids must be [batch, length], got ",
                inputs.input_ids.sizes());
    TORCH_CHECK(inputs.past_key_values == nullptr, "BertModel: an encoder takes no KV cache");
    const int64_t batch = inputs.input_ids.size(0);
    const int64_t length = inputs.input_ids.size(1);
    TORCH_CHECK(length <= config_->max_position_embeddings, "BertModel: input length ", length,
                " exceeds max_position_embeddings (", config_->max_position_embeddings, ")");
    if (inputs.token_type_ids.has_value()) {
      TORCH_CHECK(inputs.token_type_ids->sizes() == inputs.input_ids.sizes(), "BertModel: token_type_ids ",
                  inputs.token_type_ids->sizes(), " must have the shape of input_ids ", inputs.input_ids.sizes());
      if (inputs.token_type_ids->numel() > 0) {
        const int64_t minimum = inputs.token_type_ids->min().item<int64_t>();
        const int64_t maximum = inputs.token_type_ids->max().item<int64_t>();
        TORCH_CHECK(minimum >= 0 && maximum < config_->type_vocab_size, "BertModel: token type id ",
                    minimum < 0 ? minimum : maximum, " is outside [0, type_vocab_size=", config_->type_vocab_size, ")");
      }
    }
    at::Tensor embedding_output = embeddings->forward(inputs.input_ids, inputs.token_type_ids, inputs.position_ids);

    MaskArguments mask_arguments;
    mask_arguments.batch_size = batch;
    mask_arguments.query_length = length;
    mask_arguments.attention_mask = inputs.attention_mask;
    mask_arguments.implementation = config_->attn_implementation;
    mask_arguments.dtype = embedding_output.scalar_type();
    mask_arguments.device = embedding_output.device();
    std::optional<at::Tensor> attention_mask = CreateBidirectionalMask(mask_arguments);

    ModelOutput output;
    at::Tensor sequence_output = encoder->forward(embedding_output, attention_mask, inputs, output);
    output.last_hidden_state = sequence_output;
    if (pooler) {
      output.pooler_output = pooler->forward(sequence_output);
      debug.Outputs({{"last_hidden_state", sequence_output}, {"pooler_output", output.pooler_output}});
    } else {
      debug.Output(sequence_output, "last_hidden_state");
    }
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return ""; }
  std::string CheckpointBasePrefix() const override { return "bert."; }
  // From a BertForMaskedLM checkpoint (whose BertModel has no pooler): built without it, so the
  // outputs have no pooler_output (transformers would initialise the pooler randomly).
  bool DropMissingModule(const std::string& name) override {
    if (name != "pooler" || !pooler) return false;
    unregister_module("pooler");
    pooler = nullptr;
    return true;
  }
  TensorParallelPlan BaseModelTensorParallelPlan() const override {
    TensorParallelPlan plan;
    plan.Add("encoder.layer.*.attention.self.query", ParallelStyle::kColwise);
    plan.Add("encoder.layer.*.attention.self.key", ParallelStyle::kColwise);
    plan.Add("encoder.layer.*.attention.self.value", ParallelStyle::kColwise);
    plan.Add("encoder.layer.*.attention.output.dense", ParallelStyle::kRowwise);
    plan.Add("encoder.layer.*.intermediate.dense", ParallelStyle::kColwise);
    plan.Add("encoder.layer.*.output.dense", ParallelStyle::kRowwise);
    return plan;
  }

  std::shared_ptr<BertEmbeddingsImpl> embeddings;
  std::shared_ptr<BertEncoderImpl> encoder;
  std::shared_ptr<BertPoolerImpl> pooler;

 private:
  std::shared_ptr<BertConfig> config_;
};

// ---- block: BertPredictionHeadTransform ----
class BertPredictionHeadTransformImpl : public torch::nn::Module {
 public:
  explicit BertPredictionHeadTransformImpl(const BertConfig& config) : hidden_act_(config.hidden_act) {
    dense = register_module("dense", Linear(config.hidden_size, config.hidden_size, /*bias=*/true));
    LayerNorm = register_module("LayerNorm", std::make_shared<BertLayerNormImpl>(config.hidden_size,
                                                                                  config.layer_norm_eps));
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    return debug.Output(LayerNorm->forward(Activation(hidden_act_, dense->forward(hidden_states))));
  }

  Linear dense{nullptr};
  std::shared_ptr<BertLayerNormImpl> LayerNorm;

 private:
  std::string hidden_act_;
};

// ---- block: BertLMPredictionHead ----
// decoder.weight is tied to the word embeddings and decoder.bias to `bias` when the config ties
// them (TiedWeights); untied checkpoints carry decoder.bias, which is the one the forward uses.
class BertLMPredictionHeadImpl : public torch::nn::Module {
 public:
  explicit BertLMPredictionHeadImpl(const BertConfig& config) {
    transform = register_module("transform", std::make_shared<BertPredictionHeadTransformImpl>(config));
    decoder = register_module("decoder", Linear(config.hidden_size, config.vocab_size, /*bias=*/true));
    bias = register_parameter("bias", at::empty({config.vocab_size}), /*requires_grad=*/false);
  }

  at::Tensor forward(const at::Tensor& hidden_states) {
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    return debug.Output(decoder->forward(transform->forward(hidden_states)));
  }

  std::shared_ptr<BertPredictionHeadTransformImpl> transform;
  Linear decoder{nullptr};
  at::Tensor bias;
};

// ---- block: BertOnlyMLMHead ----
class BertOnlyMLMHeadImpl : public torch::nn::Module {
 public:
  explicit BertOnlyMLMHeadImpl(const BertConfig& config) {
    predictions = register_module("predictions", std::make_shared<BertLMPredictionHeadImpl>(config));
  }

  at::Tensor forward(const at::Tensor& sequence_output) { return predictions->forward(sequence_output); }

  std::shared_ptr<BertLMPredictionHeadImpl> predictions;
};

// ---- block: BertForMaskedLM ----
class BertForMaskedLM : public PreTrainedModel {
 public:
  explicit BertForMaskedLM(std::shared_ptr<BertConfig> config) : config_(std::move(config)) {
    bert = register_module("bert", std::make_shared<BertModel>(config_, /*add_pooling_layer=*/false));
    cls = register_module("cls", std::make_shared<BertOnlyMLMHeadImpl>(*config_));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    ModelOutput output = bert->Forward(inputs);
    output.logits = debug.Output(cls->forward(output.last_hidden_state), "logits");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return "bert."; }
  TensorParallelPlan BaseModelTensorParallelPlan() const override { return bert->BaseModelTensorParallelPlan(); }
  std::map<std::string, std::string> TiedWeights() const override {
    return {{"cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight"},
            {"cls.predictions.decoder.bias", "cls.predictions.bias"}};
  }

  std::shared_ptr<BertModel> bert;
  std::shared_ptr<BertOnlyMLMHeadImpl> cls;

 private:
  std::shared_ptr<BertConfig> config_;
};

// ---- block: BertForSequenceClassification ----
// The pooled output through the classifier (dropout is identity here): logits [batch, num_labels].
class BertForSequenceClassification : public PreTrainedModel {
 public:
  explicit BertForSequenceClassification(std::shared_ptr<BertConfig> config) : config_(std::move(config)) {
    bert = register_module("bert", std::make_shared<BertModel>(config_, /*add_pooling_layer=*/true));
    classifier = register_module("classifier", Linear(config_->hidden_size, config_->num_labels, /*bias=*/true));
  }

  ModelOutput Forward(const ForwardInputs& inputs) override {
    c10::InferenceMode inference_mode;
    DebugScope debug(this, {{"input_ids", inputs.input_ids}});
    ModelOutput output = bert->Forward(inputs);
    output.logits = debug.Output(classifier->forward(output.pooler_output), "logits");
    return output;
  }

  const PretrainedConfig& config() const override { return *config_; }
  PretrainedConfig& mutable_config() override { return *config_; }
  std::string BaseModelPrefix() const override { return "bert."; }
  TensorParallelPlan BaseModelTensorParallelPlan() const override { return bert->BaseModelTensorParallelPlan(); }

  std::shared_ptr<BertModel> bert;
  Linear classifier{nullptr};

 private:
  std::shared_ptr<BertConfig> config_;
};

// ---- block: Registration ----
template <typename Head>
absl::StatusOr<std::shared_ptr<PreTrainedModel>> HeadFromConfig(const nlohmann::json& json) {
  auto config = BertConfig::FromJson(json);
  if (!config.ok()) return config.status();
  return std::make_shared<Head>(*config);
}

absl::StatusOr<std::shared_ptr<PreTrainedModel>> BertModelFromConfig(const nlohmann::json& json) {
  auto config = BertConfig::FromJson(json);
  if (!config.ok()) return config.status();
  return std::make_shared<BertModel>(*config, /*add_pooling_layer=*/true);
}

FLOTILLA_REGISTER_MODEL("bert", "BertModel", BertModelFromConfig);
FLOTILLA_REGISTER_MODEL("bert", "BertForMaskedLM", HeadFromConfig<BertForMaskedLM>);
FLOTILLA_REGISTER_MODEL("bert", "BertForSequenceClassification", HeadFromConfig<BertForSequenceClassification>);

}  // namespace flotilla::models::bert
