#include "kernels/hub/hub_kernel.h"

#include <dlfcn.h>
#include <sys/utsname.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <torch/version.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/abi/flotilla_kernel_abi.h"
#include "kernels/cpu/cpu_kernels.h"
#include "services/registry/blob_store.h"
#include "services/registry/kernel_manifest.h"
#include "services/registry/registry_client.h"

namespace flotilla::kernels {
namespace {

using models::KernelLayer;

const char* SymbolFor(KernelLayer layer) {
  switch (layer) {
    case KernelLayer::kRmsNorm: return "flotilla_rms_norm";
    case KernelLayer::kSiluAndMul: return "flotilla_silu_and_mul";
    case KernelLayer::kRotaryEmbedding: return "flotilla_rotary_embedding";
    case KernelLayer::kPagedAttention:
    case KernelLayer::kLinear: return nullptr;
  }
  return nullptr;
}

// A view of an at::Tensor for the ABI (no copy: the kernel reads and writes the tensor's storage).
flotilla_tensor View(const at::Tensor& tensor) {
  flotilla_tensor view{};
  TORCH_CHECK(tensor.dim() <= FLOTILLA_TENSOR_MAX_DIMS, "hub kernel: a tensor of ", tensor.dim(),
              " dimensions exceeds the ABI's ", FLOTILLA_TENSOR_MAX_DIMS);
  view.data = tensor.data_ptr();
  view.dtype = tensor.scalar_type() == at::kFloat      ? FLOTILLA_DTYPE_FLOAT32
               : tensor.scalar_type() == at::kBFloat16 ? FLOTILLA_DTYPE_BFLOAT16
                                                       : FLOTILLA_DTYPE_FLOAT16;
  view.device_type = tensor.is_cuda() ? FLOTILLA_DEVICE_CUDA : FLOTILLA_DEVICE_CPU;
  view.device_index = tensor.is_cuda() ? tensor.device().index() : 0;
  view.ndim = static_cast<int32_t>(tensor.dim());
  for (int64_t dim = 0; dim < tensor.dim(); ++dim) {
    view.sizes[dim] = tensor.size(dim);
    view.strides[dim] = tensor.stride(dim);
  }
  return view;
}

void CheckDtype(const at::Tensor& tensor, const std::string& source) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kBFloat16 ||
                  tensor.scalar_type() == at::kHalf,
              "hub kernel ", source, ": dtype ", tensor.scalar_type(), " has no ABI code");
}

void CheckResult(int32_t code, const flotilla_kernel_error& error, const std::string& source, const char* symbol) {
  TORCH_CHECK(code == FLOTILLA_KERNEL_OK, "hub kernel ", source, " ", symbol, " returned ", code, ": ",
              std::string(error.message, strnlen(error.message, sizeof error.message)));
}

// Libraries stay loaded for the process's lifetime (their functions are captured in LayerKernels).
void* OpenLibrary(const std::string& path, std::string* error) {
  static std::mutex mutex;
  static std::map<std::string, void*> handles;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = handles.find(path);
  if (found != handles.end()) return found->second;
  dlerror();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* message = dlerror();
    *error = message != nullptr ? message : "unknown dlopen error";
    return nullptr;
  }
  handles[path] = handle;
  return handle;
}

// max |actual - expected| / max |expected| within the layer's stated tolerance.
absl::Status SelfCheck(const at::Tensor& actual, const at::Tensor& expected, const std::string& source,
                       KernelLayer layer) {
  const double scale = std::max(expected.to(at::kFloat).abs().max().item<double>(), 1e-30);
  const double difference = (actual.to(at::kFloat) - expected.to(at::kFloat)).abs().max().item<double>() / scale;
  const double bound = expected.scalar_type() == at::kFloat ? 1e-5 : 1.0 / 128;
  if (!(difference <= bound)) {
    return absl::FailedPreconditionError(absl::StrCat("hub kernel ", source, ": self-check of ",
                                                      models::KernelLayerName(layer), " in ",
                                                      c10::toString(expected.scalar_type()), ": relative difference ",
                                                      difference, " from the builtin kernel exceeds ", bound));
  }
  return absl::OkStatus();
}

}  // namespace

std::string PlatformVariant() {
  const std::string version = TORCH_VERSION;  // "2.15.0"
  const size_t second_dot = version.find('.', version.find('.') + 1);
  struct utsname name {};
  uname(&name);
  return absl::StrCat("torch", version.substr(0, second_dot), "-cpu-", name.machine);
}

absl::Status LoadHubKernel(const std::string& repository_folder, const std::string& variant, KernelLayer layer,
                           const std::string& source, models::LayerKernels& kernels) {
  const std::filesystem::path root(repository_folder);
  std::ifstream manifest_file(root / registry::kKernelManifestPath);
  if (!manifest_file) {
    return absl::NotFoundError(absl::StrCat("hub kernel ", source, ": no ", registry::kKernelManifestPath,
                                            " (is it a kernel repository?)"));
  }
  std::stringstream manifest_text;
  manifest_text << manifest_file.rdbuf();
  absl::StatusOr<registry::KernelManifest> manifest = registry::ParseKernelManifest(manifest_text.str());
  if (!manifest.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("hub kernel ", source, ": ", manifest.status().message()));
  }
  const registry::KernelManifestVariant* entry = manifest->Find(variant);
  if (entry == nullptr) {
    std::vector<std::string> names;
    for (const auto& candidate : manifest->variants) names.push_back(candidate.name);
    return absl::NotFoundError(absl::StrCat("hub kernel ", source, ": no variant for this platform ", variant,
                                            "; the repository has ", names.empty() ? "none" : absl::StrJoin(names, ", ")));
  }
  const nlohmann::json details = nlohmann::json::parse(entry->entry_json, nullptr, /*allow_exceptions=*/false);
  std::vector<std::string> layers;
  if (details.is_object() && details.contains("layers") && details["layers"].is_array()) {
    for (const auto& item : details["layers"]) {
      if (item.is_string()) layers.push_back(item.get<std::string>());
    }
  }
  const std::string layer_name = models::KernelLayerName(layer);
  if (std::find(layers.begin(), layers.end(), layer_name) == layers.end()) {
    return absl::NotFoundError(absl::StrCat("hub kernel ", source, " (", variant, ") provides ",
                                            layers.empty() ? "no layers" : absl::StrJoin(layers, ", "), ", not ",
                                            layer_name));
  }
  const std::filesystem::path library = root / "build" / variant / entry->library;
  if (!details.contains("sha256") || !details["sha256"].is_string()) {
    return absl::FailedPreconditionError(absl::StrCat("hub kernel ", source, " (", variant,
                                                      "): kernel.json gives no sha256 for ", entry->library));
  }
  absl::StatusOr<std::string> digest = registry::Sha256OfFile(library.string());
  if (!digest.ok()) return absl::NotFoundError(absl::StrCat("hub kernel ", source, ": ", digest.status().message()));
  if (*digest != details["sha256"].get<std::string>()) {
    return absl::DataLossError(absl::StrCat("hub kernel ", source, ": ", library.filename().string(),
                                            " is corrupt: sha256 ", *digest, " but kernel.json says ",
                                            details["sha256"].get<std::string>()));
  }
  std::string dlopen_error;
  void* handle = OpenLibrary(library.string(), &dlopen_error);
  if (handle == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("hub kernel ", source, ": cannot load ",
                                                      library.filename().string(), ": ", dlopen_error));
  }
  auto version_function = reinterpret_cast<uint32_t (*)()>(dlsym(handle, "flotilla_kernel_abi_version"));
  if (version_function == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("hub kernel ", source,
                                                      ": missing symbol flotilla_kernel_abi_version"));
  }
  if (const uint32_t version = version_function(); version != FLOTILLA_KERNEL_ABI_VERSION) {
    return absl::FailedPreconditionError(absl::StrCat("hub kernel ", source, ": ABI version mismatch: the library has ",
                                                      version, ", this worker ", FLOTILLA_KERNEL_ABI_VERSION));
  }
  const char* symbol = SymbolFor(layer);
  void* function = symbol != nullptr ? dlsym(handle, symbol) : nullptr;
  if (function == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("hub kernel ", source, ": kernel.json lists ", layer_name,
                                                      " but the library has no symbol ",
                                                      symbol != nullptr ? symbol : "(none in the ABI)"));
  }

  // Wrap, then self-check against the builtin kernel on random non-zero inputs, float32 and bfloat16.
  models::LayerKernels candidate = kernels;
  candidate.sources[static_cast<int>(layer)] = source;
  // A generator of its own: seeding the global one would change what the process draws later.
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(20261207);
  try {
    c10::InferenceMode inference_mode;
    switch (layer) {
      case KernelLayer::kRmsNorm: {
        auto call = reinterpret_cast<flotilla_rms_norm_fn>(function);
        candidate.rms_norm = [call, source](const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
          CheckDtype(hidden_states, source);
          at::Tensor output = at::empty(hidden_states.sizes(), hidden_states.options());
          flotilla_tensor input_view = View(hidden_states), weight_view = View(weight), output_view = View(output);
          flotilla_kernel_error error{};
          CheckResult(call(&input_view, &weight_view, epsilon, &output_view, &error), error, source, "flotilla_rms_norm");
          return output;
        };
        for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
          const at::Tensor hidden_states = at::randn({5, 96}, generator).mul(2).add(0.3).to(type);
          const at::Tensor weight = at::rand({96}, generator).add(0.5).to(type);
          absl::Status check = SelfCheck(candidate.rms_norm(hidden_states, weight, 1e-5),
                                         cpu::RmsNorm(hidden_states, weight, 1e-5), source, layer);
          if (!check.ok()) return check;
        }
        break;
      }
      case KernelLayer::kSiluAndMul: {
        auto call = reinterpret_cast<flotilla_silu_and_mul_fn>(function);
        candidate.silu_and_mul = [call, source](const at::Tensor& gate, const at::Tensor& up) {
          CheckDtype(gate, source);
          at::Tensor output = at::empty(gate.sizes(), gate.options());
          flotilla_tensor gate_view = View(gate), up_view = View(up), output_view = View(output);
          flotilla_kernel_error error{};
          CheckResult(call(&gate_view, &up_view, &output_view, &error), error, source, "flotilla_silu_and_mul");
          return output;
        };
        for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
          const at::Tensor gate = at::randn({5, 80}, generator).mul(3).add(0.1).to(type);
          const at::Tensor up = at::randn({5, 80}, generator).add(-0.2).to(type);
          absl::Status check = SelfCheck(candidate.silu_and_mul(gate, up), cpu::SiluAndMul(gate, up), source, layer);
          if (!check.ok()) return check;
        }
        break;
      }
      case KernelLayer::kRotaryEmbedding: {
        auto call = reinterpret_cast<flotilla_rotary_embedding_fn>(function);
        candidate.rotary_embedding = [call, source](at::Tensor& query, at::Tensor& key, const at::Tensor& cos,
                                                    const at::Tensor& sin) {
          CheckDtype(query, source);
          flotilla_tensor query_view = View(query), key_view = View(key), cos_view = View(cos), sin_view = View(sin);
          flotilla_kernel_error error{};
          CheckResult(call(&query_view, &key_view, &cos_view, &sin_view, &error), error, source,
                      "flotilla_rotary_embedding");
        };
        for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
          at::Tensor query = at::randn({1, 3, 4, 32}, generator).add(0.2).to(type);
          at::Tensor key = at::randn({1, 1, 4, 32}, generator).add(-0.2).to(type);
          const at::Tensor angles = at::rand({1, 4, 16}, generator).mul(10);
          const at::Tensor cos = at::cat({angles.cos(), angles.cos()}, -1).to(type);
          const at::Tensor sin = at::cat({angles.sin(), angles.sin()}, -1).to(type);
          at::Tensor expected_query = query.clone(), expected_key = key.clone();
          cpu::RotaryEmbeddingInPlace(expected_query, expected_key, cos, sin);
          candidate.rotary_embedding(query, key, cos, sin);
          absl::Status check = SelfCheck(at::cat({query.flatten(), key.flatten()}),
                                         at::cat({expected_query.flatten(), expected_key.flatten()}), source, layer);
          if (!check.ok()) return check;
        }
        break;
      }
      case KernelLayer::kPagedAttention:
      case KernelLayer::kLinear:
        return absl::UnimplementedError(absl::StrCat("hub kernel: the ABI has no ", layer_name, " entry point"));
    }
  } catch (const c10::Error& error) {
    return absl::FailedPreconditionError(absl::StrCat("hub kernel ", source, ": self-check of ", layer_name,
                                                      " failed: ", error.what_without_backtrace()));
  }
  kernels = std::move(candidate);
  return absl::OkStatus();
}

models::HubKernelLoader RegistryHubKernelLoader(std::string registry_address, std::string token,
                                                std::string cache_root) {
  return [registry_address, token, cache_root](KernelLayer layer, const std::string& reference,
                                               models::LayerKernels& kernels) -> absl::Status {
    if (registry_address.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("hub kernel ", reference,
                                                        ": no registry to pull from (pass --registry)"));
    }
    const std::string variant = PlatformVariant();
    const std::string variant_prefix = absl::StrCat("build/", variant, "/");
    registry::RegistryClient client(registry_address, token);
    absl::StatusOr<std::string> folder =
        client.PullToCache(reference, cache_root, [&variant_prefix](const std::string& path) {
          return path == registry::kKernelManifestPath || path.starts_with(variant_prefix);
        });
    if (!folder.ok()) {
      return absl::Status(folder.status().code(),
                          absl::StrCat("hub kernel ", reference, ": pull failed: ", folder.status().message()));
    }
    std::string repository = reference.substr(0, reference.find('@'));
    const std::string source = absl::StrCat(repository, "@", std::filesystem::path(*folder).filename().string());
    return LoadHubKernel(*folder, variant, layer, source, kernels);
  };
}

}  // namespace flotilla::kernels
