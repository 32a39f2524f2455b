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

}  // namespace

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
