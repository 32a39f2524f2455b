// The parameter-holding layers model files share: Linear, Embedding and GPT-2's Conv1D, with
// transformers' parameter names (`weight`, `bias`) and no random initialisation — the loader fills the
// parameters from the checkpoint (so building a 7B model costs no time and touches no memory).
//
//   Linear q_proj = register_module("q_proj", Linear(hidden_size, num_heads * head_dim, /*bias=*/false));
//   at::Tensor query_states = q_proj->forward(hidden_states);   // at::linear
//
// Under tensor parallelism (tensor_parallel.h) the loader leaves each layer's declared sizes at the
// full model's and gives it this rank's shard of the weight plus a TensorParallelLayer, which runs
// the style's collective around the same local arithmetic.
//
// Thread-safety: forward is const with respect to the module; many threads may run it (one at a
// time when a TensorParallelLayer is attached: collectives are matched by order across ranks).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace flotilla::models {

class TensorParallelLayer;
class LinearImpl;

// Note [Sibling projections]: q_proj, k_proj and v_proj (and gate_proj, up_proj) of one module
// read the same input. A decode step is bound by reading weights and by the per-call fork/join of
// the intra-op threads, so running the siblings as one product (one parallel pass over all their
// weight rows) saves two of every three thread hand-offs without copying or reordering a weight.
// The model file is unchanged: the first sibling called computes every sibling's output and keeps
// the others' for this thread; a sibling called next with the same input tensor (the same
// TensorImpl: model files never modify a projection's input in place between the siblings) takes
// its output from there. Any other call order or input computes normally. Set at load by
// GroupSiblingProjections; only with --kernels Linear=builtin, decode-sized inputs, and no tensor
// parallelism (a sharded sibling computes alone, its collective unchanged).
struct SiblingProjections {
  std::vector<LinearImpl*> members;  // owned by the model, which owns this group through them
};

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
  std::shared_ptr<const TensorParallelLayer> tensor_parallel;  // set by the loader when sharded
  // Set by GroupSiblingProjections (Note [Sibling projections]); this layer is members[sibling_index].
  std::shared_ptr<const SiblingProjections> siblings;
  size_t sibling_index = 0;
};
TORCH_MODULE(Linear);

// Groups every module's q_proj/k_proj/v_proj and gate_proj/up_proj children that are unsharded
// Linear layers with one input size, dtype and bias setting (Note [Sibling projections]). Returns
// the number of groups. Called by the loader after the weights are in place.
int GroupSiblingProjections(torch::nn::Module& model);

class EmbeddingImpl : public torch::nn::Cloneable<EmbeddingImpl> {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim);
  void reset() override;
  // Ids outside [0, num_embeddings) are an error naming the first offending id.
  at::Tensor forward(const at::Tensor& input_ids);

  int64_t num_embeddings;
  int64_t embedding_dim;
  at::Tensor weight;  // [num_embeddings, embedding_dim]
  std::shared_ptr<const TensorParallelLayer> tensor_parallel;  // set by the loader when sharded
};
TORCH_MODULE(Embedding);

// transformers' pytorch_utils.Conv1D (GPT-2): a linear layer whose weight is stored transposed,
// [in_features (nx), out_features (nf)]; y = bias + x @ weight.
class Conv1DImpl : public torch::nn::Module {
 public:
  Conv1DImpl(int64_t nf, int64_t nx);
  at::Tensor forward(const at::Tensor& x);

  int64_t nf;
  at::Tensor weight;  // [nx, nf]
  at::Tensor bias;    // [nf]
  std::shared_ptr<const TensorParallelLayer> tensor_parallel;  // set by the loader when sharded
};

}  // namespace flotilla::models
