// The CUDA kernels as a table of functions that kernels/cuda registers when its objects are linked
// into a binary or a loaded library. kernels.cc dispatches CUDA tensors through it, so that the
// dispatch (and flotilla_models, which links it) carries no libtorch_cuda dependency: serving
// binaries stay CPU-only, and a worker on `--device cuda` gets the kernels by dlopen'ing
// lib/libflotilla_models_nccl.so, whose static initialiser registers this table.
//
//   // kernels/cuda/cuda_dispatch.cc, at static initialisation:
//   const bool registered = (RegisterCudaKernels(&kTable), true);
//   // kernels/kernels.cc, per call:
//   if (const CudaKernelTable* cuda = RegisteredCudaKernels()) return cuda->rms_norm(...);
//
// Thread-safety: registration happens during static initialisation (or dlopen); reading the
// table is safe from any thread. The table registered last wins; it must outlive the process.
#pragma once

#include <optional>

#include <ATen/Tensor.h>

#include "kernels/kernels.h"

namespace flotilla::kernels {

struct CudaKernelTable {
  at::Tensor (*rms_norm)(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon);
  at::Tensor (*fused_add_rms_norm)(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight,
                                   double epsilon);
  at::Tensor (*silu_and_mul)(const at::Tensor& gate_and_up);
  at::Tensor (*silu_and_mul_split)(const at::Tensor& gate, const at::Tensor& up);
  void (*rotary_embedding_in_place)(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin);
  void (*paged_attention)(const at::Tensor& query_tokens, const at::Tensor& key_pool, const at::Tensor& value_pool,
                          at::Tensor& output_tokens, const PagedAttentionPlan& plan, double scaling,
                          std::optional<double> softcap);
};

void RegisterCudaKernels(const CudaKernelTable* table);

// nullptr until kernels/cuda is linked in or loaded.
const CudaKernelTable* RegisteredCudaKernels();

}  // namespace flotilla::kernels
