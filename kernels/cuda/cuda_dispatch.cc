#include "kernels/cuda/cuda_dispatch.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/cuda_kernels.h"

namespace flotilla::kernels::cuda {
namespace {

ElementType ElementTypeOf(const at::Tensor& tensor, const char* operation) {
  switch (tensor.scalar_type()) {
    case at::kFloat: return ElementType::kFloat32;
    case at::kBFloat16: return ElementType::kBFloat16;
    case at::kHalf: return ElementType::kFloat16;
    default: TORCH_CHECK(false, operation, ": dtype ", tensor.scalar_type(), " is not supported (float32, bfloat16, float16)");
  }
}

void CheckLaunch(cudaError_t error, const char* operation) {
  TORCH_CHECK(error == cudaSuccess, operation, ": kernel launch failed: ", cudaGetErrorString(error));
}

}  // namespace

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  const int64_t hidden_size = hidden_states.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == hidden_size, "RmsNorm: weight must be [", hidden_size,
              "] but is ", weight.sizes());
  TORCH_CHECK(weight.device() == hidden_states.device() && weight.scalar_type() == hidden_states.scalar_type(),
              "RmsNorm: weight must share hidden_states' device and dtype");
  const c10::cuda::CUDAGuard device_guard(hidden_states.device());
  const at::Tensor input = hidden_states.contiguous();
  const at::Tensor weight_contiguous = weight.contiguous();
  at::Tensor output = at::empty_like(input);
  const int64_t rows = hidden_size == 0 ? 0 : input.numel() / hidden_size;
  CheckLaunch(LaunchRmsNorm(ElementTypeOf(input, "RmsNorm"), input.data_ptr(), weight_contiguous.data_ptr(),
                            output.data_ptr(), rows, hidden_size, static_cast<float>(epsilon),
                            c10::cuda::getCurrentCUDAStream().stream()),
              "RmsNorm");
  return output;
}

at::Tensor SiluAndMul(const at::Tensor& gate_and_up) {
  TORCH_CHECK(gate_and_up.size(-1) % 2 == 0, "SiluAndMul: the last dimension must be even but is ", gate_and_up.sizes());
  const c10::cuda::CUDAGuard device_guard(gate_and_up.device());
  const at::Tensor input = gate_and_up.contiguous();
  const int64_t width = input.size(-1) / 2;
  std::vector<int64_t> output_shape = input.sizes().vec();
  output_shape.back() = width;
  at::Tensor output = at::empty(output_shape, input.options());
  const int64_t rows = width == 0 ? 0 : input.numel() / (2 * width);
  CheckLaunch(LaunchSiluAndMul(ElementTypeOf(input, "SiluAndMul"), input.data_ptr(), output.data_ptr(), rows, width,
                               c10::cuda::getCurrentCUDAStream().stream()),
              "SiluAndMul");
  return output;
}

}  // namespace flotilla::kernels::cuda
