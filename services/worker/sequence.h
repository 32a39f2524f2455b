// One generation request inside the worker's engine: its tokens, its stop rules, how to sample
// its next token, and the engine's bookkeeping for it (scheduling status, KV blocks, how many
// tokens are already in the KV cache). The scheduler, the block manager and the sampler all read
// and write this one struct; it holds no policy besides the stop rules in AppendToken.
//
// Example:
//   auto sequence = std::make_shared<Sequence>();
//   sequence->request_id = "chatcmpl-42";
//   sequence->prompt_token_ids = {1, 15043, 29892};
//   sequence->max_tokens = 16;
//   sequence->eos_token_ids = {2};
//   scheduler.Add(sequence);
//   ...
//   if (sequence->AppendToken(sampled_token_id)) { /* finished: sequence->finish_reason */ }
//
// Thread-safety: none. A Sequence belongs to the engine loop's thread (the scheduler hands out
// shared_ptrs so the engine can keep one across a step, not so that threads can share it).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace flotilla::worker {

// How to pick each next token. Zero values mean "off", as in proto/flotilla/v1/worker.proto's
// TokenSampling (and vLLM's SamplingParams): temperature 0 is greedy, top_p 0 or 1, top_k 0 or
// -1, min_p 0, repetition_penalty 0 or 1 and zero presence/frequency penalties change nothing.
// The order in which the sampler applies them is in sampler.h.
struct SamplingOptions {
  float temperature = 0.0f;
  float top_p = 0.0f;
  int32_t top_k = 0;
  float min_p = 0.0f;
  float repetition_penalty = 0.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Added to the logit of each token id (OpenAI's logit_bias).
  std::vector<std::pair<int32_t, float>> logit_bias;
  // The draw for the token at position p depends only on (seed, p). Without a seed the
  // sequence's random_seed (drawn when the Sequence is created) is used instead.
  std::optional<uint64_t> seed;
  bool return_logprobs = false;
  int32_t top_logprobs = 0;

  bool is_greedy() const { return temperature <= 0.0f; }
  bool has_top_k() const { return top_k > 0; }
  bool has_top_p() const { return top_p > 0.0f && top_p < 1.0f; }
  bool has_min_p() const { return min_p > 0.0f; }
  bool has_repetition_penalty() const {
    return repetition_penalty > 0.0f && repetition_penalty != 1.0f;
  }
  bool has_presence_or_frequency_penalty() const {
    return presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
};

// One token drawn by the sampler for one sequence (defined here so that the torch-free scheduler
// can take it).
struct SampledToken {
  int32_t token_id = 0;
  // log_softmax of the logits after bias and penalties, before temperature and truncation (see
  // Note [Sampling order] in sampler.cc). Filled only when sampling.return_logprobs.
  float logprob = 0.0f;
  // The sampling.top_logprobs most likely tokens by the same logprobs, most likely first.
  std::vector<std::pair<int32_t, float>> top_logprobs;
};

enum class SequenceStatus { kWaiting, kRunning, kFinished };

// Finish reasons as the API spells them (WorkerGenerateResponse.finish_reason, OpenAI's
// finish_reason).
inline constexpr char kFinishReasonStop[] = "stop";
inline constexpr char kFinishReasonLength[] = "length";
inline constexpr char kFinishReasonAbort[] = "abort";

// A fresh random seed (from std::random_device) for sequences whose request carries none.
uint64_t RandomSamplingSeed();

struct Sequence {
  // --- The request (filled by whoever creates the sequence) ---
  std::string request_id;
  // A numeric id, unique within one engine (the engine picks it; the scheduler does not read it).
  int64_t id = 0;
  std::vector<int32_t> prompt_token_ids;
  // Generated tokens, including those carried over from a failover (see num_carried_over_tokens):
  // they count against max_tokens and for the penalties, and their KV is computed like the
  // prompt's.
  std::vector<int32_t> output_token_ids;
  // How many leading output_token_ids came from another worker (WorkerGenerateRequest's
  // generated_token_ids): the engine must not stream them again.
  int num_carried_over_tokens = 0;
  int max_tokens = 0;  // > 0
  // Before this many output tokens, eos and stop ids neither stop the sequence nor get sampled.
  int min_tokens = 0;
  std::vector<int32_t> stop_token_ids;  // stop besides eos, even with ignore_eos
  std::vector<int32_t> eos_token_ids;   // the model's (generation_config.json's eos_token_id)
  bool ignore_eos = false;
  int priority = 0;  // lower is served first; ties by arrival_order
  SamplingOptions sampling;
  // Used when sampling.seed is empty, so that a sequence without a seed is still reproducible
  // from its own first token to its last (and the draw never depends on the batch).
  uint64_t random_seed = RandomSamplingSeed();
  // The model's context length: the sequence finishes with "length" when it holds this many
  // tokens. Scheduler::Add fills it from SchedulerOptions when it is 0.
  int max_model_len = 0;

  // --- The engine's bookkeeping ---
  // Set by Scheduler::Add: the order sequences arrived in (FCFS among equal priorities).
  int64_t arrival_order = 0;
  SequenceStatus status = SequenceStatus::kWaiting;
  std::string finish_reason;  // empty until finished: kFinishReasonStop/Length/Abort
  // Tokens (prompt, then output) whose KV is in the cache, counted from the start.
  int num_computed_tokens = 0;
  // Physical KV block ids, one per block_size tokens (BlockManager owns them).
  std::vector<int32_t> block_table;
  // Prompt tokens served by the prefix cache on the first admission (the API's cached tokens).
  int num_cached_prompt_tokens = 0;
  int num_preemptions = 0;
  // BlockManager's prefix-caching state: the chained hashes of the sequence's leading full
  // blocks (valid forever, as tokens are only appended) and how many of its block_table entries
  // are registered in the cache.
  std::vector<uint64_t> block_hashes;
  int num_registered_blocks = 0;

  int num_prompt_tokens() const { return static_cast<int>(prompt_token_ids.size()); }
  int num_output_tokens() const { return static_cast<int>(output_token_ids.size()); }
  // Prompt plus output tokens.
  int num_tokens() const { return num_prompt_tokens() + num_output_tokens(); }
  // The i-th token of prompt + output (0 <= i < num_tokens()).
  int32_t token_id(int index) const {
    return index < num_prompt_tokens() ? prompt_token_ids[index]
                                       : output_token_ids[index - num_prompt_tokens()];
  }
  // Tokens known but not yet in the KV cache: what the next chunks must compute.
  int num_uncomputed_tokens() const { return num_tokens() - num_computed_tokens; }
  bool is_finished() const { return status == SequenceStatus::kFinished; }
  // Whether token_id stops the sequence once min_tokens are out: a stop id, or an eos id unless
  // ignore_eos. (The sampler masks these before min_tokens.)
  bool IsStopToken(int32_t token_id) const;

  // Appends one sampled token and decides whether the sequence is done. Returns true when it
  // finished, with finish_reason set, in this order:
  //   "stop"   the token is a stop id, or an eos id without ignore_eos, and the sequence has at
  //            least min_tokens outputs (the stop token is kept in output_token_ids, as vLLM
  //            keeps it in token_ids);
  //   "length" max_tokens outputs, or max_model_len tokens in all.
  bool AppendToken(int32_t token_id);
  // Marks the sequence finished with `reason` (one of the kFinishReason constants).
  void Finish(const char* reason);
};

}  // namespace flotilla::worker
