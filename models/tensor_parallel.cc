#include "models/tensor_parallel.h"

#include <chrono>
#include <exception>
#include <map>
#include <utility>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "absl/strings/str_cat.h"

namespace flotilla::models {

struct TensorParallelGroup::State {
  c10::intrusive_ptr<c10d::TCPStore> store;
  // The model's collectives, on the backend the group was asked for.
  c10::intrusive_ptr<c10d::Backend> process_group;
  // With a device backend (nccl): a Gloo group over the same ranks for CPU tensors — rank 0's step
  // messages, which are built and read on the host (vLLM keeps such a "cpu group" beside its
  // device group for the same reason). Null with gloo, whose one group serves both.
  c10::intrusive_ptr<c10d::Backend> host_group;
  int64_t exchange_tag = 0;  // matches the ranks' send/recv pairs, in order

  // The group that moves `tensor`: a host tensor goes through host_group when there is one.
  c10d::Backend& For(const at::Tensor& tensor) const {
    return tensor.is_cpu() && host_group ? *host_group : *process_group;
  }
};

namespace {

bool IsLoopback(const std::string& address) {
  return address == "127.0.0.1" || address == "localhost" || address == "::1";
}

c10::intrusive_ptr<c10d::Backend> MakeGloo(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world_size,
                                           std::chrono::milliseconds timeout, bool loopback) {
  auto options = c10d::ProcessGroupGloo::Options::create(timeout);
  // Each rank's own address for Gloo's pairs: loopback for a group on one machine, whatever this
  // host's name resolves to; else the address this host's name resolves to (a pod's IP), or
  // loopback when the name does not resolve — torchrun's default.
  options->devices.push_back(loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                      : c10d::ProcessGroupGloo::createDefaultDevice());
  // One thread: the collectives run one at a time, in the forward's order.
  options->threads = 1;
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
}

std::map<std::string, TensorParallelBackendFactory>& Backends() {
  static auto* backends = new std::map<std::string, TensorParallelBackendFactory>{
      {"gloo", [](const c10::intrusive_ptr<c10d::Store>& store, int rank, int world_size,
                  std::chrono::milliseconds timeout) { return MakeGloo(store, rank, world_size, timeout, false); }}};
  return *backends;
}

}  // namespace

absl::StatusOr<std::shared_ptr<TensorParallelGroup>> TensorParallelGroup::Join(const TensorParallelOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel rank ", options.rank, " is outside a group of ",
                                                   options.world_size, " ranks"));
  }
  if (options.master_port <= 0 || options.master_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel master port ", options.master_port,
                                                   " is not a TCP port"));
  }
  const auto backend = Backends().find(options.backend);
  if (backend == Backends().end()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor-parallel backend \"", options.backend,
                                                   "\" is not linked into this binary (known: gloo",
                                                   Backends().count("nccl") ? ", nccl" : "", ")"));
  }
  const auto timeout = std::chrono::milliseconds(absl::ToInt64Milliseconds(options.timeout));
  auto state = std::make_unique<State>();
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(options.master_port);
    store_options.isServer = options.rank == 0;
    store_options.numWorkers = static_cast<size_t>(options.world_size);
    // Rank 0 returns at once; the others retry the connection until the timeout.
    store_options.waitWorkers = false;
    store_options.timeout = timeout;
    state->store = c10::make_intrusive<c10d::TCPStore>(options.master_address, store_options);

    const int rank = static_cast<int>(options.rank);
    const int world_size = static_cast<int>(options.world_size);
    const bool loopback = IsLoopback(options.master_address);
    if (options.backend == "gloo") {
      state->process_group = MakeGloo(state->store, rank, world_size, timeout, loopback);
    } else {
      // Each group rendezvouses under its own prefix of the one store.
      state->process_group = backend->second(c10::make_intrusive<c10d::PrefixStore>(options.backend, state->store),
                                             rank, world_size, timeout);
      state->host_group =
          MakeGloo(c10::make_intrusive<c10d::PrefixStore>("host", state->store), rank, world_size, timeout, loopback);
    }
  } catch (const std::exception& error) {
    return absl::UnavailableError(absl::StrCat("tensor-parallel rank ", options.rank, " of ", options.world_size,
                                               " could not join the group through the store at ",
                                               options.master_address, ":", options.master_port, " within ",
                                               absl::FormatDuration(options.timeout), ": ", error.what()));
  }
  return std::shared_ptr<TensorParallelGroup>(
      new TensorParallelGroup(options.rank, options.world_size, std::move(state)));
}

bool RegisterTensorParallelBackend(const std::string& name, TensorParallelBackendFactory factory) {
  Backends()[name] = std::move(factory);
  return true;
}

TensorParallelGroup::TensorParallelGroup(int64_t rank, int64_t world_size, std::unique_ptr<State> state)
    : rank_(rank), world_size_(world_size), state_(std::move(state)) {}

TensorParallelGroup::~TensorParallelGroup() = default;

void TensorParallelGroup::AllReduceSum(at::Tensor& tensor) const {
  TORCH_CHECK(tensor.is_contiguous(), "AllReduceSum: the tensor must be contiguous");
  c10d::Backend& process_group = state_->For(tensor);
  if (world_size_ == 2 && tensor.is_cpu()) {
    // Two CPU ranks: one exchange (each sends its partial sum and receives the other's) instead of
    // the ring's two steps through Gloo's worker queue — measured 7.8 -> 14.1 decode tokens/s for
    // a SmolLM2-sized model on this 2-core machine (tools/bench/tensor_parallel.py). a + b == b + a
    // bit for bit, so both ranks hold the same sum.
    const int peer_rank = static_cast<int>(1 - rank_);
    const int tag = static_cast<int>(state_->exchange_tag++ % (1 << 30));
    at::Tensor peer = at::empty_like(tensor);
    std::vector<at::Tensor> outgoing = {tensor};
    std::vector<at::Tensor> incoming = {peer};
    auto sent = process_group.send(outgoing, peer_rank, tag);
    auto received = process_group.recv(incoming, peer_rank, tag);
    received->wait();
    sent->wait();
    tensor.add_(peer);
    return;
  }
  std::vector<at::Tensor> tensors = {tensor};
  process_group.allreduce(tensors)->wait();
}

at::Tensor TensorParallelGroup::AllGather(const at::Tensor& shard, int64_t dim) const {
  at::Tensor input = shard.contiguous();
  std::vector<at::Tensor> inputs = {input};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int64_t rank = 0; rank < world_size_; ++rank) outputs[0].push_back(at::empty_like(input));
  state_->For(input).allgather(outputs, inputs)->wait();
  return at::cat(outputs[0], dim);
}

void TensorParallelGroup::Broadcast(at::Tensor& tensor, int64_t root) const {
  TORCH_CHECK(tensor.is_contiguous(), "Broadcast: the tensor must be contiguous");
  std::vector<at::Tensor> tensors = {tensor};
  c10d::BroadcastOptions broadcast_options;
  broadcast_options.rootRank = root;
  state_->For(tensor).broadcast(tensors, broadcast_options)->wait();
}

void TensorParallelGroup::Barrier() const {
  (state_->host_group ? state_->host_group : state_->process_group)->barrier()->wait();
}

void TensorParallelGroup::SetValue(const std::string& key, const std::string& value) const {
  state_->store->set(key, std::vector<uint8_t>(value.begin(), value.end()));
}

std::string TensorParallelGroup::GetValue(const std::string& key) const {
  if (!state_->store->check({key})) return "";
  std::vector<uint8_t> value = state_->store->get(key);
  return std::string(value.begin(), value.end());
}

TensorParallelLayer::TensorParallelLayer(ParallelStyle style, std::shared_ptr<TensorParallelGroup> group)
    : style_(style), group_(std::move(group)) {}

at::Tensor TensorParallelLayer::Project(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                        const LocalProduct& local_product) const {
  switch (style_) {
    case ParallelStyle::kColwise:
    case ParallelStyle::kPackedColwise:
    case ParallelStyle::kConv1DColwise:
    case ParallelStyle::kConv1DPackedColwise:
    case ParallelStyle::kReplicated:
    case ParallelStyle::kVocabParallel:
      return local_product(input, weight, bias);
    case ParallelStyle::kColwiseGatherOutput:
      return group_->AllGather(local_product(input, weight, bias), -1);
    case ParallelStyle::kRowwise:
    case ParallelStyle::kPackedRowwise:
    case ParallelStyle::kConv1DRowwise:
    case ParallelStyle::kRowwiseSplitInput: {
      at::Tensor local_input = input;
      if (style_ == ParallelStyle::kRowwiseSplitInput) {
        const int64_t shard = input.size(-1) / group_->world_size();
        local_input = input.narrow(-1, group_->rank() * shard, shard);
      }
      // The bias joins once, after the partial sums are added up.
      at::Tensor output = local_product(local_input, weight, at::Tensor()).contiguous();
      group_->AllReduceSum(output);
      if (bias.defined()) output.add_(bias);
      return output;
    }
  }
  TORCH_CHECK(false, "TensorParallelLayer: unhandled style ", ParallelStyleName(style_));
}

at::Tensor TensorParallelLayer::Embed(const at::Tensor& input_ids, const at::Tensor& weight) const {
  TORCH_CHECK(style_ == ParallelStyle::kVocabParallel, "TensorParallelLayer::Embed: style ",
              ParallelStyleName(style_), " does not shard an embedding");
  const int64_t rows = weight.size(0);
  const int64_t first = group_->rank() * rows;
  at::Tensor local_ids = input_ids - first;
  at::Tensor outside = (local_ids < 0).logical_or_(local_ids >= rows);
  at::Tensor output = at::embedding(weight, local_ids.masked_fill(outside, 0));
  output.masked_fill_(outside.unsqueeze(-1), 0);
  output = output.contiguous();
  group_->AllReduceSum(output);
  return output;
}

int64_t KeyValueHeadShards(const TensorParallelPlan& plan, int64_t world_size) {
  for (const char* key_projection : {"layers.0.self_attn.k_proj", "encoder.layer.0.attention.self.key",
                                     "h.0.attn.c_attn"}) {
    std::optional<ParallelStyle> style = plan.Match(key_projection);
    if (!style) continue;
    switch (*style) {
      case ParallelStyle::kColwise:
      case ParallelStyle::kPackedColwise:
      case ParallelStyle::kConv1DColwise:
      case ParallelStyle::kConv1DPackedColwise:
        return world_size;
      default:
        return 1;
    }
  }
  return 1;
}

}  // namespace flotilla::models
