# CUDA sources build only when a CUDA toolkit is found. No GPU is needed to compile them, so the
# target architectures are named rather than detected: sm_80 (A100), sm_90 (H100/H200).
include(CheckLanguage)
if(NOT DEFINED CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
  set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
endif()
check_language(CUDA)
if(CMAKE_CUDA_COMPILER)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 80 90)
  endif()
  # CMake 3.25 (Debian) does not know nvcc 13's C++20 flag; kernels need only C++17.
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  # One CUDA runtime in the process: the shared libcudart that LibTorch loads, not a static copy.
  set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  set(FLOTILLA_WITH_CUDA ON)
  message(STATUS "CUDA ${CMAKE_CUDA_COMPILER_VERSION}: building CUDA kernels for ${CMAKE_CUDA_ARCHITECTURES}")
else()
  set(FLOTILLA_WITH_CUDA OFF)
  message(STATUS "No CUDA toolkit: CUDA kernels are not built (their CPU twins are)")
endif()
