#include "services/worker/model_runner.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace flotilla::worker {

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(std::shared_ptr<models::PreTrainedModel> model,
                                                                 const ModelRunnerOptions& options) {
  absl::StatusOr<models::KVCacheSpec> spec = models::KVCacheSpecFromConfig(model->config());
  if (!spec.ok()) return spec.status();
  const int64_t bytes_per_block = models::PagedKVCache::BytesPerBlock(*spec, options.block_size, options.kv_dtype);
  const int64_t budget = options.kv_cache_memory_bytes > 0 ? options.kv_cache_memory_bytes : int64_t{1} << 30;
  const int64_t num_blocks = budget / bytes_per_block;
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--kv_cache_memory ", budget, " bytes holds no KV block: one block of ",
                                                   options.block_size, " tokens takes ", bytes_per_block, " bytes"));
  }
  auto cache = std::make_unique<models::PagedKVCache>(*spec, num_blocks, options.block_size, options.kv_dtype, at::kCPU);
  // The cache hands the attention function what it reads: the pools (paged) or packed contexts.
  cache->SetAttentionImplementation(model->attention_implementation());
  return std::unique_ptr<ModelRunner>(
      new ModelRunner(std::move(model), std::move(cache), num_blocks, options.block_size, bytes_per_block));
}

ModelRunner::ModelRunner(std::shared_ptr<models::PreTrainedModel> model, std::unique_ptr<models::PagedKVCache> cache,
                         int64_t num_blocks, int64_t block_size, int64_t bytes_per_block)
    : model_(std::move(model)),
      cache_(std::move(cache)),
      num_blocks_(num_blocks),
      block_size_(block_size),
      bytes_per_block_(bytes_per_block) {}

at::Tensor ModelRunner::Execute(const std::vector<RunnerSequence>& sequences) {
  int64_t total_tokens = 0;
  for (const RunnerSequence& sequence : sequences) total_tokens += static_cast<int64_t>(sequence.token_ids.size());
  TORCH_INTERNAL_ASSERT(total_tokens > 0, "ModelRunner::Execute: a step with no tokens");

  at::Tensor input_ids = at::empty({1, total_tokens}, at::kLong);
  at::Tensor position_ids = at::empty({1, total_tokens}, at::kLong);
  int64_t* input_data = input_ids.data_ptr<int64_t>();
  int64_t* position_data = position_ids.data_ptr<int64_t>();
  std::vector<int64_t> logits_indices;
  models::PagedBatch batch;
  batch.sequences.reserve(sequences.size());
  int64_t offset = 0;
  for (const RunnerSequence& sequence : sequences) {
    const int64_t length = static_cast<int64_t>(sequence.token_ids.size());
    TORCH_INTERNAL_ASSERT(sequence.block_table != nullptr && length > 0);
    for (int64_t i = 0; i < length; ++i) {
      input_data[offset + i] = sequence.token_ids[i];
      position_data[offset + i] = sequence.start_position + i;
    }
    models::PagedSequence paged;
    paged.query_length = length;
    paged.context_length = sequence.start_position + length;
    paged.block_table.assign(sequence.block_table->begin(), sequence.block_table->end());
    batch.sequences.push_back(std::move(paged));
    offset += length;
    if (sequence.samples) logits_indices.push_back(offset - 1);
  }

  models::ForwardInputs inputs;
  inputs.input_ids = input_ids;
  inputs.position_ids = position_ids;
  inputs.past_key_values = cache_.get();
  if (logits_indices.empty()) {
    inputs.logits_to_keep = 1;  // nothing samples (every sequence is mid-prompt): keep the head cheap
  } else {
    inputs.logits_indices = at::tensor(logits_indices, at::kLong);
  }
  models::ScopedPagedBatch scope(*cache_, batch);
  models::ModelOutput output = model_->Forward(inputs);
  if (logits_indices.empty()) return at::empty({0, output.logits.size(-1)}, at::kFloat);
  return output.logits.reshape({static_cast<int64_t>(logits_indices.size()), -1}).to(at::kFloat);
}

}  // namespace flotilla::worker
