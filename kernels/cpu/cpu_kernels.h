// CPU twins of the CUDA kernels (see kernels/kernels.h for the contract).
#pragma once

#include <ATen/Tensor.h>

namespace flotilla::kernels::cpu {

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon);
at::Tensor SiluAndMul(const at::Tensor& gate_and_up);

}  // namespace flotilla::kernels::cpu
