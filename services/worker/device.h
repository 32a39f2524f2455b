// Where a worker rank runs its model: `--device cpu` (the default), or `cuda` — rank r of a
// tensor-parallel group on cuda:r, its collectives over NCCL — or `cuda:N` for a one-rank replica.
//
//   ASSIGN_OR_RETURN(WorkerDevice device, PrepareDevice("cuda", /*rank=*/1, /*world_size=*/2));
//   // device.device == cuda:1, device.tensor_parallel_backend == "nccl", cuda:1 is current
//
// CUDA support is a separate shared library (lib/libflotilla_models_nccl.so: LibTorch's CUDA half
// and the NCCL backend), loaded only when a rank asks for a GPU, so that CPU workers neither load
// nor pay for libtorch_cuda (start-up time and resident memory). A binary built without the CUDA
// toolkit, a host without a visible GPU, or a rank beyond the visible GPUs is refused here with
// the reason, before any weight is read.
//
// Thread-safety: call once per process, before the model loads.
#pragma once

#include <string>
#include <string_view>

#include <c10/core/Device.h>

#include "absl/status/statusor.h"

namespace flotilla::worker {

struct WorkerDevice {
  c10::Device device = c10::Device(c10::kCPU);
  // The tensor-parallel backend for this device: "gloo" for CPU ranks, "nccl" for CUDA ranks.
  std::string tensor_parallel_backend = "gloo";
};

// Parses `name` ("cpu", "cuda", "cuda:N") for `rank` of a group of `world_size`, loads CUDA support
// when needed, checks the device exists and makes it the current one.
absl::StatusOr<WorkerDevice> PrepareDevice(const std::string& name, int rank, int world_size);

// Loads lib/libflotilla_models_nccl.so (beside ../bin of this executable, else through the
// library path); idempotent. Failed: the binary was built without CUDA, or its libraries are missing.
absl::Status LoadCudaSupport();

}  // namespace flotilla::worker
