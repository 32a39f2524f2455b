// The key/value cache interface and the dynamic cache (transformers' Cache / DynamicCache).
//
//   DynamicCache cache(num_hidden_layers);
//   cache.Reserve(/*batch_size=*/1, /*max_length=*/prompt_length + max_new_tokens);  // optional
//   auto [keys, values] = cache.Update(key_states, value_states, layer_idx);  // in the attention
//
// Update appends [batch, num_key_value_heads, new_length, head_dim] states to a layer and returns
// every key and value seen so far. DynamicCache keeps per-layer buffers that grow geometrically (or
// exactly, after Reserve) so decoding allocates nothing per step; the returned tensors are views of
// those buffers. A paged cache (serving) implements the same interface.
//
// Note [The dynamic cache as one block per sequence]: the buffers are laid out [batch, capacity,
// heads, head_dim] — a paged pool (paged_attention.h) whose block i is sequence i's whole context —
// and Update returns them transposed to [batch, heads, length, head_dim]. Eager and sdpa read those
// strided views as they are; a decode step's sdpa reads the pool in place with the builtin paged
// attention kernel instead (Note [sdpa decode on the paged kernel] in attention.cc).
//
// Thread-safety: none; one cache per sequence batch, used by one forward at a time.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace flotilla::models {

class KVCache {
 public:
  virtual ~KVCache() = default;
  virtual std::pair<at::Tensor, at::Tensor> Update(const at::Tensor& key_states, const at::Tensor& value_states,
                                                   int64_t layer_idx) = 0;
  // Tokens cached in `layer_idx` (transformers' get_seq_length).
  virtual int64_t GetSeqLength(int64_t layer_idx = 0) const = 0;
};

class DynamicCache : public KVCache {
 public:
  explicit DynamicCache(int64_t num_layers = 0);
  // Pre-sizes every layer's buffers on the first Update to hold `max_length` tokens.
  void Reserve(int64_t batch_size, int64_t max_length);
  std::pair<at::Tensor, at::Tensor> Update(const at::Tensor& key_states, const at::Tensor& value_states,
                                           int64_t layer_idx) override;
  int64_t GetSeqLength(int64_t layer_idx = 0) const override;

 private:
  struct Layer {
    at::Tensor keys;    // [batch, capacity, heads, head_dim]
    at::Tensor values;
    int64_t length = 0;
  };
  std::vector<Layer> layers_;
  int64_t reserved_length_ = 0;
};

}  // namespace flotilla::models
