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

}  // namespace flotilla::kernels::cuda
