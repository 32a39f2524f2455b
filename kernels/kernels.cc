#include "kernels/kernels.h"

#include <algorithm>
#include <atomic>
#include <unordered_map>

#include <ATen/ATen.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda_kernel_table.h"

namespace flotilla::kernels {
namespace {

std::atomic<const CudaKernelTable*> registered_cuda_kernels{nullptr};

const CudaKernelTable& CudaKernelsFor(const char* operation) {
  const CudaKernelTable* table = registered_cuda_kernels.load(std::memory_order_acquire);
  TORCH_CHECK(table != nullptr, operation,
              ": a CUDA tensor, but no CUDA kernels are loaded in this process (a build without a CUDA toolkit, or "
              "a binary that neither links kernels/cuda nor loaded lib/libflotilla_models_nccl.so)");
  return *table;
}

// Offsets of a plan's token records (PagedAttentionPlan: four int64 per token).
constexpr int64_t kRecordWidth = 4;

}  // namespace

void RegisterCudaKernels(const CudaKernelTable* table) {
  registered_cuda_kernels.store(table, std::memory_order_release);
}

const CudaKernelTable* RegisteredCudaKernels() { return registered_cuda_kernels.load(std::memory_order_acquire); }

bool HasCudaKernels() { return RegisteredCudaKernels() != nullptr; }

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  if (hidden_states.is_cuda()) return CudaKernelsFor("RmsNorm").rms_norm(hidden_states, weight, epsilon);
  return cpu::RmsNorm(hidden_states, weight, epsilon);
}

at::Tensor FusedAddRmsNorm(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight,
                           double epsilon) {
  if (hidden_states.is_cuda()) {
    return CudaKernelsFor("FusedAddRmsNorm").fused_add_rms_norm(hidden_states, residual, weight, epsilon);
  }
  return cpu::FusedAddRmsNorm(hidden_states, residual, weight, epsilon);
}

at::Tensor SiluAndMul(const at::Tensor& gate_and_up) {
  if (gate_and_up.is_cuda()) return CudaKernelsFor("SiluAndMul").silu_and_mul(gate_and_up);
  return cpu::SiluAndMul(gate_and_up);
}

at::Tensor SiluAndMul(const at::Tensor& gate, const at::Tensor& up) {
  if (gate.is_cuda()) return CudaKernelsFor("SiluAndMul").silu_and_mul_split(gate, up);
  return cpu::SiluAndMul(gate, up);
}

void RotaryEmbeddingInPlace(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin) {
  if (query.is_cuda()) {
    CudaKernelsFor("RotaryEmbeddingInPlace").rotary_embedding_in_place(query, key, cos, sin);
    return;
  }
  cpu::RotaryEmbeddingInPlace(query, key, cos, sin);
}

void PagedAttention(const at::Tensor& query_tokens, const at::Tensor& key_pool, const at::Tensor& value_pool,
                    at::Tensor& output_tokens, const std::vector<PagedAttentionToken>& tokens, double scaling,
                    std::optional<double> softcap) {
  if (query_tokens.is_cuda()) {
    TORCH_CHECK(key_pool.dim() == 4, "PagedAttention: key_pool must be [num_blocks, block_size, kv_heads, head_dim] "
                "but is ", key_pool.sizes());
    const PagedAttentionPlan plan = PlanPagedAttention(tokens, key_pool.size(1), query_tokens.device());
    PagedAttentionFromPlan(query_tokens, key_pool, value_pool, output_tokens, plan, scaling, softcap);
    return;
  }
  cpu::PagedAttention(query_tokens, key_pool, value_pool, output_tokens, tokens, scaling, softcap);
}

PagedAttentionPlan PlanPagedAttention(const std::vector<PagedAttentionToken>& tokens, int64_t block_size,
                                      at::Device device) {
  TORCH_CHECK(block_size > 0, "PlanPagedAttention: block_size must be positive but is ", block_size);
  PagedAttentionPlan plan;
  plan.num_tokens = static_cast<int64_t>(tokens.size());
  plan.block_size = block_size;
  // Each distinct block table once, as long as the furthest block any of its tokens reads.
  std::unordered_map<const int64_t*, size_t> table_index;
  std::vector<const int64_t*> tables;
  std::vector<int64_t> table_blocks;
  for (const PagedAttentionToken& token : tokens) {
    TORCH_CHECK(token.token >= 0 && token.first_key >= 0 && token.first_key <= token.position &&
                    token.block_table != nullptr,
                "PlanPagedAttention: token ", token.token, " (position ", token.position, ", first key ",
                token.first_key, ") needs a row >= 0, 0 <= first_key <= position and a block table");
    const int64_t blocks = token.position / block_size + 1;
    const auto [found, inserted] = table_index.emplace(token.block_table, tables.size());
    if (inserted) {
      tables.push_back(token.block_table);
      table_blocks.push_back(blocks);
    } else {
      table_blocks[found->second] = std::max(table_blocks[found->second], blocks);
    }
    plan.max_keys = std::max(plan.max_keys, token.position - token.first_key + 1);
    plan.max_token_row = std::max(plan.max_token_row, token.token);
  }
  std::vector<int64_t> table_offsets(tables.size());
  int64_t size = plan.num_tokens * kRecordWidth;
  for (size_t table = 0; table < tables.size(); ++table) {
    table_offsets[table] = size;
    size += table_blocks[table];
  }
  // Pinned on the host when the plan goes to a GPU, so the copy below is asynchronous.
  at::Tensor host = at::empty({size}, at::TensorOptions().dtype(at::kLong).pinned_memory(device.is_cuda()));
  int64_t* data = host.mutable_data_ptr<int64_t>();
  for (size_t index = 0; index < tokens.size(); ++index) {
    const PagedAttentionToken& token = tokens[index];
    int64_t* record = data + static_cast<int64_t>(index) * kRecordWidth;
    record[0] = token.token;
    record[1] = token.position;
    record[2] = token.first_key;
    record[3] = table_offsets[table_index.at(token.block_table)];
  }
  for (size_t table = 0; table < tables.size(); ++table) {
    for (int64_t block = 0; block < table_blocks[table]; ++block) {
      const int64_t value = tables[table][block];
      TORCH_CHECK(value >= 0, "PlanPagedAttention: block table entry ", block, " is ", value, " (negative)");
      plan.max_block = std::max(plan.max_block, value);
      data[table_offsets[table] + block] = value;
    }
  }
  plan.packed = device.is_cpu() ? host : host.to(at::TensorOptions().device(device), /*non_blocking=*/true);
  return plan;
}

void PagedAttentionFromPlan(const at::Tensor& query_tokens, const at::Tensor& key_pool,
                            const at::Tensor& value_pool, at::Tensor& output_tokens, const PagedAttentionPlan& plan,
                            double scaling, std::optional<double> softcap) {
  TORCH_CHECK(plan.packed.defined() && plan.packed.device() == query_tokens.device(),
              "PagedAttention: the plan must be on the queries' device ", query_tokens.device());
  TORCH_CHECK(key_pool.dim() == 4 && key_pool.size(1) == plan.block_size,
              "PagedAttention: the plan was made for block_size ", plan.block_size, " but key_pool is ",
              key_pool.sizes());
  TORCH_CHECK(query_tokens.dim() == 3 && plan.max_token_row < query_tokens.size(0),
              "PagedAttention: the plan reads query row ", plan.max_token_row, " but query_tokens is ",
              query_tokens.sizes());
  TORCH_CHECK(plan.max_block < key_pool.size(0), "PagedAttention: the plan reads block ", plan.max_block,
              " but the pools hold ", key_pool.size(0), " blocks");
  if (query_tokens.is_cuda()) {
    CudaKernelsFor("PagedAttention").paged_attention(query_tokens, key_pool, value_pool, output_tokens, plan, scaling,
                                                     softcap);
    return;
  }
  // The CPU kernel takes the tokens as they were, their block tables pointing into the plan.
  const int64_t* data = plan.packed.const_data_ptr<int64_t>();
  std::vector<PagedAttentionToken> tokens(static_cast<size_t>(plan.num_tokens));
  for (int64_t index = 0; index < plan.num_tokens; ++index) {
    const int64_t* record = data + index * kRecordWidth;
    tokens[static_cast<size_t>(index)] = {record[0], record[1], record[2], data + record[3]};
  }
  cpu::PagedAttention(query_tokens, key_pool, value_pool, output_tokens, tokens, scaling, softcap);
}

}  // namespace flotilla::kernels
