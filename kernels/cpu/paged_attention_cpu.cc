// The CPU paged attention kernel (kernels/kernels.h: PagedAttention): every query token of a
// ragged batch against its own sequence's keys, read from the block pools in place.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "kernels/cpu/avx512_lanes.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/kernels.h"
#include "kernels/paged_attention_checks.h"

namespace flotilla::kernels::cpu {
namespace {

template <typename scalar_t>
struct PagedProblem {
  const scalar_t* query_data;  // [T, heads, head_dim]
  const scalar_t* key_data;    // [num_blocks * block_size, kv_heads, head_dim]
  const scalar_t* value_data;
  scalar_t* output_data;  // [T, heads, head_dim]
  int64_t num_heads, num_key_value_heads, groups, head_dim, block_size;
  float scaling, softcap;
  bool has_softcap;
  const std::vector<PagedAttentionToken>* tokens;
};

#if defined(__x86_64__) && defined(__GNUC__)
#define FLOTILLA_PAGED_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FLOTILLA_PAGED_TARGET_CLONES
#endif
// A row of head_dim elements as float32: the row itself for float32 pools, else converted into
// `buffer` (bfloat16 through its bits, so the loop vectorises).
template <typename scalar_t>
inline const float* AsFloat(const scalar_t* row, float* buffer, int64_t head_dim) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return row;
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    const uint16_t* bits = reinterpret_cast<const uint16_t*>(row);
#pragma omp simd
    for (int64_t d = 0; d < head_dim; ++d) buffer[d] = BFloat16BitsToFloat(bits[d]);
    return buffer;
  } else {
    for (int64_t d = 0; d < head_dim; ++d) buffer[d] = static_cast<float>(row[d]);
    return buffer;
  }
}

// Note [Paged rows prefetched]: a sequence's keys and values were written one token per step, into
// blocks anywhere in the pool, and the weights a decode step streams have evicted them from every
// cache by the next step. Walking them one row at a time (a head's row is 128-512 bytes, the same
// head's next row a whole slot further on) left the core waiting on each miss: `perf annotate`
// put 80% of this loop's samples on the key and value loads. Asking for the row kPrefetchRows
// ahead keeps that many misses in flight: SmolLM2 batch-1 decode over 16-416-token contexts spent
// 6.8-7.5% of its samples here before, 3.5-4.2% after (perf, two runs each, same window).
constexpr int64_t kPrefetchRows = 8;
inline void PrefetchRow(const void* row, int64_t bytes) {
  const char* address = static_cast<const char*>(row);
  for (int64_t line = 0; line < bytes; line += 64) __builtin_prefetch(address + line, /*rw=*/0, /*locality=*/3);
}

// One row of scores in place: exp(score - max), unnormalised; returns the max and the sum. Below
// e^-87 the weight is 0 (what std::exp's result rounds to next to the 1 of the maximum).
FLOTILLA_PAGED_TARGET_CLONES std::pair<float, float> ExponentiateRow(float* row, int64_t count) {
  const float maximum = *std::max_element(row, row + count);
#pragma omp simd
  for (int64_t index = 0; index < count; ++index) {
    const float difference = row[index] - maximum;
    row[index] = difference < -87.0f ? 0.0f : VectorExp(difference);
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t index = 0; index < count; ++index) sum += row[index];
  return {maximum, sum};
}

#if defined(__x86_64__) && defined(__GNUC__)
// Note [Paged attention in registers]: the generic loops below leave head_dim to the compiler,
// which vectorises each (key, query head) dot product as a loop with its own set-up, tail and
// reduction, and sums the weighted values through memory. With head_dim 32-256 in float32 or
// bfloat16 a unit runs in whole AVX-512 registers instead: each key row is loaded once (bfloat16
// widened exactly) and multiplied by every query head of its group; the weighted values sum in
// registers for 2-8 query heads per pass over the value rows (read from memory by the first pass,
// from the cache after), one FMA per 16 lanes per head.
#define FLOTILLA_PAGED_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define FLOTILLA_PAGED_AVX512_LANES __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), always_inline)) inline

const bool kHasPagedAvx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");

// A pool row as LoadLanes (avx512_lanes.h) takes it: float32, or bfloat16 as its bits.
inline const float* AsLaneStorage(const float* row) { return row; }
inline const uint16_t* AsLaneStorage(const c10::BFloat16* row) { return reinterpret_cast<const uint16_t*>(row); }

// scores[group][key] = scaling * q_group . k_key (then the softcap) for the unit's keys.
template <typename scalar_t, int kVectors>
FLOTILLA_PAGED_AVX512 void KeyScoresAvx512(const PagedProblem<scalar_t>& problem, const int64_t* row_offsets,
                                           int64_t num_keys, const float* queries, int64_t prefetch_bytes,
                                           float* scores) {
  constexpr int64_t kHeadDim = 16 * kVectors;
  for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
    if (key_index + kPrefetchRows < num_keys) {
      PrefetchRow(problem.key_data + row_offsets[key_index + kPrefetchRows], prefetch_bytes);
    }
    const scalar_t* key = problem.key_data + row_offsets[key_index];
    __m512 lanes[kVectors];
    for (int vector = 0; vector < kVectors; ++vector) lanes[vector] = LoadLanes(AsLaneStorage(key) + 16 * vector);
    for (int64_t group = 0; group < problem.groups; ++group) {
      const float* query = queries + group * kHeadDim;
      __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(query), lanes[0]);
      for (int vector = 1; vector < kVectors; ++vector) {
        sum = _mm512_fmadd_ps(_mm512_loadu_ps(query + 16 * vector), lanes[vector], sum);
      }
      float score = _mm512_reduce_add_ps(sum) * problem.scaling;
      if (problem.has_softcap) score = std::tanh(score / problem.softcap) * problem.softcap;
      scores[group * num_keys + key_index] = score;
    }
  }
}

// accumulators[group] = sum over the unit's keys of weights[group][key] * v_key, for kGroups query
// heads from first_group on. Each pass reads the value rows once (from memory in the first pass,
// from the cache after) and keeps kGroups x kVectors sums in registers; one query head at a time,
// two keys in flight instead.
template <typename scalar_t, int kVectors, int kGroups>
FLOTILLA_PAGED_AVX512_LANES void WeightedValuesPass(const PagedProblem<scalar_t>& problem,
                                                    const int64_t* row_offsets, int64_t num_keys,
                                                    const float* weights, int64_t first_group,
                                                    int64_t prefetch_bytes, float* accumulators) {
  constexpr int64_t kHeadDim = 16 * kVectors;
  constexpr int kInFlight = kGroups == 1 ? 2 : 1;
  __m512 sums[kInFlight][kGroups][kVectors];
  for (int flight = 0; flight < kInFlight; ++flight) {
    for (int group = 0; group < kGroups; ++group) {
      for (int vector = 0; vector < kVectors; ++vector) sums[flight][group][vector] = _mm512_setzero_ps();
    }
  }
  for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
    if (first_group == 0 && key_index + kPrefetchRows < num_keys) {
      PrefetchRow(problem.value_data + row_offsets[key_index + kPrefetchRows], prefetch_bytes);
    }
    const scalar_t* value = problem.value_data + row_offsets[key_index];
    auto& into = sums[key_index % kInFlight];
    if constexpr (kGroups == 1) {
      const __m512 weight = _mm512_set1_ps(weights[first_group * num_keys + key_index]);
      for (int vector = 0; vector < kVectors; ++vector) {
        into[0][vector] = _mm512_fmadd_ps(weight, LoadLanes(AsLaneStorage(value) + 16 * vector), into[0][vector]);
      }
    } else {
      __m512 lanes[kVectors];
      for (int vector = 0; vector < kVectors; ++vector) lanes[vector] = LoadLanes(AsLaneStorage(value) + 16 * vector);
      for (int group = 0; group < kGroups; ++group) {
        const __m512 weight = _mm512_set1_ps(weights[(first_group + group) * num_keys + key_index]);
        for (int vector = 0; vector < kVectors; ++vector) {
          into[group][vector] = _mm512_fmadd_ps(weight, lanes[vector], into[group][vector]);
        }
      }
    }
  }
  for (int group = 0; group < kGroups; ++group) {
    for (int vector = 0; vector < kVectors; ++vector) {
      __m512 total = sums[0][group][vector];
      if constexpr (kInFlight == 2) total = _mm512_add_ps(total, sums[1][group][vector]);
      _mm512_storeu_ps(accumulators + (first_group + group) * kHeadDim + 16 * vector, total);
    }
  }
}

template <typename scalar_t, int kVectors>
FLOTILLA_PAGED_AVX512 void WeightedValuesAvx512(const PagedProblem<scalar_t>& problem, const int64_t* row_offsets,
                                                int64_t num_keys, const float* weights, int64_t prefetch_bytes,
                                                float* accumulators) {
  // 16 sum registers a pass (and kVectors for the row): 8 query heads at head_dim 32, 4 at 64, 2 at 128.
  constexpr int kGroupsPerPass = kVectors >= 16 ? 1 : 16 / kVectors;
  int64_t group = 0;
  for (; group + kGroupsPerPass <= problem.groups; group += kGroupsPerPass) {
    WeightedValuesPass<scalar_t, kVectors, kGroupsPerPass>(problem, row_offsets, num_keys, weights, group,
                                                           prefetch_bytes, accumulators);
  }
  for (; group < problem.groups; ++group) {
    WeightedValuesPass<scalar_t, kVectors, 1>(problem, row_offsets, num_keys, weights, group, prefetch_bytes,
                                              accumulators);
  }
}

// Runs run.template operator()<kVectors>() for head_dim = 16 * kVectors, float32 or bfloat16;
// false where there is no AVX-512 loop (the generic loops run).
template <typename scalar_t, typename Run>
bool WithAvx512Vectors(int64_t vectors, Run&& run) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
    switch (vectors) {
      case 2:
        run.template operator()<2>();
        return true;
      case 4:
        run.template operator()<4>();
        return true;
      case 8:
        run.template operator()<8>();
        return true;
      case 16:
        run.template operator()<16>();
        return true;
    }
  }
  return false;
}
#endif

std::atomic<bool> paged_avx512_enabled{true};  // SetPagedAttentionAvx512ForTesting

// head_dim / 16 where the AVX-512 loops run (float32 or bfloat16, head_dim 32, 64, 128 or 256, an
// AVX-512 CPU), else 0.
template <typename scalar_t>
int64_t Avx512Vectors(const PagedProblem<scalar_t>& problem) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (!kHasPagedAvx512 || !paged_avx512_enabled.load(std::memory_order_relaxed)) return 0;
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
    const int64_t head_dim = problem.head_dim;
    if (head_dim == 32 || head_dim == 64 || head_dim == 128 || head_dim == 256) return head_dim / 16;
  }
#endif
  return 0;
}

// Note [Split contexts]: a unit of work is one (token, key/value head) over a stretch of the
// token's keys. A batch-1 decode step has as many items as key/value heads (3 for SmolLM2), which
// split 2:1 over two threads, and a long context's keys, evicted by the weights a step streams,
// arrive at memory latency: at 528-token contexts one layer's attention took 59 µs, 12% of the
// step. Where the items are few and the contexts long, each item's keys are split into stretches
// (flash-decoding's split-K): each unit leaves its max, sum and unnormalised weighted values, and
// the stretches combine exactly (rescaled by exp(max_i - max)) once every unit is done. Units run
// token by token, stretch by stretch, head by head, so one thread's consecutive units share their
// slots' cache lines.
struct PagedUnit {
  int64_t token_index;  // into tokens
  int64_t kv_head;
  int64_t key_begin;  // keys [key_begin, key_end) of the token's window, counted from first_key
  int64_t key_end;
  int64_t partial = -1;  // the unit's slot in the partial results; -1: the whole window, output written
};

// A partial result: [groups * head_dim] weighted values, then [groups] maxima, then [groups] sums.
inline int64_t PartialFloats(int64_t groups, int64_t head_dim) { return groups * (head_dim + 2); }

// Units [begin, end), cloned for AVX2+FMA (Note [CPU kernel vectorisation] in cpu_kernels.cc): the
// scores of the head's `groups` queries against the unit's keys, an exact softmax (or, for a
// stretch, its unnormalised terms) and the weighted values, in float32 whatever the storage dtype,
// as eager's float32 softmax.
template <typename scalar_t>
FLOTILLA_PAGED_TARGET_CLONES void PagedUnits(const PagedProblem<scalar_t>& problem, const std::vector<PagedUnit>& units,
                                             int64_t begin, int64_t end, float* partials) {
  const int64_t groups = problem.groups;
  const int64_t head_dim = problem.head_dim;
  const int64_t block_size = problem.block_size;
  const int64_t vectors = Avx512Vectors(problem);  // 0: the generic loops
  std::vector<float> queries(static_cast<size_t>(groups * head_dim));
  std::vector<float> accumulators(static_cast<size_t>(groups * head_dim));
  std::vector<float> row_buffer(static_cast<size_t>(head_dim));
  std::vector<float> scores;
  std::vector<int64_t> row_offsets;  // element offset of each key's row in the pools
  for (int64_t unit_index = begin; unit_index < end; ++unit_index) {
    const PagedUnit& unit = units[static_cast<size_t>(unit_index)];
    const PagedAttentionToken& token = (*problem.tokens)[static_cast<size_t>(unit.token_index)];
    const int64_t kv_head = unit.kv_head;
    const int64_t num_keys = unit.key_end - unit.key_begin;
    scores.resize(static_cast<size_t>(groups * num_keys));
    row_offsets.resize(static_cast<size_t>(num_keys));
    const int64_t head_offset = (token.token * problem.num_heads + kv_head * groups) * head_dim;
    for (int64_t i = 0; i < groups * head_dim; ++i) queries[i] = static_cast<float>(problem.query_data[head_offset + i]);
    // Walk the block table once (no division per key).
    const int64_t first_position = token.first_key + unit.key_begin;
    int64_t block = first_position / block_size;
    int64_t offset = first_position % block_size;
    for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
      const int64_t slot = token.block_table[block] * block_size + offset;
      row_offsets[key_index] = (slot * problem.num_key_value_heads + kv_head) * head_dim;
      if (++offset == block_size) {
        offset = 0;
        ++block;
      }
    }
    float* buffer = row_buffer.data();
    const int64_t row_bytes = head_dim * static_cast<int64_t>(sizeof(scalar_t));
    // The first head of a stretch asks for every head's row of each slot (one slot's heads are one
    // contiguous run), so the next units, this thread's, find theirs cached.
    const bool whole_slots = kv_head == 0 && unit_index + problem.num_key_value_heads <= end;
    const int64_t prefetch_bytes = whole_slots ? row_bytes * problem.num_key_value_heads : row_bytes;

    bool scored = false;
#if defined(__x86_64__) && defined(__GNUC__)
    scored = WithAvx512Vectors<scalar_t>(vectors, [&]<int kVectors>() {
      KeyScoresAvx512<scalar_t, kVectors>(problem, row_offsets.data(), num_keys, queries.data(), prefetch_bytes,
                                          scores.data());
    });
#endif
    if (!scored) {
      for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
        if (key_index + kPrefetchRows < num_keys) {
          PrefetchRow(problem.key_data + row_offsets[key_index + kPrefetchRows], prefetch_bytes);
        }
        const float* key = AsFloat(problem.key_data + row_offsets[key_index], buffer, head_dim);
        for (int64_t group = 0; group < groups; ++group) {
          const float* query = queries.data() + group * head_dim;
          float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < head_dim; ++d) dot += query[d] * key[d];
          float score = dot * problem.scaling;
          if (problem.has_softcap) score = std::tanh(score / problem.softcap) * problem.softcap;
          scores[group * num_keys + key_index] = score;
        }
      }
    }
    float* partial = unit.partial >= 0 ? partials + unit.partial * PartialFloats(groups, head_dim) : nullptr;
    for (int64_t group = 0; group < groups; ++group) {
      float* row = scores.data() + group * num_keys;
      const auto [maximum, sum] = ExponentiateRow(row, num_keys);
      if (partial != nullptr) {
        partial[groups * head_dim + group] = maximum;
        partial[groups * head_dim + groups + group] = sum;
      } else {
        const float inverse = 1.0f / sum;
#pragma omp simd
        for (int64_t key_index = 0; key_index < num_keys; ++key_index) row[key_index] *= inverse;
      }
    }

    bool summed = false;
#if defined(__x86_64__) && defined(__GNUC__)
    summed = WithAvx512Vectors<scalar_t>(vectors, [&]<int kVectors>() {
      WeightedValuesAvx512<scalar_t, kVectors>(problem, row_offsets.data(), num_keys, scores.data(), prefetch_bytes,
                                               accumulators.data());
    });
#endif
    if (!summed) {
      std::fill(accumulators.begin(), accumulators.end(), 0.0f);
      for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
        if (key_index + kPrefetchRows < num_keys) {
          PrefetchRow(problem.value_data + row_offsets[key_index + kPrefetchRows], prefetch_bytes);
        }
        const float* value = AsFloat(problem.value_data + row_offsets[key_index], buffer, head_dim);
        for (int64_t group = 0; group < groups; ++group) {
          const float weight = scores[group * num_keys + key_index];
          float* accumulator = accumulators.data() + group * head_dim;
#pragma omp simd
          for (int64_t d = 0; d < head_dim; ++d) accumulator[d] += weight * value[d];
        }
      }
    }
    if (partial != nullptr) {
      std::copy(accumulators.begin(), accumulators.end(), partial);
      continue;
    }
    for (int64_t i = 0; i < groups * head_dim; ++i) {
      problem.output_data[head_offset + i] = static_cast<scalar_t>(accumulators[i]);
    }
  }
}

// An item whose keys were split: its stretches' partial results are partials[first_partial, + count).
struct SplitItem {
  int64_t token_index;
  int64_t kv_head;
  int64_t first_partial;
  int64_t count;
};

// Each split item's stretches combined: output = sum_i e^(max_i - max) values_i / sum_i e^(max_i - max) sum_i.
template <typename scalar_t>
void CombineStretches(const PagedProblem<scalar_t>& problem, const std::vector<SplitItem>& split_items,
                      const float* partials) {
  const int64_t groups = problem.groups;
  const int64_t head_dim = problem.head_dim;
  const int64_t stride = PartialFloats(groups, head_dim);
  std::vector<float> combined(static_cast<size_t>(head_dim));
  for (const SplitItem& item : split_items) {
    const PagedAttentionToken& token = (*problem.tokens)[static_cast<size_t>(item.token_index)];
    const int64_t head_offset = (token.token * problem.num_heads + item.kv_head * groups) * head_dim;
    const float* first = partials + item.first_partial * stride;
    for (int64_t group = 0; group < groups; ++group) {
      float maximum = -std::numeric_limits<float>::infinity();
      for (int64_t stretch = 0; stretch < item.count; ++stretch) {
        maximum = std::max(maximum, first[stretch * stride + groups * head_dim + group]);
      }
      std::fill(combined.begin(), combined.end(), 0.0f);
      float total = 0.0f;
      for (int64_t stretch = 0; stretch < item.count; ++stretch) {
        const float* partial = first + stretch * stride;
        const float scale = std::exp(partial[groups * head_dim + group] - maximum);
        total += scale * partial[groups * head_dim + groups + group];
        const float* values = partial + group * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) combined[d] += scale * values[d];
      }
      const float inverse = 1.0f / total;
      for (int64_t d = 0; d < head_dim; ++d) {
        problem.output_data[head_offset + group * head_dim + d] = static_cast<scalar_t>(combined[d] * inverse);
      }
    }
  }
}

}  // namespace

void SetPagedAttentionAvx512ForTesting(bool enabled) { paged_avx512_enabled.store(enabled); }


void PagedAttention(const at::Tensor& query_tokens, const at::Tensor& key_pool, const at::Tensor& value_pool,
                    at::Tensor& output_tokens, const std::vector<PagedAttentionToken>& tokens, double scaling,
                    std::optional<double> softcap) {
  CheckPagedAttentionTensors(query_tokens, key_pool, value_pool, output_tokens);
  for (const PagedAttentionToken& token : tokens) {
    TORCH_CHECK(token.token >= 0 && token.token < query_tokens.size(0) && token.first_key >= 0 &&
                    token.first_key <= token.position && token.block_table != nullptr,
                "PagedAttention: token ", token.token, " (position ", token.position, ", first key ",
                token.first_key, ") is out of range for ", query_tokens.size(0), " query tokens");
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query_tokens.scalar_type(), "PagedAttention", [&] {
    PagedProblem<scalar_t> problem;
    problem.query_data = query_tokens.const_data_ptr<scalar_t>();
    problem.key_data = key_pool.const_data_ptr<scalar_t>();
    problem.value_data = value_pool.const_data_ptr<scalar_t>();
    problem.output_data = output_tokens.mutable_data_ptr<scalar_t>();
    problem.num_heads = query_tokens.size(1);
    problem.head_dim = query_tokens.size(2);
    problem.num_key_value_heads = key_pool.size(2);
    problem.groups = problem.num_heads / problem.num_key_value_heads;
    problem.block_size = key_pool.size(1);
    problem.scaling = static_cast<float>(scaling);
    problem.has_softcap = softcap.has_value();
    problem.softcap = problem.has_softcap ? static_cast<float>(*softcap) : 1.0f;
    problem.tokens = &tokens;
    const int64_t num_items = static_cast<int64_t>(tokens.size()) * problem.num_key_value_heads;
    const int64_t threads = at::get_num_threads();
    // Note [Split contexts]: with fewer items than two per thread, a window of at least
    // 2 * kMinimumStretch keys is split so that every thread gets units, and the units divide
    // evenly over the threads.
    constexpr int64_t kMinimumStretch = 64;
    std::vector<PagedUnit> units;
    std::vector<SplitItem> split_items;
    int64_t partial_count = 0;
    int64_t key_reads = 0;
    for (size_t token_index = 0; token_index < tokens.size(); ++token_index) {
      const int64_t num_keys = tokens[token_index].position - tokens[token_index].first_key + 1;
      key_reads += num_keys;
      int64_t stretches = 1;
      if (threads > 1 && num_items < 2 * threads && num_keys >= 2 * kMinimumStretch) {
        stretches = (2 * threads + num_items - 1) / num_items;
        while ((stretches * num_items) % threads != 0) ++stretches;
        stretches = std::min(stretches, num_keys / kMinimumStretch);
      }
      const int64_t stretch_length = (num_keys + stretches - 1) / stretches;
      stretches = (num_keys + stretch_length - 1) / stretch_length;  // none empty
      for (int64_t stretch = 0; stretch < stretches; ++stretch) {
        for (int64_t kv_head = 0; kv_head < problem.num_key_value_heads; ++kv_head) {
          const int64_t key_begin = stretch * stretch_length;
          const int64_t partial = stretches > 1 ? partial_count + kv_head * stretches + stretch : -1;
          units.push_back({static_cast<int64_t>(token_index), kv_head, key_begin,
                           std::min(num_keys, key_begin + stretch_length), partial});
        }
      }
      if (stretches > 1) {
        for (int64_t kv_head = 0; kv_head < problem.num_key_value_heads; ++kv_head) {
          split_items.push_back({static_cast<int64_t>(token_index), kv_head, partial_count + kv_head * stretches,
                                 stretches});
        }
        partial_count += stretches * problem.num_key_value_heads;
      }
    }
    std::vector<float> partials(static_cast<size_t>(partial_count * PartialFloats(problem.groups, problem.head_dim)));
    // A fork/join of the intra-op team costs about as much as scoring a few hundred keys, so small
    // steps (a decode token early in its context) run on the calling thread: the grain asks for
    // kKeyReadsPerThread key/value rows per thread, on average, before a second thread joins.
    constexpr int64_t kKeyReadsPerThread = 256;
    const int64_t num_units = static_cast<int64_t>(units.size());
    const int64_t reads_per_unit =
        std::max<int64_t>(1, key_reads * problem.num_key_value_heads / std::max<int64_t>(1, num_units));
    const int64_t grain = std::max<int64_t>(1, kKeyReadsPerThread / reads_per_unit);
    at::parallel_for(0, num_units, grain, [&](int64_t begin, int64_t end) {
      PagedUnits<scalar_t>(problem, units, begin, end, partials.data());
    });
    CombineStretches(problem, split_items, partials.data());
  });
}

}  // namespace flotilla::kernels::cpu
