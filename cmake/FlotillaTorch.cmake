# LibTorch from the PyPI torch wheel: the same build transformers runs on in the tests.
#
# We do not use the wheel's TorchConfig.cmake: it insists on finding a matching CUDA toolkit and
# cuDNN even for CPU-only targets. Instead `flotilla::torch` links libtorch_cpu and libc10 (all of
# ATen, the C++ frontend, sdpa, c10d/Gloo), and `flotilla::torch_cuda` adds the CUDA parts for
# kernels/.
#
# The wheel ships an old copy of protobuf's headers under include/google/. If torch's include path
# came before Debian's, generated protobuf code would compile against the wrong headers; so torch
# targets see a mirror of torch/include without google/.

execute_process(
  COMMAND ${Python3_EXECUTABLE} -c "import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__)"
  OUTPUT_VARIABLE torch_probe
  RESULT_VARIABLE torch_probe_result
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT torch_probe_result EQUAL 0)
  message(FATAL_ERROR "The torch wheel is not importable by ${Python3_EXECUTABLE}. Run tools/bootstrap/bootstrap first.")
endif()
string(REPLACE "\n" ";" torch_probe "${torch_probe}")
list(GET torch_probe 0 FLOTILLA_TORCH_DIR)
list(GET torch_probe 1 FLOTILLA_TORCH_VERSION)
get_filename_component(FLOTILLA_SITE_PACKAGES ${FLOTILLA_TORCH_DIR} DIRECTORY)
set(FLOTILLA_TORCH_LIBRARY_DIR ${FLOTILLA_TORCH_DIR}/lib)
# The CUDA runtime the wheel was built against (libtorch_cpu itself needs libcudart and libcupti).
set(FLOTILLA_TORCH_CUDA_LIBRARY_DIR ${FLOTILLA_SITE_PACKAGES}/nvidia/cu13/lib)
message(STATUS "LibTorch ${FLOTILLA_TORCH_VERSION} from ${FLOTILLA_TORCH_DIR}")

set(torch_include_mirror ${CMAKE_BINARY_DIR}/torch-include)
file(MAKE_DIRECTORY ${torch_include_mirror})
file(GLOB torch_include_entries RELATIVE ${FLOTILLA_TORCH_DIR}/include ${FLOTILLA_TORCH_DIR}/include/*)
foreach(entry ${torch_include_entries})
  if(NOT entry STREQUAL "google" AND NOT EXISTS ${torch_include_mirror}/${entry})
    file(CREATE_LINK ${FLOTILLA_TORCH_DIR}/include/${entry} ${torch_include_mirror}/${entry} SYMBOLIC)
  endif()
endforeach()

add_library(flotilla_torch INTERFACE)
add_library(flotilla::torch ALIAS flotilla_torch)
target_include_directories(flotilla_torch SYSTEM INTERFACE
  ${torch_include_mirror}
  ${torch_include_mirror}/torch/csrc/api/include)
target_compile_definitions(flotilla_torch INTERFACE
  USE_DISTRIBUTED USE_C10D_GLOO USE_RPC USE_TENSORPIPE _GLIBCXX_USE_CXX11_ABI=1
  # gRPC targets define _REENTRANT; GCC refuses a precompiled header built without it.
  _REENTRANT)
# at::parallel_for is a header template whose `#pragma omp parallel` is compiled into OUR object
# files: without -fopenmp it silently runs every "parallel" loop on one thread. The OpenMP runtime
# is the wheel's own libgomp, so a process holds one thread team, not two competing ones.
target_compile_options(flotilla_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-fopenmp>)
target_link_libraries(flotilla_torch INTERFACE
  ${FLOTILLA_TORCH_LIBRARY_DIR}/libtorch_cpu.so
  ${FLOTILLA_TORCH_LIBRARY_DIR}/libc10.so
  ${FLOTILLA_TORCH_LIBRARY_DIR}/libgomp.so.1
  Threads::Threads)
target_link_options(flotilla_torch INTERFACE
  "LINKER:-rpath,${FLOTILLA_TORCH_LIBRARY_DIR}"
  "LINKER:-rpath,${FLOTILLA_TORCH_CUDA_LIBRARY_DIR}")

# Precompiled headers for torch targets: ATen's headers dominate their compile time. GCC rejects
# (with only a -Winvalid-pch warning, then parses everything) a header precompiled with other
# -fPIC/-fPIE settings, so shared libraries and position-independent targets reuse a PIC twin.
function(flotilla_torch_precompiled_headers target)
  get_target_property(type ${target} TYPE)
  get_target_property(position_independent ${target} POSITION_INDEPENDENT_CODE)
  if(type STREQUAL "SHARED_LIBRARY" OR type STREQUAL "MODULE_LIBRARY" OR position_independent)
    set_target_properties(${target} PROPERTIES POSITION_INDEPENDENT_CODE ON)
    target_precompile_headers(${target} REUSE_FROM flotilla_torch_pch_pic)
  else()
    target_precompile_headers(${target} REUSE_FROM flotilla_torch_pch)
  endif()
endfunction()
foreach(variant flotilla_torch_pch flotilla_torch_pch_pic)
  add_library(${variant} STATIC ${CMAKE_CURRENT_LIST_DIR}/torch_pch.cc)
  target_link_libraries(${variant} PUBLIC flotilla::torch)
  target_precompile_headers(${variant} PRIVATE <torch/torch.h>)
endforeach()
set_target_properties(flotilla_torch_pch_pic PROPERTIES POSITION_INDEPENDENT_CODE ON)

# The CUDA half of LibTorch, for kernels/ (only configured when a CUDA toolkit is found). Linked
# with --no-as-needed so that libtorch_cuda registers its CUDA hooks (at::hasCUDA()) on GPU machines.
file(GLOB nvidia_library_dirs LIST_DIRECTORIES true ${FLOTILLA_SITE_PACKAGES}/nvidia/*/lib)
add_library(flotilla_torch_cuda INTERFACE)
add_library(flotilla::torch_cuda ALIAS flotilla_torch_cuda)
target_link_libraries(flotilla_torch_cuda INTERFACE
  flotilla::torch
  -Wl,--no-as-needed
  ${FLOTILLA_TORCH_LIBRARY_DIR}/libtorch_cuda.so
  ${FLOTILLA_TORCH_LIBRARY_DIR}/libc10_cuda.so
  -Wl,--as-needed)
target_compile_definitions(flotilla_torch_cuda INTERFACE USE_C10D_NCCL)
foreach(directory ${nvidia_library_dirs})
  target_link_options(flotilla_torch_cuda INTERFACE "LINKER:-rpath,${directory}")
endforeach()
