// Modular shard for RoBERTa: BERT with padding-aware position ids (padding_idx + the running count
// of non-padding tokens, as transformers' create_position_ids_from_input_ids), RoBERTa's config
// defaults, an `lm_head` masked-LM head (dense, gelu, layer_norm, decoder) and a classification
// head on the first token's hidden state (no pooler). tools/modular/modular.py expands it into
// modeling_roberta.cpp; compare transformers' models/roberta/modular_roberta.py.

//! parent: bert
//! rename: Bert -> Roberta
//! rename: bert -> roberta

//! header
// RoBERTa (model_type "roberta": roberta-base, distilroberta, many sentence encoders), read top to
// bottom as transformers' models/roberta/modeling_roberta.py: config, LayerNorm, activation,
// embeddings (word + token type + padding-aware position), eager attention, self-attention,
// attention output, intermediate, layer output, layer, encoder, pooler, bare model, LM head,
// masked-LM head, classification head, sequence-classification head, registration.
//
// Submodules carry the checkpoint's names (roberta.encoder.layer.0.attention.self.query.weight),
// so loading needs no renaming table. Attention is bidirectional; padding comes in through the
// attention mask (masks.h). Infrastructure lives in models/*.h; model behaviour lives here.
// Sentence embeddings (mean pooling, normalisation) are not model behaviour: see models/pooling.h.

//! end

//! edit block RobertaConfig
//! find
  int64_t vocab_size = 30522;
//! with
  int64_t vocab_size = 50265;
//! find
    if (!reader.Has("pad_token_id")) config->pad_token_id = 0;
//! with
    if (!reader.Has("pad_token_id")) config->pad_token_id = 1;
    if (!reader.Has("bos_token_id")) config->bos_token_id = 0;
    if (!reader.Has("eos_token_id")) config->eos_token_id = {2};
//! find
    config->vocab_size = reader.Int("vocab_size", 30522);
//! with
    config->vocab_size = reader.Int("vocab_size", 50265);
//! end

//! edit block RobertaEmbeddings
//! find
  // Absolute positions 0..length-1, whatever the padding (as transformers' position_ids buffer).
  at::Tensor CreatePositionIds(const at::Tensor& input_ids) {
    return at::arange(input_ids.size(1), input_ids.options().dtype(at::kLong)).unsqueeze(0);
  }
//! with
  // create_position_ids_from_input_ids: non-padding tokens count from padding_idx + 1; padding
  // tokens keep padding_idx (so right or left padding gives each real token the same position).
  at::Tensor CreatePositionIds(const at::Tensor& input_ids) {
    at::Tensor mask = input_ids.ne(padding_idx_).to(at::kInt);
    at::Tensor incremental_indices = at::cumsum(mask, 1).to(at::kInt) * mask;
    return incremental_indices.to(at::kLong) + padding_idx_;
  }
//! end

//! remove block RobertaPredictionHeadTransform
//! remove block RobertaLMPredictionHead
//! remove block RobertaOnlyMLMHead

//! insert after RobertaModel block RobertaLMHead
// RobertaLMHead: dense, gelu (always the exact one), layer_norm, decoder. decoder.weight is tied
// to the word embeddings and decoder.bias to `bias` when the config ties them.
class RobertaLMHeadImpl : public torch::nn::Module {
 public:
  explicit RobertaLMHeadImpl(const RobertaConfig& config) {
    dense = register_module("dense", Linear(config.hidden_size, config.hidden_size, /*bias=*/true));
    layer_norm = register_module("layer_norm", std::make_shared<RobertaLayerNormImpl>(config.hidden_size,
                                                                                       config.layer_norm_eps));
    decoder = register_module("decoder", Linear(config.hidden_size, config.vocab_size, /*bias=*/true));
    bias = register_parameter("bias", at::empty({config.vocab_size}), /*requires_grad=*/false);
  }

  at::Tensor forward(const at::Tensor& features) {
    DebugScope debug(this, {{"features", features}});
    at::Tensor x = dense->forward(features);
    x = at::gelu(x);
    x = layer_norm->forward(x);
    return debug.Output(decoder->forward(x));
  }

  Linear dense{nullptr};
  std::shared_ptr<RobertaLayerNormImpl> layer_norm;
  Linear decoder{nullptr};
  at::Tensor bias;
};

//! end

//! edit block RobertaForMaskedLM
//! find
    cls = register_module("cls", std::make_shared<RobertaOnlyMLMHeadImpl>(*config_));
//! with
    lm_head = register_module("lm_head", std::make_shared<RobertaLMHeadImpl>(*config_));
//! find
    output.logits = debug.Output(cls->forward(output.last_hidden_state), "logits");
//! with
    output.logits = debug.Output(lm_head->forward(output.last_hidden_state), "logits");
//! find
    return {{"cls.predictions.decoder.weight", "roberta.embeddings.word_embeddings.weight"},
            {"cls.predictions.decoder.bias", "cls.predictions.bias"}};
//! with
    return {{"lm_head.decoder.weight", "roberta.embeddings.word_embeddings.weight"},
            {"lm_head.decoder.bias", "lm_head.bias"}};
//! find
  std::shared_ptr<RobertaOnlyMLMHeadImpl> cls;
//! with
  std::shared_ptr<RobertaLMHeadImpl> lm_head;
//! end

//! insert after RobertaForMaskedLM block RobertaClassificationHead
// The <s> token's hidden state through dense, tanh, out_proj (dropout is identity here).
class RobertaClassificationHeadImpl : public torch::nn::Module {
 public:
  explicit RobertaClassificationHeadImpl(const RobertaConfig& config) {
    dense = register_module("dense", Linear(config.hidden_size, config.hidden_size, /*bias=*/true));
    out_proj = register_module("out_proj", Linear(config.hidden_size, config.num_labels, /*bias=*/true));
  }

  at::Tensor forward(const at::Tensor& features) {
    DebugScope debug(this, {{"features", features}});
    at::Tensor x = features.select(1, 0);
    x = at::tanh(dense->forward(x));
    return debug.Output(out_proj->forward(x));
  }

  Linear dense{nullptr}, out_proj{nullptr};
};

//! end

//! edit block RobertaForSequenceClassification
//! find
// The pooled output through the classifier (dropout is identity here): logits [batch, num_labels].
//! with
// The classification head on the last hidden state (no pooler): logits [batch, num_labels].
//! find
    roberta = register_module("roberta", std::make_shared<RobertaModel>(config_, /*add_pooling_layer=*/true));
    classifier = register_module("classifier", Linear(config_->hidden_size, config_->num_labels, /*bias=*/true));
//! with
    roberta = register_module("roberta", std::make_shared<RobertaModel>(config_, /*add_pooling_layer=*/false));
    classifier = register_module("classifier", std::make_shared<RobertaClassificationHeadImpl>(*config_));
//! find
    output.logits = debug.Output(classifier->forward(output.pooler_output), "logits");
//! with
    output.logits = debug.Output(classifier->forward(output.last_hidden_state), "logits");
//! find
  Linear classifier{nullptr};
//! with
  std::shared_ptr<RobertaClassificationHeadImpl> classifier;
//! end
