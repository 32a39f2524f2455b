// models_bench MODEL_DIR [--threads N] [--prompt-length 512] [--decode-steps 32] [--kernels MAPPING]
// [--dtype float32|bfloat16] [--attention sdpa|paged|eager] [--only decode1|decode1-paged]: load time,
// prefill tokens/s, decode tokens/s at batch 1 and 8 (the model's own cache and attention, as
// `flotilla generate` runs) and at batch 1 on the serving path (a worker's paged cache and paged
// attention), peak RSS after load, the read-bandwidth probe, as one JSON line.
// tools/bench/models_smollm2.py runs it beside transformers.
#include <malloc.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "models/auto.h"
#include "models/kernelize.h"
#include "models/paged_attention.h"
#include "models/safetensors.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// VmHWM: the peak resident set of this process image (ru_maxrss would include the parent's peak,
// inherited across fork + exec).
double PeakRssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) * 1024.0;
  }
  return 0;
}

using flotilla::models::DynamicCache;
using flotilla::models::ForwardInputs;
using flotilla::models::PreTrainedModel;

// Prefill `prompt_length` tokens for `batch` rows, then time `steps` greedy decode steps.
double DecodeTokensPerSecond(PreTrainedModel& model, int64_t batch, int64_t prompt_length, int64_t steps) {
  c10::InferenceMode inference_mode;
  DynamicCache cache;
  cache.Reserve(batch, prompt_length + steps + 1);
  ForwardInputs inputs;
  inputs.input_ids = at::randint(3, 1000, {batch, prompt_length}, at::kLong);
  inputs.past_key_values = &cache;
  inputs.logits_to_keep = 1;
  at::Tensor next = model.Forward(inputs).logits.select(1, -1).argmax(-1).view({batch, 1});
  auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) {
    inputs.input_ids = next;
    next = model.Forward(inputs).logits.select(1, -1).argmax(-1).view({batch, 1});
  }
  return static_cast<double>(batch * steps) / Seconds(start);
}

// The worker's batch-1 decode: one sequence in a packed row with its position ids, keys and values
// in a paged pool read through its block table, the logits of its last token (ModelRunner::Forward).
double PagedDecodeTokensPerSecond(PreTrainedModel& model, int64_t prompt_length, int64_t steps) {
  using flotilla::models::PagedKVCache;
  c10::InferenceMode inference_mode;
  const int64_t block_size = 16;
  const auto spec = flotilla::models::KVCacheSpecFromConfig(model.config());
  TORCH_CHECK(spec.ok(), std::string(spec.status().message()));
  const at::ScalarType dtype = model.parameters().front().scalar_type();
  PagedKVCache cache(*spec, PagedKVCache::NumBlocksFor(int64_t{1} << 30, *spec, block_size, dtype), block_size, dtype,
                     at::kCPU);
  cache.SetAttentionImplementation(model.attention_implementation());
  flotilla::models::PagedBatch batch;
  batch.sequences.resize(1);
  flotilla::models::PagedSequence& sequence = batch.sequences[0];
  for (int64_t block = 0; block * block_size < prompt_length + steps + 1; ++block) sequence.block_table.push_back(block);
  const auto forward = [&](const at::Tensor& input_ids, int64_t start) {
    const int64_t length = input_ids.size(1);
    sequence.query_length = length;
    sequence.context_length = start + length;
    ForwardInputs inputs;
    inputs.input_ids = input_ids;
    inputs.position_ids = at::arange(start, start + length, at::kLong).view({1, length});
    inputs.past_key_values = &cache;
    inputs.logits_indices = at::tensor(std::vector<int64_t>{length - 1}, at::kLong);
    flotilla::models::ScopedPagedBatch scope(cache, batch);
    return model.Forward(inputs).logits.reshape({1, -1}).argmax(-1).view({1, 1});
  };
  at::Tensor next = forward(at::randint(3, 1000, {1, prompt_length}, at::kLong), 0);
  auto start = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < steps; ++step) next = forward(next, prompt_length + step);
  return static_cast<double>(steps) / Seconds(start);
}

// The best read bandwidth a tuned loop reaches here: 1 GiB on 2 MiB pages (as the weights are:
// Note [Weights on huge pages]) summed by every intra-op thread, AVX-512 where the CPU has it
// (four independent 8-lane sums, so the adds never wait on each other), best of 5. What batch-1
// decode, which reads every weight once per token, can at best stream.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) uint64_t SumWordsAvx512(const uint64_t* words, int64_t count) {
  __m512i sums[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    for (int lane = 0; lane < 4; ++lane) {
      sums[lane] = _mm512_add_epi64(sums[lane], _mm512_loadu_si512(words + i + 8 * lane));
    }
  }
  uint64_t sum = _mm512_reduce_add_epi64(
      _mm512_add_epi64(_mm512_add_epi64(sums[0], sums[1]), _mm512_add_epi64(sums[2], sums[3])));
  for (; i < count; ++i) sum += words[i];
  return sum;
}
#endif

uint64_t SumWords(const uint64_t* words, int64_t count) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx512f")) return SumWordsAvx512(words, count);
#endif
  uint64_t sum = 0;
  for (int64_t i = 0; i < count; ++i) sum += words[i];
  return sum;
}

double ReadBandwidth() {
  const int64_t words = (int64_t{1} << 30) / 8;
  at::Tensor buffer = flotilla::models::EmptyBytesOnHugePages(words * 8);
  auto* data = static_cast<uint64_t*>(buffer.data_ptr());
  std::fill(data, data + words, uint64_t{1});
  double best = 0;
  for (int repeat = 0; repeat < 5; ++repeat) {
    std::vector<uint64_t> sums(static_cast<size_t>(at::get_num_threads()) + 1, 0);
    auto start = std::chrono::steady_clock::now();
    at::parallel_for(0, words, words / std::max(1, at::get_num_threads()), [&](int64_t begin, int64_t end) {
      sums[static_cast<size_t>(at::get_thread_num())] += SumWords(data + begin, end - begin);
    });
    const double seconds = Seconds(start);
    uint64_t total = 0;
    for (uint64_t sum : sums) total += sum;
    if (total != static_cast<uint64_t>(words)) std::fprintf(stderr, "read probe: wrong sum\n");
    best = std::max(best, static_cast<double>(words * 8) / seconds);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: models_bench MODEL_DIR [--threads N] [--prompt-length N] [--decode-steps N]\n");
    return 2;
  }
  int64_t threads = 0, prompt_length = 512, decode_steps = 32;
  std::string kernels, dtype = "float32", only, attention;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--kernels")) kernels = argv[i + 1];
    if (!std::strcmp(argv[i], "--dtype")) dtype = argv[i + 1];
    if (!std::strcmp(argv[i], "--attention")) attention = argv[i + 1];
    // --only decode1: just the batch-1 decode loop (for a profiler).
    if (!std::strcmp(argv[i], "--only")) only = argv[i + 1];
    if (!std::strcmp(argv[i], "--threads")) threads = std::stoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--prompt-length")) prompt_length = std::stoll(argv[i + 1]);
    if (!std::strcmp(argv[i], "--decode-steps")) decode_steps = std::stoll(argv[i + 1]);
  }
  // As the worker (services/worker/worker_main.cc): freed activations stay in the heap for reuse,
  // so neither side of a comparison pays page faults a serving process does not.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  auto start = std::chrono::steady_clock::now();
  // The --kernels mapping of the worker (models/kernelize.h); builtin and eager only here.
  auto layer_kernels = flotilla::models::ResolveLayerKernels(kernels);
  if (!layer_kernels.ok()) {
    std::fprintf(stderr, "%s\n", std::string(layer_kernels.status().message()).c_str());
    return 2;
  }
  flotilla::models::InstallLayerKernels(*layer_kernels);
  flotilla::models::LoadOptions load_options;
  load_options.dtype = dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
  load_options.attn_implementation = attention;
  auto model = flotilla::models::FromPretrained(argv[1], load_options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  const double load_seconds = Seconds(start);
  const double rss_after_load = PeakRssBytes();
  double weight_bytes = 0;
  std::set<const void*> seen;  // tied weights (lm_head = embed_tokens) count once
  for (const auto& parameter : (*model)->parameters()) {
    if (seen.insert(parameter.data_ptr()).second) weight_bytes += parameter.numel() * parameter.element_size();
  }

  nlohmann::json result = {{"threads", at::get_num_threads()}, {"load_seconds", load_seconds},
                           {"peak_rss_after_load_bytes", rss_after_load}, {"weight_bytes", weight_bytes}};
  if (only == "decode1") {
    result["decode_batch1_tokens_per_second"] = DecodeTokensPerSecond(**model, 1, prompt_length, decode_steps);
    std::printf("%s\n", result.dump().c_str());
    return 0;
  }
  // --only decode1-paged: the same loop through the worker's paged cache and packed inputs.
  if (only == "decode1-paged") {
    // (the paged attention function runs only inside a paged batch)
    if (attention != "paged") {
      result["decode_batch1_tokens_per_second"] = DecodeTokensPerSecond(**model, 1, prompt_length, decode_steps);
    }
    result["paged_decode_batch1_tokens_per_second"] = PagedDecodeTokensPerSecond(**model, prompt_length, decode_steps);
    std::printf("%s\n", result.dump().c_str());
    return 0;
  }
  {
    c10::InferenceMode inference_mode;
    ForwardInputs inputs;
    inputs.input_ids = at::randint(3, 1000, {1, prompt_length}, at::kLong);
    inputs.logits_to_keep = 1;
    (*model)->Forward(inputs);  // warm-up
    // The median of three: one forward is a fraction of a second, at the mercy of a shared machine.
    std::vector<double> rates;
    for (int repeat = 0; repeat < 3; ++repeat) {
      auto prefill_start = std::chrono::steady_clock::now();
      (*model)->Forward(inputs);
      rates.push_back(static_cast<double>(prompt_length) / Seconds(prefill_start));
    }
    std::sort(rates.begin(), rates.end());
    result["prefill_tokens_per_second"] = rates[1];
  }
  DecodeTokensPerSecond(**model, 1, 16, 4);  // warm-up
  result["decode_batch1_tokens_per_second"] = DecodeTokensPerSecond(**model, 1, 16, decode_steps);
  result["decode_batch8_tokens_per_second"] = DecodeTokensPerSecond(**model, 8, 16, decode_steps);
  // The serving path: what a worker runs for one sequence (the paged cache and the paged attention
  // function, which calls kernels::PagedAttention under PagedAttention=builtin), same prompt and steps.
  if (attention.empty() || attention == "paged") {
    const std::string loaded_attention = (*model)->attention_implementation();
    (*model)->SetAttentionImplementation("paged");
    PagedDecodeTokensPerSecond(**model, 16, 4);  // warm-up
    result["paged_decode_batch1_tokens_per_second"] = PagedDecodeTokensPerSecond(**model, 16, decode_steps);
    (*model)->SetAttentionImplementation(loaded_attention);
  }
  result["peak_rss_end_bytes"] = PeakRssBytes();
  result["read_bandwidth_bytes_per_second"] = ReadBandwidth();
  result["batch1_read_bound_tokens_per_second"] = result["read_bandwidth_bytes_per_second"].get<double>() / weight_bytes;
  std::printf("%s\n", result.dump().c_str());
  return 0;
}
