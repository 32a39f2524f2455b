// The worker's continuous-batching scheduler: each step, which sequences run and how many of
// their tokens, within a token budget and a sequence cap, admitting waiting sequences when their
// KV blocks can be allocated and preempting (by recompute) when running ones cannot grow. The
// rules are vLLM v1's (Note [vLLM v1 scheduling] in scheduler.cc): no prefill or decode phase,
// every sequence just catches its num_computed_tokens up with its num_tokens.
//
// Example (the engine loop):
//   BlockManager blocks(num_blocks, block_size, /*enable_prefix_caching=*/true);
//   Scheduler scheduler({.max_num_batched_tokens = 2048, .max_num_seqs = 64,
//                        .max_model_len = 4096}, blocks);
//   scheduler.Add(sequence);
//   while (scheduler.HasWork()) {
//     SchedulerOutput step = scheduler.Schedule();
//     // forward the tokens [num_computed_tokens, num_computed_tokens + num_tokens) of each
//     // step.sequences[i], sample one token for each whose `samples` is set, in order:
//     std::vector<SampledToken> sampled = sampler.Sample(logits, sampling_sequences);
//     for (const SequenceUpdate& update : scheduler.Update(step, sampled)) { /* stream */ }
//   }
//
// Thread-safety: none; no threads inside. The engine loop's thread owns the scheduler and its
// BlockManager, and applies aborts between steps.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "services/worker/block_manager.h"
#include "services/worker/sequence.h"

namespace flotilla::worker {

struct SchedulerOptions {
  // Tokens computed in one forward, all sequences together.
  int max_num_batched_tokens = 2048;
  // Sequences running at once (scheduled or holding blocks).
  int max_num_seqs = 64;
  // The model's context length; Add refuses longer prompts (the caller's job to check first).
  int max_model_len = 0;
  // Off: a waiting sequence is admitted only when all its uncomputed tokens fit the remaining
  // budget (and max_num_batched_tokens must then be >= max_model_len).
  bool enable_chunked_prefill = true;
};

struct ScheduledSequence {
  std::shared_ptr<Sequence> sequence;
  // The step computes the sequence's tokens [num_computed_tokens, num_computed_tokens +
  // num_tokens); num_computed_tokens is the sequence's value at Schedule() time (Update
  // advances it), kept here so the step stays readable after the sequence changes.
  int num_computed_tokens = 0;
  int num_tokens = 0;
  // The chunk reaches the end of the sequence's known tokens: the forward must return the
  // logits of its last token, and the sampler draws the next token from them.
  bool samples = false;
};

struct SchedulerOutput {
  // In scheduling order: running sequences first, then newly admitted ones.
  std::vector<ScheduledSequence> sequences;
  // Preempted during this step (their blocks are freed; they wait to be recomputed).
  std::vector<std::shared_ptr<Sequence>> preempted;
  int num_batched_tokens = 0;
  int num_sampling_sequences() const;
};

struct SequenceUpdate {
  std::shared_ptr<Sequence> sequence;
  SampledToken token;  // the token this step appended, with its logprobs when asked
  bool finished = false;
  std::string finish_reason;  // when finished: "stop" or "length"
};

class Scheduler {
 public:
  // `block_manager` must outlive the scheduler and hold at least max_model_len tokens, so that a
  // sequence alone can always run to its end.
  Scheduler(SchedulerOptions options, BlockManager& block_manager);

  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a new sequence (status waiting, fresh arrival order; max_model_len filled in when
  // 0). Aborts the process if its prompt is empty or has max_model_len tokens or more: refuse
  // such requests before (WorkerGenerateRequest validation).
  void Add(std::shared_ptr<Sequence> sequence);

  // Finishes the sequence with "abort" and frees its blocks. Returns whether it was waiting or
  // running. Call between steps (an aborted sequence in a step already scheduled is skipped by
  // Update).
  bool Abort(const std::string& request_id);

  // Picks the next step. Does not advance num_computed_tokens: Update does, once the forward
  // has run.
  SchedulerOutput Schedule();

  // Applies a step's results: advances each scheduled sequence's num_computed_tokens, registers
  // its full blocks in the prefix cache, appends the sampled token of each sampling sequence
  // (`sampled` holds one token per `samples` entry of step.sequences, in order), and
  // retires finished sequences (blocks freed). Returns one update per appended token, in
  // step order.
  std::vector<SequenceUpdate> Update(const SchedulerOutput& step,
                                     const std::vector<SampledToken>& sampled);

  bool HasWork() const { return !running_.empty() || !waiting_.empty(); }
  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int64_t num_preemptions_total() const { return num_preemptions_total_; }
  // Known tokens not yet in the KV cache, waiting and running sequences together (a router's
  // measure of queued prefill work: WorkerLoad.waiting_tokens).
  int64_t num_uncomputed_tokens() const;
  const SchedulerOptions& options() const { return options_; }
  // In scheduling order (priority, then arrival).
  const std::vector<std::shared_ptr<Sequence>>& running() const { return running_; }
  const std::vector<std::shared_ptr<Sequence>>& waiting() const { return waiting_; }

 private:
  // Frees `sequence`'s blocks and moves it to the waiting queue, to be recomputed.
  void Preempt(const std::shared_ptr<Sequence>& sequence);
  // Inserts into a queue kept in (priority, arrival_order) order.
  static void InsertInOrder(std::vector<std::shared_ptr<Sequence>>& queue,
                            std::shared_ptr<Sequence> sequence);

  const SchedulerOptions options_;
  BlockManager& block_manager_;
  // Both in (priority, arrival_order) order: the front is served first, the back of running_ is
  // the first to be preempted.
  std::vector<std::shared_ptr<Sequence>> running_;
  std::vector<std::shared_ptr<Sequence>> waiting_;
  int64_t next_arrival_order_ = 0;
  int64_t num_preemptions_total_ = 0;
};

}  // namespace flotilla::worker
