// The CPU paged attention kernel (kernels/kernels.h: PagedAttention): every query token of a
// ragged batch against its own sequence's keys, read from the block pools in place.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

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

// Items [begin, end) of (token, key/value head): the scores of the head's `groups` queries against
// every key of the token's window, an exact softmax (two passes over a float buffer) and the
// weighted values, accumulated in float32 whatever the storage dtype, as eager's float32 softmax.
// Cloned for AVX2+FMA (see Note [CPU kernel vectorisation] in cpu_kernels.cc).
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

// One row of scores in place: exp(score - max) / sum, in float32. exp(score - max) <= 1; below
// e^-87 the weight is 0 (what std::exp's result rounds to next to the 1 of the maximum).
FLOTILLA_PAGED_TARGET_CLONES void Softmax(float* row, int64_t count) {
  const float maximum = *std::max_element(row, row + count);
#pragma omp simd
  for (int64_t index = 0; index < count; ++index) {
    const float difference = row[index] - maximum;
    row[index] = difference < -87.0f ? 0.0f : VectorExp(difference);
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t index = 0; index < count; ++index) sum += row[index];
  const float inverse = 1.0f / sum;
#pragma omp simd
  for (int64_t index = 0; index < count; ++index) row[index] *= inverse;
}

// An item's `groups` output rows, rounded once to the storage dtype.
template <typename scalar_t>
void StoreOutput(const PagedProblem<scalar_t>& problem, int64_t head_offset, const float* accumulators) {
  for (int64_t i = 0; i < problem.groups * problem.head_dim; ++i) {
    problem.output_data[head_offset + i] = static_cast<scalar_t>(accumulators[i]);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// Note [Paged attention in registers]: the loops above leave head_dim to the compiler, which
// vectorises each (key, query head) dot product as a loop with its own set-up, tail and reduction,
// and sums the weighted values through memory. With head_dim a multiple of 16 the item runs in
// whole AVX-512 registers instead: each key row is loaded once (bfloat16 widened exactly) and
// multiplied by every query head of its group; the weighted values sum per query head in
// registers, the head's value rows (read from memory by the first head, from the cache after) one
// FMA per 16 lanes, two keys in flight. SmolLM2's decode (9 heads over 3, head_dim 64) spent about
// 36 cycles per (key, query head) in the loops; see kernels/README.md for the measured step.
#define FLOTILLA_PAGED_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define FLOTILLA_PAGED_AVX512_LANES __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), always_inline)) inline

const bool kHasPagedAvx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");

FLOTILLA_PAGED_AVX512_LANES __m512 LoadLanes(const float* row) { return _mm512_loadu_ps(row); }
FLOTILLA_PAGED_AVX512_LANES __m512 LoadLanes(const c10::BFloat16* row) {
  const __m512i widened = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(widened, 16));
}

template <typename scalar_t, int kVectors>
FLOTILLA_PAGED_AVX512 void ScoresAndWeightedValuesAvx512(const PagedProblem<scalar_t>& problem,
                                                         const int64_t* row_offsets, int64_t num_keys,
                                                         const float* queries, int64_t prefetch_bytes, float* scores,
                                                         float* accumulators) {
  constexpr int64_t kHeadDim = 16 * kVectors;
  const int64_t groups = problem.groups;
  for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
    if (key_index + kPrefetchRows < num_keys) {
      PrefetchRow(problem.key_data + row_offsets[key_index + kPrefetchRows], prefetch_bytes);
    }
    const scalar_t* key = problem.key_data + row_offsets[key_index];
    __m512 lanes[kVectors];
    for (int vector = 0; vector < kVectors; ++vector) lanes[vector] = LoadLanes(key + 16 * vector);
    for (int64_t group = 0; group < groups; ++group) {
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
  for (int64_t group = 0; group < groups; ++group) Softmax(scores + group * num_keys, num_keys);
  for (int64_t group = 0; group < groups; ++group) {
    const float* weights = scores + group * num_keys;
    __m512 sums[2][kVectors];
    for (int vector = 0; vector < kVectors; ++vector) sums[0][vector] = sums[1][vector] = _mm512_setzero_ps();
    for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
      if (group == 0 && key_index + kPrefetchRows < num_keys) {
        PrefetchRow(problem.value_data + row_offsets[key_index + kPrefetchRows], prefetch_bytes);
      }
      const scalar_t* value = problem.value_data + row_offsets[key_index];
      const __m512 weight = _mm512_set1_ps(weights[key_index]);
      __m512* into = sums[key_index & 1];
      for (int vector = 0; vector < kVectors; ++vector) {
        into[vector] = _mm512_fmadd_ps(weight, LoadLanes(value + 16 * vector), into[vector]);
      }
    }
    for (int vector = 0; vector < kVectors; ++vector) {
      _mm512_storeu_ps(accumulators + group * kHeadDim + 16 * vector, _mm512_add_ps(sums[0][vector], sums[1][vector]));
    }
  }
}

template <typename scalar_t>
void ScoresAndWeightedValuesAvx512(const PagedProblem<scalar_t>& problem, const int64_t* row_offsets,
                                   int64_t num_keys, const float* queries, int64_t prefetch_bytes, int64_t vectors,
                                   float* scores, float* accumulators) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, c10::BFloat16>) {
    switch (vectors) {
      case 2:
        return ScoresAndWeightedValuesAvx512<scalar_t, 2>(problem, row_offsets, num_keys, queries, prefetch_bytes,
                                                          scores, accumulators);
      case 4:
        return ScoresAndWeightedValuesAvx512<scalar_t, 4>(problem, row_offsets, num_keys, queries, prefetch_bytes,
                                                          scores, accumulators);
      case 8:
        return ScoresAndWeightedValuesAvx512<scalar_t, 8>(problem, row_offsets, num_keys, queries, prefetch_bytes,
                                                          scores, accumulators);
      case 16:
        return ScoresAndWeightedValuesAvx512<scalar_t, 16>(problem, row_offsets, num_keys, queries, prefetch_bytes,
                                                           scores, accumulators);
    }
  }
  TORCH_CHECK(false, "PagedAttention: no AVX-512 item loop for head_dim ", problem.head_dim);
}
#endif

std::atomic<bool> paged_avx512_enabled{true};  // SetPagedAttentionAvx512ForTesting

// head_dim / 16 where the AVX-512 item loop runs (float32 or bfloat16, head_dim 32, 64, 128 or
// 256, an AVX-512 CPU), else 0.
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

template <typename scalar_t>
FLOTILLA_PAGED_TARGET_CLONES void PagedItems(const PagedProblem<scalar_t>& problem, int64_t begin, int64_t end) {
  const int64_t groups = problem.groups;
  const int64_t head_dim = problem.head_dim;
  const int64_t block_size = problem.block_size;
  const int64_t vectors = Avx512Vectors(problem);  // 0: the loops below
  std::vector<float> queries(static_cast<size_t>(groups * head_dim));
  std::vector<float> accumulators(static_cast<size_t>(groups * head_dim));
  std::vector<float> row_buffer(static_cast<size_t>(head_dim));
  std::vector<float> scores;
  std::vector<int64_t> row_offsets;  // element offset of each key's row in the pools
  for (int64_t item = begin; item < end; ++item) {
    const PagedAttentionToken& token = (*problem.tokens)[static_cast<size_t>(item / problem.num_key_value_heads)];
    const int64_t kv_head = item % problem.num_key_value_heads;
    const int64_t num_keys = token.position - token.first_key + 1;
    scores.resize(static_cast<size_t>(groups * num_keys));
    row_offsets.resize(static_cast<size_t>(num_keys));
    const int64_t head_offset = (token.token * problem.num_heads + kv_head * groups) * head_dim;
    for (int64_t i = 0; i < groups * head_dim; ++i) queries[i] = static_cast<float>(problem.query_data[head_offset + i]);
    // Walk the block table once (no division per key).
    int64_t block = token.first_key / block_size;
    int64_t offset = token.first_key % block_size;
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
    // The first head of a token asks for every head's row of each slot (one slot's heads are one
    // contiguous run), so the token's next items, on this thread, find theirs cached.
    const bool whole_slots = kv_head == 0 && item + problem.num_key_value_heads <= end;
    const int64_t prefetch_bytes = whole_slots ? row_bytes * problem.num_key_value_heads : row_bytes;

#if defined(__x86_64__) && defined(__GNUC__)
    if (vectors > 0) {
      ScoresAndWeightedValuesAvx512(problem, row_offsets.data(), num_keys, queries.data(), prefetch_bytes, vectors,
                                    scores.data(), accumulators.data());
      StoreOutput(problem, head_offset, accumulators.data());
      continue;
    }
#endif
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
    for (int64_t group = 0; group < groups; ++group) Softmax(scores.data() + group * num_keys, num_keys);

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
    StoreOutput(problem, head_offset, accumulators.data());
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
    // An item reads its token's context once for its GQA group. A fork/join of the intra-op team
    // costs about as much as scoring a few hundred keys, so small steps (a decode token early in
    // its context) run on the calling thread: the grain asks for kKeyReadsPerThread key/value rows
    // per thread, on average, before a second thread joins.
    constexpr int64_t kKeyReadsPerThread = 256;
    int64_t key_reads = 0;
    for (const PagedAttentionToken& token : tokens) key_reads += token.position - token.first_key + 1;
    const int64_t reads_per_item = std::max<int64_t>(1, key_reads / std::max<int64_t>(1, tokens.size()));
    const int64_t grain = std::max<int64_t>(1, kKeyReadsPerThread / reads_per_item);
    at::parallel_for(0, num_items, grain,
                     [&](int64_t begin, int64_t end) { PagedItems<scalar_t>(problem, begin, end); });
  });
}

}  // namespace flotilla::kernels::cpu
