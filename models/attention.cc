#include "models/attention.h"

#include <map>
#include <mutex>

#include "absl/strings/str_join.h"

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

// Follows transformers' sdpa_attention_forward: GQA through enable_gqa when there is no mask,
// query packing for a single query token, repeat_kv otherwise; is_causal only for a multi-token
// query without a mask.
std::pair<at::Tensor, at::Tensor> SdpaAttentionForward(const at::Tensor& query_in, const at::Tensor& key_in,
                                                       const at::Tensor& value_in,
                                                       const std::optional<at::Tensor>& attention_mask_in,
                                                       const AttentionArguments& arguments) {
  TORCH_CHECK(!arguments.softcap.has_value(), "sdpa attention does not support softcap; use eager");
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
