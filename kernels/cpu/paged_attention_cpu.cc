// The CPU paged attention kernel (kernels/kernels.h: PagedAttention): every query token of a
// ragged batch against its own sequence's keys, read from the block pools in place.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

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

template <typename scalar_t>
FLOTILLA_PAGED_TARGET_CLONES void PagedItems(const PagedProblem<scalar_t>& problem, int64_t begin, int64_t end) {
  const int64_t groups = problem.groups;
  const int64_t head_dim = problem.head_dim;
  const int64_t block_size = problem.block_size;
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

    for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
      if (key_index + kPrefetchRows < num_keys) {
        PrefetchRow(problem.key_data + row_offsets[key_index + kPrefetchRows], row_bytes);
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
    for (int64_t group = 0; group < groups; ++group) {
      float* row = scores.data() + group * num_keys;
      const float maximum = *std::max_element(row, row + num_keys);
      // exp(score - max) <= 1; below e^-87 the weight is 0 (what std::exp's result rounds to
      // next to the 1 of the maximum).
#pragma omp simd
      for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
        const float difference = row[key_index] - maximum;
        row[key_index] = difference < -87.0f ? 0.0f : VectorExp(difference);
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t key_index = 0; key_index < num_keys; ++key_index) sum += row[key_index];
      const float inverse = 1.0f / sum;
#pragma omp simd
      for (int64_t key_index = 0; key_index < num_keys; ++key_index) row[key_index] *= inverse;
    }

    std::fill(accumulators.begin(), accumulators.end(), 0.0f);
    for (int64_t key_index = 0; key_index < num_keys; ++key_index) {
      if (key_index + kPrefetchRows < num_keys) {
        PrefetchRow(problem.value_data + row_offsets[key_index + kPrefetchRows], row_bytes);
      }
      const float* value = AsFloat(problem.value_data + row_offsets[key_index], buffer, head_dim);
      for (int64_t group = 0; group < groups; ++group) {
        const float weight = scores[group * num_keys + key_index];
        float* accumulator = accumulators.data() + group * head_dim;
#pragma omp simd
        for (int64_t d = 0; d < head_dim; ++d) accumulator[d] += weight * value[d];
      }
    }
    for (int64_t i = 0; i < groups * head_dim; ++i) {
      problem.output_data[head_offset + i] = static_cast<scalar_t>(accumulators[i]);
    }
  }
}

}  // namespace

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
