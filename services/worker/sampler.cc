#include "services/worker/sampler.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <unordered_map>
#include <unordered_set>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "services/worker/mix64.h"

namespace flotilla::worker {
namespace {

// Note [Sampling order]
// Each row goes through, in this order (transformers' LogitsProcessorList order for the
// penalties-then-warpers split, and vLLM's Sampler for the rest):
//  1. logit_bias: added to the raw logits (OpenAI's rule; vLLM's LogitBiasLogitsProcessor).
//  2. min_tokens: while the sequence has fewer than min_tokens outputs, its stop ids and (unless
//     ignore_eos) its eos ids get -inf, so they cannot be drawn (vLLM's MinTokensLogitsProcessor,
//     transformers' MinNewTokensLengthLogitsProcessor).
//  3. repetition_penalty over prompt + output tokens, transformers' rule
//     (RepetitionPenaltyLogitsProcessor, the CTRL paper): a seen token's positive logit is
//     divided by the penalty, a negative one multiplied, each token once however often seen.
//  4. presence and frequency penalties over output tokens only, OpenAI's rule:
//     logit -= frequency_penalty * count + presence_penalty * (count > 0).
//     Carried-over output tokens (failover) count, as they are outputs of the same request.
//  -- logprobs are taken here: log_softmax of these logits, i.e. AFTER bias and penalties but
//     BEFORE temperature and truncation. vLLM returns the raw model's logprobs by default
//     (logprobs_mode "raw_logprobs"); we take the processed ones so that a logprob describes the
//     distribution the request actually asked for (a token the bias or min_tokens forbade shows
//     -inf), while staying independent of temperature/top-k/top-p, which are sampling knobs
//     rather than part of the model's distribution (and would make greedy logprobs all 0).
//  5. temperature: 0 is greedy, an argmax whose ties go to the lowest id (torch.argmax's rule);
//     otherwise the logits are divided by it (TemperatureLogitsWarper).
//  6. top-k (TopKLogitsWarper), 7. top-p (TopPLogitsWarper: keep the most likely tokens until
//     their probability reaches top_p, always at least one), 8. min-p (MinPLogitsWarper: drop
//     tokens whose probability is below min_p times the top one's), each on the result of the
//     previous (probabilities renormalised in between).
//  9. The draw: inverse transform sampling. One uniform u in [0, 1) per row, a counter-based
//     hash of (seed, position) (UniformForPosition), and the token is the first id whose
//     cumulative probability (in id order, float64) exceeds u. So the draw depends only on the
//     sequence's seed, the token's position and the row's own probabilities: never on the
//     batch, nor on how many draws came before. vLLM instead races exponential noise
//     (argmax p_v / E_v, one random number per vocabulary entry) from a device generator, whose
//     state depends on the batch, hence its per-request generators for seeded requests; one
//     uniform per row needs no generator state and moves S numbers to the device, not S x vocab.

// A uniform in [0, 1) with 53 random bits for the draw at `position` of a sequence seeded with
// `seed`: a pure function of the two (Note [Sampling order], step 9).
double UniformForPosition(uint64_t seed, int64_t position) {
  const uint64_t bits =
      Mix64(Mix64(seed) ^ Mix64(static_cast<uint64_t>(position) + 0x9e3779b97f4a7c15ULL));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

bool NeedsMinTokensMask(const Sequence& sequence) {
  return sequence.num_output_tokens() < sequence.min_tokens &&
         (!sequence.stop_token_ids.empty() ||
          (!sequence.ignore_eos && !sequence.eos_token_ids.empty()));
}

bool NeedsProcessing(const Sequence& sequence) {
  const SamplingOptions& sampling = sequence.sampling;
  return !sampling.logit_bias.empty() || NeedsMinTokensMask(sequence) ||
         sampling.has_repetition_penalty() || sampling.has_presence_or_frequency_penalty();
}

#if defined(__x86_64__) && defined(__GNUC__)
// The first index of a row's largest value, or of its first NaN (torch.argmax's rules), 16 lanes at
// a time: one pass for the maximum (and any NaN), one that stops at its first occurrence.
__attribute__((target("avx512f"))) int64_t RowArgmaxAvx512(const float* row, int64_t size) {
  __m512 maximum = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 unordered = 0;
  int64_t index = 0;
  for (; index + 16 <= size; index += 16) {
    const __m512 values = _mm512_loadu_ps(row + index);
    unordered |= _mm512_cmp_ps_mask(values, values, _CMP_UNORD_Q);
    maximum = _mm512_max_ps(maximum, values);
  }
  float largest = _mm512_reduce_max_ps(maximum);
  bool has_nan = unordered != 0;
  for (int64_t tail = index; tail < size; ++tail) {
    has_nan |= std::isnan(row[tail]);
    if (row[tail] > largest) largest = row[tail];
  }
  if (has_nan) {
    for (int64_t position = 0; position < size; ++position) {
      if (std::isnan(row[position])) return position;
    }
  }
  const __m512 target = _mm512_set1_ps(largest);
  index = 0;
  for (; index + 16 <= size; index += 16) {
    const __mmask16 equal = _mm512_cmp_ps_mask(_mm512_loadu_ps(row + index), target, _CMP_EQ_OQ);
    if (equal != 0) return index + __builtin_ctz(equal);
  }
  for (; index < size; ++index) {
    if (row[index] == largest) return index;
  }
  return 0;
}
const bool kHasAvx512 = __builtin_cpu_supports("avx512f");
#endif

// Greedy tokens: each row's argmax, ties to the lowest id. ATen's argmax runs ~130 µs for one
// 49,152-token row on this CPU (1.8 ms for 32), a few percent of a batch-1 decode step; the
// vectorised scan takes a few µs a row.
at::Tensor GreedyTokens(const at::Tensor& scores) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasAvx512 && scores.device().is_cpu() && scores.scalar_type() == at::kFloat && scores.dim() == 2) {
    const at::Tensor rows = scores.contiguous();
    at::Tensor chosen = at::empty({rows.size(0)}, at::TensorOptions().dtype(at::kLong));
    const float* data = rows.const_data_ptr<float>();
    int64_t* chosen_data = chosen.mutable_data_ptr<int64_t>();
    const int64_t size = rows.size(1);
    at::parallel_for(0, rows.size(0), 8, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) chosen_data[row] = RowArgmaxAvx512(data + row * size, size);
    });
    return chosen;
  }
#endif
  return scores.argmax(-1);
}

at::Tensor TokenIdTensor(const std::vector<int64_t>& token_ids, const at::Device& device) {
  return at::tensor(token_ids, at::TensorOptions().dtype(at::kLong)).to(device);
}

void CheckTokenIds(const std::vector<int64_t>& token_ids, int64_t vocab_size, const char* what,
                   const Sequence& sequence) {
  for (int64_t token_id : token_ids) {
    TORCH_CHECK(token_id >= 0 && token_id < vocab_size, "Sampler::Sample: sequence ",
                sequence.request_id, ": ", what, " token id ", token_id,
                " is outside the vocabulary [0, ", vocab_size, ")");
  }
}

// Steps 1-4 of Note [Sampling order], in place on one row [vocab].
void ApplyBiasAndPenalties(at::Tensor row, const Sequence& sequence) {
  const SamplingOptions& sampling = sequence.sampling;
  const int64_t vocab_size = row.size(0);
  const at::Device device = row.device();

  if (!sampling.logit_bias.empty()) {
    std::vector<int64_t> token_ids;
    std::vector<float> biases;
    for (const auto& [token_id, bias] : sampling.logit_bias) {
      token_ids.push_back(token_id);
      biases.push_back(bias);
    }
    CheckTokenIds(token_ids, vocab_size, "logit_bias", sequence);
    row.index_add_(0, TokenIdTensor(token_ids, device),
                   at::tensor(biases, at::TensorOptions().dtype(at::kFloat)).to(device));
  }

  if (NeedsMinTokensMask(sequence)) {
    std::vector<int64_t> token_ids(sequence.stop_token_ids.begin(), sequence.stop_token_ids.end());
    if (!sequence.ignore_eos) {
      token_ids.insert(token_ids.end(), sequence.eos_token_ids.begin(),
                       sequence.eos_token_ids.end());
    }
    CheckTokenIds(token_ids, vocab_size, "stop or eos", sequence);
    row.index_fill_(0, TokenIdTensor(token_ids, device), -std::numeric_limits<float>::infinity());
  }

  if (sampling.has_repetition_penalty()) {
    std::unordered_set<int32_t> seen(sequence.prompt_token_ids.begin(),
                                     sequence.prompt_token_ids.end());
    seen.insert(sequence.output_token_ids.begin(), sequence.output_token_ids.end());
    std::vector<int64_t> token_ids(seen.begin(), seen.end());
    CheckTokenIds(token_ids, vocab_size, "prompt or output", sequence);
    const at::Tensor index = TokenIdTensor(token_ids, device);
    const at::Tensor values = row.index_select(0, index);
    const float penalty = sampling.repetition_penalty;
    row.index_copy_(0, index, at::where(values > 0, values / penalty, values * penalty));
  }

  if (sampling.has_presence_or_frequency_penalty()) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t token_id : sequence.output_token_ids) ++counts[token_id];
    if (!counts.empty()) {
      std::vector<int64_t> token_ids;
      std::vector<float> deltas;
      for (const auto& [token_id, count] : counts) {
        token_ids.push_back(token_id);
        deltas.push_back(
            -(sampling.frequency_penalty * static_cast<float>(count) + sampling.presence_penalty));
      }
      CheckTokenIds(token_ids, vocab_size, "output", sequence);
      row.index_add_(0, TokenIdTensor(token_ids, device),
                     at::tensor(deltas, at::TensorOptions().dtype(at::kFloat)).to(device));
    }
  }
}

// Steps 5-9 for the rows sampled at a temperature: returns the chosen token ids [rows] (int64,
// on scores' device).
at::Tensor SampleAtTemperature(const at::Tensor& scores,
                               const std::vector<const Sequence*>& sequences) {
  const int64_t num_rows = scores.size(0);
  const int64_t vocab_size = scores.size(1);
  const at::Device device = scores.device();
  const float infinity = std::numeric_limits<float>::infinity();

  std::vector<float> temperatures, top_ps, min_ps;
  std::vector<int64_t> top_ks;
  bool any_top_k = false, any_top_p = false, any_min_p = false;
  for (const Sequence* sequence : sequences) {
    const SamplingOptions& sampling = sequence->sampling;
    temperatures.push_back(sampling.temperature);
    top_ks.push_back(sampling.has_top_k() ? std::min<int64_t>(sampling.top_k, vocab_size)
                                          : vocab_size);
    // 2 > any cumulative probability: the row keeps everything.
    top_ps.push_back(sampling.has_top_p() ? sampling.top_p : 2.0f);
    min_ps.push_back(sampling.has_min_p() ? sampling.min_p : 0.0f);
    any_top_k |= sampling.has_top_k();
    any_top_p |= sampling.has_top_p();
    any_min_p |= sampling.has_min_p();
  }
  const auto float_options = at::TensorOptions().dtype(at::kFloat);
  at::Tensor logits = scores / at::tensor(temperatures, float_options).to(device).unsqueeze(1);

  if (any_top_k || any_top_p) logits = TruncateTopKTopP(logits, top_ks, top_ps);
  if (any_min_p) {
    const at::Tensor probabilities = logits.softmax(-1);
    const at::Tensor threshold = probabilities.amax(-1, /*keepdim=*/true) *
                                 at::tensor(min_ps, float_options).to(device).unsqueeze(1);
    logits = logits.masked_fill(probabilities < threshold, -infinity);
  }

  // Inverse transform sampling, in float64 so that the cumulative sum of a large vocabulary
  // keeps its resolution.
  std::vector<double> uniforms;
  uniforms.reserve(num_rows);
  for (const Sequence* sequence : sequences) {
    uniforms.push_back(UniformForPosition(sequence->sampling.seed.value_or(sequence->random_seed),
                                          sequence->num_tokens()));
  }
  const at::Tensor cumulative = logits.to(at::kDouble).softmax(-1).cumsum(-1);
  // Scaled by the row's total (1 up to rounding) so that u never lands past the last token.
  const at::Tensor thresholds =
      at::tensor(uniforms, at::TensorOptions().dtype(at::kDouble)).to(device).unsqueeze(1) *
      cumulative.narrow(1, vocab_size - 1, 1);
  // The first id whose cumulative probability exceeds u; ids of probability 0 never qualify.
  return at::searchsorted(cumulative, thresholds, /*out_int32=*/false, /*right=*/true)
      .squeeze(1)
      .clamp_max(vocab_size - 1);
}

}  // namespace

at::Tensor TruncateTopKTopPBySort(const at::Tensor& logits, const std::vector<int64_t>& top_ks,
                                  const std::vector<float>& top_ps) {
  const int64_t vocab_size = logits.size(1);
  const at::Device device = logits.device();
  const float infinity = std::numeric_limits<float>::infinity();
  // One stable sort serves both: ties keep the lower id first, as for greedy.
  auto [sorted, order] = logits.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true);
  const at::Tensor ranks = at::arange(vocab_size, at::TensorOptions().dtype(at::kLong).device(device));
  at::Tensor removed = ranks.unsqueeze(0) >= TokenIdTensor(top_ks, device).unsqueeze(1);
  const at::Tensor probabilities = sorted.masked_fill(removed, -infinity).softmax(-1);
  // Probability of the tokens strictly more likely: a token is kept while the ones before it have
  // not reached top_p yet, so the first token is always kept.
  const at::Tensor before = probabilities.cumsum(-1) - probabilities;
  removed = removed.logical_or(
      before >= at::tensor(top_ps, at::TensorOptions().dtype(at::kFloat)).to(device).unsqueeze(1));
  return logits.scatter(1, order, sorted.masked_fill(removed, -infinity));
}

namespace {

// A token's place in the stable descending sort's order (larger logit first, lower id first among
// equals, NaN above everything as torch.sort places it) as one 64-bit key, smaller first: the
// logit's bits made order-preserving and flipped in the high half, the id in the low half. Keys
// are unique, so selecting and sorting them needs no tie rule.
uint64_t OrderKey(float value, int32_t id) {
  uint32_t descending = 0;  // NaN
  if (!std::isnan(value)) {
    const uint32_t bits = std::bit_cast<uint32_t>(value == 0.0f ? 0.0f : value);  // -0 == +0
    const uint32_t ascending = (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
    descending = ~ascending;  // never 0: only a NaN's bits map to ascending 0xffffffff
  }
  return (static_cast<uint64_t>(descending) << 32) | static_cast<uint32_t>(id);
}

// A row's tokens in that order, sorted only as far as asked: Extend(count) selects the next ones
// (nth_element over the rest, linear) and sorts just those.
class TokenOrder {
 public:
  TokenOrder(const float* values, int64_t vocab_size) : keys_(static_cast<size_t>(vocab_size)) {
    for (int64_t id = 0; id < vocab_size; ++id) keys_[id] = OrderKey(values[id], static_cast<int32_t>(id));
  }
  void Extend(int64_t count) {
    count = std::min<int64_t>(count, static_cast<int64_t>(keys_.size()));
    if (count <= sorted_) return;
    std::nth_element(keys_.begin() + sorted_, keys_.begin() + (count - 1), keys_.end());
    std::sort(keys_.begin() + sorted_, keys_.begin() + count);
    sorted_ = count;
  }
  int32_t Id(int64_t rank) const { return static_cast<int32_t>(keys_[rank] & 0xffffffffu); }

 private:
  std::vector<uint64_t> keys_;
  int64_t sorted_ = 0;
};

// Sets every token of the row but `kept` to -inf.
void KeepOnly(float* values, int64_t vocab_size, const TokenOrder& order, int64_t kept) {
  std::vector<float> kept_values(static_cast<size_t>(kept));
  for (int64_t rank = 0; rank < kept; ++rank) kept_values[rank] = values[order.Id(rank)];
  std::fill(values, values + vocab_size, -std::numeric_limits<float>::infinity());
  for (int64_t rank = 0; rank < kept; ++rank) values[order.Id(rank)] = kept_values[rank];
}

}  // namespace

// Note [Truncation without a full sort]: the stable descending sort above costs ~3 ms for one row
// of a 49,152-token vocabulary on a CPU core (100 ms for a batch of 32 on this 2-core machine:
// longer than SmolLM2's whole decode step), yet top-k keeps k tokens and top-p usually a few
// dozen. Both keep a prefix of the sort's order, so on CPU each row finds its first k tokens by
// selection (TokenOrder: nth_element on one 64-bit key per token, linear, then a sort of k), and
// the nucleus from a prefix of 64 tokens, extended 4x while the whole prefix is still short of
// top_p. The probabilities are the same masked softmax, summed as the sort path sums them.
at::Tensor TruncateTopKTopP(const at::Tensor& logits, const std::vector<int64_t>& top_ks,
                            const std::vector<float>& top_ps) {
  const int64_t num_rows = logits.size(0);
  const int64_t vocab_size = logits.size(1);
  TORCH_CHECK(static_cast<int64_t>(top_ks.size()) == num_rows && static_cast<int64_t>(top_ps.size()) == num_rows,
              "TruncateTopKTopP: expected one top_k and one top_p per row (", num_rows, ") but got ", top_ks.size(),
              " and ", top_ps.size());
  if (!logits.device().is_cpu() || logits.scalar_type() != at::kFloat) {
    return TruncateTopKTopPBySort(logits, top_ks, top_ps);
  }
  at::Tensor truncated = logits.contiguous().clone();
  float* data = truncated.data_ptr<float>();
  std::vector<int64_t> nucleus_rows;
  for (int64_t row = 0; row < num_rows; ++row) {
    if (top_ps[row] < 1.0f) nucleus_rows.push_back(row);
  }
  at::parallel_for(0, num_rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      if (top_ks[row] >= vocab_size) continue;
      float* values = data + row * vocab_size;
      TokenOrder order(values, vocab_size);
      order.Extend(top_ks[row]);
      KeepOnly(values, vocab_size, order, top_ks[row]);
    }
  });
  if (nucleus_rows.empty()) return truncated;
  const at::Tensor probabilities = truncated.softmax(-1);
  const float* probability_data = probabilities.const_data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(nucleus_rows.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t row = nucleus_rows[index];
      float* values = data + row * vocab_size;
      const float* row_probabilities = probability_data + row * vocab_size;
      // Candidates: the tokens top-k and the earlier masks left (-inf stays removed).
      const int64_t candidates = std::count_if(
          values, values + vocab_size, [](float value) { return value != -std::numeric_limits<float>::infinity(); });
      if (candidates == 0) continue;
      TokenOrder order(values, vocab_size);
      // The sort path's arithmetic: a float64 running sum rounded to float32, minus the token's own
      // probability in float32, so that ties with top_p fall the same way.
      double cumulative = 0.0;
      int64_t kept = 0;
      for (int64_t prefix = std::min<int64_t>(64, candidates); kept < candidates;
           prefix = std::min(prefix * 4, candidates)) {
        order.Extend(prefix);
        for (; kept < prefix; ++kept) {
          const float probability = row_probabilities[order.Id(kept)];
          cumulative += probability;
          if (static_cast<float>(cumulative) - probability >= top_ps[row]) break;
        }
        if (kept < prefix) break;
      }
      KeepOnly(values, vocab_size, order, kept);
    }
  });
  return truncated;
}

std::vector<SampledToken> Sampler::Sample(const at::Tensor& logits,
                                          const std::vector<const Sequence*>& sequences) const {
  const int64_t num_rows = static_cast<int64_t>(sequences.size());
  TORCH_CHECK(logits.dim() == 2 && logits.size(0) == num_rows && logits.size(1) > 0,
              "Sampler::Sample: expected logits [", num_rows,
              ", vocab] (one row per sequence) but got ", logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()),
              "Sampler::Sample: expected floating-point logits but got ", logits.scalar_type());
  std::vector<SampledToken> sampled(num_rows);
  if (num_rows == 0) return sampled;

  bool any_processing = false;
  for (const Sequence* sequence : sequences) any_processing |= NeedsProcessing(*sequence);
  // A copy only when rows are modified in place (or the dtype changes).
  at::Tensor scores = logits.to(at::kFloat, /*non_blocking=*/false, /*copy=*/any_processing);
  if (any_processing) {
    for (int64_t row = 0; row < num_rows; ++row) {
      if (NeedsProcessing(*sequences[row])) ApplyBiasAndPenalties(scores[row], *sequences[row]);
    }
  }

  std::vector<int64_t> greedy_rows, random_rows, logprob_rows;
  for (int64_t row = 0; row < num_rows; ++row) {
    const SamplingOptions& sampling = sequences[row]->sampling;
    (sampling.is_greedy() ? greedy_rows : random_rows).push_back(row);
    if (sampling.return_logprobs || sampling.top_logprobs > 0) logprob_rows.push_back(row);
  }

  // Chosen token per row, on the scores' device. Greedy rows cost one argmax for all of them.
  at::Tensor chosen;
  if (random_rows.empty()) {
    chosen = GreedyTokens(scores);
  } else {
    chosen = at::empty({num_rows}, at::TensorOptions().dtype(at::kLong).device(scores.device()));
    if (!greedy_rows.empty()) {
      const at::Tensor index = TokenIdTensor(greedy_rows, scores.device());
      chosen.index_copy_(0, index, GreedyTokens(scores.index_select(0, index)));
    }
    std::vector<const Sequence*> random_sequences;
    for (int64_t row : random_rows) random_sequences.push_back(sequences[row]);
    const at::Tensor index = TokenIdTensor(random_rows, scores.device());
    chosen.index_copy_(0, index,
                       SampleAtTemperature(scores.index_select(0, index), random_sequences));
  }
  const at::Tensor chosen_cpu = chosen.to(at::kCPU);
  const int64_t* chosen_ids = chosen_cpu.data_ptr<int64_t>();
  for (int64_t row = 0; row < num_rows; ++row) {
    sampled[row].token_id = static_cast<int32_t>(chosen_ids[row]);
  }

  if (!logprob_rows.empty()) {
    const at::Tensor index = TokenIdTensor(logprob_rows, scores.device());
    const at::Tensor logprobs = scores.index_select(0, index).log_softmax(-1);
    const at::Tensor chosen_logprobs =
        logprobs.gather(1, chosen.index_select(0, index).unsqueeze(1)).squeeze(1).to(at::kCPU);
    int64_t max_top = 0;
    for (int64_t row : logprob_rows) {
      max_top = std::max<int64_t>(max_top, sequences[row]->sampling.top_logprobs);
    }
    max_top = std::min(max_top, logprobs.size(1));
    // Empty [rows, 0] tensors when nobody asked for alternatives, so the accessors stay valid.
    const auto [top_values, top_ids] =
        logprobs.topk(max_top, /*dim=*/-1, /*largest=*/true, /*sorted=*/true);
    const at::Tensor top_values_cpu = top_values.to(at::kCPU);
    const at::Tensor top_ids_cpu = top_ids.to(at::kCPU);
    const auto top_value_rows = top_values_cpu.accessor<float, 2>();
    const auto top_id_rows = top_ids_cpu.accessor<int64_t, 2>();
    const auto chosen_logprob_values = chosen_logprobs.accessor<float, 1>();
    for (size_t position = 0; position < logprob_rows.size(); ++position) {
      const int64_t row = logprob_rows[position];
      SampledToken& token = sampled[row];
      token.logprob = chosen_logprob_values[position];
      const int64_t count = std::min<int64_t>(sequences[row]->sampling.top_logprobs, max_top);
      for (int64_t rank = 0; rank < count; ++rank) {
        token.top_logprobs.emplace_back(static_cast<int32_t>(top_id_rows[position][rank]),
                                        top_value_rows[position][rank]);
      }
    }
  }
  return sampled;
}

}  // namespace flotilla::worker
