#include "models/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"
#include "kernels/kernels.h"
#include "models/kernelize.h"

namespace flotilla::models {
namespace {

thread_local PagedKVCache* current_cache = nullptr;

// Defaults of the typed configs for keys a config.json may omit (the model files' FromJson).
struct SpecDefaults {
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  std::optional<int64_t> num_key_value_heads;  // nullopt: num_attention_heads
  int64_t hidden_size = 4096;
  std::optional<int64_t> head_dim;  // nullopt: hidden_size / num_attention_heads
};

SpecDefaults DefaultsFor(const std::string& model_type) {
  SpecDefaults defaults;
  if (model_type == "gemma2" || model_type == "gemma3_text") {
    defaults = {.num_hidden_layers = 26, .num_attention_heads = 8, .num_key_value_heads = 4, .hidden_size = 2304,
                .head_dim = 256};
  } else if (model_type == "mistral") {
    defaults.num_key_value_heads = 8;
  } else if (model_type == "qwen3") {
    defaults.head_dim = 128;
  } else if (model_type == "phi3") {
    defaults.hidden_size = 3072;
  } else if (model_type == "gpt2") {
    defaults = {.num_hidden_layers = 12, .num_attention_heads = 12, .hidden_size = 768};
  }
  return defaults;
}

std::optional<int64_t> JsonInt(const nlohmann::json& json, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    auto found = json.find(key);
    if (found != json.end() && found->is_number_integer()) return found->get<int64_t>();
  }
  return std::nullopt;
}

// One sequence's new tokens against its whole (gathered) context, with sdpa, or eager's math when
// softcapping (sdpa has none). Writes [query_length, heads, head_dim] into `output` at its tokens.
// Note [Long prompt chunks go to sdpa]: the builtin kernel computes each query token on its own —
// right for decode, where a token reads its keys once, but a prompt chunk of many tokens re-reads
// the same keys per token and does its products as dot products. From this many query tokens a
// sequence's chunk is gathered and run through sdpa (ATen's flash attention, tiled as GEMMs)
// instead; the kernel keeps the decode tokens and short chunks of the same step.
constexpr int64_t kMinimumQueryLengthForSdpa = 32;

void ChunkAttention(const at::Tensor& query, const at::Tensor& key_pool, const at::Tensor& value_pool,
                    const PagedKVCache::Step& step, size_t sequence_index, const AttentionArguments& arguments,
                    at::Tensor& output) {
  const PagedSequence& sequence = step.batch.sequences[sequence_index];
  const int64_t num_key_value_heads = key_pool.size(2);
  const int64_t head_dim = key_pool.size(3);
  const int64_t groups = query.size(1) / num_key_value_heads;
  const int64_t query_start = step.query_starts[sequence_index];
  const int64_t past_length = sequence.context_length - sequence.query_length;
  at::Tensor slots = step.context_slots.narrow(0, step.context_starts[sequence_index], sequence.context_length);
  auto gather = [&](const at::Tensor& pool) {
    at::Tensor context = pool.view({-1, num_key_value_heads, head_dim}).index_select(0, slots);
    return RepeatKeyValue(context.permute({1, 0, 2}).unsqueeze(0), groups);  // [1, heads, context, head_dim]
  };
  at::Tensor keys = gather(key_pool);
  at::Tensor values = gather(value_pool);
  at::Tensor queries = query.narrow(2, query_start, sequence.query_length);

  const bool window_bites =
      arguments.sliding_window.has_value() && sequence.context_length > *arguments.sliding_window;
  std::optional<at::Tensor> allowed;
  if (past_length > 0 || window_bites || arguments.softcap.has_value()) {
    auto index_options = at::TensorOptions().dtype(at::kLong).device(query.device());
    at::Tensor query_positions = at::arange(sequence.query_length, index_options).add_(past_length).view({-1, 1});
    at::Tensor key_positions = at::arange(sequence.context_length, index_options).view({1, -1});
    at::Tensor mask = key_positions <= query_positions;
    if (arguments.sliding_window.has_value()) {
      mask = mask.logical_and(key_positions > query_positions - *arguments.sliding_window);
    }
    allowed = mask;
  }
  at::Tensor result;
  if (arguments.softcap.has_value()) {
    at::Tensor scores = at::matmul(queries, keys.transpose(2, 3)) * arguments.scaling;
    scores = at::tanh(scores / *arguments.softcap) * *arguments.softcap;
    scores = scores.masked_fill(allowed->logical_not(), -std::numeric_limits<double>::infinity());
    at::Tensor weights = at::softmax(scores, -1, at::kFloat).to(queries.scalar_type());
    result = at::matmul(weights, values);
  } else {
    result = at::scaled_dot_product_attention(queries, keys, values, allowed, 0.0,
                                              /*is_causal=*/!allowed.has_value(), arguments.scaling);
  }
  output.narrow(1, query_start, sequence.query_length).copy_(result.transpose(1, 2));
}

struct RegisterPaged {
  RegisterPaged() {
    RegisterAttentionBackend("paged", {PagedAttentionForward, MaskFormat::kBoolean, /*skips_causal_mask=*/true,
                                       /*reads_paged_cache=*/true});
  }
} register_paged;

}  // namespace

absl::StatusOr<KVCacheSpec> KVCacheSpecFromConfig(const PretrainedConfig& config, int64_t tensor_parallel_size) {
  const nlohmann::json& json = config.source;
  const SpecDefaults defaults = DefaultsFor(config.model_type);
  // GPT-2's config reads n_layer / n_head / n_embd first and has no grouped-query attention.
  const bool gpt2 = config.model_type == "gpt2";
  KVCacheSpec spec;
  spec.num_layers = (gpt2 ? JsonInt(json, {"n_layer", "num_hidden_layers"}) : JsonInt(json, {"num_hidden_layers"}))
                        .value_or(defaults.num_hidden_layers);
  const int64_t heads = (gpt2 ? JsonInt(json, {"n_head", "num_attention_heads"}) : JsonInt(json, {"num_attention_heads"}))
                            .value_or(defaults.num_attention_heads);
  const int64_t hidden = (gpt2 ? JsonInt(json, {"n_embd", "hidden_size"}) : JsonInt(json, {"hidden_size"}))
                             .value_or(defaults.hidden_size);
  if (heads <= 0 || spec.num_layers <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KVCacheSpecFromConfig(", config.model_type,
                                                   "): expected positive layers and heads but got ",
                                                   spec.num_layers, " layers and ", heads, " heads"));
  }
  spec.num_key_value_heads = gpt2 ? heads
                                 : JsonInt(json, {"num_key_value_heads"}).value_or(
                                       defaults.num_key_value_heads.value_or(heads));
  spec.head_dim = gpt2 ? hidden / heads
                      : JsonInt(json, {"head_dim"}).value_or(defaults.head_dim.value_or(hidden / heads));
  if (tensor_parallel_size < 1 || spec.num_key_value_heads % tensor_parallel_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("KVCacheSpecFromConfig(", config.model_type,
                                                   "): num_key_value_heads (", spec.num_key_value_heads,
                                                   ") must be a multiple of tensor_parallel_size (",
                                                   tensor_parallel_size, ")"));
  }
  spec.num_key_value_heads /= tensor_parallel_size;
  return spec;
}

int64_t PagedBatch::num_tokens() const {
  int64_t total = 0;
  for (const PagedSequence& sequence : sequences) total += sequence.query_length;
  return total;
}

int64_t PagedBatch::num_context_tokens() const {
  int64_t total = 0;
  for (const PagedSequence& sequence : sequences) total += sequence.context_length;
  return total;
}

PagedKVCache::PagedKVCache(const KVCacheSpec& spec, int64_t num_blocks, int64_t block_size, at::ScalarType dtype,
                           at::Device device)
    : spec_(spec), num_blocks_(num_blocks), block_size_(block_size) {
  TORCH_CHECK(num_blocks > 0 && block_size > 0 && spec.num_layers > 0 && spec.num_key_value_heads > 0 &&
                  spec.head_dim > 0,
              "PagedKVCache: expected positive blocks, block size, layers, heads and head_dim but got num_blocks ",
              num_blocks, ", block_size ", block_size, ", layers ", spec.num_layers, ", key/value heads ",
              spec.num_key_value_heads, ", head_dim ", spec.head_dim);
  auto options = at::TensorOptions().dtype(dtype).device(device);
  for (int64_t layer = 0; layer < spec.num_layers; ++layer) {
    // Zeroed so a padded read of an unwritten slot can never produce NaN.
    key_pools_.push_back(at::zeros({num_blocks, block_size, spec.num_key_value_heads, spec.head_dim}, options));
    value_pools_.push_back(at::zeros({num_blocks, block_size, spec.num_key_value_heads, spec.head_dim}, options));
  }
}

int64_t PagedKVCache::BytesPerBlock(const KVCacheSpec& spec, int64_t block_size, at::ScalarType dtype) {
  return 2 * spec.num_layers * block_size * spec.num_key_value_heads * spec.head_dim *
         static_cast<int64_t>(c10::elementSize(dtype));
}

int64_t PagedKVCache::NumBlocksFor(int64_t budget_bytes, const KVCacheSpec& spec, int64_t block_size,
                                   at::ScalarType dtype) {
  const int64_t per_block = BytesPerBlock(spec, block_size, dtype);
  return per_block > 0 ? std::max<int64_t>(0, budget_bytes / per_block) : 0;
}

void PagedKVCache::SetAttentionImplementation(const std::string& name) {
  CheckAttentionImplementation(name);
  attention_implementation_ = name;
  returns_pools_ = GetAttentionBackend(name, AttentionFunction()).reads_paged_cache;
}

void PagedKVCache::BeginStep(const PagedBatch& batch) {
  TORCH_CHECK(!step_.has_value(), "ScopedPagedBatch: this PagedKVCache already has a current batch");
  Step step;
  step.batch = batch;
  std::vector<int64_t> write_slots, context_slots, token_sequence, token_position, context_sequence, context_position;
  int64_t query_start = 0;
  int64_t context_start = 0;
  for (size_t index = 0; index < batch.sequences.size(); ++index) {
    const PagedSequence& sequence = batch.sequences[index];
    TORCH_CHECK(sequence.query_length >= 1 && sequence.context_length >= sequence.query_length,
                "ScopedPagedBatch: sequence ", index, ": expected 1 <= query_length <= context_length but got ",
                "query_length ", sequence.query_length, " and context_length ", sequence.context_length);
    const int64_t needed_blocks = (sequence.context_length + block_size_ - 1) / block_size_;
    TORCH_CHECK(static_cast<int64_t>(sequence.block_table.size()) >= needed_blocks, "ScopedPagedBatch: sequence ",
                index, ": context_length ", sequence.context_length, " needs ", needed_blocks, " blocks of ",
                block_size_, " but the block table has ", sequence.block_table.size());
    for (int64_t position = 0; position < sequence.context_length; ++position) {
      const int64_t block = sequence.block_table[static_cast<size_t>(position / block_size_)];
      TORCH_CHECK(block >= 0 && block < num_blocks_, "ScopedPagedBatch: sequence ", index, ": block ", block,
                  " is out of range [0, ", num_blocks_, ")");
      const int64_t slot = block * block_size_ + position % block_size_;
      context_slots.push_back(slot);
      context_sequence.push_back(static_cast<int64_t>(index));
      context_position.push_back(position);
      if (position >= sequence.context_length - sequence.query_length) {
        write_slots.push_back(slot);
        token_sequence.push_back(static_cast<int64_t>(index));
        token_position.push_back(position);
      }
    }
    step.query_starts.push_back(query_start);
    step.context_starts.push_back(context_start);
    query_start += sequence.query_length;
    context_start += sequence.context_length;
  }
  const at::Device device = key_pools_.front().device();
  auto to_tensor = [&](const std::vector<int64_t>& values) {
    return at::tensor(values, at::TensorOptions().dtype(at::kLong)).to(device);
  };
  step.write_slots = to_tensor(write_slots);
  step.write_slot_list = std::move(write_slots);
  step.context_slots = to_tensor(context_slots);
  step.token_sequence = to_tensor(token_sequence);
  step.token_position = to_tensor(token_position);
  step.context_sequence = to_tensor(context_sequence);
  step.context_position = to_tensor(context_position);
  step_ = std::move(step);
}

namespace {

// Note [Cache writes on CPU]: a decode step writes one token's keys and values per layer, a few
// hundred bytes, and `index_copy_` of the transposed states took about 9 µs of every layer of a
// SmolLM2 batch-1 decode step (dispatch, a TensorIterator over strided views, the slot tensor
// checked), 2% of the step. States already in the pool's dtype and on the CPU are copied row by
// row (one head_dim row per token and head) into their slots instead, from the host-side slot list
// BeginStep keeps beside the tensor: the whole Update, checks included, 3.6 µs. Returns false where
// it does not apply (nothing written: the caller's index_copy_ does it).
bool CopyRowsIntoSlots(const at::Tensor& states, const at::Tensor& pool, const std::vector<int64_t>& slots) {
  if (!states.device().is_cpu() || !pool.device().is_cpu() || states.scalar_type() != pool.scalar_type() ||
      states.stride(3) != 1 || !pool.is_contiguous()) {
    return false;
  }
  const int64_t heads = states.size(1);
  const int64_t head_dim = states.size(3);
  const int64_t element_size = static_cast<int64_t>(states.element_size());
  const auto* source = static_cast<const char*>(states.const_data_ptr());
  auto* destination = static_cast<char*>(pool.mutable_data_ptr());  // [slots, heads, head_dim]
  const int64_t head_stride = states.stride(1) * element_size;
  const int64_t token_stride = states.stride(2) * element_size;
  const int64_t row_bytes = head_dim * element_size;
  for (size_t token = 0; token < slots.size(); ++token) {
    char* slot_start = destination + slots[token] * heads * row_bytes;
    const char* token_start = source + static_cast<int64_t>(token) * token_stride;
    for (int64_t head = 0; head < heads; ++head) {
      std::memcpy(slot_start + head * row_bytes, token_start + head * head_stride, static_cast<size_t>(row_bytes));
    }
  }
  return true;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> PagedKVCache::Update(const at::Tensor& key_states, const at::Tensor& value_states,
                                                       int64_t layer_idx) {
  TORCH_CHECK(step_.has_value(), "PagedKVCache::Update: no current batch (run the forward inside a ScopedPagedBatch)");
  TORCH_CHECK(layer_idx >= 0 && layer_idx < spec_.num_layers, "PagedKVCache::Update: layer ", layer_idx,
              " is out of range [0, ", spec_.num_layers, ")");
  const int64_t num_tokens = step_->write_slots.size(0);
  for (const at::Tensor* states : {&key_states, &value_states}) {
    TORCH_CHECK(states->dim() == 4 && states->size(0) == 1 && states->size(1) == spec_.num_key_value_heads &&
                    states->size(2) == num_tokens && states->size(3) == spec_.head_dim,
                "PagedKVCache::Update(layer ", layer_idx, "): expected states [1, ", spec_.num_key_value_heads, ", ",
                num_tokens, ", ", spec_.head_dim, "] (one batch row of the step's packed tokens) but got ",
                states->sizes());
  }
  const size_t layer = static_cast<size_t>(layer_idx);
  const bool copied = CopyRowsIntoSlots(key_states, key_pools_[layer], step_->write_slot_list) &&
                      CopyRowsIntoSlots(value_states, value_pools_[layer], step_->write_slot_list);
  if (copied && returns_pools_) return {key_pools_[layer], value_pools_[layer]};
  at::Tensor flat_keys = key_pools_[layer].view({-1, spec_.num_key_value_heads, spec_.head_dim});
  at::Tensor flat_values = value_pools_[layer].view({-1, spec_.num_key_value_heads, spec_.head_dim});
  if (!copied) {
    const at::ScalarType dtype = flat_keys.scalar_type();
    flat_keys.index_copy_(0, step_->write_slots, key_states[0].transpose(0, 1).to(dtype));
    flat_values.index_copy_(0, step_->write_slots, value_states[0].transpose(0, 1).to(dtype));
  }
  if (returns_pools_) return {key_pools_[layer], value_pools_[layer]};
  // transformers' continuous batching "index" path: each sequence's whole context, packed.
  return {flat_keys.index_select(0, step_->context_slots).permute({1, 0, 2}).unsqueeze(0),
          flat_values.index_select(0, step_->context_slots).permute({1, 0, 2}).unsqueeze(0)};
}

int64_t PagedKVCache::GetSeqLength(int64_t /*layer_idx*/) const {
  if (!step_.has_value()) return 0;
  return step_->context_slots.size(0) - step_->write_slots.size(0);
}

ScopedPagedBatch::ScopedPagedBatch(PagedKVCache& cache, const PagedBatch& batch)
    : cache_(&cache), previous_(current_cache) {
  cache.BeginStep(batch);
  current_cache = &cache;
}

ScopedPagedBatch::~ScopedPagedBatch() {
  cache_->EndStep();
  current_cache = previous_;
}

const PagedBatch* CurrentPagedBatch() {
  if (current_cache == nullptr || current_cache->current_step() == nullptr) return nullptr;
  return &current_cache->current_step()->batch;
}

PagedKVCache* CurrentPagedKVCache() { return current_cache; }

at::Tensor PagedBlockDiagonalMask(const PagedKVCache::Step& step, std::optional<int64_t> sliding_window,
                                  at::Device device) {
  at::Tensor query_sequence = step.token_sequence.to(device).view({-1, 1});
  at::Tensor query_position = step.token_position.to(device).view({-1, 1});
  at::Tensor key_sequence = step.context_sequence.to(device).view({1, -1});
  at::Tensor key_position = step.context_position.to(device).view({1, -1});
  at::Tensor allowed = query_sequence.eq(key_sequence).logical_and_(key_position <= query_position);
  if (sliding_window.has_value()) allowed.logical_and_(key_position > query_position - *sliding_window);
  return allowed.view({1, 1, allowed.size(0), allowed.size(1)});
}

std::pair<at::Tensor, at::Tensor> PagedAttentionForward(const at::Tensor& query, const at::Tensor& key,
                                                        const at::Tensor& value,
                                                        const std::optional<at::Tensor>& /*attention_mask*/,
                                                        const AttentionArguments& arguments) {
  PagedKVCache* cache = CurrentPagedKVCache();
  TORCH_CHECK(cache != nullptr && cache->current_step() != nullptr,
              "paged attention: no current batch (run the forward inside a ScopedPagedBatch)");
  const PagedKVCache::Step& step = *cache->current_step();
  const int64_t num_tokens = step.write_slots.size(0);
  TORCH_CHECK(query.dim() == 4 && query.size(0) == 1 && query.size(2) == num_tokens,
              "paged attention: expected query [1, heads, ", num_tokens, ", head_dim] but got ", query.sizes());
  TORCH_CHECK(key.dim() == 4 && key.size(0) == cache->num_blocks() && key.size(1) == cache->block_size() &&
                  value.sizes() == key.sizes(),
              "paged attention: expected key and value to be a layer's pools [", cache->num_blocks(), ", ",
              cache->block_size(), ", heads, head_dim] but got ", key.sizes(), " and ", value.sizes(),
              " (was the PagedKVCache told SetAttentionImplementation(\"paged\")?)");
  TORCH_CHECK(key.scalar_type() == query.scalar_type(), "paged attention: the cache's dtype ", key.scalar_type(),
              " differs from the model's ", query.scalar_type());
  const int64_t num_heads = query.size(1);
  const int64_t head_dim = query.size(3);
  TORCH_CHECK(key.size(3) == head_dim && num_heads % key.size(2) == 0, "paged attention: query heads ", num_heads,
              " x ", head_dim, " do not fit key/value heads ", key.size(2), " x ", key.size(3));

  at::Tensor output = at::empty({1, num_tokens, num_heads, head_dim}, query.options());
  // PagedAttention=builtin (the default): the decode tokens and short prompt chunks of every
  // sequence in one kernel call that reads the blocks in place (kernels::PagedAttention: the CPU
  // kernel, or the CUDA one where kernels/cuda is loaded), long chunks through sdpa (Note [Long
  // prompt chunks go to sdpa]). eager, or a device the kernel does not run on: each sequence's
  // context gathered, then sdpa.
  const bool kernel_runs_here =
      query.device().is_cpu() ||
      (query.device().is_cuda() && kernels::HasCudaKernels() && head_dim <= kernels::kCudaPagedAttentionMaxHeadDim);
  const bool builtin = CurrentLayerKernels().builtin_paged_attention && kernel_runs_here;
  CountKernelForward(KernelLayer::kPagedAttention, builtin);
  if (!builtin) {
    for (size_t index = 0; index < step.batch.sequences.size(); ++index) {
      ChunkAttention(query, key, value, step, index, arguments, output);
    }
    return {output, at::Tensor()};
  }
  std::vector<kernels::PagedAttentionToken> tokens;
  tokens.reserve(static_cast<size_t>(num_tokens));
  for (size_t index = 0; index < step.batch.sequences.size(); ++index) {
    const PagedSequence& sequence = step.batch.sequences[index];
    if (sequence.query_length >= kMinimumQueryLengthForSdpa) {
      ChunkAttention(query, key, value, step, index, arguments, output);
      continue;
    }
    const int64_t first_position = sequence.context_length - sequence.query_length;
    for (int64_t offset = 0; offset < sequence.query_length; ++offset) {
      const int64_t position = first_position + offset;
      const int64_t first_key =
          arguments.sliding_window.has_value() ? std::max<int64_t>(0, position - *arguments.sliding_window + 1) : 0;
      tokens.push_back({step.query_starts[index] + offset, position, first_key, sequence.block_table.data()});
    }
  }
  if (tokens.empty()) return {output, at::Tensor()};
  const at::Tensor query_tokens = query[0].transpose(0, 1).contiguous();  // [T, heads, head_dim]
  at::Tensor output_tokens = output[0];  // contiguous [T, heads, head_dim]
  if (query.device().is_cpu()) {
    kernels::PagedAttention(query_tokens, key.contiguous(), value.contiguous(), output_tokens, tokens,
                            arguments.scaling, arguments.softcap);
    return {output, at::Tensor()};
  }
  // On a GPU the tokens reach the device once per step (and sliding window), not once per layer.
  const int64_t window_key = arguments.sliding_window.value_or(-1);
  auto plan = step.device_plans.find(window_key);
  if (plan == step.device_plans.end()) {
    plan = step.device_plans
               .emplace(window_key, kernels::PlanPagedAttention(tokens, cache->block_size(), query.device()))
               .first;
  }
  kernels::PagedAttentionFromPlan(query_tokens, key.contiguous(), value.contiguous(), output_tokens, plan->second,
                                  arguments.scaling, arguments.softcap);
  return {output, at::Tensor()};
}

}  // namespace flotilla::models
