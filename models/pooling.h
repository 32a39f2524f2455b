// Sentence embeddings as sentence-transformers computes them: pool the encoder's last hidden state
// over the attention mask (mean, cls or max, from the checkpoint's 1_Pooling/config.json), then L2
// normalise when modules.json lists a Normalize module. Kept out of the model files on purpose:
// the model returns hidden states; turning them into one vector per text is the caller's choice.
//
//   auto pooling = ReadSentenceEmbeddingConfig("/models/all-MiniLM-L6-v2");   // mean + normalize
//   ModelOutput output = model->Forward({.input_ids = ids, .attention_mask = mask});
//   at::Tensor embeddings = SentenceEmbeddings(output.last_hidden_state, mask, *pooling);  // [batch, hidden]
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"

namespace flotilla::models {

struct SentenceEmbeddingConfig {
  std::string pooling_mode = "mean";  // "mean", "cls" or "max"
  bool normalize = true;
  // sentence_bert_config.json's max_seq_length (the tokenizer truncates to it), when present.
  std::optional<int64_t> max_seq_length;
};

// Reads modules.json, <pooling module>/config.json and sentence_bert_config.json from `folder`.
// A folder without them (a plain transformers checkpoint) gets mean pooling and normalisation.
absl::StatusOr<SentenceEmbeddingConfig> ReadSentenceEmbeddingConfig(const std::string& folder);

// token_embeddings: [batch, length, hidden]; attention_mask: [batch, length], 1 = token.
// Sums in float32 for half types and returns the embeddings' dtype, as sentence-transformers.
at::Tensor MeanPooling(const at::Tensor& token_embeddings, const at::Tensor& attention_mask);
at::Tensor ClsPooling(const at::Tensor& token_embeddings, const at::Tensor& attention_mask);
at::Tensor MaxPooling(const at::Tensor& token_embeddings, const at::Tensor& attention_mask);
// F.normalize(p=2, dim=-1): x / max(||x||, 1e-12).
at::Tensor L2Normalize(const at::Tensor& embeddings);

at::Tensor SentenceEmbeddings(const at::Tensor& last_hidden_state, const at::Tensor& attention_mask,
                              const SentenceEmbeddingConfig& config);

}  // namespace flotilla::models
