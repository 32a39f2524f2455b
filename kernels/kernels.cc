#include "kernels/kernels.h"

#include <ATen/ATen.h>

#include "kernels/cpu/cpu_kernels.h"
#if FLOTILLA_WITH_CUDA
#include "kernels/cuda/cuda_dispatch.h"
#endif

namespace flotilla::kernels {

bool HasCudaKernels() { return FLOTILLA_WITH_CUDA; }

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  if (hidden_states.is_cuda()) {
#if FLOTILLA_WITH_CUDA
    return cuda::RmsNorm(hidden_states, weight, epsilon);
#else
    TORCH_CHECK(false, "RmsNorm: a CUDA tensor, but this build has no CUDA kernels (no CUDA toolkit at configure time)");
#endif
  }
  return cpu::RmsNorm(hidden_states, weight, epsilon);
}

at::Tensor SiluAndMul(const at::Tensor& gate_and_up) {
  if (gate_and_up.is_cuda()) {
#if FLOTILLA_WITH_CUDA
    return cuda::SiluAndMul(gate_and_up);
#else
    TORCH_CHECK(false, "SiluAndMul: a CUDA tensor, but this build has no CUDA kernels (no CUDA toolkit at configure time)");
#endif
  }
  return cpu::SiluAndMul(gate_and_up);
}

}  // namespace flotilla::kernels
