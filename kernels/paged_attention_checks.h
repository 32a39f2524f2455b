// The tensor contract of kernels::PagedAttention (kernels.h), checked the same way by the CPU twin
// (cpu/paged_attention_cpu.cc) and the CUDA launcher (cuda/cuda_dispatch.cc). Header-only: the two
// backends are separate libraries, and neither links the dispatch.
//
//   CheckPagedAttentionTensors(query_tokens, key_pool, value_pool, output_tokens);  // TORCH_CHECKs
#pragma once

#include <ATen/Tensor.h>
#include <c10/util/Exception.h>

namespace flotilla::kernels {

inline void CheckPagedAttentionTensors(const at::Tensor& query_tokens, const at::Tensor& key_pool,
                                       const at::Tensor& value_pool, const at::Tensor& output_tokens) {
  TORCH_CHECK(query_tokens.dim() == 3 && query_tokens.is_contiguous() && output_tokens.sizes() == query_tokens.sizes() &&
                  output_tokens.is_contiguous(),
              "PagedAttention: query_tokens and output_tokens must be contiguous [T, heads, head_dim] but are ",
              query_tokens.sizes(), " and ", output_tokens.sizes());
  TORCH_CHECK(key_pool.dim() == 4 && key_pool.is_contiguous() && value_pool.sizes() == key_pool.sizes() &&
                  value_pool.is_contiguous(),
              "PagedAttention: key_pool and value_pool must be contiguous [num_blocks, block_size, kv_heads, head_dim] "
              "but are ", key_pool.sizes(), " and ", value_pool.sizes());
  TORCH_CHECK(key_pool.scalar_type() == query_tokens.scalar_type() && value_pool.scalar_type() == query_tokens.scalar_type() &&
                  output_tokens.scalar_type() == query_tokens.scalar_type(),
              "PagedAttention: the pools' dtype ", key_pool.scalar_type(), " differs from the queries' ",
              query_tokens.scalar_type());
  TORCH_CHECK(key_pool.device() == query_tokens.device() && value_pool.device() == query_tokens.device() &&
                  output_tokens.device() == query_tokens.device(),
              "PagedAttention: queries, pools and output must be on one device, but the queries are on ",
              query_tokens.device(), " and the pools on ", key_pool.device(), " and ", value_pool.device());
  TORCH_CHECK(key_pool.size(3) == query_tokens.size(2) && key_pool.size(2) > 0 &&
                  query_tokens.size(1) % key_pool.size(2) == 0,
              "PagedAttention: query heads ", query_tokens.size(1), " x ", query_tokens.size(2),
              " do not fit key/value heads ", key_pool.size(2), " x ", key_pool.size(3));
}

}  // namespace flotilla::kernels
