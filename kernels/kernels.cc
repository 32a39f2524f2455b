#include "kernels/kernels.h"

#include <ATen/ATen.h>

#include "kernels/cpu/cpu_kernels.h"
#if FLOTILLA_WITH_CUDA
#include "kernels/cuda/cuda_dispatch.h"
#endif

namespace flotilla::kernels {

bool HasCudaKernels() { return FLOTILLA_WITH_CUDA; }

#if FLOTILLA_WITH_CUDA
#define FLOTILLA_ON_CUDA(operation, call) return cuda::call
#else
#define FLOTILLA_ON_CUDA(operation, call)                                                                           \
  TORCH_CHECK(false, operation ": a CUDA tensor, but this build has no CUDA kernels (no CUDA toolkit at configure " \
                               "time)")
#endif

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  if (hidden_states.is_cuda()) FLOTILLA_ON_CUDA("RmsNorm", RmsNorm(hidden_states, weight, epsilon));
  return cpu::RmsNorm(hidden_states, weight, epsilon);
}

at::Tensor FusedAddRmsNorm(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight,
                           double epsilon) {
  if (hidden_states.is_cuda()) FLOTILLA_ON_CUDA("FusedAddRmsNorm", FusedAddRmsNorm(hidden_states, residual, weight, epsilon));
  return cpu::FusedAddRmsNorm(hidden_states, residual, weight, epsilon);
}

at::Tensor SiluAndMul(const at::Tensor& gate_and_up) {
  if (gate_and_up.is_cuda()) FLOTILLA_ON_CUDA("SiluAndMul", SiluAndMul(gate_and_up));
  return cpu::SiluAndMul(gate_and_up);
}

at::Tensor SiluAndMul(const at::Tensor& gate, const at::Tensor& up) {
  if (gate.is_cuda()) FLOTILLA_ON_CUDA("SiluAndMul", SiluAndMul(gate, up));
  return cpu::SiluAndMul(gate, up);
}

void RotaryEmbeddingInPlace(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin) {
  if (query.is_cuda()) FLOTILLA_ON_CUDA("RotaryEmbeddingInPlace", RotaryEmbeddingInPlace(query, key, cos, sin));
  cpu::RotaryEmbeddingInPlace(query, key, cos, sin);
}

void PagedAttention(const at::Tensor& query_tokens, const at::Tensor& key_pool, const at::Tensor& value_pool,
                    at::Tensor& output_tokens, const std::vector<PagedAttentionToken>& tokens, double scaling,
                    std::optional<double> softcap) {
  TORCH_CHECK(query_tokens.device().is_cpu(), "PagedAttention: only the CPU kernel exists; got a ",
              query_tokens.device(), " tensor");
  cpu::PagedAttention(query_tokens, key_pool, value_pool, output_tokens, tokens, scaling, softcap);
}

}  // namespace flotilla::kernels
