// Tensor parallelism at run time: the process group the ranks of one model share, and the
// collectives each sharded layer runs around its local product. The plan (tp_plan.h) says which
// layer is sharded how; the loader (auto.h, LoadOptions::tensor_parallel_group) gives each rank its
// slice of each weight and attaches a TensorParallelLayer to every sharded Linear, Conv1D and
// Embedding (layers.h). The model files never see it: a Linear stays a Linear.
//
//   // every rank, as torchrun's MASTER_ADDR / MASTER_PORT; rank 0 hosts the store
//   ASSIGN_OR_RETURN(auto group, TensorParallelGroup::Join({.rank = 1, .world_size = 2,
//                                                           .master_address = "10.0.0.7", .master_port = 29500}));
//   LoadOptions options{.tensor_parallel_group = group};
//   ASSIGN_OR_RETURN(auto model, FromPretrained(folder, options));   // this rank's half of each sharded weight
//
// What each style runs (the analogue of transformers' ParallelInterface hooks):
//   colwise / packed_colwise          local product only (the output stays split by feature)
//   colwise_gather_output             local product, then all-gather of the last dimension
//   rowwise / packed_rowwise          local product without bias, all-reduce (sum), then the bias
//   rowwise_split_input               the rank's slice of the (whole) input, then as rowwise
//   vocab_parallel (Embedding)        lookup of the ids in this rank's rows, zeros elsewhere, all-reduce
// and the conv1d_* styles the same on GPT-2's transposed weights.
//
// Collectives run on CPU tensors over Gloo (c10d from the torch wheel, rendezvous through a
// TCPStore that rank 0 hosts), or on CUDA tensors over NCCL with a Gloo group beside it for the
// host tensors a group also moves (serving's step messages): each collective picks the group by
// its tensor's device. A collective that cannot complete within the group's timeout — a
// peer died, the network broke — throws c10::Error out of the forward; serving treats that as the
// end of the group (the worker exits and whoever started it restarts the whole group).
//
// Thread-safety: one forward at a time per group (collectives are matched by order across ranks).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "models/tp_plan.h"

namespace c10d {
class Backend;
class Store;
}  // namespace c10d

namespace flotilla::models {

struct TensorParallelOptions {
  int64_t rank = 0;
  int64_t world_size = 1;
  // Where rank 0 hosts the rendezvous store (rank 0 listens on master_port; the others connect).
  std::string master_address = "127.0.0.1";
  int master_port = 29500;
  // Bounds the rendezvous (a rank that cannot reach the store) and every collective.
  absl::Duration timeout = absl::Seconds(60);
  // "gloo" (CPU tensors) or a registered backend: "nccl" (CUDA tensors) when the binary links
  // models/tensor_parallel_nccl.cc (built with the CUDA toolkit).
  std::string backend = "gloo";
};

// Makes a c10d backend for one rank of a group rendezvousing through `store`; throws on failure.
using TensorParallelBackendFactory = std::function<c10::intrusive_ptr<c10d::Backend>(
    const c10::intrusive_ptr<c10d::Store>& store, int rank, int world_size, std::chrono::milliseconds timeout)>;
// Called at static initialisation by the file that implements a backend.
bool RegisterTensorParallelBackend(const std::string& name, TensorParallelBackendFactory factory);

class TensorParallelGroup {
 public:
  // Joins the group: rank 0 starts the store, every rank connects and builds the Gloo process
  // group. Returns when all world_size ranks have joined, or an error within options.timeout.
  static absl::StatusOr<std::shared_ptr<TensorParallelGroup>> Join(const TensorParallelOptions& options);
  ~TensorParallelGroup();

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }

  // Collectives on contiguous tensors (CPU, or CUDA with the nccl backend); each throws c10::Error
  // when the group is broken.
  void AllReduceSum(at::Tensor& tensor) const;
  // The shards of every rank, concatenated in rank order along `dim`.
  at::Tensor AllGather(const at::Tensor& shard, int64_t dim) const;
  void Broadcast(at::Tensor& tensor, int64_t root) const;
  void Barrier() const;

  // The rendezvous store: small per-rank facts (memory in use, state) that rank 0 reports.
  void SetValue(const std::string& key, const std::string& value) const;
  // "" when the key is absent.
  std::string GetValue(const std::string& key) const;

 private:
  struct State;
  TensorParallelGroup(int64_t rank, int64_t world_size, std::unique_ptr<State> state);

  int64_t rank_;
  int64_t world_size_;
  std::unique_ptr<State> state_;
};

// The collective work one sharded layer does around its local product (see the table above).
class TensorParallelLayer {
 public:
  // `local_product(input, weight, bias)` is the layer's own unsharded arithmetic (a Linear's
  // at::linear, a Conv1D's addmm); bias may be undefined.
  using LocalProduct = std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>;

  TensorParallelLayer(ParallelStyle style, std::shared_ptr<TensorParallelGroup> group);

  at::Tensor Project(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                     const LocalProduct& local_product) const;
  // vocab_parallel: `weight` holds rows [rank * rows, (rank + 1) * rows) of the full table.
  at::Tensor Embed(const at::Tensor& input_ids, const at::Tensor& weight) const;

  ParallelStyle style() const { return style_; }

 private:
  ParallelStyle style_;
  std::shared_ptr<TensorParallelGroup> group_;
};

// How many ways the plan splits the key/value heads: world_size when the plan shards the key
// projection (k_proj / key / GPT-2's fused c_attn) by output feature, else 1 (phi3's gathered
// qkv_proj: every rank runs the whole attention and caches every head).
int64_t KeyValueHeadShards(const TensorParallelPlan& plan, int64_t world_size);

}  // namespace flotilla::models
