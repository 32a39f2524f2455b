// The two parameter-holding layers model files share: Linear and Embedding, with transformers'
// parameter names (`weight`, `bias`) and no random initialisation — the loader fills the
// parameters from the checkpoint (so building a 7B model costs no time and touches no memory).
//
//   Linear q_proj = register_module("q_proj", Linear(hidden_size, num_heads * head_dim, /*bias=*/false));
//   at::Tensor query_states = q_proj->forward(hidden_states);   // at::linear
//
// Thread-safety: forward is const with respect to the module; many threads may run it.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace flotilla::models {

class LinearImpl : public torch::nn::Cloneable<LinearImpl> {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias);
  void reset() override;
  at::Tensor forward(const at::Tensor& input);

  int64_t in_features;
  int64_t out_features;
  bool has_bias;
  at::Tensor weight;  // [out_features, in_features]
  at::Tensor bias;    // [out_features], undefined without bias
};
TORCH_MODULE(Linear);

class EmbeddingImpl : public torch::nn::Cloneable<EmbeddingImpl> {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim);
  void reset() override;
  // Ids outside [0, num_embeddings) are an error naming the first offending id.
  at::Tensor forward(const at::Tensor& input_ids);

  int64_t num_embeddings;
  int64_t embedding_dim;
  at::Tensor weight;  // [num_embeddings, embedding_dim]
};
TORCH_MODULE(Embedding);

}  // namespace flotilla::models
