// kernels_cuda_bench: each CUDA kernel against the eager LibTorch ops it replaces, on one GPU, in one
// process on the same inputs; run by tools/gpu/check.sh, which writes its table to
// kernels/RESULTS.md with the card named. Prints a markdown table:
//   - the device-to-device copy bandwidth (at::Tensor::copy_ of 1 GiB, bytes read + written),
//     measured first, after warm-up, with CUDA events;
//   - per kernel: eager and kernel time per call (median of repeats, CUDA events, after warm-up),
//     the kernel's achieved bandwidth (the bytes it must read and write, over its time) as a
//     fraction of that copy bandwidth, and its largest error against the eager formula evaluated
//     in float64 on the same (rounded) inputs, relative to the largest reference magnitude;
//   - paged decode attention (batch 32, 1k context, blocks scattered over the pool) against
//     LibTorch sdpa on equal shapes with contiguous keys and values (no gather: sdpa's best case),
//     and against gather-then-sdpa (the `paged` backend's eager path).
//
//   build/bin/kernels_cuda_bench            # tokens 16384, hidden 4096
//   build/bin/kernels_cuda_bench --quick    # smaller shapes: a smoke run
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "kernels/kernels.h"

namespace {

using flotilla::kernels::PagedAttentionToken;

void CheckCuda(cudaError_t error, const char* what) {
  TORCH_CHECK(error == cudaSuccess, "kernels_cuda_bench: ", what, ": ", cudaGetErrorString(error));
}

// Milliseconds per call: `calls` back-to-back calls between two CUDA events on the current stream,
// median of 7 repeats, after 5 warm-up calls.
double TimeMilliseconds(const std::function<void()>& function, int calls = 20) {
  for (int i = 0; i < 5; ++i) function();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  cudaEvent_t start, stop;
  CheckCuda(cudaEventCreate(&start), "cudaEventCreate");
  CheckCuda(cudaEventCreate(&stop), "cudaEventCreate");
  std::vector<double> samples;
  for (int repeat = 0; repeat < 7; ++repeat) {
    CheckCuda(cudaEventRecord(start, stream), "cudaEventRecord");
    for (int call = 0; call < calls; ++call) function();
    CheckCuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    CheckCuda(cudaEventSynchronize(stop), "cudaEventSynchronize");
    float milliseconds = 0;
    CheckCuda(cudaEventElapsedTime(&milliseconds, start, stop), "cudaEventElapsedTime");
    samples.push_back(milliseconds / calls);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

// Largest |actual - reference| over the largest |reference|, in double.
double RelativeError(const at::Tensor& actual, const at::Tensor& reference) {
  const at::Tensor reference64 = reference.to(at::kDouble);
  const double scale = std::max(reference64.abs().max().item<double>(), 1e-300);
  return (actual.to(at::kDouble) - reference64).abs().max().item<double>() / scale;
}

double Bytes(const std::vector<at::Tensor>& tensors) {
  double total = 0;
  for (const at::Tensor& tensor : tensors) total += static_cast<double>(tensor.numel() * tensor.element_size());
  return total;
}

double copy_gigabytes_per_second = 0;

void PrintRow(const std::string& kernel, const std::string& shape, at::ScalarType dtype, double eager_ms,
              double kernel_ms, double bytes, double relative_error, const std::string& baseline = "eager") {
  const double gigabytes_per_second = bytes / (kernel_ms * 1e-3) / 1e9;
  std::printf("| %s | %s | %s | %s | %.1f | %.1f | %.2fx | %.0f | %.0f%% | %.1e |\n", kernel.c_str(), shape.c_str(),
              c10::toString(dtype), baseline.c_str(), eager_ms * 1e3, kernel_ms * 1e3, eager_ms / kernel_ms,
              gigabytes_per_second, 100.0 * gigabytes_per_second / copy_gigabytes_per_second, relative_error);
  std::fflush(stdout);
}

double MeasureCopyBandwidth() {
  const int64_t bytes = int64_t{1} << 30;
  const at::Tensor source = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA)).fill_(1);
  at::Tensor destination = at::empty_like(source);
  const double milliseconds = TimeMilliseconds([&] { destination.copy_(source); }, 10);
  return 2.0 * static_cast<double>(bytes) / (milliseconds * 1e-3) / 1e9;  // read + write
}

at::Tensor EagerRmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  const at::Tensor as_float = hidden_states.to(at::kFloat);
  const at::Tensor variance = as_float.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (as_float * at::rsqrt(variance + epsilon)).to(hidden_states.scalar_type());
}

at::Tensor Float64RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  const at::Tensor x = hidden_states.to(at::kDouble);
  return weight.to(at::kDouble) * x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + epsilon);
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

void BenchmarkElementwise(int64_t tokens, int64_t hidden, at::ScalarType dtype) {
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCUDA);
  const std::string shape = std::to_string(tokens) + "x" + std::to_string(hidden);
  const double epsilon = 1e-6;
  const at::Tensor hidden_states = at::randn({tokens, hidden}, options.dtype(at::kFloat)).add_(0.1).to(dtype);
  const at::Tensor weight = at::rand({hidden}, options.dtype(at::kFloat)).add_(0.5).to(dtype);
  {
    at::Tensor output = flotilla::kernels::RmsNorm(hidden_states, weight, epsilon);
    PrintRow("RMSNorm", shape, dtype, TimeMilliseconds([&] { EagerRmsNorm(hidden_states, weight, epsilon); }),
             TimeMilliseconds([&] { flotilla::kernels::RmsNorm(hidden_states, weight, epsilon); }),
             Bytes({hidden_states, weight, output}), RelativeError(output, Float64RmsNorm(hidden_states, weight, epsilon)));
  }
  {
    const at::Tensor residual_start = at::randn({tokens, hidden}, options.dtype(at::kFloat)).to(dtype);
    at::Tensor residual = residual_start.clone();
    at::Tensor output = flotilla::kernels::FusedAddRmsNorm(hidden_states, residual, weight, epsilon);
    const at::Tensor reference = Float64RmsNorm(residual_start.to(at::kDouble) + hidden_states.to(at::kDouble),
                                                weight, epsilon);
    // Timed on a scratch residual: each call adds into it again (the values stay finite for 100s of calls).
    at::Tensor scratch = residual_start.mul(1e-3);
    PrintRow("residual add + RMSNorm", shape, dtype,
             TimeMilliseconds([&] { EagerRmsNorm(residual_start + hidden_states, weight, epsilon); }),
             TimeMilliseconds([&] { flotilla::kernels::FusedAddRmsNorm(hidden_states, scratch, weight, epsilon); }),
             Bytes({hidden_states, residual, residual, output}), RelativeError(output, reference));
  }
  {
    const at::Tensor gate_and_up = at::randn({tokens, 2 * hidden}, options.dtype(at::kFloat)).mul_(3).to(dtype);
    at::Tensor output = flotilla::kernels::SiluAndMul(gate_and_up);
    const auto halves = gate_and_up.to(at::kDouble).chunk(2, -1);
    PrintRow("SiLU-and-mul (fused halves)", std::to_string(tokens) + "x2x" + std::to_string(hidden), dtype,
             TimeMilliseconds([&] {
               const auto parts = gate_and_up.chunk(2, -1);
               (void)(at::silu(parts[0]) * parts[1]);
             }),
             TimeMilliseconds([&] { flotilla::kernels::SiluAndMul(gate_and_up); }), Bytes({gate_and_up, output}),
             RelativeError(output, at::silu(halves[0]) * halves[1]));
    const at::Tensor gate = halves[0].to(dtype).contiguous();
    const at::Tensor up = halves[1].to(dtype).contiguous();
    at::Tensor split_output = flotilla::kernels::SiluAndMul(gate, up);
    PrintRow("SiLU-and-mul (gate, up)", shape, dtype, TimeMilliseconds([&] { (void)(at::silu(gate) * up); }),
             TimeMilliseconds([&] { flotilla::kernels::SiluAndMul(gate, up); }), Bytes({gate, up, split_output}),
             RelativeError(split_output, at::silu(gate.to(at::kDouble)) * up.to(at::kDouble)));
  }
}

void BenchmarkRotary(int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim, at::ScalarType dtype) {
  const auto options = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  // The projections' outputs [1, T, heads, head_dim] viewed [1, heads, T, head_dim], as the model files call it.
  const at::Tensor query_start = at::randn({1, tokens, heads, head_dim}, options).to(dtype).transpose(1, 2);
  const at::Tensor key_start = at::randn({1, tokens, kv_heads, head_dim}, options).to(dtype).transpose(1, 2);
  const at::Tensor angles = at::rand({1, tokens, head_dim / 2}, options).mul_(100);
  const at::Tensor cos = at::cat({angles.cos(), angles.cos()}, -1).to(dtype);
  const at::Tensor sin = at::cat({angles.sin(), angles.sin()}, -1).to(dtype);
  at::Tensor query = query_start.clone().transpose(1, 2).contiguous().transpose(1, 2);
  at::Tensor key = key_start.clone().transpose(1, 2).contiguous().transpose(1, 2);
  flotilla::kernels::RotaryEmbeddingInPlace(query, key, cos, sin);
  const at::Tensor cos64 = cos.to(at::kDouble).unsqueeze(1), sin64 = sin.to(at::kDouble).unsqueeze(1);
  const at::Tensor query64 = query_start.to(at::kDouble), key64 = key_start.to(at::kDouble);
  const double error = std::max(RelativeError(query, query64 * cos64 + RotateHalf(query64) * sin64),
                                RelativeError(key, key64 * cos64 + RotateHalf(key64) * sin64));
  // In place: timing keeps rotating the same tensors, which stays finite (a rotation).
  PrintRow("rotary in place (q and k)",
           std::to_string(tokens) + "x(" + std::to_string(heads) + "+" + std::to_string(kv_heads) + ")x" +
               std::to_string(head_dim),
           dtype,
           TimeMilliseconds([&] {
             const at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1);
             (void)(query * c + RotateHalf(query) * s);
             (void)(key * c + RotateHalf(key) * s);
           }),
           TimeMilliseconds([&] { flotilla::kernels::RotaryEmbeddingInPlace(query, key, cos, sin); }),
           Bytes({query, query, key, key, cos, sin}), error);
}

// Decode of `batch` sequences of `context` tokens each: one query token per sequence.
void BenchmarkPagedDecode(int64_t batch, int64_t context, int64_t heads, int64_t kv_heads, int64_t head_dim,
                          at::ScalarType dtype) {
  const int64_t block_size = 16;
  const int64_t blocks_per_sequence = (context + block_size - 1) / block_size;
  const auto options = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  const std::vector<int64_t> pool_shape = {batch * blocks_per_sequence, block_size, kv_heads, head_dim};
  const at::Tensor key_pool = at::randn(pool_shape, options).to(dtype);
  const at::Tensor value_pool = at::randn(pool_shape, options).to(dtype);
  std::vector<int64_t> blocks(static_cast<size_t>(batch * blocks_per_sequence));
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), std::mt19937(5));  // scattered, as after a while of serving
  std::vector<PagedAttentionToken> tokens;
  for (int64_t sequence = 0; sequence < batch; ++sequence) {
    tokens.push_back({sequence, context - 1, 0, blocks.data() + sequence * blocks_per_sequence});
  }
  const at::Tensor query_tokens = at::randn({batch, heads, head_dim}, options).to(dtype);
  const double scaling = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const flotilla::kernels::PagedAttentionPlan plan = flotilla::kernels::PlanPagedAttention(tokens, block_size, at::kCUDA);
  at::Tensor output = at::empty_like(query_tokens);
  auto kernel = [&] {
    flotilla::kernels::PagedAttentionFromPlan(query_tokens, key_pool, value_pool, output, plan, scaling, std::nullopt);
  };
  kernel();

  // Equal shapes for sdpa: each sequence's keys and values contiguous [batch, kv_heads, context, head_dim].
  const at::Tensor block_index = at::tensor(blocks, at::kLong).to(at::kCUDA).view({batch, blocks_per_sequence});
  auto gather = [&](const at::Tensor& pool) {
    return pool.index_select(0, block_index.flatten())
        .view({batch, blocks_per_sequence * block_size, kv_heads, head_dim})
        .narrow(1, 0, context)
        .transpose(1, 2);  // [batch, kv_heads, context, head_dim]
  };
  const at::Tensor keys = gather(key_pool).contiguous();
  const at::Tensor values = gather(value_pool).contiguous();
  const at::Tensor query = query_tokens.unsqueeze(2);  // [batch, heads, 1, head_dim]
  auto sdpa = [&](const at::Tensor& k, const at::Tensor& v) {
    return at::scaled_dot_product_attention(query, k, v, std::nullopt, 0.0, false, scaling, /*enable_gqa=*/true);
  };
  const at::Tensor sdpa_output = sdpa(keys, values).squeeze(2);
  const at::Tensor keys64 = keys.to(at::kDouble).repeat_interleave(heads / kv_heads, 1);
  const at::Tensor values64 = values.to(at::kDouble).repeat_interleave(heads / kv_heads, 1);
  const at::Tensor weights64 = at::softmax(at::matmul(query.to(at::kDouble), keys64.transpose(2, 3)) * scaling, -1);
  const at::Tensor reference = at::matmul(weights64, values64).squeeze(2);
  const double kernel_ms = TimeMilliseconds(kernel);
  const double bytes = Bytes({keys, values, query_tokens, output});  // every key and value row read once
  const std::string shape = "batch " + std::to_string(batch) + " ctx " + std::to_string(context) + " " +
                            std::to_string(heads) + "/" + std::to_string(kv_heads) + "x" + std::to_string(head_dim);
  PrintRow("paged decode attention", shape, dtype, TimeMilliseconds([&] { sdpa(keys, values); }), kernel_ms, bytes,
           RelativeError(output, reference), "sdpa, contiguous KV");
  const double error = RelativeError(output, reference);
  PrintRow("paged decode attention", shape, dtype,
           TimeMilliseconds([&] { sdpa(gather(key_pool), gather(value_pool)); }), kernel_ms, bytes, error,
           "gather + sdpa");
  // sdpa on the same inputs, as a sanity check of the reference (not printed in the table).
  TORCH_CHECK(RelativeError(sdpa_output, reference) < 1e-2, "kernels_cuda_bench: sdpa disagrees with the float64 "
              "reference by ", RelativeError(sdpa_output, reference));
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--quick") quick = true;
  }
  if (!at::hasCUDA()) {
    std::fprintf(stderr, "kernels_cuda_bench: no CUDA device visible\n");
    return 2;
  }
  c10::InferenceMode inference_mode;
  at::manual_seed(0);
  const cudaDeviceProp* properties = at::cuda::getCurrentDeviceProperties();
  copy_gigabytes_per_second = MeasureCopyBandwidth();
  std::printf("Device: %s (%d SMs). Device-to-device copy (1 GiB, read + write): %.0f GB/s.\n\n", properties->name,
              properties->multiProcessorCount, copy_gigabytes_per_second);
  std::printf("| kernel | shape | dtype | against | baseline µs | kernel µs | speedup | kernel GB/s | of copy "
              "bandwidth | max error vs float64 |\n");
  std::printf("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  const int64_t tokens = quick ? 1024 : 16384;
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    BenchmarkElementwise(tokens, 4096, dtype);
    BenchmarkRotary(tokens, 32, 8, 128, dtype);
  }
  for (const at::ScalarType dtype : {at::kBFloat16, at::kHalf, at::kFloat}) {
    BenchmarkPagedDecode(32, quick ? 256 : 1024, 32, 8, 128, dtype);
    BenchmarkPagedDecode(32, quick ? 256 : 1024, 32, 32, 128, dtype);
  }
  BenchmarkPagedDecode(4, quick ? 1024 : 16384, 32, 8, 128, at::kBFloat16);  // the split over the context
  return 0;
}
