#include "models/layers.h"

#include "models/debugger.h"

namespace flotilla::models {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias)
    : in_features(in_features), out_features(out_features), has_bias(bias) {
  reset();
}

void LinearImpl::reset() {
  weight = register_parameter("weight", at::empty({out_features, in_features}), /*requires_grad=*/false);
  if (has_bias) bias = register_parameter("bias", at::empty({out_features}), /*requires_grad=*/false);
}

at::Tensor LinearImpl::forward(const at::Tensor& input) {
  DebugScope debug(this, {{"input", input}});
  return debug.Output(at::linear(input, weight, bias));
}

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
    : num_embeddings(num_embeddings), embedding_dim(embedding_dim) {
  reset();
}

void EmbeddingImpl::reset() {
  weight = register_parameter("weight", at::empty({num_embeddings, embedding_dim}), /*requires_grad=*/false);
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& input_ids) {
  DebugScope debug(this, {{"input_ids", input_ids}});
  if (input_ids.numel() > 0) {
    const int64_t minimum = input_ids.min().item<int64_t>();
    const int64_t maximum = input_ids.max().item<int64_t>();
    TORCH_CHECK(minimum >= 0 && maximum < num_embeddings, "Embedding: input id ", minimum < 0 ? minimum : maximum,
                " is outside the vocabulary [0, ", num_embeddings, ")");
  }
  return debug.Output(at::embedding(weight, input_ids));
}

}  // namespace flotilla::models
