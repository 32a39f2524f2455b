#include "services/worker/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <utility>

namespace flotilla::worker {
namespace {

// Our own invariants and the caller's contract: print and abort, as a CHECK would.
void CheckOrDie(bool condition, const char* operation, const std::string& message) {
  if (!condition) {
    std::fprintf(stderr, "Scheduler::%s: %s\n", operation, message.c_str());
    std::abort();
  }
}

bool ServedBefore(const std::shared_ptr<Sequence>& left, const std::shared_ptr<Sequence>& right) {
  return std::tie(left->priority, left->arrival_order) <
         std::tie(right->priority, right->arrival_order);
}

}  // namespace

// Note [vLLM v1 scheduling]
// There is no prefill phase and no decode phase (vLLM's scheduler.py says the same): a sequence
// has num_tokens known tokens (prompt + output) and num_computed_tokens of them in the KV cache,
// and each step gives it tokens so the second catches up with the first. A prompt is one or more
// chunks; a decode is a chunk of one token (the last sampled one). A chunk `samples` when it
// reaches num_tokens: its last position's logits give the next token.
//
// Each step has a token budget (max_num_batched_tokens) and a cap on running sequences
// (max_num_seqs):
// 1. Running sequences first, in (priority, arrival) order: each gets min(its uncomputed tokens,
//    the budget left), so a long prompt is chunked across steps. When its blocks cannot be
//    allocated, the running sequence served last (the back: lowest priority, latest arrival) is
//    preempted and the allocation retried. If that victim is the sequence itself, it is
//    preempted too (vLLM does the same: it would otherwise starve those before it) unless it is
//    the only running sequence, which then just waits a step (unreachable while the cache holds
//    max_model_len tokens, which the constructor requires).
// 2. Then, only if nothing was preempted in this step (memory is short: admitting would preempt
//    again next step), waiting sequences in (priority, arrival) order while the budget and the cap
//    allow: the prefix cache first serves what it can (never the whole sequence), the rest is
//    chunked to the budget (or, without chunked prefill, must fit whole), and the sequence is
//    admitted only if its blocks can be allocated. The first one that cannot be admitted stops
//    admission (no overtaking: a large request is not starved by small ones behind it).
// Preemption is by recompute (vLLM's RECOMPUTE): the victim's blocks are freed (its full blocks
// stay in the prefix cache until evicted, so readmission is often cheap), num_computed_tokens
// returns to 0, and it goes back to the waiting queue, at the front of its priority (its arrival
// is older than anything that arrived while it ran). It keeps its output tokens: readmitted, it
// recomputes prompt + outputs, and its last chunk samples the next token.
// Keeping running_ sorted means the victims are always after the sequence being scheduled, so a
// victim never has to be taken out of the step already built.

int SchedulerOutput::num_sampling_sequences() const {
  return static_cast<int>(
      std::count_if(sequences.begin(), sequences.end(),
                    [](const ScheduledSequence& scheduled) { return scheduled.samples; }));
}

Scheduler::Scheduler(SchedulerOptions options, BlockManager& block_manager)
    : options_(options), block_manager_(block_manager) {
  CheckOrDie(options_.max_model_len > 0, "Scheduler",
             "expected max_model_len > 0 but got " + std::to_string(options_.max_model_len));
  CheckOrDie(options_.max_num_batched_tokens > 0 && options_.max_num_seqs > 0, "Scheduler",
             "expected max_num_batched_tokens > 0 and max_num_seqs > 0");
  const int64_t cache_tokens =
      static_cast<int64_t>(block_manager_.num_blocks()) * block_manager_.block_size();
  CheckOrDie(cache_tokens >= options_.max_model_len, "Scheduler",
             "the KV cache holds " + std::to_string(cache_tokens) +
                 " tokens, expected at least max_model_len " +
                 std::to_string(options_.max_model_len));
  CheckOrDie(
      options_.enable_chunked_prefill || options_.max_num_batched_tokens >= options_.max_model_len,
      "Scheduler",
      "without chunked prefill, expected max_num_batched_tokens >= max_model_len " +
          std::to_string(options_.max_model_len) + " but got " +
          std::to_string(options_.max_num_batched_tokens));
}

void Scheduler::Add(std::shared_ptr<Sequence> sequence) {
  if (sequence->max_model_len == 0) sequence->max_model_len = options_.max_model_len;
  CheckOrDie(!sequence->prompt_token_ids.empty(), "Add",
             "sequence " + sequence->request_id + ": empty prompt");
  CheckOrDie(sequence->num_tokens() < sequence->max_model_len &&
                 sequence->max_model_len <= options_.max_model_len,
             "Add",
             "sequence " + sequence->request_id + ": expected fewer than max_model_len " +
                 std::to_string(sequence->max_model_len) + " tokens but got " +
                 std::to_string(sequence->num_tokens()));
  sequence->arrival_order = next_arrival_order_++;
  sequence->status = SequenceStatus::kWaiting;
  InsertInOrder(waiting_, std::move(sequence));
}

bool Scheduler::Abort(const std::string& request_id) {
  for (auto* queue : {&waiting_, &running_}) {
    auto found =
        std::find_if(queue->begin(), queue->end(), [&](const std::shared_ptr<Sequence>& sequence) {
          return sequence->request_id == request_id;
        });
    if (found == queue->end()) continue;
    std::shared_ptr<Sequence> sequence = *found;
    queue->erase(found);
    block_manager_.Free(*sequence);
    sequence->Finish(kFinishReasonAbort);
    return true;
  }
  return false;
}

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput output;
  int token_budget = options_.max_num_batched_tokens;

  // 1. Running sequences.
  for (size_t index = 0; index < running_.size() && token_budget > 0;) {
    std::shared_ptr<Sequence> sequence = running_[index];
    const int num_uncomputed = sequence->num_uncomputed_tokens();
    const int num_new_tokens = std::min(num_uncomputed, token_budget);
    if (num_new_tokens <= 0 ||
        (!options_.enable_chunked_prefill && num_new_tokens < num_uncomputed)) {
      ++index;
      continue;
    }
    bool allocated = false;
    bool preempted_itself = false;
    while (!(allocated = block_manager_.Allocate(*sequence, num_new_tokens))) {
      std::shared_ptr<Sequence> victim = running_.back();
      if (victim == sequence && running_.size() == 1) break;  // alone: waits
      running_.pop_back();
      Preempt(victim);
      output.preempted.push_back(victim);
      if (victim == sequence) {
        preempted_itself = true;
        break;
      }
    }
    if (preempted_itself) break;  // it was the back: nothing after it to schedule
    if (!allocated) {
      ++index;
      continue;
    }
    const int num_computed = sequence->num_computed_tokens;
    output.sequences.push_back({sequence, num_computed, num_new_tokens,
                                num_computed + num_new_tokens == sequence->num_tokens()});
    token_budget -= num_new_tokens;
    ++index;
  }

  // 2. Waiting sequences, unless memory was short this step.
  while (output.preempted.empty() && !waiting_.empty() && token_budget > 0 &&
         static_cast<int>(running_.size()) < options_.max_num_seqs) {
    std::shared_ptr<Sequence> sequence = waiting_.front();
    const int num_cached_tokens = block_manager_.ComputePrefixHit(*sequence);
    int num_new_tokens = sequence->num_tokens() - num_cached_tokens;
    if (num_new_tokens > token_budget) {
      if (!options_.enable_chunked_prefill) break;
      num_new_tokens = token_budget;
    }
    if (!block_manager_.Allocate(*sequence, num_new_tokens)) break;
    waiting_.erase(waiting_.begin());
    sequence->status = SequenceStatus::kRunning;
    InsertInOrder(running_, sequence);
    const int num_computed = sequence->num_computed_tokens;
    output.sequences.push_back({sequence, num_computed, num_new_tokens,
                                num_computed + num_new_tokens == sequence->num_tokens()});
    token_budget -= num_new_tokens;
  }

  output.num_batched_tokens = options_.max_num_batched_tokens - token_budget;
  return output;
}

std::vector<SequenceUpdate> Scheduler::Update(const SchedulerOutput& step,
                                              const std::vector<SampledToken>& sampled) {
  CheckOrDie(static_cast<int>(sampled.size()) == step.num_sampling_sequences(), "Update",
             "expected " + std::to_string(step.num_sampling_sequences()) +
                 " sampled tokens (one per sampling sequence) but got " +
                 std::to_string(sampled.size()));
  std::vector<SequenceUpdate> updates;
  size_t next_sampled = 0;
  for (const ScheduledSequence& scheduled : step.sequences) {
    const SampledToken* token = scheduled.samples ? &sampled[next_sampled++] : nullptr;
    Sequence& sequence = *scheduled.sequence;
    // Aborted after Schedule (its blocks are already freed): the step's work is dropped.
    if (sequence.status != SequenceStatus::kRunning) continue;
    sequence.num_computed_tokens = scheduled.num_computed_tokens + scheduled.num_tokens;
    block_manager_.CacheFullBlocks(sequence);
    if (token == nullptr) continue;
    const bool finished = sequence.AppendToken(token->token_id);
    updates.push_back({scheduled.sequence, *token, finished, sequence.finish_reason});
    if (!finished) continue;
    block_manager_.Free(sequence);
    running_.erase(std::find(running_.begin(), running_.end(), scheduled.sequence));
  }
  return updates;
}

int64_t Scheduler::num_uncomputed_tokens() const {
  int64_t total = 0;
  for (const auto* queue : {&waiting_, &running_}) {
    for (const std::shared_ptr<Sequence>& sequence : *queue) {
      total += sequence->num_uncomputed_tokens();
    }
  }
  return total;
}

void Scheduler::Preempt(const std::shared_ptr<Sequence>& sequence) {
  block_manager_.Free(*sequence);
  sequence->num_computed_tokens = 0;
  sequence->status = SequenceStatus::kWaiting;
  ++sequence->num_preemptions;
  ++num_preemptions_total_;
  InsertInOrder(waiting_, sequence);
}

void Scheduler::InsertInOrder(std::vector<std::shared_ptr<Sequence>>& queue,
                              std::shared_ptr<Sequence> sequence) {
  auto position = std::upper_bound(queue.begin(), queue.end(), sequence, ServedBefore);
  queue.insert(position, std::move(sequence));
}

}  // namespace flotilla::worker
