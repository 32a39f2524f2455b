// A plain C entry point to each launcher in cuda_kernels.h, for tools/gpu/standalone_check.py: on
// a GPU host where the project's LibTorch binaries cannot run (the lent device machine: another
// torch, none of the services' libraries), that script compiles this file and cuda_kernels.cu with
// the host's nvcc into one shared library and calls it through ctypes on tensors of the host's own
// torch. Not part of the CMake build; every function returns a cudaError_t as int (0: success).
//
//   type: 0 float32, 1 bfloat16, 2 float16. Pointers are device pointers; `stream` a cudaStream_t.
//
// Thread-safety: as the launchers (stateless; call from any thread).
#include <cstdint>

#include "kernels/cuda/cuda_kernels.h"

namespace {

using flotilla::kernels::cuda::ElementType;

ElementType TypeOf(int type) {
  return type == 1 ? ElementType::kBFloat16 : (type == 2 ? ElementType::kFloat16 : ElementType::kFloat32);
}

flotilla::kernels::cuda::PagedAttentionShape PagedShape(int64_t num_tokens, int64_t num_heads,
                                                        int64_t num_key_value_heads, int64_t head_dim,
                                                        int64_t block_size, int64_t num_splits,
                                                        int64_t keys_per_split, float scaling, float softcap,
                                                        int has_softcap) {
  flotilla::kernels::cuda::PagedAttentionShape shape{};
  shape.num_tokens = num_tokens;
  shape.num_heads = num_heads;
  shape.num_key_value_heads = num_key_value_heads;
  shape.head_dim = head_dim;
  shape.block_size = block_size;
  shape.num_splits = num_splits;
  shape.keys_per_split = keys_per_split;
  shape.scaling = scaling;
  shape.softcap = has_softcap ? softcap : 1.0f;
  shape.has_softcap = has_softcap != 0;
  return shape;
}

}  // namespace

extern "C" {

int flotilla_cuda_rms_norm(int type, const void* input, const void* weight, void* output, int64_t rows,
                           int64_t hidden_size, float epsilon, void* stream) {
  return flotilla::kernels::cuda::LaunchRmsNorm(TypeOf(type), input, weight, output, rows, hidden_size, epsilon,
                                                static_cast<cudaStream_t>(stream));
}

int flotilla_cuda_fused_add_rms_norm(int type, const void* input, void* residual, const void* weight, void* output,
                                     int64_t rows, int64_t hidden_size, float epsilon, void* stream) {
  return flotilla::kernels::cuda::LaunchFusedAddRmsNorm(TypeOf(type), input, residual, weight, output, rows,
                                                        hidden_size, epsilon, static_cast<cudaStream_t>(stream));
}

int flotilla_cuda_silu_and_mul(int type, const void* input, void* output, int64_t rows, int64_t width, void* stream) {
  return flotilla::kernels::cuda::LaunchSiluAndMul(TypeOf(type), input, output, rows, width,
                                                   static_cast<cudaStream_t>(stream));
}

int flotilla_cuda_silu_and_mul_split(int type, const void* gate, const void* up, void* output, int64_t rows,
                                     int64_t width, void* stream) {
  return flotilla::kernels::cuda::LaunchSiluAndMulSplit(TypeOf(type), gate, up, output, rows, width,
                                                        static_cast<cudaStream_t>(stream));
}

// query_strides / key_strides: three element strides each (batch, head, position).
int flotilla_cuda_rotary_in_place(int type, void* query, void* key, const void* cos, const void* sin, int64_t batch,
                                  int64_t length, int64_t head_dim, int64_t query_heads, int64_t key_heads,
                                  const int64_t* query_strides, const int64_t* key_strides, void* stream) {
  flotilla::kernels::cuda::RotaryShape shape{batch, length, head_dim, query_heads, key_heads,
                                             {query_strides[0], query_strides[1], query_strides[2]},
                                             {key_strides[0], key_strides[1], key_strides[2]}};
  return flotilla::kernels::cuda::LaunchRotaryInPlace(TypeOf(type), query, key, cos, sin, shape,
                                                      static_cast<cudaStream_t>(stream));
}

int64_t flotilla_cuda_paged_attention_workspace_floats(int64_t num_tokens, int64_t num_heads,
                                                       int64_t num_key_value_heads, int64_t head_dim,
                                                       int64_t num_splits) {
  return flotilla::kernels::cuda::PagedAttentionWorkspaceFloats(
      PagedShape(num_tokens, num_heads, num_key_value_heads, head_dim, 1, num_splits, 1, 1.0f, 1.0f, 0));
}

// plan: kernels::PagedAttentionPlan's packed layout, on the device (see kernels/kernels.h).
int flotilla_cuda_paged_attention(int type, const void* query, const void* key_pool, const void* value_pool,
                                  void* output, const int64_t* plan, float* workspace, int64_t num_tokens,
                                  int64_t num_heads, int64_t num_key_value_heads, int64_t head_dim, int64_t block_size,
                                  int64_t num_splits, int64_t keys_per_split, float scaling, float softcap,
                                  int has_softcap, void* stream) {
  const auto shape = PagedShape(num_tokens, num_heads, num_key_value_heads, head_dim, block_size, num_splits,
                                keys_per_split, scaling, softcap, has_softcap);
  return flotilla::kernels::cuda::LaunchPagedAttention(TypeOf(type), query, key_pool, value_pool, output, plan,
                                                       workspace, shape, static_cast<cudaStream_t>(stream));
}

}  // extern "C"
