// Launchers for the CUDA kernels in cuda_kernels.cu; callable from host C++ without ATen.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace flotilla::kernels::cuda {

enum class ElementType { kFloat32, kBFloat16, kFloat16 };

// Rows are contiguous, `hidden_size` elements each; see kernels/kernels.h for the math.
cudaError_t LaunchRmsNorm(ElementType type, const void* input, const void* weight, void* output, int64_t rows,
                          int64_t hidden_size, float epsilon, cudaStream_t stream);
cudaError_t LaunchSiluAndMul(ElementType type, const void* input, void* output, int64_t rows, int64_t width,
                             cudaStream_t stream);
// residual = residual + input (in place), output = RmsNorm(residual).
cudaError_t LaunchFusedAddRmsNorm(ElementType type, const void* input, void* residual, const void* weight, void* output,
                                  int64_t rows, int64_t hidden_size, float epsilon, cudaStream_t stream);
// gate, up, output: contiguous rows of `width`.
cudaError_t LaunchSiluAndMulSplit(ElementType type, const void* gate, const void* up, void* output, int64_t rows,
                                  int64_t width, cudaStream_t stream);

// query [batch, query_heads, length, head_dim] and key [batch, key_heads, length, head_dim] by their
// strides (in elements; the last dimension contiguous); cos / sin contiguous [batch, length, head_dim].
struct RotaryShape {
  int64_t batch, length, head_dim, query_heads, key_heads;
  int64_t query_strides[3];
  int64_t key_strides[3];
};
cudaError_t LaunchRotaryInPlace(ElementType type, void* query, void* key, const void* cos, const void* sin,
                                const RotaryShape& shape, cudaStream_t stream);

// Paged attention over a plan (kernels/kernels.h: PagedAttentionPlan, already on the device): one
// thread block per (token, key/value head, split of the context). With num_splits > 1 each split
// writes its unnormalised partial result into `workspace` (PagedAttentionWorkspaceFloats floats)
// and a second kernel merges them; with one split the workspace is not touched (may be null).
struct PagedAttentionShape {
  int64_t num_tokens, num_heads, num_key_value_heads, head_dim, block_size;
  int64_t num_splits, keys_per_split;
  float scaling, softcap;
  bool has_softcap;
};
constexpr int64_t kPagedAttentionMaxHeadDim = 256;
int64_t PagedAttentionWorkspaceFloats(const PagedAttentionShape& shape);
// Dynamic shared memory one thread block needs; above 48 KiB the launcher opts in (sm_80: 163 KiB).
int64_t PagedAttentionSharedBytes(const PagedAttentionShape& shape);
cudaError_t LaunchPagedAttention(ElementType type, const void* query, const void* key_pool, const void* value_pool,
                                 void* output, const int64_t* plan, float* workspace, const PagedAttentionShape& shape,
                                 cudaStream_t stream);

}  // namespace flotilla::kernels::cuda
