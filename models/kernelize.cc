#include "models/kernelize.h"

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include <prometheus/counter.h>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"
#include "services/common/logging.h"
#include "services/common/metrics.h"

namespace flotilla::models {
namespace {

constexpr std::array<const char*, kNumKernelLayers> kLayerNames = {"RMSNorm", "SiluAndMul", "RotaryEmbedding",
                                                                   "PagedAttention", "Linear"};

// The installed table with its counters resolved once (a prometheus label lookup takes a lock; a
// forward must not). Tables are never freed: a process installs a handful, at load.
struct InstalledKernels {
  LayerKernels kernels;
  std::array<prometheus::Counter*, kNumKernelLayers> kernel_counters{};
  std::array<prometheus::Counter*, kNumKernelLayers> eager_counters{};
};

prometheus::Family<prometheus::Counter>& CallsFamily() {
  static auto& family = prometheus::BuildCounter()
                            .Name("flotilla_kernel_forward_calls_total")
                            .Help("Forwards of replaceable layers, by layer name and the implementation that ran "
                                  "(eager, builtin, or a hub kernel's repository@commit)")
                            .Register(MetricsRegistry());
  return family;
}

InstalledKernels* MakeInstalled(const LayerKernels& kernels) {
  auto* installed = new InstalledKernels{kernels, {}, {}};
  for (int index = 0; index < kNumKernelLayers; ++index) {
    installed->kernel_counters[index] =
        &CallsFamily().Add({{"layer", kLayerNames[index]}, {"source", kernels.sources[index]}});
    installed->eager_counters[index] = &CallsFamily().Add({{"layer", kLayerNames[index]}, {"source", "eager"}});
  }
  return installed;
}

std::atomic<InstalledKernels*>& Current() {
  static std::atomic<InstalledKernels*> current{MakeInstalled(LayerKernels{})};
  return current;
}

bool IsRepositoryReference(absl::string_view value) {
  // namespace/name[@revision], each part non-empty, no spaces.
  const size_t slash = value.find('/');
  if (slash == absl::string_view::npos || slash == 0 || value.find('/', slash + 1) != absl::string_view::npos) return false;
  const size_t at = value.find('@');
  const absl::string_view name = value.substr(slash + 1, at == absl::string_view::npos ? absl::string_view::npos : at - slash - 1);
  if (name.empty() || (at != absl::string_view::npos && at + 1 == value.size())) return false;
  for (char character : value) {
    if (absl::ascii_isspace(static_cast<unsigned char>(character)) || character == ',' || character == '=') return false;
  }
  return true;
}

}  // namespace

const char* KernelLayerName(KernelLayer layer) { return kLayerNames[static_cast<int>(layer)]; }

absl::StatusOr<std::map<std::string, std::string>> ParseKernelMapping(const std::string& mapping) {
  std::map<std::string, std::string> parsed;
  for (absl::string_view item : absl::StrSplit(mapping, ',', absl::SkipWhitespace())) {
    item = absl::StripAsciiWhitespace(item);
    const size_t equals = item.find('=');
    if (equals == absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrCat("--kernels: expected Name=value but got \"", item, "\""));
    }
    const std::string name(absl::StripAsciiWhitespace(item.substr(0, equals)));
    const std::string value(absl::StripAsciiWhitespace(item.substr(equals + 1)));
    bool known = false;
    for (const char* layer_name : kLayerNames) known = known || name == layer_name;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat("--kernels: unknown layer \"", name,
                                                     "\"; expected one of RMSNorm, SiluAndMul, RotaryEmbedding, "
                                                     "PagedAttention, Linear"));
    }
    if (parsed.contains(name)) return absl::InvalidArgumentError(absl::StrCat("--kernels: ", name, " is given twice"));
    if (value != "eager" && value != "builtin" && !IsRepositoryReference(value)) {
      return absl::InvalidArgumentError(absl::StrCat("--kernels ", name, "=", value,
                                                     ": expected eager, builtin or a kernel repository "
                                                     "namespace/name[@revision]"));
    }
    if ((name == "PagedAttention" || name == "Linear") && value != "eager" && value != "builtin") {
      return absl::InvalidArgumentError(absl::StrCat("--kernels ", name, "=", value,
                                                     ": only eager or builtin (the kernel ABI has no ", name,
                                                     " entry point yet)"));
    }
    parsed[name] = value;
  }
  return parsed;
}

void UseBuiltinKernel(KernelLayer layer, LayerKernels& kernels) {
  kernels.sources[static_cast<int>(layer)] = "builtin";
  switch (layer) {
    case KernelLayer::kRmsNorm:
      kernels.rms_norm = [](const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
        return kernels::RmsNorm(hidden_states, weight, epsilon);  // CPU or CUDA by the tensor's device
      };
      kernels.add_rms_norm = [](const at::Tensor& hidden_states, const at::Tensor& residual, const at::Tensor& weight,
                                double epsilon) { return kernels::cpu::AddRmsNorm(hidden_states, residual, weight, epsilon); };
      break;
    case KernelLayer::kSiluAndMul:
      kernels.silu_and_mul = [](const at::Tensor& gate, const at::Tensor& up) { return kernels::SiluAndMul(gate, up); };
      break;
    case KernelLayer::kRotaryEmbedding:
      kernels.rotary_embedding = [](at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin) {
        kernels::RotaryEmbeddingInPlace(query, key, cos, sin);
      };
      break;
    case KernelLayer::kPagedAttention:
      kernels.builtin_paged_attention = true;
      break;
    case KernelLayer::kLinear:
      kernels.builtin_skinny_linear = true;
      break;
  }
}

absl::StatusOr<LayerKernels> ResolveLayerKernels(const std::string& mapping, const HubKernelLoader& hub) {
  absl::StatusOr<std::map<std::string, std::string>> parsed = ParseKernelMapping(mapping);
  if (!parsed.ok()) return parsed.status();
  LayerKernels kernels;
  for (int index = 0; index < kNumKernelLayers; ++index) {
    const KernelLayer layer = static_cast<KernelLayer>(index);
    auto found = parsed->find(kLayerNames[index]);
    if (found == parsed->end()) continue;  // the default
    const std::string& value = found->second;
    if (value == "builtin") {
      UseBuiltinKernel(layer, kernels);
    } else if (value == "eager") {
      kernels.sources[index] = "eager";
      if (layer == KernelLayer::kRmsNorm) {
        kernels.rms_norm = nullptr;
        kernels.add_rms_norm = nullptr;
      }
      if (layer == KernelLayer::kSiluAndMul) kernels.silu_and_mul = nullptr;
      if (layer == KernelLayer::kRotaryEmbedding) kernels.rotary_embedding = nullptr;
      if (layer == KernelLayer::kPagedAttention) kernels.builtin_paged_attention = false;
      if (layer == KernelLayer::kLinear) kernels.builtin_skinny_linear = false;
    } else {
      LayerKernels loaded = kernels;
      absl::Status status = hub ? hub(layer, value, loaded)
                                : absl::FailedPreconditionError("no kernel repository loader in this process");
      if (status.ok()) {
        kernels = std::move(loaded);
      } else {
        // Never fatal: the eager forward computes the same thing.
        LogWarning("hub kernel refused; the layer keeps its eager forward",
                   {{"layer", kLayerNames[index]}, {"kernel", value}, {"reason", std::string(status.message())},
                    {"code", absl::StatusCodeToString(status.code())}});
        kernels.sources[index] = "eager";
      }
    }
  }
  return kernels;
}

void InstallLayerKernels(const LayerKernels& kernels) {
  InstalledKernels* installed = MakeInstalled(kernels);
  Current().store(installed, std::memory_order_release);
  nlohmann::json fields = nlohmann::json::object();
  for (int index = 0; index < kNumKernelLayers; ++index) fields[kLayerNames[index]] = kernels.sources[index];
  LogInfo("kernel mapping", fields);
}

const LayerKernels& CurrentLayerKernels() { return Current().load(std::memory_order_acquire)->kernels; }

bool KernelRunsOn(KernelLayer layer, const LayerKernels& kernels, const c10::Device& device) {
  if (device.is_cpu()) return true;
  return device.is_cuda() && kernels.source(layer) == "builtin" && kernels::HasCudaKernels();
}

void CountKernelForward(KernelLayer layer, bool kernel_ran) {
  InstalledKernels* installed = Current().load(std::memory_order_acquire);
  const int index = static_cast<int>(layer);
  (kernel_ran ? installed->kernel_counters[index] : installed->eager_counters[index])->Increment();
}

std::pair<at::Tensor, at::Tensor> UseKernelRotary::operator()(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& cos, const at::Tensor& sin) const {
  const LayerKernels& kernels = CurrentLayerKernels();
  // The kernel rotates whole heads; a partial rotary (cos narrower than the head) stays eager.
  const bool runs = kernels.rotary_embedding && KernelRunsOn(KernelLayer::kRotaryEmbedding, kernels, q.device()) &&
                    q.dim() == 4 && k.dim() == 4 &&
                    cos.dim() == 3 && cos.size(-1) == q.size(-1) && k.size(-1) == q.size(-1) &&
                    q.scalar_type() == cos.scalar_type() && k.scalar_type() == cos.scalar_type() &&
                    sin.scalar_type() == cos.scalar_type() && q.stride(-1) == 1 && k.stride(-1) == 1;
  const bool batch_fits = cos.dim() == 3 && (cos.size(0) == q.size(0) || cos.size(0) == 1) && sin.sizes() == cos.sizes();
  CountKernelForward(KernelLayer::kRotaryEmbedding, runs && batch_fits);
  if (!runs || !batch_fits) return eager_(q, k, cos, sin);
  at::Tensor query = q;
  at::Tensor key = k;
  // Positions shared by every row of a batch come as one cos/sin row; the kernels take one per row
  // (expand is a stride-0 view, no copy).
  const at::Tensor cos_rows = cos.expand({q.size(0), cos.size(1), cos.size(2)});
  const at::Tensor sin_rows = sin.expand({q.size(0), sin.size(1), sin.size(2)});
  kernels.rotary_embedding(query, key, cos_rows, sin_rows);
  return {query, key};
}

}  // namespace flotilla::models
