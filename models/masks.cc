#include "models/masks.h"

#include "models/attention.h"
#include "models/paged_attention.h"

namespace flotilla::models {
namespace {

std::optional<at::Tensor> Finish(const at::Tensor& allowed, const MaskArguments& arguments) {
  // masks.h never sees the model's eager function; only the format matters here.
  const AttentionBackend backend = GetAttentionBackend(arguments.implementation, AttentionFunction());
  at::Tensor mask = allowed.expand({arguments.batch_size, 1, arguments.query_length,
                                    arguments.past_length + arguments.query_length});
  if (backend.mask_format == MaskFormat::kBoolean) return mask;
  const double minimum = arguments.dtype == at::kBFloat16 ? -3.3895313892515355e38
                         : arguments.dtype == at::kHalf   ? -65504.0
                                                          : static_cast<double>(std::numeric_limits<float>::lowest());
  at::Tensor additive = at::zeros(mask.sizes(), at::TensorOptions().dtype(arguments.dtype).device(arguments.device));
  return additive.masked_fill_(mask.logical_not(), minimum);
}

std::optional<at::Tensor> PaddingMask(const MaskArguments& arguments, int64_t kv_length) {
  if (!arguments.attention_mask.has_value()) return std::nullopt;
  at::Tensor padding = arguments.attention_mask->to(arguments.device).to(at::kBool);
  TORCH_CHECK(padding.dim() == 2 && padding.size(0) == arguments.batch_size,
              "CreateCausalMask: attention_mask must be [batch, length] = [", arguments.batch_size, ", ", kv_length,
              "] but got ", padding.sizes());
  // A mask longer than the keys (transformers allows it) is cut to the keys.
  if (padding.size(1) > kv_length) padding = padding.narrow(1, 0, kv_length);
  TORCH_CHECK(padding.size(1) == kv_length, "CreateCausalMask: attention_mask has ", padding.size(1),
              " columns but there are ", kv_length, " keys (past ", arguments.past_length, " + new ",
              arguments.query_length, ")");
  return padding;
}

// A ragged batch packed into one row (paged_attention.h): the block-diagonal causal mask over the
// packed keys, or none for a backend that reads the paged cache and masks itself.
std::optional<at::Tensor> PagedCausalMask(const PagedKVCache& cache, const MaskArguments& arguments) {
  const PagedKVCache::Step& step = *cache.current_step();
  TORCH_CHECK(arguments.implementation == cache.attention_implementation(), "CreateCausalMask: the model runs "
              "attention implementation \"", arguments.implementation, "\" but the current PagedKVCache was set to \"",
              cache.attention_implementation(), "\" (PagedKVCache::SetAttentionImplementation)");
  const int64_t num_tokens = step.batch.num_tokens();
  TORCH_CHECK(arguments.batch_size == 1 && arguments.query_length == num_tokens,
              "CreateCausalMask: a paged batch packs its ", num_tokens, " tokens in one row, expected [1, ",
              num_tokens, "] but got [", arguments.batch_size, ", ", arguments.query_length, "]");
  TORCH_CHECK(!arguments.attention_mask.has_value(),
              "CreateCausalMask: a paged batch has no padding; pass no attention_mask");
  if (GetAttentionBackend(arguments.implementation, AttentionFunction()).reads_paged_cache) return std::nullopt;
  MaskArguments packed = arguments;
  packed.past_length = step.batch.num_context_tokens() - num_tokens;
  return Finish(PagedBlockDiagonalMask(step, arguments.sliding_window, arguments.device), packed);
}

}  // namespace

std::optional<at::Tensor> CreateCausalMask(const MaskArguments& arguments) {
  if (const PagedKVCache* cache = CurrentPagedKVCache(); cache != nullptr && cache->current_step() != nullptr) {
    return PagedCausalMask(*cache, arguments);
  }
  const int64_t kv_length = arguments.past_length + arguments.query_length;
  std::optional<at::Tensor> padding = PaddingMask(arguments, kv_length);
  const AttentionBackend backend = GetAttentionBackend(arguments.implementation, AttentionFunction());
  const bool no_padding = !padding.has_value() || padding->all().item<bool>();
  const bool window_inactive = !arguments.sliding_window.has_value() || kv_length < *arguments.sliding_window;
  if (backend.skips_causal_mask && no_padding && window_inactive &&
      (arguments.query_length == 1 || kv_length == arguments.query_length)) {
    return std::nullopt;
  }
  auto index_options = at::TensorOptions().dtype(at::kLong).device(arguments.device);
  at::Tensor query_positions = at::arange(arguments.query_length, index_options).add_(arguments.past_length).view({-1, 1});
  at::Tensor key_positions = at::arange(kv_length, index_options).view({1, -1});
  at::Tensor allowed = key_positions <= query_positions;  // [query, key]
  if (arguments.sliding_window.has_value()) {
    allowed = allowed.logical_and(key_positions > query_positions - *arguments.sliding_window);
  }
  allowed = allowed.view({1, 1, arguments.query_length, kv_length});
  if (padding.has_value()) allowed = allowed.logical_and(padding->view({arguments.batch_size, 1, 1, kv_length}));
  return Finish(allowed, arguments);
}

std::optional<at::Tensor> CreateBidirectionalMask(const MaskArguments& arguments) {
  const int64_t kv_length = arguments.past_length + arguments.query_length;
  std::optional<at::Tensor> padding = PaddingMask(arguments, kv_length);
  const AttentionBackend backend = GetAttentionBackend(arguments.implementation, AttentionFunction());
  const bool no_padding = !padding.has_value() || padding->all().item<bool>();
  const bool window_inactive = !arguments.sliding_window.has_value() || kv_length < *arguments.sliding_window;
  if (no_padding && window_inactive) {
    // No bias at all: sdpa needs no mask; eager still gets an all-zero additive mask as transformers'.
    if (backend.skips_causal_mask) return std::nullopt;
  }
  at::Tensor allowed = at::ones({1, 1, arguments.query_length, kv_length},
                                at::TensorOptions().dtype(at::kBool).device(arguments.device));
  if (arguments.sliding_window.has_value()) {
    auto index_options = at::TensorOptions().dtype(at::kLong).device(arguments.device);
    at::Tensor query_positions = at::arange(arguments.query_length, index_options).add_(arguments.past_length).view({-1, 1});
    at::Tensor key_positions = at::arange(kv_length, index_options).view({1, -1});
    allowed = (query_positions - key_positions).abs().le(*arguments.sliding_window).view({1, 1, arguments.query_length, kv_length});
  }
  if (padding.has_value()) allowed = allowed.logical_and(padding->view({arguments.batch_size, 1, 1, kv_length}));
  return Finish(allowed, arguments);
}

}  // namespace flotilla::models
