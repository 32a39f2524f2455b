// Tensor-level entry points of the CUDA kernels: checks, the current stream, the launch.
#pragma once

#include <ATen/Tensor.h>

namespace flotilla::kernels::cuda {

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon);
at::Tensor SiluAndMul(const at::Tensor& gate_and_up);
at::Tensor FusedAddRmsNorm(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight, double epsilon);
at::Tensor SiluAndMul(const at::Tensor& gate, const at::Tensor& up);
void RotaryEmbeddingInPlace(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace flotilla::kernels::cuda
