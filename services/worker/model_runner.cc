#include "services/worker/model_runner.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include <c10/core/InferenceMode.h>
#include <prometheus/gauge.h>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "services/common/logging.h"
#include "services/common/metrics.h"

namespace flotilla::worker {

namespace {

// The messages rank 0 broadcasts to its followers: a header [kind, payload length], then for a step
// one int64 payload (see EncodeStep).
constexpr int64_t kStepMessage = 1;
constexpr int64_t kKeepAliveMessage = 2;
constexpr int64_t kShutdownMessage = 3;

// Rank 0 idles at most this long between messages, far below any collective timeout.
constexpr auto kKeepAliveInterval = std::chrono::seconds(1);
constexpr auto kMemoryReportInterval = std::chrono::seconds(2);

int64_t ResidentMemoryBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size_pages = 0;
  int64_t resident_pages = 0;
  statm >> size_pages >> resident_pages;
  return resident_pages * sysconf(_SC_PAGESIZE);
}

prometheus::Family<prometheus::Gauge>& RankMemoryGauges() {
  static auto& family = prometheus::BuildGauge()
                            .Name("flotilla_worker_rank_resident_memory_bytes")
                            .Help("Resident memory of each rank of this worker's tensor-parallel group")
                            .Register(MetricsRegistry());
  return family;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(std::shared_ptr<models::PreTrainedModel> model,
                                                                 const ModelRunnerOptions& options) {
  absl::StatusOr<models::KVCacheSpec> spec = models::KVCacheSpecFromConfig(model->config(), options.key_value_head_shards);
  if (!spec.ok()) return spec.status();
  const int64_t bytes_per_block = models::PagedKVCache::BytesPerBlock(*spec, options.block_size, options.kv_dtype);
  const int64_t budget = options.kv_cache_memory_bytes > 0 ? options.kv_cache_memory_bytes : int64_t{1} << 30;
  const int64_t num_blocks = budget / bytes_per_block;
  if (num_blocks < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--kv_cache_memory ", budget, " bytes holds no KV block: one block of ",
                                                   options.block_size, " tokens takes ", bytes_per_block, " bytes"));
  }
  auto cache = std::make_unique<models::PagedKVCache>(*spec, num_blocks, options.block_size, options.kv_dtype,
                                                      options.device);
  // The cache hands the attention function what it reads: the pools (paged) or packed contexts.
  cache->SetAttentionImplementation(model->attention_implementation());
  return std::unique_ptr<ModelRunner>(new ModelRunner(std::move(model), std::move(cache), num_blocks, options.block_size,
                                                      bytes_per_block, options.tensor_parallel_group, options.device));
}

ModelRunner::ModelRunner(std::shared_ptr<models::PreTrainedModel> model, std::unique_ptr<models::PagedKVCache> cache,
                         int64_t num_blocks, int64_t block_size, int64_t bytes_per_block,
                         std::shared_ptr<models::TensorParallelGroup> group, c10::Device device)
    : model_(std::move(model)),
      cache_(std::move(cache)),
      num_blocks_(num_blocks),
      block_size_(block_size),
      bytes_per_block_(bytes_per_block),
      group_(std::move(group)),
      device_(device),
      last_message_(std::chrono::steady_clock::now()) {}

at::Tensor ModelRunner::Execute(const std::vector<RunnerSequence>& sequences) {
  int64_t total_tokens = 0;
  for (const RunnerSequence& sequence : sequences) total_tokens += static_cast<int64_t>(sequence.token_ids.size());
  TORCH_INTERNAL_ASSERT(total_tokens > 0, "ModelRunner::Execute: a step with no tokens");

  PackedStep step;
  step.input_ids = at::empty({1, total_tokens}, at::kLong);
  step.position_ids = at::empty({1, total_tokens}, at::kLong);
  int64_t* input_data = step.input_ids.data_ptr<int64_t>();
  int64_t* position_data = step.position_ids.data_ptr<int64_t>();
  step.batch.sequences.reserve(sequences.size());
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
    step.batch.sequences.push_back(std::move(paged));
    offset += length;
    if (sequence.samples) step.logits_indices.push_back(offset - 1);
  }
  if (!group_) {
    PublishMemory();
    return Forward(step);
  }
  try {
    PublishMemory();
    Send(kStepMessage, &step);
    return Forward(step);
  } catch (const std::exception& error) {
    AbandonGroup("a step", error);
  }
}

at::Tensor ModelRunner::Forward(const PackedStep& step) {
  models::ForwardInputs inputs;
  inputs.input_ids = step.input_ids.to(device_);
  inputs.position_ids = step.position_ids.to(device_);
  inputs.past_key_values = cache_.get();
  if (step.logits_indices.empty()) {
    inputs.logits_to_keep = 1;  // nothing samples (every sequence is mid-prompt): keep the head cheap
  } else {
    inputs.logits_indices = at::tensor(step.logits_indices, at::kLong).to(device_);
  }
  models::ScopedPagedBatch scope(*cache_, step.batch);
  models::ModelOutput output = model_->Forward(inputs);
  if (step.logits_indices.empty()) return at::empty({0, output.logits.size(-1)}, at::kFloat);
  return output.logits.reshape({static_cast<int64_t>(step.logits_indices.size()), -1}).to(at::kCPU, at::kFloat);
}

// Payload of a step: [sequences, tokens, logits, then per sequence query_length, context_length,
// block count, blocks..., then input ids, positions, logits indices].
void ModelRunner::Send(int64_t kind, const PackedStep* step) {
  std::vector<int64_t> payload;
  if (step != nullptr) {
    const int64_t tokens = step->input_ids.size(1);
    payload = {static_cast<int64_t>(step->batch.sequences.size()), tokens,
               static_cast<int64_t>(step->logits_indices.size())};
    for (const models::PagedSequence& sequence : step->batch.sequences) {
      payload.push_back(sequence.query_length);
      payload.push_back(sequence.context_length);
      payload.push_back(static_cast<int64_t>(sequence.block_table.size()));
      payload.insert(payload.end(), sequence.block_table.begin(), sequence.block_table.end());
    }
    const int64_t* ids = step->input_ids.data_ptr<int64_t>();
    const int64_t* positions = step->position_ids.data_ptr<int64_t>();
    payload.insert(payload.end(), ids, ids + tokens);
    payload.insert(payload.end(), positions, positions + tokens);
    payload.insert(payload.end(), step->logits_indices.begin(), step->logits_indices.end());
  }
  at::Tensor header = at::tensor({kind, static_cast<int64_t>(payload.size())}, at::kLong);
  group_->Broadcast(header, 0);
  if (!payload.empty()) {
    at::Tensor body = at::from_blob(payload.data(), {static_cast<int64_t>(payload.size())}, at::kLong);
    group_->Broadcast(body, 0);
  }
  last_message_ = std::chrono::steady_clock::now();
}

void ModelRunner::KeepAlive() {
  if (!group_ || shut_down_ || std::chrono::steady_clock::now() - last_message_ < kKeepAliveInterval) return;
  try {
    PublishMemory();
    Send(kKeepAliveMessage, nullptr);
  } catch (const std::exception& error) {
    AbandonGroup("a keep-alive", error);
  }
}

void ModelRunner::Shutdown() {
  if (!group_ || shut_down_) return;
  shut_down_ = true;
  try {
    Send(kShutdownMessage, nullptr);
  } catch (const std::exception& error) {
    LogWarning("the tensor-parallel followers did not receive the shutdown", {{"error", error.what()}});
  }
}

absl::Status ModelRunner::FollowSteps() {
  if (!group_ || group_->rank() == 0) return absl::FailedPreconditionError("FollowSteps runs on ranks 1..N-1 of a group");
  c10::InferenceMode inference_mode;  // as rank 0's engine thread
  try {
    while (true) {
      at::Tensor header = at::empty({2}, at::kLong);
      group_->Broadcast(header, 0);
      const int64_t kind = header[0].item<int64_t>();
      const int64_t length = header[1].item<int64_t>();
      if (kind == kShutdownMessage) return absl::OkStatus();
      PublishMemory();
      if (kind == kKeepAliveMessage) continue;
      TORCH_CHECK(kind == kStepMessage && length >= 3, "FollowSteps: unknown message kind ", kind);
      at::Tensor body = at::empty({length}, at::kLong);
      group_->Broadcast(body, 0);
      const int64_t* data = body.data_ptr<int64_t>();
      const int64_t num_sequences = data[0];
      const int64_t tokens = data[1];
      const int64_t num_logits = data[2];
      int64_t at = 3;
      PackedStep step;
      step.batch.sequences.resize(num_sequences);
      for (models::PagedSequence& sequence : step.batch.sequences) {
        sequence.query_length = data[at++];
        sequence.context_length = data[at++];
        const int64_t blocks = data[at++];
        sequence.block_table.assign(data + at, data + at + blocks);
        at += blocks;
      }
      step.input_ids = body.narrow(0, at, tokens).clone().view({1, tokens});
      step.position_ids = body.narrow(0, at + tokens, tokens).clone().view({1, tokens});
      step.logits_indices.assign(data + at + 2 * tokens, data + at + 2 * tokens + num_logits);
      Forward(step);
    }
  } catch (const std::exception& error) {
    return absl::UnavailableError(absl::StrCat("tensor-parallel rank ", group_->rank(),
                                               " lost its group while following steps: ", error.what()));
  }
}

void ModelRunner::PublishMemory() {
  const auto now = std::chrono::steady_clock::now();
  if (now - last_memory_report_ < kMemoryReportInterval) return;
  last_memory_report_ = now;
  const int64_t resident = ResidentMemoryBytes();
  if (!group_) {
    RankMemoryGauges().Add({{"rank", "0"}}).Set(static_cast<double>(resident));
    return;
  }
  const auto key = [](int64_t rank) { return absl::StrCat("flotilla/rank/", rank, "/resident_memory_bytes"); };
  group_->SetValue(key(group_->rank()), std::to_string(resident));
  if (group_->rank() != 0) return;
  for (int64_t rank = 0; rank < group_->world_size(); ++rank) {
    int64_t value = 0;
    if (absl::SimpleAtoi(group_->GetValue(key(rank)), &value)) {
      RankMemoryGauges().Add({{"rank", std::to_string(rank)}}).Set(static_cast<double>(value));
    }
  }
}

void ModelRunner::AbandonGroup(const std::string& operation, const std::exception& error) {
  LogError("the tensor-parallel group broke; this rank exits so that its agent restarts the group",
           {{"operation", operation}, {"rank", group_->rank()}, {"error", error.what()}});
  std::_Exit(kExitTensorParallelGroupBroken);
}

}  // namespace flotilla::worker
