// Tensor-level entry points of the CUDA kernels: checks, the current stream, the launch. Callers
// reach them through kernels/kernels.h, which dispatches CUDA tensors here via the table this
// library registers at load (kernels/cuda_kernel_table.h). Thread-safety: as kernels/kernels.h.
#pragma once

#include <optional>

#include <ATen/Tensor.h>

#include "kernels/kernels.h"

namespace flotilla::kernels::cuda {

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon);
at::Tensor SiluAndMul(const at::Tensor& gate_and_up);
at::Tensor FusedAddRmsNorm(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight, double epsilon);
at::Tensor SiluAndMul(const at::Tensor& gate, const at::Tensor& up);
void RotaryEmbeddingInPlace(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin);
// See Note [CUDA paged attention] in cuda_kernels.cu; the plan is already on the queries' device.
void PagedAttention(const at::Tensor& query_tokens, const at::Tensor& key_pool, const at::Tensor& value_pool,
                    at::Tensor& output_tokens, const PagedAttentionPlan& plan, double scaling,
                    std::optional<double> softcap);

}  // namespace flotilla::kernels::cuda
