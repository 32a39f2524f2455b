#include "models/layers.h"

#include <algorithm>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include "kernels/cpu/cpu_kernels.h"
#include "models/debugger.h"
#include "models/kernelize.h"
#include "models/tensor_parallel.h"

namespace flotilla::models {
namespace {

// Up to this many input rows, a CPU linear is memory-bound: every weight byte is read once per
// call and used for at most this many multiply-adds.
constexpr int64_t kMaxSkinnyRows = 16;

// Decode steps multiply a handful of rows by every weight of the model. MKL runs such skinny
// products (gemv, or gemm with tiny M) on a single core, at about half of what the memory bus
// delivers to two (measured: 9.7 GB/s against 19.7 GB/s for a plain two-thread read). Splitting
// the output features across the intra-op threads, each product reading its own slice of the
// weight, restores the full bandwidth. Each slice is still one MKL call, so the sums over
// in_features run in the same order for any thread count.
bool UseSkinnyPath(const at::Tensor& input, const at::Tensor& weight) {
  if (!input.device().is_cpu() || weight.scalar_type() != at::kFloat ||
      input.scalar_type() != at::kFloat || !weight.is_contiguous() || input.dim() < 1 || input.numel() == 0) {
    return false;
  }
  const int64_t rows = input.numel() / input.size(-1);
  return rows <= kMaxSkinnyRows && weight.size(0) >= 256;
}

at::Tensor SkinnyLinear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t in_features = weight.size(1);
  const int64_t out_features = weight.size(0);
  at::Tensor rows = input.reshape({-1, in_features});
  const int64_t row_count = rows.size(0);
  // Computed transposed, [out_features, rows], so that each thread's slice is contiguous.
  at::Tensor output_transposed = at::empty({out_features, row_count}, input.options());
  at::Tensor rows_transposed = rows.t();
  const int64_t threads = at::get_num_threads();
  const int64_t grain = std::max<int64_t>(64, (out_features + threads - 1) / threads);
  // Worker threads start without the caller's thread-local state (inference mode above all).
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, out_features, grain, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    at::Tensor weight_slice = weight.narrow(0, begin, end - begin);
    at::Tensor output_slice = output_transposed.narrow(0, begin, end - begin);
    if (row_count == 1) {
      at::Tensor output_vector = output_slice.squeeze(1);
      at::mv_out(output_vector, weight_slice, rows_transposed.squeeze(1));
    } else {
      at::mm_out(output_slice, weight_slice, rows_transposed);
    }
  });
  at::Tensor output = output_transposed.t().contiguous();
  if (bias.defined()) output.add_(bias);
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = out_features;
  return output.view(shape);
}

}  // namespace

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias)
    : in_features(in_features), out_features(out_features), has_bias(bias) {
  reset();
}

void LinearImpl::reset() {
  weight = register_parameter("weight", at::empty({out_features, in_features}), /*requires_grad=*/false);
  if (has_bias) bias = register_parameter("bias", at::empty({out_features}), /*requires_grad=*/false);
}

// The product on this rank's weight (all of it without tensor parallelism).
static at::Tensor LocalLinear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
  // --kernels Linear=builtin (models/kernelize.h): decode-sized products through the AVX2 kernel.
  if (CurrentLayerKernels().builtin_skinny_linear && kernels::cpu::SkinnyLinearApplies(input, weight)) {
    CountKernelForward(KernelLayer::kLinear, /*kernel_ran=*/true);
    return kernels::cpu::SkinnyLinear(input, weight, bias);
  }
  // --kernels Linear=builtin: larger float32 products through oneDNN's AVX-512 GEMM.
  if (CurrentLayerKernels().builtin_skinny_linear && kernels::cpu::PrefillLinearApplies(input, weight)) {
    CountKernelForward(KernelLayer::kLinear, /*kernel_ran=*/true);
    return kernels::cpu::PrefillLinear(input, weight, bias);
  }
  CountKernelForward(KernelLayer::kLinear, /*kernel_ran=*/false);
  if (UseSkinnyPath(input, weight)) return SkinnyLinear(input, weight, bias);
  return at::linear(input, weight, bias);
}

namespace {

// The sibling outputs computed but not yet asked for, on this thread (Note [Sibling projections]).
struct PendingSiblingOutputs {
  const SiblingProjections* group = nullptr;
  at::Tensor input;  // held, so its TensorImpl cannot be reused by another tensor meanwhile
  std::vector<at::Tensor> outputs;
};
thread_local PendingSiblingOutputs pending_sibling_outputs;

// This layer's output through its sibling group, or undefined when the group does not apply.
at::Tensor SiblingOutput(const LinearImpl& layer, const at::Tensor& input) {
  const SiblingProjections* group = layer.siblings.get();
  if (layer.sibling_index >= group->members.size() || group->members[layer.sibling_index] != &layer) return {};
  PendingSiblingOutputs& pending = pending_sibling_outputs;
  if (pending.group == group && pending.input.unsafeGetTensorImpl() == input.unsafeGetTensorImpl() &&
      pending.outputs[layer.sibling_index].defined()) {
    at::Tensor output = std::move(pending.outputs[layer.sibling_index]);
    pending.outputs[layer.sibling_index] = at::Tensor();
    if (std::none_of(pending.outputs.begin(), pending.outputs.end(), [](const at::Tensor& t) { return t.defined(); })) {
      pending = PendingSiblingOutputs();
    }
    CountKernelForward(KernelLayer::kLinear, /*kernel_ran=*/true);
    return output;
  }
  if (!CurrentLayerKernels().builtin_skinny_linear) return {};
  std::vector<at::Tensor> weights, biases;
  for (const LinearImpl* member : group->members) {
    if (member->tensor_parallel || !kernels::cpu::SkinnyLinearApplies(input, member->weight)) return {};
    weights.push_back(member->weight);
    biases.push_back(member->bias);
  }
  pending = PendingSiblingOutputs();
  std::vector<at::Tensor> outputs = kernels::cpu::SkinnyLinearGroup(input, weights, biases);
  at::Tensor output = std::move(outputs[layer.sibling_index]);
  outputs[layer.sibling_index] = at::Tensor();
  pending.group = group;
  pending.input = input;
  pending.outputs = std::move(outputs);
  CountKernelForward(KernelLayer::kLinear, /*kernel_ran=*/true);
  return output;
}

}  // namespace

at::Tensor LinearImpl::forward(const at::Tensor& input) {
  DebugScope debug(this, {{"input", input}});
  if (tensor_parallel) return debug.Output(tensor_parallel->Project(input, weight, bias, LocalLinear));
  if (siblings) {
    at::Tensor output = SiblingOutput(*this, input);
    if (output.defined()) return debug.Output(output);
  }
  return debug.Output(LocalLinear(input, weight, bias));
}

int GroupSiblingProjections(torch::nn::Module& model) {
  static const std::vector<std::vector<std::string>> kSiblingNames = {{"q_proj", "k_proj", "v_proj"},
                                                                       {"gate_proj", "up_proj"}};
  int groups = 0;
  for (const auto& module : model.modules(/*include_self=*/true)) {
    const auto children = module->named_children();
    for (const std::vector<std::string>& names : kSiblingNames) {
      std::vector<LinearImpl*> members;
      for (const std::string& name : names) {
        const auto* child = children.find(name);
        auto* linear = child == nullptr ? nullptr : dynamic_cast<LinearImpl*>(child->get());
        if (linear == nullptr || linear->tensor_parallel || !linear->weight.defined()) break;
        const LinearImpl* first = members.empty() ? linear : members.front();
        if (linear->weight.dim() != 2 || linear->weight.size(1) != first->weight.size(1) ||
            linear->weight.scalar_type() != first->weight.scalar_type() || linear->has_bias != first->has_bias) {
          break;
        }
        members.push_back(linear);
      }
      if (members.size() != names.size()) continue;
      auto group = std::make_shared<SiblingProjections>();
      group->members = members;
      for (size_t index = 0; index < members.size(); ++index) {
        members[index]->siblings = group;
        members[index]->sibling_index = index;
      }
      ++groups;
    }
  }
  return groups;
}

EmbeddingImpl::EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
    : num_embeddings(num_embeddings), embedding_dim(embedding_dim) {
  reset();
}

void EmbeddingImpl::reset() {
  weight = register_parameter("weight", at::empty({num_embeddings, embedding_dim}), /*requires_grad=*/false);
}

at::Tensor EmbeddingImpl::forward(const at::Tensor& input_ids) {
  DebugScope debug(this, {{"input_ids", input_ids}});
  if (input_ids.numel() > 0) {
    int64_t minimum = 0;
    int64_t maximum = 0;
    if (input_ids.device().is_cpu() && input_ids.scalar_type() == at::kLong && input_ids.is_contiguous()) {
      // A decode step's few ids: a loop, not two reductions and two .item() calls (~50 µs a token
      // when the weight stream has left their code cold).
      const int64_t* ids = input_ids.const_data_ptr<int64_t>();
      const auto [smallest, largest] = std::minmax_element(ids, ids + input_ids.numel());
      minimum = *smallest;
      maximum = *largest;
    } else {
      minimum = input_ids.min().item<int64_t>();
      maximum = input_ids.max().item<int64_t>();
    }
    TORCH_CHECK(minimum >= 0 && maximum < num_embeddings, "Embedding: input id ", minimum < 0 ? minimum : maximum,
                " is outside the vocabulary [0, ", num_embeddings, ")");
  }
  if (tensor_parallel) return debug.Output(tensor_parallel->Embed(input_ids, weight));
  return debug.Output(at::embedding(weight, input_ids));
}

Conv1DImpl::Conv1DImpl(int64_t nf, int64_t nx) : nf(nf) {
  weight = register_parameter("weight", at::empty({nx, nf}), /*requires_grad=*/false);
  bias = register_parameter("bias", at::empty({nf}), /*requires_grad=*/false);
}

at::Tensor Conv1DImpl::forward(const at::Tensor& x) {
  DebugScope debug(this, {{"x", x}});
  auto local_product = [](const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
    std::vector<int64_t> size_out = input.sizes().vec();
    size_out.back() = weight.size(1);
    at::Tensor rows = input.reshape({-1, input.size(-1)});
    at::Tensor output = bias.defined() ? at::addmm(bias, rows, weight) : at::mm(rows, weight);
    return output.view(size_out);
  };
  if (tensor_parallel) return debug.Output(tensor_parallel->Project(x, weight, bias, local_product));
  return debug.Output(local_product(x, weight, bias));
}

}  // namespace flotilla::models
