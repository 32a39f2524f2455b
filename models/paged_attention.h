// Serving infrastructure (not model behaviour): a paged KV cache, the per-step "forward context"
// that tells the cache, the masks and the `paged` attention backend how a ragged batch is laid out,
// and the `paged` backend itself. With these, one engine step — prompt chunks and decode tokens of
// many sequences packed into one [1, T] row — runs as ONE forward of an unchanged model file.
//
//   KVCacheSpec spec = *KVCacheSpecFromConfig(model->config());
//   PagedKVCache cache(spec, /*num_blocks=*/PagedKVCache::NumBlocksFor(budget, spec, 16, at::kFloat),
//                      /*block_size=*/16, at::kFloat, at::kCPU);   // once, at start
//   cache.SetAttentionImplementation(model->attention_implementation());
//   PagedBatch batch;                                                // each step
//   batch.sequences = {{.query_length = 5, .context_length = 5, .block_table = {0}},
//                      {.query_length = 1, .context_length = 38, .block_table = {3, 7, 9}}};
//   ForwardInputs inputs{.input_ids = packed_ids, .position_ids = positions, .past_key_values = &cache};
//   inputs.logits_indices = at::tensor({4, 5});  // last token of each sequence that samples
//   ScopedPagedBatch scope(cache, batch);
//   ModelOutput output = model->Forward(inputs);  // logits [1, 2, vocab]
//
// Layout. Sequence i contributes its query_length new tokens to the packed row, in order.
// context_length counts the tokens already cached plus the new ones (the new tokens are the last
// query_length positions of the context). Position p lives in block block_table[p / block_size], at
// offset p % block_size; a step writes only positions [context_length - query_length,
// context_length), so blocks holding earlier positions may be shared (prefix caching).
//
// What PagedKVCache::Update returns depends on the attention implementation it was told of:
//   - "paged": the layer's whole pools, [num_blocks, block_size, num_key_value_heads, head_dim]
//     each; the paged backend reads the blocks in place through the block tables.
//   - anything else ("sdpa", "eager", ...): every sequence's whole context, gathered and packed as
//     [1, num_key_value_heads, sum(context_length), head_dim]; CreateCausalMask (masks.h) then
//     returns the block-diagonal causal mask over that layout (PagedBlockDiagonalMask).
// GetSeqLength returns sum(context_length) - T while a batch is current, so a model's
// past_length + query_length equals the packed key length; positions come from position_ids
// (always pass them: the default arange would be wrong for a packed row).
//
// Limits (per batch, not per sequence): Phi-3's longrope switch (DropsCacheBeforeGenerationStep)
// and dynamic rope scaling see the whole packed row's positions, so a batch cannot give each
// sequence its own choice; the worker must not rely on either.
//
// Thread-safety: the forward context is thread-local; a PagedKVCache serves one forward at a time
// (the thread that holds its ScopedPagedBatch). Backend registration is static.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "absl/status/statusor.h"
#include "kernels/kernels.h"
#include "models/attention.h"
#include "models/cache.h"
#include "models/config.h"

namespace flotilla::models {

// The shape of one layer's cache, per rank.
struct KVCacheSpec {
  int64_t num_layers = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
};

// Derives the spec of a loaded decoder from its config.json (PretrainedConfig::source), with the
// typed configs' defaults for absent keys (GPT-2's n_layer / n_head / n_embd, Gemma's head_dim 256,
// Qwen3's 128, Mistral's 8 key/value heads...). With tensor parallelism each rank caches
// num_key_value_heads / tensor_parallel_size heads.
absl::StatusOr<KVCacheSpec> KVCacheSpecFromConfig(const PretrainedConfig& config, int64_t tensor_parallel_size = 1);

// One sequence of a step (see the layout above).
struct PagedSequence {
  int64_t query_length = 0;
  int64_t context_length = 0;
  std::vector<int64_t> block_table;
};

// One engine step: the sequences in the order of their tokens in the packed row.
struct PagedBatch {
  std::vector<PagedSequence> sequences;

  int64_t num_tokens() const;        // T = sum(query_length)
  int64_t num_context_tokens() const;  // sum(context_length)
};

class PagedKVCache : public KVCache {
 public:
  // Allocates num_layers pools of num_blocks * block_size slots for keys and values each.
  PagedKVCache(const KVCacheSpec& spec, int64_t num_blocks, int64_t block_size, at::ScalarType dtype,
               at::Device device);

  // Bytes of keys and values, all layers, for one block.
  static int64_t BytesPerBlock(const KVCacheSpec& spec, int64_t block_size, at::ScalarType dtype);
  // The most blocks that fit `budget_bytes` (0 when not even one does).
  static int64_t NumBlocksFor(int64_t budget_bytes, const KVCacheSpec& spec, int64_t block_size,
                              at::ScalarType dtype);

  // Which attention implementation the model runs ("paged" by default): decides what Update returns.
  void SetAttentionImplementation(const std::string& name);
  const std::string& attention_implementation() const { return attention_implementation_; }

  // key_states / value_states: [1, num_key_value_heads, T, head_dim] for the current batch's T new
  // tokens. Writes them into their slots, then returns the pools or the packed contexts (above).
  std::pair<at::Tensor, at::Tensor> Update(const at::Tensor& key_states, const at::Tensor& value_states,
                                           int64_t layer_idx) override;
  // sum(context_length) - T while a batch is current, else 0.
  int64_t GetSeqLength(int64_t layer_idx = 0) const override;

  const KVCacheSpec& spec() const { return spec_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  // [num_blocks, block_size, num_key_value_heads, head_dim].
  const at::Tensor& key_pool(int64_t layer_idx) const { return key_pools_.at(static_cast<size_t>(layer_idx)); }
  const at::Tensor& value_pool(int64_t layer_idx) const { return value_pools_.at(static_cast<size_t>(layer_idx)); }

  // The current step's derived layout, computed once by ScopedPagedBatch (not per layer).
  struct Step {
    PagedBatch batch;
    std::vector<int64_t> query_starts;    // offset of each sequence's first token in the packed row
    std::vector<int64_t> context_starts;  // offset of each sequence's first key in the packed context
    at::Tensor write_slots;             // [T] slot (block * block_size + offset) of each new token
    std::vector<int64_t> write_slot_list;  // the same slots, on the host (Note [Cache writes on CPU])
    at::Tensor context_slots;           // [sum(context)] slots of every sequence's context, packed
    at::Tensor token_sequence;          // [T] sequence index of each new token
    at::Tensor token_position;          // [T] position of each new token in its sequence
    at::Tensor context_sequence;        // [sum(context)] sequence index of each packed key
    at::Tensor context_position;        // [sum(context)] position of each packed key
    // The `paged` backend's token description on a GPU, packed and copied once per step and reused
    // by every layer; keyed by sliding window (-1: none), as layers may differ in it.
    mutable std::map<int64_t, kernels::PagedAttentionPlan> device_plans;
  };
  const Step* current_step() const { return step_ ? &*step_ : nullptr; }

 private:
  friend class ScopedPagedBatch;
  void BeginStep(const PagedBatch& batch);
  void EndStep() { step_.reset(); }

  KVCacheSpec spec_;
  int64_t num_blocks_;
  int64_t block_size_;
  std::string attention_implementation_ = "paged";
  bool returns_pools_ = true;  // the implementation reads the pools in place (AttentionBackend::reads_paged_cache)
  std::vector<at::Tensor> key_pools_;
  std::vector<at::Tensor> value_pools_;
  std::optional<Step> step_;
};

// Sets the thread's current paged batch (and cache) for its lifetime, as vLLM's
// set_forward_context; validates the batch against the cache (TORCH_CHECK) and computes the step's
// slot mapping once. Model files never see it; masks.cc and the paged backend read it.
class ScopedPagedBatch {
 public:
  ScopedPagedBatch(PagedKVCache& cache, const PagedBatch& batch);
  ~ScopedPagedBatch();
  ScopedPagedBatch(const ScopedPagedBatch&) = delete;
  ScopedPagedBatch& operator=(const ScopedPagedBatch&) = delete;

 private:
  PagedKVCache* cache_;
  PagedKVCache* previous_;
};

// The thread's current batch and cache, or nullptr outside a ScopedPagedBatch.
const PagedBatch* CurrentPagedBatch();
PagedKVCache* CurrentPagedKVCache();

// The boolean block-diagonal causal mask over the packed layout, [1, 1, T, sum(context_length)]:
// each new token sees only its own sequence's keys at positions <= its own, and only the last
// `sliding_window` of them when set.
at::Tensor PagedBlockDiagonalMask(const PagedKVCache::Step& step, std::optional<int64_t> sliding_window,
                                  at::Device device);

// The `paged` backend (registered under that name; exposed for tests). query [1, heads, T,
// head_dim]; key / value: the layer's pools from PagedKVCache::Update. Decode tokens (query_length
// 1) of all sequences run in one CPU kernel reading the blocks in place; prompt chunks run per
// sequence with sdpa over their gathered context. Returns [1, T, heads, head_dim].
std::pair<at::Tensor, at::Tensor> PagedAttentionForward(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const std::optional<at::Tensor>& attention_mask,
                                                        const AttentionArguments& arguments);

}  // namespace flotilla::models
