// The sampler: turns one step's logits into one next token per sequence, applying each
// sequence's SamplingOptions (logit bias, min_tokens, penalties, temperature, top-k, top-p,
// min-p) and its stop rules' masks, and returns logprobs when asked. The order of operations and
// the conventions are in Note [Sampling order] in sampler.cc, against transformers'
// LogitsProcessors and vLLM's Sampler.
//
// Reproducible draws: the draw for the token at position p of a sequence depends only on
// (seed, p), never on the batch, so a request samples the same tokens alone or among 31 others,
// and again after a failover to another worker (which recomputes the same logits).
//
// Example:
//   Sampler sampler;
//   // logits: float32 [S, vocab] (any device), row i for sequences[i] (the scheduled sequences
//   // whose chunk `samples`, in step order).
//   std::vector<SampledToken> sampled = sampler.Sample(logits, {&first, &second});
//
// Thread-safety: a Sampler holds no state; Sample may run concurrently on different inputs.
// Errors: bad input (shape, token ids outside the vocabulary) throws c10::Error (TORCH_CHECK);
// the engine catches it at its boundary.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "services/worker/sequence.h"

namespace flotilla::worker {

class Sampler {
 public:
  // One SampledToken per row of `logits` ([S, vocab], float32 or any floating dtype, on any
  // device), row i sampled with sequences[i]'s options for position sequences[i]->num_tokens().
  std::vector<SampledToken> Sample(const at::Tensor& logits,
                                   const std::vector<const Sequence*>& sequences) const;
};

// Top-k, then top-p, on temperature-scaled logits [S, vocab] (Note [Sampling order], steps 6-7):
// the tokens a row drops become -inf in the returned copy. top_ks[i] >= vocab and top_ps[i] >= 1
// keep everything. CPU float32 rows by selection (Note [Truncation without a full sort]), other
// devices and dtypes by one stable sort (TruncateTopKTopPBySort, the reference).
at::Tensor TruncateTopKTopP(const at::Tensor& logits, const std::vector<int64_t>& top_ks,
                            const std::vector<float>& top_ps);
at::Tensor TruncateTopKTopPBySort(const at::Tensor& logits, const std::vector<int64_t>& top_ks,
                                  const std::vector<float>& top_ps);

}  // namespace flotilla::worker
