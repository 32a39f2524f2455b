#include "services/worker/engine.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>

#include "absl/strings/str_cat.h"
#include "services/common/logging.h"
#include "services/common/metrics.h"

namespace flotilla::worker {
namespace {

// vLLM's metric names with flotilla_ in place of vllm: (see the worker README), labelled by model.
struct EngineMetrics {
  prometheus::Gauge& running;
  prometheus::Gauge& waiting;
  prometheus::Gauge& kv_usage;
  prometheus::Counter& preemptions;
  prometheus::Counter& prompt_tokens;
  prometheus::Counter& generation_tokens;
  prometheus::Counter& prefix_queries;
  prometheus::Counter& prefix_hits;
  prometheus::Histogram& iteration_tokens;
  prometheus::Histogram& step_seconds;

  static EngineMetrics Create(const std::string& model_name) {
    prometheus::Registry& registry = MetricsRegistry();
    const prometheus::Labels labels = {{"model_name", model_name}};
    return EngineMetrics{
        prometheus::BuildGauge().Name("flotilla_num_requests_running")
            .Help("Requests in the engine's running batch").Register(registry).Add(labels),
        prometheus::BuildGauge().Name("flotilla_num_requests_waiting")
            .Help("Requests waiting to be scheduled").Register(registry).Add(labels),
        prometheus::BuildGauge().Name("flotilla_kv_cache_usage_perc")
            .Help("KV-cache usage: 1 means every block is in use").Register(registry).Add(labels),
        prometheus::BuildCounter().Name("flotilla_num_preemptions_total")
            .Help("Sequences preempted (their KV freed, to be recomputed)").Register(registry).Add(labels),
        prometheus::BuildCounter().Name("flotilla_prompt_tokens_total")
            .Help("Prompt tokens processed (prefilled), prefix-cache hits excluded").Register(registry).Add(labels),
        prometheus::BuildCounter().Name("flotilla_generation_tokens_total")
            .Help("Tokens generated").Register(registry).Add(labels),
        prometheus::BuildCounter().Name("flotilla_prefix_cache_queries_total")
            .Help("Prompt tokens looked up in the prefix cache").Register(registry).Add(labels),
        prometheus::BuildCounter().Name("flotilla_prefix_cache_hits_total")
            .Help("Prompt tokens found in the prefix cache").Register(registry).Add(labels),
        prometheus::BuildHistogram().Name("flotilla_iteration_tokens_total")
            .Help("Tokens computed per engine step (the batch size in tokens)").Register(registry)
            .Add(labels, prometheus::Histogram::BucketBoundaries{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192}),
        prometheus::BuildHistogram().Name("flotilla_step_duration_seconds")
            .Help("Wall time of one engine step (schedule, forward, sample, update)").Register(registry)
            .Add(labels, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                                 0.5, 1.0, 2.5, 5.0, 10.0}),
    };
  }
};

EngineMetrics& Metrics(const std::string& model_name) {
  static std::mutex mutex;
  static auto* by_model = new absl::flat_hash_map<std::string, std::unique_ptr<EngineMetrics>>();
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = (*by_model)[model_name];
  if (!slot) slot = std::make_unique<EngineMetrics>(EngineMetrics::Create(model_name));
  return *slot;
}

}  // namespace

Engine::Engine(std::unique_ptr<ModelRunner> runner, const EngineOptions& options, std::vector<int32_t> eos_token_ids,
               std::string model_name)
    : runner_(std::move(runner)),
      options_(options),
      eos_token_ids_(std::move(eos_token_ids)),
      model_name_(std::move(model_name)),
      max_model_len_(options.max_model_len),
      block_manager_(static_cast<int>(runner_->num_blocks()), static_cast<int>(runner_->block_size()),
                     options.enable_prefix_caching),
      scheduler_(SchedulerOptions{.max_num_batched_tokens = options.max_num_batched_tokens,
                                  .max_num_seqs = options.max_num_seqs,
                                  .max_model_len = options.max_model_len},
                 block_manager_) {
  load_.kv_blocks_total = static_cast<int>(runner_->num_blocks());
  Metrics(model_name_);
  thread_ = std::thread([this] { Loop(); });
}

Engine::~Engine() { Stop(); }

void Engine::Stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  std::lock_guard<std::mutex> lock(stop_mutex_);
  if (thread_.joinable()) thread_.join();
}

absl::Status Engine::Add(std::shared_ptr<Sequence> sequence, OutputCallback callback) {
  const int64_t prompt_length = sequence->num_tokens();
  if (prompt_length < 1) return absl::InvalidArgumentError("the prompt has no tokens");
  if (prompt_length >= max_model_len_) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", prompt_length, " tokens but the model's context is ",
                                                   max_model_len_, " (max_model_len), and at least one must be generated"));
  }
  sequence->max_model_len = max_model_len_;
  sequence->eos_token_ids = eos_token_ids_;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (draining_ || stopping_) return absl::UnavailableError("the worker is draining and admits no new request");
    if (callbacks_.contains(sequence->request_id)) {
      return absl::AlreadyExistsError(absl::StrCat("request ", sequence->request_id, " is already running here"));
    }
    callbacks_[sequence->request_id] = std::make_shared<OutputCallback>(std::move(callback));
    live_[sequence->request_id] = sequence;
    pending_.push_back(std::move(sequence));
    ++load_.num_requests_waiting;
  }
  wake_.notify_one();
  return absl::OkStatus();
}

void Engine::Abort(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!callbacks_.contains(request_id)) return;
    pending_aborts_.push_back(request_id);
  }
  wake_.notify_one();
}

EngineLoad Engine::Load() const {
  std::lock_guard<std::mutex> lock(mutex_);
  EngineLoad load = load_;
  load.draining = draining_;
  return load;
}

void Engine::StartDrain() {
  std::lock_guard<std::mutex> lock(mutex_);
  draining_ = true;
}

bool Engine::WaitUntilIdle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mutex_);
  return idle_.wait_until(lock, deadline, [this] { return callbacks_.empty(); });
}

void Engine::SetStepObserver(std::function<void()> observer) {
  std::lock_guard<std::mutex> lock(mutex_);
  step_observer_ = std::move(observer);
}

void Engine::FinishRequest(const std::shared_ptr<Sequence>& sequence, const std::string& reason,
                           const std::string& error) {
  OutputCallback callback;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = callbacks_.find(sequence->request_id);
    if (found == callbacks_.end()) return;
    callback = std::move(*found->second);
    callbacks_.erase(found);
    live_.erase(sequence->request_id);
  }
  EngineOutput output;
  output.finish_reason = reason;
  output.error = error;
  output.prompt_tokens = static_cast<int>(sequence->prompt_token_ids.size());
  output.cached_prompt_tokens = sequence->num_cached_prompt_tokens;
  callback(output);
}

void Engine::Loop() {
  // Serving never differentiates: every op of every step skips autograd's dispatch and version
  // counters (serving_overhead.py, SmolLM2 batch 1: median gap between tokens 21.5 -> 20.0 ms).
  c10::InferenceMode inference_mode;
  while (true) {
    std::vector<std::shared_ptr<Sequence>> added;
    std::vector<std::string> aborted;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      const auto has_work = [this] {
        return stopping_ || !pending_.empty() || !pending_aborts_.empty() || scheduler_.HasWork();
      };
      // Idle, wake up now and then to tell tensor-parallel followers this rank is alive.
      while (!wake_.wait_for(lock, std::chrono::milliseconds(500), has_work)) {
        lock.unlock();
        runner_->KeepAlive();
        lock.lock();
      }
      if (stopping_) break;
      added.assign(pending_.begin(), pending_.end());
      pending_.clear();
      aborted.swap(pending_aborts_);
    }
    for (auto& sequence : added) scheduler_.Add(sequence);
    std::vector<std::shared_ptr<Sequence>> aborted_sequences;
    for (const std::string& request_id : aborted) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = live_.find(request_id);
        if (found == live_.end()) continue;
        aborted_sequences.push_back(found->second);
      }
      scheduler_.Abort(request_id);  // frees its blocks now
    }
    RefreshLoad();
    for (const auto& sequence : aborted_sequences) FinishRequest(sequence, "abort");
    if (scheduler_.HasWork()) RunStep();
    std::function<void()> observer;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      observer = step_observer_;
      if (callbacks_.empty()) idle_.notify_all();
    }
    if (observer) observer();
  }
  // Shutdown: every request still here gets its final output.
  std::vector<std::shared_ptr<Sequence>> left;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [request_id, sequence] : live_) left.push_back(sequence);
  }
  for (auto& sequence : left) FinishRequest(sequence, "abort");
  runner_->Shutdown();
}

void Engine::RefreshLoad() {
  std::lock_guard<std::mutex> lock(mutex_);
  load_.num_requests_running = scheduler_.num_running();
  load_.num_requests_waiting = scheduler_.num_waiting() + static_cast<int>(pending_.size());
  load_.kv_blocks_used = block_manager_.num_used_blocks();
  load_.prefix_cache_queries = block_manager_.prefix_cache_queries();
  load_.prefix_cache_hits = block_manager_.prefix_cache_hits();
  load_.waiting_tokens = scheduler_.num_uncomputed_tokens();
  load_.num_preemptions = scheduler_.num_preemptions_total();
  EngineMetrics& metrics = Metrics(model_name_);
  metrics.running.Set(load_.num_requests_running);
  metrics.waiting.Set(load_.num_requests_waiting);
  metrics.kv_usage.Set(block_manager_.usage());
}

void Engine::RunStep() {
  const auto started = std::chrono::steady_clock::now();
  EngineMetrics& metrics = Metrics(model_name_);
  const int64_t hits_before = block_manager_.prefix_cache_hits();
  const int64_t queries_before = block_manager_.prefix_cache_queries();
  const int64_t preemptions_before = scheduler_.num_preemptions_total();
  SchedulerOutput step = scheduler_.Schedule();
  metrics.prefix_hits.Increment(static_cast<double>(block_manager_.prefix_cache_hits() - hits_before));
  metrics.prefix_queries.Increment(static_cast<double>(block_manager_.prefix_cache_queries() - queries_before));
  metrics.preemptions.Increment(static_cast<double>(scheduler_.num_preemptions_total() - preemptions_before));
  if (step.sequences.empty()) return;

  // The runner reads each sequence's tokens [computed, computed + num_tokens) from one buffer.
  std::vector<std::vector<int32_t>> token_buffers(step.sequences.size());
  std::vector<RunnerSequence> runner_sequences;
  std::vector<const Sequence*> sampling;
  runner_sequences.reserve(step.sequences.size());
  int64_t prompt_tokens = 0;
  for (size_t i = 0; i < step.sequences.size(); ++i) {
    const ScheduledSequence& scheduled = step.sequences[i];
    const Sequence& sequence = *scheduled.sequence;
    const int64_t start = scheduled.num_computed_tokens;
    std::vector<int32_t>& buffer = token_buffers[i];
    buffer.reserve(scheduled.num_tokens);
    for (int64_t position = start; position < start + scheduled.num_tokens; ++position) {
      buffer.push_back(sequence.token_id(position));
      if (position < static_cast<int64_t>(sequence.prompt_token_ids.size())) ++prompt_tokens;
    }
    runner_sequences.push_back(RunnerSequence{.token_ids = buffer, .start_position = start,
                                              .block_table = &sequence.block_table, .samples = scheduled.samples});
    if (scheduled.samples) sampling.push_back(&sequence);
  }
  metrics.iteration_tokens.Observe(static_cast<double>(step.num_batched_tokens));
  metrics.prompt_tokens.Increment(static_cast<double>(prompt_tokens));

  std::vector<SampledToken> sampled;
  try {
    at::Tensor logits = runner_->Execute(runner_sequences);
    if (!sampling.empty()) sampled = sampler_.Sample(logits, sampling);
  } catch (const c10::Error& error) {
    // A failed forward is our bug or an impossible input: end the step's requests, keep serving.
    const std::string message = absl::StrCat("the model's forward failed: ", error.what_without_backtrace());
    LogError("engine step failed", {{"error", message}, {"sequences", step.sequences.size()}});
    for (const ScheduledSequence& scheduled : step.sequences) {
      scheduler_.Abort(scheduled.sequence->request_id);
      FinishRequest(scheduled.sequence, "abort", message);
    }
    return;
  }
  std::vector<SequenceUpdate> updates = scheduler_.Update(step, sampled);
  // The load a request's final output can observe already counts its freed blocks.
  RefreshLoad();
  // Look the callbacks up under the lock, call them outside it (Add may run concurrently).
  std::vector<std::pair<std::shared_ptr<OutputCallback>, EngineOutput>> deliveries;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const SequenceUpdate& update : updates) {
      auto found = callbacks_.find(update.sequence->request_id);
      if (found == callbacks_.end()) continue;
      EngineOutput output;
      output.tokens.push_back(update.token);
      output.prompt_tokens = static_cast<int>(update.sequence->prompt_token_ids.size());
      output.cached_prompt_tokens = update.sequence->num_cached_prompt_tokens;
      output.finish_reason = update.finish_reason;
      deliveries.emplace_back(found->second, std::move(output));
      if (update.finished) {
        // The last output carries the last token and the reason together.
        callbacks_.erase(found);
        live_.erase(update.sequence->request_id);
      }
    }
  }
  for (auto& [callback, output] : deliveries) {
    metrics.generation_tokens.Increment(static_cast<double>(output.tokens.size()));
    (*callback)(output);
  }
  metrics.step_seconds.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
}

}  // namespace flotilla::worker
