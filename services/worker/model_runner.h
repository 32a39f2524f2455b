// The model runner: turns one engine step into ONE forward of an unchanged single-file model.
// Every scheduled sequence's new tokens (a prompt chunk or one decode token) are packed into one
// row with per-token position ids; the paged KV cache and the step's block tables reach the model
// through the cache interface and the paged forward context (models/paged_attention.h), as
// transformers' continuous batching does — the model never learns it is being batched.
//
//   ASSIGN_OR_RETURN(auto runner, ModelRunner::Create(model, {.kv_cache_memory_bytes = 1 << 30}));
//   std::vector<RunnerSequence> step = {{.token_ids = prompt, .start_position = 0,
//                                        .block_table = &blocks, .samples = true}};
//   at::Tensor logits = runner->Execute(step);   // [1, vocab] float32: one row per sampling sequence
//
// Tensor parallelism: with a group (models/tensor_parallel.h), rank 0's runner broadcasts each
// step's packed inputs before its forward, and every other rank runs FollowSteps(), which receives
// the same steps and runs the same forward on its shard (each rank holds its heads' KV blocks in a
// pool of the same number of blocks; rank 0's block manager decides for all). Idle, rank 0 sends a
// keep-alive at least every second so that a follower's wait never reaches the collective timeout;
// Shutdown() releases the followers. A collective that fails (a rank died, the network broke) ends
// the process with exit code kExitTensorParallelGroupBroken: a group cannot recover in place; its
// agent (worker_group.h) restarts all ranks, and the gateways migrate the requests meanwhile.
//
// On a GPU (ModelRunnerOptions::device) the steps are packed and broadcast on the host, as on a
// CPU; only the forward's inputs cross to the device, and the logits come back.
//
// Thread-safety: none. One engine thread calls Execute, KeepAlive and Shutdown.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "models/modeling_utils.h"
#include "models/paged_attention.h"
#include "models/tensor_parallel.h"
#include "services/worker/worker_group.h"

namespace flotilla::worker {

struct ModelRunnerOptions {
  // Bytes of KV-cache pool (keys and values of every layer). 0: enough for max_num_seqs sequences
  // of max_model_len tokens, capped at 1 GiB.
  int64_t kv_cache_memory_bytes = 0;
  int64_t block_size = 16;
  at::ScalarType kv_dtype = at::kFloat;
  // Tensor parallelism: the group (null: one process) and how many ways the plan splits the key /
  // value heads (models::KeyValueHeadShards).
  std::shared_ptr<models::TensorParallelGroup> tensor_parallel_group;
  int64_t key_value_head_shards = 1;
  // Where the model's weights are (device.h) and so the KV pool and each step's inputs; logits
  // come back to the host, where the sampler runs.
  c10::Device device = c10::Device(c10::kCPU);
};


// One sequence's part of a step.
struct RunnerSequence {
  // The tokens whose KV this step computes: positions [start_position, start_position + size).
  std::span<const int32_t> token_ids;
  int64_t start_position = 0;
  // The sequence's cache blocks, covering at least start_position + token_ids.size() positions.
  const std::vector<int32_t>* block_table = nullptr;
  // Whether the logits of the last token are wanted (the chunk ends the known tokens).
  bool samples = false;
};

class ModelRunner {
 public:
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(std::shared_ptr<models::PreTrainedModel> model,
                                                             const ModelRunnerOptions& options);

  // Runs the step and returns float32 logits [number of sampling sequences, vocab], in order.
  // Throws c10::Error on a bad step (a bug in the caller): the engine turns it into an abort.
  at::Tensor Execute(const std::vector<RunnerSequence>& sequences);

  // Rank 0 of a group: tells the followers it is alive (no-op without a group).
  void KeepAlive();
  // Rank 0 of a group: tells the followers to leave FollowSteps (no-op without a group).
  void Shutdown();
  // Ranks 1..N-1: run rank 0's steps until it shuts down (OK), or fail when the group breaks.
  absl::Status FollowSteps();

  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t bytes_per_block() const { return bytes_per_block_; }
  models::PreTrainedModel& model() { return *model_; }

 private:
  ModelRunner(std::shared_ptr<models::PreTrainedModel> model, std::unique_ptr<models::PagedKVCache> cache,
              int64_t num_blocks, int64_t block_size, int64_t bytes_per_block,
              std::shared_ptr<models::TensorParallelGroup> group, c10::Device device);

  // A step as one forward's inputs; rank 0 packs it, followers unpack rank 0's broadcast.
  struct PackedStep {
    at::Tensor input_ids;     // [1, T] int64
    at::Tensor position_ids;  // [1, T] int64
    std::vector<int64_t> logits_indices;
    models::PagedBatch batch;
  };
  at::Tensor Forward(const PackedStep& step);
  // Sends a message to the followers: its kind and, for a step, the step.
  void Send(int64_t kind, const PackedStep* step);
  [[noreturn]] void AbandonGroup(const std::string& operation, const std::exception& error);
  // Every rank's resident memory, at most every few seconds: each rank writes its own to the
  // group's store; rank 0 exports them all (flotilla_worker_rank_resident_memory_bytes{rank}).
  void PublishMemory();

  std::shared_ptr<models::PreTrainedModel> model_;
  std::unique_ptr<models::PagedKVCache> cache_;
  int64_t num_blocks_;
  int64_t block_size_;
  int64_t bytes_per_block_;
  std::shared_ptr<models::TensorParallelGroup> group_;
  c10::Device device_;
  std::chrono::steady_clock::time_point last_message_;
  std::chrono::steady_clock::time_point last_memory_report_;
  bool shut_down_ = false;
};

}  // namespace flotilla::worker
