// Fused kernels for the hot paths of decoder models, each with a CPU twin so that every CUDA path
// has a reference tested on machines without a GPU.
//
//   at::Tensor normalized = flotilla::kernels::RmsNorm(hidden_states, weight, 1e-6);
//   at::Tensor activated = flotilla::kernels::SiluAndMul(gate_and_up);  // [..., 2*d] -> [..., d]
//
// Dispatch is by the input's device: CUDA tensors go to kernels/cuda (built when a CUDA toolkit is
// found), everything else to kernels/cpu. Each function computes exactly what the eager module in
// the model file computes (see the comments), in float32 internally.
#pragma once

#include <ATen/Tensor.h>

namespace flotilla::kernels {

// transformers' LlamaRMSNorm: weight * (x * rsqrt(mean(x^2, -1) + epsilon)).to(x.dtype),
// the mean taken in float32. hidden_states [..., hidden], weight [hidden].
at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon);

// silu(gate) * up, where gate and up are the two halves of the last dimension (vLLM's
// SiluAndMul layout for fused gate_up_proj outputs).
at::Tensor SiluAndMul(const at::Tensor& gate_and_up);

// True when this build carries the CUDA kernels (a CUDA toolkit was found at configure time).
bool HasCudaKernels();

}  // namespace flotilla::kernels
