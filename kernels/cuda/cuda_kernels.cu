// CUDA kernels. Plain CUDA with raw pointers (no ATen headers), so nvcc compiles only this file's
// code; kernels/cuda/cuda_dispatch.cc turns tensors into these calls.
#include "kernels/cuda/cuda_kernels.h"

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

}  // namespace

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
