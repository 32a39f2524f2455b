// CUDA kernels. Plain CUDA with raw pointers (no ATen headers), so nvcc compiles only this file's
// code; kernels/cuda/cuda_dispatch.cc turns tensors into these calls.
#include "kernels/cuda/cuda_kernels.h"

#include <math.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace flotilla::kernels::cuda {
namespace {

template <typename T> __device__ float ToFloat(T value) { return static_cast<float>(value); }
template <> __device__ float ToFloat(__nv_bfloat16 value) { return __bfloat162float(value); }
template <> __device__ float ToFloat(__half value) { return __half2float(value); }
template <typename T> __device__ T FromFloat(float value) { return static_cast<T>(value); }
template <> __device__ __nv_bfloat16 FromFloat(float value) { return __float2bfloat16(value); }
template <> __device__ __half FromFloat(float value) { return __float2half(value); }

// One block per row: threads stride over the row, then a shared-memory tree reduction.
template <typename T>
__global__ void RmsNormKernel(const T* input, const T* weight, T* output, int64_t hidden_size, float epsilon) {
  extern __shared__ float partial_sums[];
  const T* x = input + blockIdx.x * hidden_size;
  T* y = output + blockIdx.x * hidden_size;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const float value = ToFloat(x[i]);
    sum += value * value;
  }
  partial_sums[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) partial_sums[threadIdx.x] += partial_sums[threadIdx.x + stride];
    __syncthreads();
  }
  const float inverse_rms = rsqrtf(partial_sums[0] / hidden_size + epsilon);
  for (int64_t i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const T normalized = FromFloat<T>(ToFloat(x[i]) * inverse_rms);
    y[i] = FromFloat<T>(ToFloat(weight[i]) * ToFloat(normalized));
  }
}

template <typename T>
__global__ void SiluAndMulKernel(const T* input, T* output, int64_t width) {
  const T* gate = input + blockIdx.x * 2 * width;
  const T* up = gate + width;
  T* y = output + blockIdx.x * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float g = ToFloat(gate[i]);
    const T activated = FromFloat<T>(g / (1.f + __expf(-g)));
    y[i] = FromFloat<T>(ToFloat(activated) * ToFloat(up[i]));
  }
}

// The decoder layer's residual add fused into the RMSNorm: residual = round(residual + x), then the
// norm of it. One block per row, as RmsNormKernel.
template <typename T>
__global__ void FusedAddRmsNormKernel(const T* input, T* residual, const T* weight, T* output, int64_t hidden_size,
                                      float epsilon) {
  extern __shared__ float partial_sums[];
  const T* x = input + blockIdx.x * hidden_size;
  T* r = residual + blockIdx.x * hidden_size;
  T* y = output + blockIdx.x * hidden_size;
  float sum = 0.f;
  for (int64_t i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const T added = FromFloat<T>(ToFloat(r[i]) + ToFloat(x[i]));
    r[i] = added;
    const float value = ToFloat(added);
    sum += value * value;
  }
  partial_sums[threadIdx.x] = sum;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) partial_sums[threadIdx.x] += partial_sums[threadIdx.x + stride];
    __syncthreads();
  }
  const float inverse_rms = rsqrtf(partial_sums[0] / hidden_size + epsilon);
  for (int64_t i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const T normalized = FromFloat<T>(ToFloat(r[i]) * inverse_rms);
    y[i] = FromFloat<T>(ToFloat(weight[i]) * ToFloat(normalized));
  }
}

// silu(gate) * up over separate gate and up rows (the two projections' outputs).
template <typename T>
__global__ void SiluAndMulSplitKernel(const T* gate_data, const T* up_data, T* output, int64_t width) {
  const T* gate = gate_data + blockIdx.x * width;
  const T* up = up_data + blockIdx.x * width;
  T* y = output + blockIdx.x * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float g = ToFloat(gate[i]);
    const T activated = FromFloat<T>(g / (1.f + __expf(-g)));
    y[i] = FromFloat<T>(ToFloat(activated) * ToFloat(up[i]));
  }
}

// apply_rotary_pos_emb in place: one block per (batch, position), threads over (head, i < half).
// Each product and the sum are rounded to T as the eager ops round.
template <typename T>
__global__ void RotaryInPlaceKernel(T* query, T* key, const T* cos, const T* sin, RotaryShape shape) {
  const int64_t batch_index = blockIdx.x / shape.length;
  const int64_t position = blockIdx.x % shape.length;
  const int64_t half = shape.head_dim / 2;
  const T* cos_row = cos + (batch_index * shape.length + position) * shape.head_dim;
  const T* sin_row = sin + (batch_index * shape.length + position) * shape.head_dim;
  const int64_t heads = shape.query_heads + shape.key_heads;
  for (int64_t item = threadIdx.x; item < heads * half; item += blockDim.x) {
    const int64_t head = item / half;
    const int64_t i = item % half;
    T* row = head < shape.query_heads
                 ? query + batch_index * shape.query_strides[0] + head * shape.query_strides[1] +
                       position * shape.query_strides[2]
                 : key + batch_index * shape.key_strides[0] + (head - shape.query_heads) * shape.key_strides[1] +
                       position * shape.key_strides[2];
    const float x1 = ToFloat(row[i]);
    const float x2 = ToFloat(row[i + half]);
    const float first = ToFloat(FromFloat<T>(x1 * ToFloat(cos_row[i]))) + ToFloat(FromFloat<T>(-x2 * ToFloat(sin_row[i])));
    const float second = ToFloat(FromFloat<T>(x2 * ToFloat(cos_row[i + half]))) +
                         ToFloat(FromFloat<T>(x1 * ToFloat(sin_row[i + half])));
    row[i] = FromFloat<T>(first);
    row[i + half] = FromFloat<T>(second);
  }
}

// Note [CUDA paged attention]
// One thread block of kPagedThreads per (query token, key/value head, split of its context): the
// `groups` query heads that share the key/value head are scored together, so each key and value
// row is read from the pool once per block, wherever its block table puts it. Keys are walked in
// tiles of kKeysPerTile:
//   1. scores: a warp per key (its row held in registers, kPagedAttentionMaxHeadDim / 32 elements
//      per lane; a warp's keys of the tile loaded together), a warp-shuffle sum per query head;
//      scaled, tanh-capped when asked;
//   2. online softmax (float32): per query head the running maximum and sum, and the factor that
//      rescales what was accumulated before this tile;
//   3. values: a thread per (query head, element), accumulating weight * value in float32.
// Long contexts with few tokens (decode of a small batch) leave most of the GPU idle, so the
// context is split (flash-decoding): each split writes its unnormalised accumulator, maximum and
// sum, and PagedAttentionMergeKernel rescales them to the common maximum and normalises.
constexpr int kPagedThreads = 128;
constexpr int kPagedWarps = kPagedThreads / 32;
constexpr int kKeysPerTile = 32;
constexpr int kKeysPerWarp = kKeysPerTile / kPagedWarps;
constexpr int kMaxElementsPerLane = static_cast<int>(kPagedAttentionMaxHeadDim / 32);
constexpr int64_t kPlanRecordWidth = 4;  // token, position, first_key, block table offset

__device__ float WarpSum(float value) {
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ float WarpMax(float value) {
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

template <typename T>
__global__ void __launch_bounds__(kPagedThreads)
    PagedAttentionKernel(const T* query, const T* key_pool, const T* value_pool, T* output, const int64_t* plan,
                         float* workspace, PagedAttentionShape shape) {
  __shared__ int64_t tile_rows[kKeysPerTile];  // element offset of each tile key's row in the pools
  extern __shared__ float shared[];
  const int64_t groups = shape.num_heads / shape.num_key_value_heads;
  const int64_t head_dim = shape.head_dim;
  const int64_t group_elements = groups * head_dim;
  float* queries = shared;                             // [groups, head_dim]
  float* accumulators = queries + group_elements;      // [groups, head_dim]
  float* weights = accumulators + group_elements;      // [groups, kKeysPerTile]: scores, then exp
  float* maxima = weights + groups * kKeysPerTile;     // [groups]
  float* sums = maxima + groups;                       // [groups]
  float* rescales = sums + groups;                     // [groups]

  const int64_t item = blockIdx.x;
  const int64_t token_index = item / shape.num_key_value_heads;
  const int64_t key_value_head = item % shape.num_key_value_heads;
  const int64_t* record = plan + token_index * kPlanRecordWidth;
  const int64_t row = record[0];
  const int64_t position = record[1];
  const int64_t first_key = record[2];
  const int64_t* block_table = plan + record[3];
  const int64_t split_begin = first_key + static_cast<int64_t>(blockIdx.y) * shape.keys_per_split;
  const int64_t split_end =
      position + 1 < split_begin + shape.keys_per_split ? position + 1 : split_begin + shape.keys_per_split;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t head_offset = (row * shape.num_heads + key_value_head * groups) * head_dim;

  for (int64_t i = threadIdx.x; i < group_elements; i += blockDim.x) {
    queries[i] = ToFloat(query[head_offset + i]);
    accumulators[i] = 0.f;
  }
  for (int64_t group = threadIdx.x; group < groups; group += blockDim.x) {
    maxima[group] = -INFINITY;
    sums[group] = 0.f;
  }
  __syncthreads();

  for (int64_t tile_begin = split_begin; tile_begin < split_end; tile_begin += kKeysPerTile) {
    const int tile_keys = static_cast<int>(split_end - tile_begin < kKeysPerTile ? split_end - tile_begin : kKeysPerTile);
    // 1. Scores, a warp per key: the warp's keys of this tile (kKeysPerWarp at most) are located
    // through the block table, then loaded, all before the first product, so that their memory
    // latencies overlap instead of following one another.
    int64_t row_offsets[kKeysPerWarp];
#pragma unroll
    for (int step = 0; step < kKeysPerWarp; ++step) {
      const int key_index = warp + step * kPagedWarps;
      row_offsets[step] = 0;
      if (key_index < tile_keys) {
        const int64_t key_position = tile_begin + key_index;
        const int64_t slot =
            block_table[key_position / shape.block_size] * shape.block_size + key_position % shape.block_size;
        row_offsets[step] = (slot * shape.num_key_value_heads + key_value_head) * head_dim;
        if (lane == 0) tile_rows[key_index] = row_offsets[step];
      }
    }
    float key_values[kKeysPerWarp][kMaxElementsPerLane];
#pragma unroll
    for (int step = 0; step < kKeysPerWarp; ++step) {
      const bool present = warp + step * kPagedWarps < tile_keys;
#pragma unroll
      for (int element = 0; element < kMaxElementsPerLane; ++element) {
        const int64_t d = lane + element * 32;
        key_values[step][element] = present && d < head_dim ? ToFloat(key_pool[row_offsets[step] + d]) : 0.f;
      }
    }
#pragma unroll
    for (int step = 0; step < kKeysPerWarp; ++step) {
      const int key_index = warp + step * kPagedWarps;
      if (key_index >= tile_keys) break;  // warp-uniform: every lane leaves together
      for (int64_t group = 0; group < groups; ++group) {
        const float* query_row = queries + group * head_dim;
        float dot = 0.f;
#pragma unroll
        for (int element = 0; element < kMaxElementsPerLane; ++element) {
          const int64_t d = lane + element * 32;
          if (d < head_dim) dot += query_row[d] * key_values[step][element];
        }
        dot = WarpSum(dot);
        if (lane == 0) {
          float score = dot * shape.scaling;
          if (shape.has_softcap) score = tanhf(score / shape.softcap) * shape.softcap;
          weights[group * kKeysPerTile + key_index] = score;
        }
      }
    }
    __syncthreads();
    // 2. Online softmax, a warp per query head: new maximum, exp of this tile's scores, the factor
    // for what was accumulated so far (0 on the first tile, whose previous maximum is -inf).
    for (int64_t group = warp; group < groups; group += kPagedWarps) {
      float* group_weights = weights + group * kKeysPerTile;
      float tile_maximum = -INFINITY;
      for (int key_index = lane; key_index < tile_keys; key_index += 32) {
        tile_maximum = fmaxf(tile_maximum, group_weights[key_index]);
      }
      tile_maximum = WarpMax(tile_maximum);
      const float previous_maximum = maxima[group];
      const float maximum = fmaxf(previous_maximum, tile_maximum);
      float tile_sum = 0.f;
      for (int key_index = lane; key_index < tile_keys; key_index += 32) {
        const float weight = expf(group_weights[key_index] - maximum);
        group_weights[key_index] = weight;
        tile_sum += weight;
      }
      tile_sum = WarpSum(tile_sum);
      if (lane == 0) {
        const float rescale = previous_maximum == -INFINITY ? 0.f : expf(previous_maximum - maximum);
        rescales[group] = rescale;
        sums[group] = sums[group] * rescale + tile_sum;
        maxima[group] = maximum;
      }
    }
    __syncthreads();
    // 3. Values, a thread per (query head, element): coalesced along each value row.
    for (int64_t i = threadIdx.x; i < group_elements; i += blockDim.x) {
      const int64_t group = i / head_dim;
      const int64_t d = i % head_dim;
      const float* group_weights = weights + group * kKeysPerTile;
      float accumulator = accumulators[i] * rescales[group];
#pragma unroll 8
      for (int key_index = 0; key_index < tile_keys; ++key_index) {
        accumulator += group_weights[key_index] * ToFloat(value_pool[tile_rows[key_index] + d]);
      }
      accumulators[i] = accumulator;
    }
    __syncthreads();
  }

  if (shape.num_splits == 1) {
    for (int64_t i = threadIdx.x; i < group_elements; i += blockDim.x) {
      output[head_offset + i] = FromFloat<T>(accumulators[i] / sums[i / head_dim]);
    }
    return;
  }
  // Workspace: accumulators [items, splits, groups * head_dim], maxima [items, splits, groups],
  // sums [items, splits, groups]. A split past the token's last key leaves 0, -inf, 0.
  const int64_t partials = shape.num_tokens * shape.num_key_value_heads * shape.num_splits;
  const int64_t partial = item * shape.num_splits + blockIdx.y;
  float* partial_accumulators = workspace + partial * group_elements;
  float* partial_maxima = workspace + partials * group_elements + partial * groups;
  float* partial_sums = workspace + partials * group_elements + partials * groups + partial * groups;
  for (int64_t i = threadIdx.x; i < group_elements; i += blockDim.x) partial_accumulators[i] = accumulators[i];
  for (int64_t group = threadIdx.x; group < groups; group += blockDim.x) {
    partial_maxima[group] = maxima[group];
    partial_sums[group] = sums[group];
  }
}

// One block per (token, key/value head): the splits' partial results rescaled to their common
// maximum, summed and normalised. Split 0 always holds the token's first key, so the maximum is finite.
template <typename T>
__global__ void __launch_bounds__(kPagedThreads)
    PagedAttentionMergeKernel(const int64_t* plan, const float* workspace, T* output, PagedAttentionShape shape) {
  const int64_t groups = shape.num_heads / shape.num_key_value_heads;
  const int64_t head_dim = shape.head_dim;
  const int64_t group_elements = groups * head_dim;
  const int64_t splits = shape.num_splits;
  const int64_t item = blockIdx.x;
  const int64_t token_index = item / shape.num_key_value_heads;
  const int64_t key_value_head = item % shape.num_key_value_heads;
  const int64_t row = plan[token_index * kPlanRecordWidth];
  const int64_t head_offset = (row * shape.num_heads + key_value_head * groups) * head_dim;
  const int64_t partials = shape.num_tokens * shape.num_key_value_heads * splits;
  const float* accumulators = workspace + item * splits * group_elements;
  const float* maxima = workspace + partials * group_elements + item * splits * groups;
  const float* sums = workspace + partials * group_elements + partials * groups + item * splits * groups;
  for (int64_t i = threadIdx.x; i < group_elements; i += blockDim.x) {
    const int64_t group = i / head_dim;
    float maximum = -INFINITY;
    for (int64_t split = 0; split < splits; ++split) maximum = fmaxf(maximum, maxima[split * groups + group]);
    float total = 0.f;
    float value = 0.f;
    for (int64_t split = 0; split < splits; ++split) {
      const float split_maximum = maxima[split * groups + group];
      if (split_maximum == -INFINITY) continue;
      const float scale = expf(split_maximum - maximum);
      total += sums[split * groups + group] * scale;
      value += accumulators[split * group_elements + i] * scale;
    }
    output[head_offset + i] = FromFloat<T>(value / total);
  }
}

constexpr int kThreads = 256;  // a power of two: the reduction halves it

template <typename T>
cudaError_t LaunchRmsNormTyped(const void* input, const void* weight, void* output, int64_t rows,
                               int64_t hidden_size, float epsilon, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  RmsNormKernel<T><<<rows, kThreads, kThreads * sizeof(float), stream>>>(
      static_cast<const T*>(input), static_cast<const T*>(weight), static_cast<T*>(output), hidden_size, epsilon);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchSiluAndMulTyped(const void* input, void* output, int64_t rows, int64_t width, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  SiluAndMulKernel<T><<<rows, kThreads, 0, stream>>>(static_cast<const T*>(input), static_cast<T*>(output), width);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchFusedAddRmsNormTyped(const void* input, void* residual, const void* weight, void* output, int64_t rows,
                                       int64_t hidden_size, float epsilon, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  FusedAddRmsNormKernel<T><<<rows, kThreads, kThreads * sizeof(float), stream>>>(
      static_cast<const T*>(input), static_cast<T*>(residual), static_cast<const T*>(weight), static_cast<T*>(output),
      hidden_size, epsilon);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchSiluAndMulSplitTyped(const void* gate, const void* up, void* output, int64_t rows, int64_t width,
                                       cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  SiluAndMulSplitKernel<T><<<rows, kThreads, 0, stream>>>(static_cast<const T*>(gate), static_cast<const T*>(up),
                                                          static_cast<T*>(output), width);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchRotaryInPlaceTyped(void* query, void* key, const void* cos, const void* sin, const RotaryShape& shape,
                                     cudaStream_t stream) {
  if (shape.batch == 0 || shape.length == 0 || shape.head_dim == 0) return cudaSuccess;
  RotaryInPlaceKernel<T><<<shape.batch * shape.length, kThreads, 0, stream>>>(
      static_cast<T*>(query), static_cast<T*>(key), static_cast<const T*>(cos), static_cast<const T*>(sin), shape);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchPagedAttentionTyped(const void* query, const void* key_pool, const void* value_pool, void* output,
                                      const int64_t* plan, float* workspace, const PagedAttentionShape& shape,
                                      cudaStream_t stream) {
  const int64_t items = shape.num_tokens * shape.num_key_value_heads;
  if (items == 0 || shape.head_dim == 0) return cudaSuccess;
  if (shape.head_dim > kPagedAttentionMaxHeadDim || shape.num_splits < 1 || shape.num_splits > 65535) {
    return cudaErrorInvalidValue;
  }
  const int64_t shared_bytes = PagedAttentionSharedBytes(shape);
  if (shared_bytes > 48 * 1024) {
    const cudaError_t error = cudaFuncSetAttribute(PagedAttentionKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   static_cast<int>(shared_bytes));
    if (error != cudaSuccess) return error;
  }
  const dim3 grid(static_cast<unsigned>(items), static_cast<unsigned>(shape.num_splits));
  PagedAttentionKernel<T><<<grid, kPagedThreads, shared_bytes, stream>>>(
      static_cast<const T*>(query), static_cast<const T*>(key_pool), static_cast<const T*>(value_pool),
      static_cast<T*>(output), plan, workspace, shape);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess || shape.num_splits == 1) return error;
  PagedAttentionMergeKernel<T><<<static_cast<unsigned>(items), kPagedThreads, 0, stream>>>(plan, workspace,
                                                                                          static_cast<T*>(output), shape);
  return cudaGetLastError();
}

}  // namespace

int64_t PagedAttentionWorkspaceFloats(const PagedAttentionShape& shape) {
  if (shape.num_splits <= 1 || shape.num_key_value_heads == 0) return 0;
  const int64_t groups = shape.num_heads / shape.num_key_value_heads;
  const int64_t partials = shape.num_tokens * shape.num_key_value_heads * shape.num_splits;
  return partials * (groups * shape.head_dim + 2 * groups);
}

int64_t PagedAttentionSharedBytes(const PagedAttentionShape& shape) {
  const int64_t groups = shape.num_key_value_heads == 0 ? 0 : shape.num_heads / shape.num_key_value_heads;
  return static_cast<int64_t>(sizeof(float)) * (2 * groups * shape.head_dim + groups * kKeysPerTile + 3 * groups);
}

cudaError_t LaunchPagedAttention(ElementType type, const void* query, const void* key_pool, const void* value_pool,
                                 void* output, const int64_t* plan, float* workspace, const PagedAttentionShape& shape,
                                 cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32: return LaunchPagedAttentionTyped<float>(query, key_pool, value_pool, output, plan, workspace, shape, stream);
    case ElementType::kBFloat16: return LaunchPagedAttentionTyped<__nv_bfloat16>(query, key_pool, value_pool, output, plan, workspace, shape, stream);
    case ElementType::kFloat16: return LaunchPagedAttentionTyped<__half>(query, key_pool, value_pool, output, plan, workspace, shape, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchFusedAddRmsNorm(ElementType type, const void* input, void* residual, const void* weight, void* output,
                                  int64_t rows, int64_t hidden_size, float epsilon, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32: return LaunchFusedAddRmsNormTyped<float>(input, residual, weight, output, rows, hidden_size, epsilon, stream);
    case ElementType::kBFloat16: return LaunchFusedAddRmsNormTyped<__nv_bfloat16>(input, residual, weight, output, rows, hidden_size, epsilon, stream);
    case ElementType::kFloat16: return LaunchFusedAddRmsNormTyped<__half>(input, residual, weight, output, rows, hidden_size, epsilon, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchSiluAndMulSplit(ElementType type, const void* gate, const void* up, void* output, int64_t rows,
                                  int64_t width, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32: return LaunchSiluAndMulSplitTyped<float>(gate, up, output, rows, width, stream);
    case ElementType::kBFloat16: return LaunchSiluAndMulSplitTyped<__nv_bfloat16>(gate, up, output, rows, width, stream);
    case ElementType::kFloat16: return LaunchSiluAndMulSplitTyped<__half>(gate, up, output, rows, width, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchRotaryInPlace(ElementType type, void* query, void* key, const void* cos, const void* sin,
                                const RotaryShape& shape, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32: return LaunchRotaryInPlaceTyped<float>(query, key, cos, sin, shape, stream);
    case ElementType::kBFloat16: return LaunchRotaryInPlaceTyped<__nv_bfloat16>(query, key, cos, sin, shape, stream);
    case ElementType::kFloat16: return LaunchRotaryInPlaceTyped<__half>(query, key, cos, sin, shape, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchRmsNorm(ElementType type, const void* input, const void* weight, void* output, int64_t rows,
                          int64_t hidden_size, float epsilon, cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32: return LaunchRmsNormTyped<float>(input, weight, output, rows, hidden_size, epsilon, stream);
    case ElementType::kBFloat16: return LaunchRmsNormTyped<__nv_bfloat16>(input, weight, output, rows, hidden_size, epsilon, stream);
    case ElementType::kFloat16: return LaunchRmsNormTyped<__half>(input, weight, output, rows, hidden_size, epsilon, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchSiluAndMul(ElementType type, const void* input, void* output, int64_t rows, int64_t width,
                             cudaStream_t stream) {
  switch (type) {
    case ElementType::kFloat32: return LaunchSiluAndMulTyped<float>(input, output, rows, width, stream);
    case ElementType::kBFloat16: return LaunchSiluAndMulTyped<__nv_bfloat16>(input, output, rows, width, stream);
    case ElementType::kFloat16: return LaunchSiluAndMulTyped<__half>(input, output, rows, width, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace flotilla::kernels::cuda
