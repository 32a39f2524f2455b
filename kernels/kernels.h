// Fused kernels for the hot paths of decoder models, each with a CPU twin so that every CUDA path
// has a reference tested on machines without a GPU.
//
//   at::Tensor normalized = flotilla::kernels::RmsNorm(hidden_states, weight, 1e-6);
//   at::Tensor activated = flotilla::kernels::SiluAndMul(gate, up);            // silu(gate) * up
//   flotilla::kernels::RotaryEmbeddingInPlace(query_states, key_states, cos, sin);
//
// Dispatch is by the input's device: CUDA tensors go to kernels/cuda (built when a CUDA toolkit is
// found, reached through the table it registers: kernels/cuda_kernel_table.h), everything else to
// kernels/cpu. Each function computes exactly what the eager module in
// the model file computes (see the comments), in float32 internally, rounding to the storage dtype
// where the eager ops round. Stated tolerance against the eager ops: float32 within 1e-6 of the
// largest output magnitude (only the summation order differs); bfloat16 / float16 within one
// rounding of the storage dtype.
//
// Thread-safety: every function is pure apart from its documented in-place outputs; call from any
// thread.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/Tensor.h>

namespace flotilla::kernels {

// transformers' LlamaRMSNorm: weight * (x * rsqrt(mean(x^2, -1) + epsilon)).to(x.dtype),
// the mean taken in float32. hidden_states [..., hidden], weight [hidden].
at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon);

// The decoder layer's `hidden_states = residual + hidden_states; residual = hidden_states;
// hidden_states = norm(hidden_states)` in one pass: writes residual + hidden_states into
// `residual` (rounded to its dtype, as the eager add) and returns RmsNorm of it.
at::Tensor FusedAddRmsNorm(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight,
                           double epsilon);

// silu(gate) * up, where gate and up are the two halves of the last dimension (vLLM's
// SiluAndMul layout for fused gate_up_proj outputs).
at::Tensor SiluAndMul(const at::Tensor& gate_and_up);

// silu(gate) * up for the two projections' outputs as they are (same shape), as LlamaMLP's
// `act_fn(gate_proj(x)) * up_proj(x)`; F.silu rounds to the dtype before the multiply.
at::Tensor SiluAndMul(const at::Tensor& gate, const at::Tensor& up);

// apply_rotary_pos_emb in place: q = q * cos + rotate_half(q) * sin, and the same for k, each
// product and the sum rounded to the dtype as the eager ops round. query [batch, heads, length,
// head_dim] and key [batch, kv_heads, length, head_dim] may be strided views (the projections'
// outputs transposed) but their last dimension must be contiguous; cos / sin [batch, length,
// head_dim] in the same dtype.
void RotaryEmbeddingInPlace(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin);

// One query token of paged attention: it attends to keys [first_key, position] of its sequence,
// whose position p lives in slot block_table[p / block_size] * block_size + p % block_size.
struct PagedAttentionToken {
  int64_t token;      // row in query_tokens / output_tokens
  int64_t position;   // its position in its sequence (the last key it sees)
  int64_t first_key;  // first position it attends to (0, or the sliding window's start)
  const int64_t* block_table;
};

// Attention reading a paged KV cache in place — decode tokens and prefill chunks of a ragged batch
// alike, with no gather: query_tokens / output_tokens [T, heads, head_dim] contiguous, key_pool /
// value_pool [num_blocks, block_size, kv_heads, head_dim] contiguous (grouped-query attention by
// heads / kv_heads). Scores scaled by `scaling`, tanh-capped by `softcap` when set, exact softmax in
// float32, weighted values accumulated in float32 (eager's float32 softmax). On CUDA tensors this
// packs `tokens` and copies them to the device first (PlanPagedAttention); a caller running many
// layers over one step plans once and calls PagedAttentionFromPlan.
void PagedAttention(const at::Tensor& query_tokens, const at::Tensor& key_pool, const at::Tensor& value_pool,
                    at::Tensor& output_tokens, const std::vector<PagedAttentionToken>& tokens, double scaling,
                    std::optional<double> softcap);

// A step's PagedAttentionTokens packed into one int64 tensor on the pools' device, so that every
// layer of the step reads the same token description with no further host-to-device copy:
//   [num_tokens x (token, position, first_key, offset of its block table)], then each distinct block
//   table once (tokens of one sequence share it), as long as the furthest position read from it.
// On CUDA the packing happens in pinned host memory and reaches the device with one asynchronous
// copy on the current stream.
struct PagedAttentionPlan {
  at::Tensor packed;           // int64, on the device the attention runs on
  int64_t num_tokens = 0;
  int64_t block_size = 0;
  int64_t max_keys = 0;        // the widest window: sizes the CUDA kernel's split over the context
  int64_t max_token_row = -1;  // checked against query_tokens' rows at each call
  int64_t max_block = -1;      // checked against the pools' blocks at each call
};

//   const PagedAttentionPlan plan = PlanPagedAttention(tokens, key_pool.size(1), key_pool.device());
//   for (each layer) PagedAttentionFromPlan(query_tokens, key_pools[layer], value_pools[layer], output, plan, ...);
// Refuses (c10::Error) a token with a negative row, first_key outside [0, position], no block
// table, or a negative block id. The tokens' block tables are read here and not kept.
PagedAttentionPlan PlanPagedAttention(const std::vector<PagedAttentionToken>& tokens, int64_t block_size,
                                      at::Device device);

// PagedAttention over a plan's tokens. The plan must be on the queries' device and made for the
// pools' block size; one that reads a query row or a block beyond the tensors is refused before
// any kernel runs. The CUDA kernel takes head_dim up to 256.
void PagedAttentionFromPlan(const at::Tensor& query_tokens, const at::Tensor& key_pool,
                            const at::Tensor& value_pool, at::Tensor& output_tokens, const PagedAttentionPlan& plan,
                            double scaling, std::optional<double> softcap);

// True when the CUDA kernels are in this process: kernels/cuda registers them when it is linked in
// (kernels_test) or loaded (lib/libflotilla_models_nccl.so, which a worker on --device cuda
// dlopens). Builds without a CUDA toolkit never have them.
bool HasCudaKernels();

// The widest head the CUDA paged attention takes (it keeps a key row in registers); wider heads take
// the gather-then-sdpa path (models/paged_attention.cc). The CUDA side checks it equals its own
// kPagedAttentionMaxHeadDim (kernels/cuda/cuda_kernels.h, which includes no ATen).
inline constexpr int64_t kCudaPagedAttentionMaxHeadDim = 256;

}  // namespace flotilla::kernels
