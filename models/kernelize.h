// Replaceable layers: a model file marks a layer as replaceable by a kernel name in one line beside
// its class, and the process's kernel mapping decides at load which implementation each name runs —
// the C++ form of transformers' `@use_kernel_forward_from_hub("RMSNorm")` plus `kernelize`.
//
//   class LlamaRMSNormImpl : public torch::nn::Module { ... the eager forward, unchanged ... };
//   using LlamaRMSNorm = UseKernelForward<LlamaRMSNormImpl, KernelLayer::kRmsNorm>;   // the mark
//
//   // At load (the worker's --kernels flag):
//   absl::StatusOr<LayerKernels> kernels = ResolveLayerKernels("RMSNorm=builtin,SiluAndMul=eager", hub_loader);
//   InstallLayerKernels(*kernels);   // logs one line per name
//
// Names and what a kernel for each replaces (the eager code stays the reference):
//   RMSNorm          the forward of a module with `weight` and `variance_epsilon` (LlamaRMSNorm)
//   SiluAndMul       the forward of a module with gate_proj / up_proj / down_proj (LlamaMLP):
//                    down_proj(kernel(gate_proj(x), up_proj(x))), or with a fused gate_up_proj
//                    (Phi3MLP): down_proj(kernel(the two halves))
//   RotaryEmbedding  apply_rotary_pos_emb, through UseKernelRotary; the kernel rotates q and k in
//                    place (the call site overwrites its q and k with the result, as every model does)
//   PagedAttention   the `paged` attention backend (paged_attention.cc): `builtin` reads the blocks
//                    in place for decode and prefill (kernels::PagedAttention); `eager` gathers each
//                    sequence's context and runs sdpa
//   Linear           every models::Linear (layers.h, not a mark in the model files): `builtin` runs decode-
//                    sized products (<= 2 rows, float32 or bfloat16; q/k/v, gate/up siblings in one pass) with
//                    kernels::cpu::SkinnyLinear(Group), larger float32 ones through oneDNN (cpu::PrefillLinear)
// Values: `eager`, `builtin` (kernels/: CPU, and CUDA where kernels/cuda is loaded), or a kernel
// repository reference namespace/name[@revision] (a hub kernel, loaded through kernels/abi; see
// kernels/hub/hub_kernel.h). A layer falls back to its eager forward for inputs its kernel does not
// take (a CUDA tensor for a hub kernel or without CUDA kernels, mixed dtypes, a partial rotary), and
// each call is counted in
// flotilla_kernel_forward_calls_total{layer, source} with the source that actually ran.
//
// Default (no mapping, or a name left out): eager, except PagedAttention=builtin. PagedAttention
// and Linear take eager or builtin only (the ABI has no entry point for them).
//
// Thread-safety: InstallLayerKernels publishes a new immutable table (readers never lock); install
// at load, before serving. Forwards may run on any thread.
#pragma once

#include <array>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "models/debugger.h"

namespace flotilla::models {

enum class KernelLayer { kRmsNorm = 0, kSiluAndMul = 1, kRotaryEmbedding = 2, kPagedAttention = 3, kLinear = 4 };
inline constexpr int kNumKernelLayers = 5;

// "RMSNorm", "SiluAndMul", "RotaryEmbedding", "PagedAttention", "Linear".
const char* KernelLayerName(KernelLayer layer);

// What each name runs. An empty function means the eager forward.
struct LayerKernels {
  using RmsNormFunction = std::function<at::Tensor(const at::Tensor& hidden_states, const at::Tensor& weight,
                                                   double epsilon)>;
  // {RmsNorm(residual + hidden_states), residual + hidden_states} in one pass; residual unchanged.
  using AddRmsNormFunction = std::function<std::pair<at::Tensor, at::Tensor>(
      const at::Tensor& hidden_states, const at::Tensor& residual, const at::Tensor& weight, double epsilon)>;
  using SiluAndMulFunction = std::function<at::Tensor(const at::Tensor& gate, const at::Tensor& up)>;
  using RotaryFunction =
      std::function<void(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin)>;

  // Per layer: "eager", "builtin", or "namespace/name@<commit id>" for a hub kernel.
  std::array<std::string, kNumKernelLayers> sources = {"eager", "eager", "eager", "builtin", "eager"};
  RmsNormFunction rms_norm;
  AddRmsNormFunction add_rms_norm;  // builtin only (the ABI has no entry point): else the add, then rms_norm
  SiluAndMulFunction silu_and_mul;
  RotaryFunction rotary_embedding;
  bool builtin_paged_attention = true;
  bool builtin_skinny_linear = false;

  const std::string& source(KernelLayer layer) const { return sources[static_cast<int>(layer)]; }
};

// Parses "Name=value,Name=value" (whitespace around items ignored). INVALID_ARGUMENT names an
// unknown layer, a repeated one, or a value that is neither eager, builtin nor namespace/name[@rev].
absl::StatusOr<std::map<std::string, std::string>> ParseKernelMapping(const std::string& mapping);

// Loads a hub kernel for one layer into `kernels` (its function and source). A non-OK status means
// "refused": ResolveLayerKernels logs it and keeps the eager forward for that layer.
using HubKernelLoader =
    std::function<absl::Status(KernelLayer layer, const std::string& reference, LayerKernels& kernels)>;

// The builtin implementation of one layer (kernels/cpu).
void UseBuiltinKernel(KernelLayer layer, LayerKernels& kernels);

// The mapping resolved: eager and builtin directly, repository references through `hub` (without a
// loader, a reference is refused like a failed load). Errors only for a mapping that does not parse.
absl::StatusOr<LayerKernels> ResolveLayerKernels(const std::string& mapping, const HubKernelLoader& hub = nullptr);

// Publishes `kernels` for every later forward and logs "kernel mapping" with each layer's source.
void InstallLayerKernels(const LayerKernels& kernels);
// The installed kernels (the default above until InstallLayerKernels).
const LayerKernels& CurrentLayerKernels();

// Whether the installed kernel of `layer` takes tensors on `device`: builtin kernels run on CPU, and
// on CUDA once kernels/cuda has registered itself (a worker on --device cuda loads it:
// kernels::HasCudaKernels); hub kernels, built for a CPU variant, on CPU only. Elsewhere the eager
// forward runs.
bool KernelRunsOn(KernelLayer layer, const LayerKernels& kernels, const c10::Device& device);

// Adds one to flotilla_kernel_forward_calls_total{layer, source}: `kernel_ran` picks the installed
// source, else "eager".
void CountKernelForward(KernelLayer layer, bool kernel_ran);

// The mark. Specialised per layer below; each specialisation's forward runs the installed kernel
// when it takes the inputs and the eager forward of `Eager` otherwise.
template <typename Eager, KernelLayer layer>
class UseKernelForward;

template <typename Eager>
class UseKernelForward<Eager, KernelLayer::kRmsNorm> : public Eager {
 public:
  using Eager::Eager;
  at::Tensor forward(const at::Tensor& hidden_states) {
    const LayerKernels& kernels = CurrentLayerKernels();
    const bool runs = kernels.rms_norm && KernelRunsOn(KernelLayer::kRmsNorm, kernels, hidden_states.device()) &&
                      this->weight.scalar_type() == hidden_states.scalar_type() &&
                      this->weight.device() == hidden_states.device();
    CountKernelForward(KernelLayer::kRmsNorm, runs);
    if (!runs) return Eager::forward(hidden_states);
    DebugScope debug(this, {{"hidden_states", hidden_states}});
    return debug.Output(kernels.rms_norm(hidden_states, this->weight, this->variance_epsilon));
  }

  // A decoder layer's "residual + hidden_states, then this norm": returns {the normalised sum, the
  // sum} (the next residual). Eager, and with a kernel that has no fused form, the add is the
  // layer's own `residual + hidden_states`; the builtin kernel adds and normalises in one pass
  // (kernels::cpu::AddRmsNorm), with the same rounding.
  std::pair<at::Tensor, at::Tensor> AddAndForward(const at::Tensor& hidden_states, const at::Tensor& residual) {
    const LayerKernels& kernels = CurrentLayerKernels();
    const bool fused = kernels.add_rms_norm && hidden_states.device().is_cpu() &&
                       residual.scalar_type() == hidden_states.scalar_type() &&
                       this->weight.scalar_type() == hidden_states.scalar_type() &&
                       this->weight.device() == hidden_states.device() && residual.sizes() == hidden_states.sizes();
    if (!fused) {
      at::Tensor sum = residual + hidden_states;
      return {forward(sum), sum};
    }
    CountKernelForward(KernelLayer::kRmsNorm, true);
    DebugScope debug(this, {{"hidden_states", hidden_states}, {"residual", residual}});
    auto [normalized, sum] = kernels.add_rms_norm(hidden_states, residual, this->weight, this->variance_epsilon);
    return {debug.Output(normalized), sum};
  }
};

template <typename Eager>
class UseKernelForward<Eager, KernelLayer::kSiluAndMul> : public Eager {
 public:
  using Eager::Eager;
  at::Tensor forward(const at::Tensor& x) {
    const LayerKernels& kernels = CurrentLayerKernels();
    const bool runs = kernels.silu_and_mul && KernelRunsOn(KernelLayer::kSiluAndMul, kernels, x.device());
    CountKernelForward(KernelLayer::kSiluAndMul, runs);
    if (!runs) return Eager::forward(x);
    DebugScope debug(this, {{"x", x}});
    if constexpr (requires { this->gate_up_proj; }) {
      // A fused gate_up_proj (Phi-3): its output's two halves.
      const std::vector<at::Tensor> gate_up = this->gate_up_proj->forward(x).chunk(2, -1);
      return debug.Output(this->down_proj->forward(kernels.silu_and_mul(gate_up[0], gate_up[1])));
    } else {
      return debug.Output(
          this->down_proj->forward(kernels.silu_and_mul(this->gate_proj->forward(x), this->up_proj->forward(x))));
    }
  }
};

// The mark for apply_rotary_pos_emb (a function in the model files, not a module):
//   const UseKernelRotary ApplyRotaryPosEmbWithKernel{ApplyRotaryPosEmb};
class UseKernelRotary {
 public:
  using EagerFunction = std::pair<at::Tensor, at::Tensor> (*)(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& cos, const at::Tensor& sin);
  constexpr explicit UseKernelRotary(EagerFunction eager) : eager_(eager) {}
  std::pair<at::Tensor, at::Tensor> operator()(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                               const at::Tensor& sin) const;

 private:
  EagerFunction eager_;
};

}  // namespace flotilla::models
