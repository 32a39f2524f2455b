#include "services/worker/device.h"

#include <dlfcn.h>

#include <filesystem>

#include <ATen/Context.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace flotilla::worker {

namespace {

constexpr char kCudaLibrary[] = "libflotilla_models_nccl.so";

}  // namespace

absl::Status LoadCudaSupport() {
  // Loaded once per process; later calls return the first answer.
  static const absl::Status loaded = [] {
    std::error_code error;
    const std::filesystem::path executable = std::filesystem::read_symlink("/proc/self/exe", error);
    std::string tried;
    void* handle = nullptr;
    // RTLD_GLOBAL: libtorch_cuda's symbols and its static registrations (ATen's CUDA kernels,
    // CUDA hooks, the "nccl" backend) must be visible to the libraries already loaded.
    if (!error) {
      const std::filesystem::path beside = executable.parent_path().parent_path() / "lib" / kCudaLibrary;
      handle = dlopen(beside.c_str(), RTLD_NOW | RTLD_GLOBAL);
      if (handle == nullptr) tried = absl::StrCat(beside.string(), ": ", dlerror(), "; ");
    }
    if (handle == nullptr) handle = dlopen(kCudaLibrary, RTLD_NOW | RTLD_GLOBAL);
    if (handle != nullptr) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "--device cuda: cannot load CUDA support (", tried, kCudaLibrary, ": ", dlerror(),
        "); this flotilla-worker was built without the CUDA toolkit, or LibTorch's CUDA libraries are not installed"));
  }();
  return loaded;
}

absl::StatusOr<WorkerDevice> PrepareDevice(const std::string& name, int rank, int world_size) {
  if (name.empty() || name == "cpu") return WorkerDevice{};
  if (!name.starts_with("cuda")) {
    return absl::InvalidArgumentError(absl::StrCat("--device must be cpu, cuda or cuda:N, got \"", name, "\""));
  }
  int index = rank;
  if (name != "cuda") {
    if (!name.starts_with("cuda:") || !absl::SimpleAtoi(name.substr(5), &index) || index < 0) {
      return absl::InvalidArgumentError(absl::StrCat("--device must be cpu, cuda or cuda:N, got \"", name, "\""));
    }
    if (world_size > 1) {
      return absl::InvalidArgumentError(absl::StrCat("--device ", name, " names one GPU, but --tensor_parallel_size ",
                                                     world_size, " needs one per rank: use --device cuda (rank r on cuda:r)"));
    }
  }
  if (absl::Status loaded = LoadCudaSupport(); !loaded.ok()) return loaded;
  if (!at::globalContext().hasCUDA()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device ", name, ": no CUDA device is visible to this process (no GPU, no driver, or CUDA_VISIBLE_DEVICES "
        "hides them); use --device cpu"));
  }
  const c10::impl::DeviceGuardImplInterface* guard = c10::impl::getDeviceGuardImpl(c10::kCUDA);
  const int count = static_cast<int>(guard->deviceCount());
  if (index >= count) {
    return absl::FailedPreconditionError(absl::StrCat("--device ", name, ": rank ", rank, " needs cuda:", index, " but ",
                                                      count, " CUDA device", count == 1 ? " is" : "s are", " visible"));
  }
  WorkerDevice device{.device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index)),
                      .tensor_parallel_backend = "nccl"};
  // NCCL and every allocation without an explicit index use the current device.
  guard->setDevice(device.device);
  return device;
}

}  // namespace flotilla::worker
