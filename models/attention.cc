#include "models/attention.h"

#include <map>
#include <mutex>

#include "absl/strings/str_join.h"
#include "kernels/kernels.h"
#include "models/kernelize.h"

namespace flotilla::models {
namespace {

std::map<std::string, AttentionBackend>& Backends() {
  static auto* backends = new std::map<std::string, AttentionBackend>();
  return *backends;
}

struct RegisterSdpa {
  RegisterSdpa() {
    RegisterAttentionBackend("sdpa", {SdpaAttentionForward, MaskFormat::kBoolean, /*skips_causal_mask=*/true});
  }
} register_sdpa;

}  // namespace

void RegisterAttentionBackend(const std::string& name, AttentionBackend backend) {
  Backends()[name] = std::move(backend);
}

AttentionBackend GetAttentionBackend(const std::string& name, const AttentionFunction& eager) {
  auto found = Backends().find(name);
  if (found != Backends().end()) return found->second;
  CheckAttentionImplementation(name);
  return AttentionBackend{eager, MaskFormat::kAdditive, /*skips_causal_mask=*/false};
}

std::vector<std::string> AttentionImplementations() {
  std::vector<std::string> names = {"eager"};
  for (const auto& [name, backend] : Backends()) names.push_back(name);
  return names;
}

void CheckAttentionImplementation(const std::string& name) {
  if (name == "eager" || Backends().count(name)) return;
  TORCH_CHECK(false, "attention implementation \"", name, "\" is not registered (known: ",
              absl::StrJoin(AttentionImplementations(), ", "), ")");
}

at::Tensor RepeatKeyValue(const at::Tensor& hidden_states, int64_t n_rep) {
  if (n_rep == 1) return hidden_states;
  const auto batch = hidden_states.size(0);
  const auto num_key_value_heads = hidden_states.size(1);
  const auto length = hidden_states.size(2);
  const auto head_dim = hidden_states.size(3);
  return hidden_states.unsqueeze(2)
      .expand({batch, num_key_value_heads, n_rep, length, head_dim})
      .reshape({batch, num_key_value_heads * n_rep, length, head_dim});
}

namespace {

// Note [sdpa decode on the paged kernel]: a decode step's query is one token, and sdpa's CPU flash
// attention spends more on its set-up (an MKL gemv per head for the scores and another for the
// values, buffers, a softmax pass) than on the few hundred keys it reads: on SmolLM2 batch-1 decode
// it took 7.6% of the step's samples where the paged kernel takes 2.4% (perf, 300 steps each). The
// dynamic cache is a paged pool with one block per sequence (Note [The dynamic cache as one block
// per sequence] in cache.h), so with the builtin PagedAttention kernel mapped (the default) a
// single-token query over such views with no mask — no padding, no sliding window — is answered by
// kernels::PagedAttention reading the cache in place: the same exact float32 softmax the serving
// path runs, as vLLM's CPU sdpa backend answers decode with its paged attention op. Returns nullopt
// where that does not apply, and sdpa runs.
std::optional<at::Tensor> DecodeOnPagedKernel(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                              const std::optional<at::Tensor>& attention_mask,
                                              const AttentionArguments& arguments) {
  if (query.size(2) != 1 || attention_mask.has_value() || arguments.sliding_window.has_value() ||
      arguments.softcap.has_value() || arguments.dropout != 0.0 || arguments.output_attentions ||
      !query.device().is_cpu() || !CurrentLayerKernels().builtin_paged_attention) {
    return std::nullopt;
  }
  const at::ScalarType dtype = query.scalar_type();
  if ((dtype != at::kFloat && dtype != at::kBFloat16) || key.scalar_type() != dtype || value.scalar_type() != dtype ||
      !key.sizes().equals(value.sizes()) || !key.strides().equals(value.strides())) {
    return std::nullopt;
  }
  const int64_t batch = query.size(0);
  const int64_t num_heads = query.size(1);
  const int64_t head_dim = query.size(3);
  const int64_t num_key_value_heads = key.size(1);
  const int64_t length = key.size(2);
  const int64_t slot_elements = num_key_value_heads * head_dim;
  // The views must be [batch, capacity, heads, head_dim] buffers transposed, from their start.
  const bool pooled = key.size(0) == batch && key.size(3) == head_dim && num_heads % num_key_value_heads == 0 &&
                      length > 0 && key.stride(3) == 1 && key.stride(1) == head_dim &&
                      key.stride(2) == slot_elements && key.stride(0) % slot_elements == 0;
  if (!pooled) return std::nullopt;
  const int64_t block_size = key.stride(0) / slot_elements;
  const int64_t pool_elements = batch * block_size * slot_elements;
  const auto fits = [&](const at::Tensor& tensor) {
    return static_cast<int64_t>(tensor.storage().nbytes()) >=
           (tensor.storage_offset() + pool_elements) * static_cast<int64_t>(tensor.element_size());
  };
  if (block_size < length || !fits(key) || !fits(value)) return std::nullopt;
  const std::vector<int64_t> pool_shape = {batch, block_size, num_key_value_heads, head_dim};
  const std::vector<int64_t> pool_strides = {block_size * slot_elements, slot_elements, head_dim, 1};
  const at::Tensor key_pool = key.as_strided(pool_shape, pool_strides, key.storage_offset());
  const at::Tensor value_pool = value.as_strided(pool_shape, pool_strides, value.storage_offset());

  CountKernelForward(KernelLayer::kPagedAttention, true);
  std::vector<int64_t> block_tables(static_cast<size_t>(batch));  // sequence i is block i
  std::vector<kernels::PagedAttentionToken> tokens;
  tokens.reserve(static_cast<size_t>(batch));
  for (int64_t row = 0; row < batch; ++row) {
    block_tables[static_cast<size_t>(row)] = row;
    tokens.push_back({row, length - 1, 0, block_tables.data() + row});
  }
  const at::Tensor query_tokens = query.transpose(1, 2).reshape({batch, num_heads, head_dim}).contiguous();
  at::Tensor output = at::empty({batch, 1, num_heads, head_dim}, query.options());
  at::Tensor output_tokens = output.view({batch, num_heads, head_dim});
  kernels::PagedAttention(query_tokens, key_pool, value_pool, output_tokens, tokens, arguments.scaling, std::nullopt);
  return output;
}

}  // namespace

// Follows transformers' sdpa_attention_forward: GQA through enable_gqa when there is no mask,
// query packing for a single query token, repeat_kv otherwise; is_causal only for a multi-token
// query without a mask.
std::pair<at::Tensor, at::Tensor> SdpaAttentionForward(const at::Tensor& query_in, const at::Tensor& key_in,
                                                       const at::Tensor& value_in,
                                                       const std::optional<at::Tensor>& attention_mask_in,
                                                       const AttentionArguments& arguments) {
  TORCH_CHECK(!arguments.softcap.has_value(), "sdpa attention does not support softcap; use eager");
  if (std::optional<at::Tensor> output = DecodeOnPagedKernel(query_in, key_in, value_in, attention_mask_in, arguments)) {
    return {*output, at::Tensor()};
  }
  at::Tensor query = query_in;
  at::Tensor key = key_in;
  at::Tensor value = value_in;
  std::optional<at::Tensor> attention_mask = attention_mask_in;
  bool enable_gqa = false;
  const int64_t query_length = query.size(2);
  const int64_t batch = query.size(0);
  if (arguments.num_key_value_groups > 1) {
    if (!attention_mask.has_value() && key.size(-1) == value.size(-1) && key.size(-1) <= 256) {
      enable_gqa = true;
    } else if (query_length == 1) {
      // [batch, heads, 1, dim] -> [batch, kv_heads, n_rep, dim]: each kv head's queries as a short sequence.
      query = query.reshape({batch, query.size(1) / arguments.num_key_value_groups, arguments.num_key_value_groups,
                             query.size(-1)});
      if (attention_mask.has_value() && attention_mask->size(1) != 1) {
        attention_mask = attention_mask->reshape({batch, attention_mask->size(1) / arguments.num_key_value_groups,
                                                  arguments.num_key_value_groups, attention_mask->size(-1)});
      }
    } else {
      key = RepeatKeyValue(key, arguments.num_key_value_groups);
      value = RepeatKeyValue(value, arguments.num_key_value_groups);
    }
  }
  bool is_causal = query_length > 1 && !attention_mask.has_value() && arguments.is_causal;
  if (is_causal && key.size(2) > query_length) {
    key = key.narrow(2, 0, query_length);
    value = value.narrow(2, 0, query_length);
  }
  at::Tensor output = at::scaled_dot_product_attention(query, key, value, attention_mask, arguments.dropout,
                                                       is_causal, arguments.scaling, enable_gqa);
  output = output.reshape({batch, -1, query_length, value.size(-1)}).transpose(1, 2).contiguous();
  return {output, at::Tensor()};
}

}  // namespace flotilla::models
