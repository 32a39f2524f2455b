// Timings for tools/bench/kernels_cpu.py: each fused CPU kernel against the eager LibTorch ops it
// replaces, and the paged attention backend with its builtin kernel against its gather-then-sdpa
// path, in one process on the same inputs. Prints one JSON object per line.
//
//   build/bin/kernels_bench --threads 2 [--only SiluAndMul]
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "kernels/cpu/cpu_kernels.h"
#include "models/kernelize.h"
#include "models/paged_attention.h"

namespace {

using Clock = std::chrono::steady_clock;

// --only: time just the kernels whose name contains this (empty: all).
std::string only_kernels;
bool Wanted(const std::string& kernel) { return kernel.find(only_kernels) != std::string::npos; }

// Median seconds of one call over repeats of about 0.2 s each, after a warm-up.
double Time(const std::function<void()>& function) {
  for (int i = 0; i < 3; ++i) function();
  const auto probe_start = Clock::now();
  function();
  const double probe = std::chrono::duration<double>(Clock::now() - probe_start).count();
  const int calls = std::clamp(static_cast<int>(0.05 / std::max(probe, 1e-7)), 1, 20000);
  std::vector<double> samples;
  for (int repeat = 0; repeat < 7; ++repeat) {
    const auto start = Clock::now();
    for (int call = 0; call < calls; ++call) function();
    samples.push_back(std::chrono::duration<double>(Clock::now() - start).count() / calls);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

void Report(const std::string& kernel, const std::string& shape, double eager, double fused) {
  std::printf("{\"kernel\": \"%s\", \"shape\": \"%s\", \"eager_us\": %.3f, \"kernel_us\": %.3f}\n", kernel.c_str(),
              shape.c_str(), eager * 1e6, fused * 1e6);
  std::fflush(stdout);
}

at::Tensor EagerRmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  const at::Tensor as_float = hidden_states.to(at::kFloat);
  const at::Tensor variance = as_float.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (as_float * at::rsqrt(variance + epsilon)).to(hidden_states.scalar_type());
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

void BenchmarkElementwise(at::ScalarType dtype) {
  const std::string type = c10::toString(dtype);
  struct Model { int64_t hidden, intermediate, heads, kv_heads, head_dim; };
  for (const Model model : {Model{576, 1536, 9, 3, 64}, Model{4096, 11008, 32, 8, 128}}) {
    for (const int64_t tokens : {1, 4, 16, 64, 256}) {
      const std::string shape = std::to_string(tokens) + "x" + std::to_string(model.hidden) + " " + type;
      const at::Tensor hidden_states = at::randn({1, tokens, model.hidden}).to(dtype);
      const at::Tensor residual = at::randn({1, tokens, model.hidden}).to(dtype);
      const at::Tensor weight = at::rand({model.hidden}).add(0.5).to(dtype);
      if (Wanted("RMSNorm")) {
        Report("RMSNorm", shape, Time([&] { EagerRmsNorm(hidden_states, weight, 1e-5); }),
               Time([&] { flotilla::kernels::cpu::RmsNorm(hidden_states, weight, 1e-5); }));
      }
      at::Tensor fused_residual = residual.clone();
      if (Wanted("residual add + RMSNorm")) {
        Report("residual add + RMSNorm", shape, Time([&] { EagerRmsNorm(residual + hidden_states, weight, 1e-5); }),
               Time([&] { flotilla::kernels::cpu::FusedAddRmsNorm(hidden_states, fused_residual, weight, 1e-5); }));
      }
      const at::Tensor gate = at::randn({1, tokens, model.intermediate}).to(dtype);
      const at::Tensor up = at::randn({1, tokens, model.intermediate}).to(dtype);
      if (Wanted("SiluAndMul")) {
        Report("SiluAndMul", std::to_string(tokens) + "x" + std::to_string(model.intermediate) + " " + type,
               Time([&] { at::silu(gate) * up; }), Time([&] { flotilla::kernels::cpu::SiluAndMul(gate, up); }));
      }
      // Rotary on the projections' outputs viewed [1, heads, T, head_dim], as the model files call it.
      at::Tensor query = at::randn({1, tokens, model.heads, model.head_dim}).to(dtype).transpose(1, 2);
      at::Tensor key = at::randn({1, tokens, model.kv_heads, model.head_dim}).to(dtype).transpose(1, 2);
      const at::Tensor angles = at::rand({1, tokens, model.head_dim / 2}).mul(100);
      const at::Tensor cos = at::cat({angles.cos(), angles.cos()}, -1).to(dtype);
      const at::Tensor sin = at::cat({angles.sin(), angles.sin()}, -1).to(dtype);
      if (Wanted("RotaryEmbedding")) Report("RotaryEmbedding",
             std::to_string(tokens) + "x(" + std::to_string(model.heads) + "+" + std::to_string(model.kv_heads) +
                 ")x" + std::to_string(model.head_dim) + " " + type,
             Time([&] {
               const at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
               (void)(query * c + RotateHalf(query) * s);
               (void)(key * c + RotateHalf(key) * s);
             }),
             Time([&] { flotilla::kernels::cpu::RotaryEmbeddingInPlace(query, key, cos, sin); }));
    }
  }
}

// Decode of `batch` sequences with `context` tokens each through the `paged` backend, builtin
// kernel vs PagedAttention=eager (gather each context, then sdpa).
void BenchmarkPagedDecode(int64_t batch, int64_t context, int64_t heads, int64_t kv_heads, int64_t head_dim,
                          at::ScalarType dtype) {
  if (!Wanted("paged decode attention")) return;
  using namespace flotilla::models;
  const int64_t block_size = 16;
  const int64_t blocks_per_sequence = (context + block_size - 1) / block_size;
  KVCacheSpec spec{.num_layers = 1, .num_key_value_heads = kv_heads, .head_dim = head_dim};
  PagedKVCache cache(spec, batch * blocks_per_sequence, block_size, dtype, at::kCPU);
  cache.key_pool(0).copy_(at::randn(cache.key_pool(0).sizes()));
  cache.value_pool(0).copy_(at::randn(cache.value_pool(0).sizes()));
  std::vector<int64_t> blocks(static_cast<size_t>(batch * blocks_per_sequence));
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<int64_t>(i);
  std::shuffle(blocks.begin(), blocks.end(), std::mt19937(5));  // scattered, as after a while of serving
  PagedBatch paged_batch;
  for (int64_t sequence = 0; sequence < batch; ++sequence) {
    paged_batch.sequences.push_back(
        {.query_length = 1, .context_length = context,
         .block_table = std::vector<int64_t>(blocks.begin() + sequence * blocks_per_sequence,
                                             blocks.begin() + (sequence + 1) * blocks_per_sequence)});
  }
  ScopedPagedBatch scope(cache, paged_batch);
  const at::Tensor query = at::randn({1, heads, batch, head_dim}).to(dtype);
  AttentionArguments arguments;
  arguments.scaling = 1.0 / std::sqrt(static_cast<double>(head_dim));
  arguments.num_key_value_groups = heads / kv_heads;
  auto run = [&] { PagedAttentionForward(query, cache.key_pool(0), cache.value_pool(0), std::nullopt, arguments); };
  InstallLayerKernels(*ResolveLayerKernels("PagedAttention=eager"));
  const double eager = Time(run);
  InstallLayerKernels(*ResolveLayerKernels("PagedAttention=builtin"));
  const double builtin = Time(run);
  Report("paged decode attention",
         "batch " + std::to_string(batch) + " ctx " + std::to_string(context) + " " + std::to_string(heads) + "/" +
             std::to_string(kv_heads) + "x" + std::to_string(head_dim) + " " + c10::toString(dtype),
         eager, builtin);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--threads") threads = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--only") only_kernels = argv[i + 1];
  }
  // As the worker (services/worker/worker_main.cc): freed activations stay in the heap for reuse,
  // so neither side of a comparison pays page faults a serving process does not.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  at::set_num_threads(threads);
  c10::InferenceMode inference_mode;
  at::manual_seed(0);
  BenchmarkElementwise(at::kFloat);
  BenchmarkElementwise(at::kBFloat16);
  BenchmarkPagedDecode(32, 1024, 9, 3, 64, at::kFloat);
  BenchmarkPagedDecode(32, 1024, 32, 8, 128, at::kFloat);
  BenchmarkPagedDecode(32, 1024, 9, 3, 64, at::kBFloat16);
  // Batch 1: three items for two threads, the window split (Note [Split contexts]).
  BenchmarkPagedDecode(1, 1024, 9, 3, 64, at::kFloat);
  BenchmarkPagedDecode(1, 4096, 9, 3, 64, at::kFloat);
  return 0;
}
