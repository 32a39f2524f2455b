// The engine: one worker group's continuous-batching loop. Requests (token ids and sampling
// options) join a scheduler; a dedicated thread runs steps back to back — schedule, one forward,
// sample, update — and hands each request its new tokens through its callback. A new request joins
// at the next step; an aborted one leaves at the next step and its KV blocks are freed then.
//
//   Engine engine(std::move(runner), {.max_num_batched_tokens = 512, .max_num_seqs = 64}, eos_ids);
//   absl::Status added = engine.Add(std::move(sequence), [](const EngineOutput& output) { ... });
//   engine.Abort("request-1");
//
// Every request that Add accepts gets exactly one final output (finish_reason set), after which its
// callback is never called again: callers may release what the callback points into then.
//
// Thread-safety: Add, Abort, Load, StartDrain may be called from any thread. Callbacks run on the
// engine thread and must not block (queue the output and return).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "services/worker/block_manager.h"
#include "services/worker/model_runner.h"
#include "services/worker/sampler.h"
#include "services/worker/scheduler.h"
#include "services/worker/sequence.h"

namespace flotilla::worker {

struct EngineOutput {
  std::vector<SampledToken> tokens;  // new tokens (usually one)
  std::string finish_reason;         // "" while running; "stop", "length" or "abort" at the end
  int prompt_tokens = 0;
  int cached_prompt_tokens = 0;      // prefix-cache hit, known once the prompt is scheduled
  std::string error;                 // with finish_reason "abort": why the engine gave up on it
};
using OutputCallback = std::function<void(const EngineOutput&)>;

struct EngineOptions {
  int max_num_batched_tokens = 2048;
  int max_num_seqs = 64;
  int max_model_len = 0;            // 0: the model's max_position_embeddings, capped by the KV pool
  bool enable_prefix_caching = true;
};

// What GetLoad and the registration stream report.
struct EngineLoad {
  int num_requests_running = 0;
  int num_requests_waiting = 0;
  int kv_blocks_used = 0;
  int kv_blocks_total = 0;
  int64_t prefix_cache_queries = 0;
  int64_t prefix_cache_hits = 0;
  int64_t waiting_tokens = 0;
  int64_t num_preemptions = 0;
  bool draining = false;
};

class Engine {
 public:
  Engine(std::unique_ptr<ModelRunner> runner, const EngineOptions& options, std::vector<int32_t> eos_token_ids,
         std::string model_name);
  ~Engine();  // aborts what is left and joins the loop

  // Queues a sequence for the next step. INVALID_ARGUMENT when the prompt does not fit
  // max_model_len; UNAVAILABLE while draining; ALREADY_EXISTS for a request id in flight.
  absl::Status Add(std::shared_ptr<Sequence> sequence, OutputCallback callback);
  void Abort(const std::string& request_id);
  EngineLoad Load() const;
  // Stops admitting (Add answers UNAVAILABLE); running requests go on.
  void StartDrain();
  // Waits until no request is left or the deadline passes; returns whether it emptied.
  bool WaitUntilIdle(std::chrono::steady_clock::time_point deadline);
  // Ends the loop: what is left is aborted, tensor-parallel followers are released. Idempotent;
  // Add fails afterwards.
  void Stop();

  int max_model_len() const { return max_model_len_; }
  const std::vector<int32_t>& eos_token_ids() const { return eos_token_ids_; }
  // Called (on the engine thread) after each step, e.g. to push a load report.
  void SetStepObserver(std::function<void()> observer);

 private:
  void Loop();
  void RunStep();
  // Copies the scheduler's and block manager's counters into load_ and the gauges.
  void RefreshLoad();
  void FinishRequest(const std::shared_ptr<Sequence>& sequence, const std::string& reason,
                     const std::string& error = "");

  std::unique_ptr<ModelRunner> runner_;
  EngineOptions options_;
  std::vector<int32_t> eos_token_ids_;
  std::string model_name_;
  int max_model_len_ = 0;
  BlockManager block_manager_;
  Scheduler scheduler_;
  Sampler sampler_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::mutex stop_mutex_;  // serialises Stop's join
  std::condition_variable idle_;
  std::deque<std::shared_ptr<Sequence>> pending_;         // guarded by mutex_
  std::vector<std::string> pending_aborts_;               // guarded by mutex_
  absl::flat_hash_map<std::string, std::shared_ptr<OutputCallback>> callbacks_;  // guarded by mutex_; one per live request
  absl::flat_hash_map<std::string, std::shared_ptr<Sequence>> live_;  // guarded by mutex_
  EngineLoad load_;                                       // guarded by mutex_
  std::function<void()> step_observer_;                   // guarded by mutex_
  bool draining_ = false;                                 // guarded by mutex_
  bool stopping_ = false;                                 // guarded by mutex_
  std::thread thread_;
};

}  // namespace flotilla::worker
