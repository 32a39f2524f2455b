// The attention interface: a registry of attention functions with one signature, the C++ form of
// transformers' ALL_ATTENTION_FUNCTIONS. A model file writes its own `eager` function and asks the
// registry for the configured one; it never branches on the backend.
//
//   AttentionFunction attention = GetAttentionFunction(config.attn_implementation, EagerAttentionForward);
//   auto [attn_output, attn_weights] = attention(query, key, value, attention_mask, arguments);
//
// query: [batch, num_attention_heads, query_length, head_dim]; key/value: [batch,
// num_key_value_heads, key_length, head_dim] (grouped-query attention is the function's job).
// Returns the output as [batch, query_length, num_attention_heads, head_dim] and the attention
// weights when the backend computes them (undefined tensor otherwise).
//
// `sdpa` (at::scaled_dot_product_attention) is registered here. A backend registered from another
// library (paged, flash) becomes available to every model without touching model code.
//
// Thread-safety: register at static-initialisation time; lookups are then read-only.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace flotilla::models {

// How a backend wants its mask (masks.h builds it): a boolean mask (true = attend), or an additive
// float mask (0 = attend, dtype minimum = masked), as transformers' eager and sdpa masks differ.
enum class MaskFormat { kBoolean, kAdditive };

struct AttentionArguments {
  double scaling = 1.0;
  double dropout = 0.0;
  int64_t num_key_value_groups = 1;  // num_attention_heads / num_key_value_heads
  bool is_causal = true;
  std::optional<int64_t> sliding_window;
  std::optional<double> softcap;
  bool output_attentions = false;
};

using AttentionFunction = std::function<std::pair<at::Tensor, at::Tensor>(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attention_mask, const AttentionArguments& arguments)>;

struct AttentionBackend {
  AttentionFunction forward;
  MaskFormat mask_format = MaskFormat::kBoolean;
  // True when the backend handles a plain causal mask itself (is_causal), so masks.h may pass no
  // mask when there is no padding and no sliding window.
  bool skips_causal_mask = false;
  // True when the backend reads a PagedKVCache's blocks in place (paged_attention.h): the cache's
  // Update then returns the layer's pools, and masks.h passes no mask (the backend masks itself).
  bool reads_paged_cache = false;
};

void RegisterAttentionBackend(const std::string& name, AttentionBackend backend);
// The registered backend, or `eager` wrapped as a backend with an additive mask when `name` is
// "eager" or not registered... except that unknown names are an error: see CheckAttentionImplementation.
AttentionBackend GetAttentionBackend(const std::string& name, const AttentionFunction& eager);
inline AttentionFunction GetAttentionFunction(const std::string& name, const AttentionFunction& eager) {
  return GetAttentionBackend(name, eager).forward;
}
// "eager" and every registered name.
std::vector<std::string> AttentionImplementations();
// Throws (TORCH_CHECK) naming the known implementations when `name` is not one of them.
void CheckAttentionImplementation(const std::string& name);

// repeat_kv: [batch, num_key_value_heads, length, head_dim] -> [batch, num_key_value_heads * n_rep, ...].
at::Tensor RepeatKeyValue(const at::Tensor& hidden_states, int64_t n_rep);

// The sdpa backend (exposed for tests that compare it with eager).
std::pair<at::Tensor, at::Tensor> SdpaAttentionForward(const at::Tensor& query, const at::Tensor& key,
                                                       const at::Tensor& value,
                                                       const std::optional<at::Tensor>& attention_mask,
                                                       const AttentionArguments& arguments);

}  // namespace flotilla::models
