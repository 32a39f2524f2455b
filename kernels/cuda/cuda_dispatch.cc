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

at::Tensor FusedAddRmsNorm(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight,
                           double epsilon) {
  const int64_t hidden_size = hidden_states.size(-1);
  TORCH_CHECK(residual.sizes() == hidden_states.sizes() && residual.is_contiguous() &&
                  residual.scalar_type() == hidden_states.scalar_type() && residual.device() == hidden_states.device(),
              "FusedAddRmsNorm: residual must be a contiguous tensor shaped, typed and placed as hidden_states ",
              hidden_states.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == hidden_size && weight.device() == hidden_states.device() &&
                  weight.scalar_type() == hidden_states.scalar_type(),
              "FusedAddRmsNorm: weight must be [", hidden_size, "] on hidden_states' device and dtype but is ",
              weight.sizes());
  const c10::cuda::CUDAGuard device_guard(hidden_states.device());
  const at::Tensor input = hidden_states.contiguous();
  const at::Tensor weight_contiguous = weight.contiguous();
  at::Tensor output = at::empty_like(input);
  const int64_t rows = hidden_size == 0 ? 0 : input.numel() / hidden_size;
  CheckLaunch(LaunchFusedAddRmsNorm(ElementTypeOf(input, "FusedAddRmsNorm"), input.data_ptr(), residual.data_ptr(),
                                    weight_contiguous.data_ptr(), output.data_ptr(), rows, hidden_size,
                                    static_cast<float>(epsilon), c10::cuda::getCurrentCUDAStream().stream()),
              "FusedAddRmsNorm");
  return output;
}

at::Tensor SiluAndMul(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(gate.dim() >= 1 && gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type() &&
                  gate.device() == up.device(),
              "SiluAndMul: gate ", gate.sizes(), " and up ", up.sizes(), " must have one shape, dtype and device");
  const c10::cuda::CUDAGuard device_guard(gate.device());
  const at::Tensor gate_contiguous = gate.contiguous();
  const at::Tensor up_contiguous = up.contiguous();
  at::Tensor output = at::empty_like(gate_contiguous);
  const int64_t width = gate.size(-1);
  const int64_t rows = width == 0 ? 0 : gate.numel() / width;
  CheckLaunch(LaunchSiluAndMulSplit(ElementTypeOf(gate, "SiluAndMul"), gate_contiguous.data_ptr(),
                                    up_contiguous.data_ptr(), output.data_ptr(), rows, width,
                                    c10::cuda::getCurrentCUDAStream().stream()),
              "SiluAndMul");
  return output;
}

void RotaryEmbeddingInPlace(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(cos.dim() == 3 && sin.sizes() == cos.sizes() && cos.size(2) % 2 == 0,
              "RotaryEmbeddingInPlace: cos/sin must be [batch, length, even head_dim] but are ", cos.sizes(), " and ",
              sin.sizes());
  for (const at::Tensor* tensor : {&query, &key}) {
    TORCH_CHECK(tensor->dim() == 4 && tensor->size(0) == cos.size(0) && tensor->size(2) == cos.size(1) &&
                    tensor->size(3) == cos.size(2) && (tensor->size(3) == 0 || tensor->stride(3) == 1) &&
                    tensor->scalar_type() == cos.scalar_type() && tensor->device() == cos.device(),
                "RotaryEmbeddingInPlace: query/key ", tensor->sizes(), " must be [batch, heads, length, head_dim] with a "
                "contiguous last dimension, matching cos ", cos.sizes());
  }
  const c10::cuda::CUDAGuard device_guard(query.device());
  const at::Tensor cos_contiguous = cos.contiguous();
  const at::Tensor sin_contiguous = sin.contiguous();
  RotaryShape shape{cos.size(0), cos.size(1), cos.size(2), query.size(1), key.size(1),
                    {query.stride(0), query.stride(1), query.stride(2)}, {key.stride(0), key.stride(1), key.stride(2)}};
  CheckLaunch(LaunchRotaryInPlace(ElementTypeOf(query, "RotaryEmbeddingInPlace"), query.data_ptr(), key.data_ptr(),
                                  cos_contiguous.data_ptr(), sin_contiguous.data_ptr(), shape,
                                  c10::cuda::getCurrentCUDAStream().stream()),
              "RotaryEmbeddingInPlace");
}

}  // namespace flotilla::kernels::cuda
