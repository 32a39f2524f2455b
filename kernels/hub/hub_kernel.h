// Hub kernels: a kernel repository's prebuilt library for this platform, pulled from the registry,
// verified, dlopen'ed through the plain-C ABI (kernels/abi/flotilla_kernel_abi.h) and plugged into
// the replaceable layers (models/kernelize.h) after a self-check against the builtin kernel.
//
//   models::HubKernelLoader loader = kernels::RegistryHubKernelLoader(registry_address, token, cache_root);
//   absl::StatusOr<models::LayerKernels> kernels =
//       models::ResolveLayerKernels("RMSNorm=acme/rmsnorm@v1", loader);   // refusals fall back to eager
//
// Refusals, each a status naming the repository and the reason (ResolveLayerKernels logs it and
// keeps the eager forward): no variant for this platform (NOT_FOUND, listing the variants there
// are), a library whose sha256 differs from kernel.json's (DATA_LOSS), one dlopen cannot load, an
// ABI version other than ours, a layer kernel.json lists whose symbol is missing
// (FAILED_PRECONDITION), and a self-check whose output differs from the builtin kernel's beyond the
// stated tolerance (FAILED_PRECONDITION).
//
// Thread-safety: loading is for start-up (one thread). Loaded functions may be called from any
// thread; libraries stay loaded for the process's lifetime.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "models/kernelize.h"

namespace flotilla::kernels {

// This worker's variant: torch<major.minor>-cpu-<machine>, e.g. "torch2.15-cpu-x86_64".
std::string PlatformVariant();

// Loads `layer` from a kernel repository already on disk (kernel.json at its root) into `kernels`,
// recording `source` ("namespace/name@commit") as the layer's source.
absl::Status LoadHubKernel(const std::string& repository_folder, const std::string& variant, models::KernelLayer layer,
                           const std::string& source, models::LayerKernels& kernels);

// Pulls each reference (only kernel.json and build/<this variant>/) into
// <cache_root>/<namespace>/<name>/<commit id>/ — a commit already there is not fetched again — then
// LoadHubKernel. The source recorded is "namespace/name@<commit id>".
models::HubKernelLoader RegistryHubKernelLoader(std::string registry_address, std::string token,
                                                std::string cache_root);

}  // namespace flotilla::kernels
