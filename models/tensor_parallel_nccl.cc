// The NCCL backend for tensor-parallel groups of CUDA ranks (one GPU per rank, rank r on cuda:r):
// registered under "nccl" when a binary links flotilla_models_nccl, which builds only where the
// CUDA toolkit is (the torch wheel's libtorch_cuda carries ProcessGroupNCCL and NCCL itself).
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "models/tensor_parallel.h"

namespace flotilla::models {
namespace {

const bool kRegistered = RegisterTensorParallelBackend(
    "nccl", [](const c10::intrusive_ptr<c10d::Store>& store, int rank, int world_size,
               std::chrono::milliseconds timeout) -> c10::intrusive_ptr<c10d::Backend> {
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, options);
    });

}  // namespace
}  // namespace flotilla::models
