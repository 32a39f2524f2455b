// Attention masks, as transformers' masking_utils.py builds them: causal, sliding-window causal,
// bidirectional, each combined with a 2D padding mask, in the format the attention backend wants.
//
//   MaskArguments arguments{.batch_size = 2, .query_length = 5, .past_length = 0,
//                           .attention_mask = padding_mask, .implementation = "sdpa"};
//   std::optional<at::Tensor> causal_mask = CreateCausalMask(arguments);
//   arguments.sliding_window = 4096;
//   std::optional<at::Tensor> sliding_mask = CreateCausalMask(arguments);
//
// Shapes: a 4D mask [batch, 1, query_length, past_length + query_length]. Query i sits at
// position past_length + i; key j at position j. Boolean masks are true where attention is
// allowed; additive masks are 0 there and the dtype's minimum elsewhere. For backends that handle
// is_causal themselves (sdpa), no mask (nullopt) is returned when none is needed.
//
// Thread-safety: pure functions (they read the attention registry).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/ATen.h>

namespace flotilla::models {

struct MaskArguments {
  int64_t batch_size = 1;
  int64_t query_length = 1;
  int64_t past_length = 0;
  // [batch, past_length + query_length], 1 for tokens and 0 for padding; nullopt = no padding.
  std::optional<at::Tensor> attention_mask;
  std::optional<int64_t> sliding_window;  // keys within (position - sliding_window, position]
  std::string implementation = "sdpa";    // picks the mask format (attention.h)
  at::ScalarType dtype = at::kFloat;      // of an additive mask
  at::Device device = at::kCPU;
};

std::optional<at::Tensor> CreateCausalMask(const MaskArguments& arguments);
// Encoders: every query sees every non-padding key (within the window, when one is set).
std::optional<at::Tensor> CreateBidirectionalMask(const MaskArguments& arguments);

}  // namespace flotilla::models
