// Decode-sized linear layers on CPU (kernels/kernels.h: SkinnyLinear): a few rows times every
// weight of the layer, so the cost is reading the weight once. AVX2+FMA when the CPU has them.
#include <algorithm>
#include <bit>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "kernels/cpu/avx512_lanes.h"
#include "kernels/cpu/cpu_kernels.h"

namespace flotilla::kernels::cpu {
namespace {

// Measured (kernels_bench, models_bench): faster than MKL at one and two rows; at eight, where
// each weight row is reused across rows, MKL's blocked sgemm wins, so larger batches stay there.
constexpr int64_t kMaxRows = 2;
constexpr int64_t kOutputsPerBlock = 4;

inline float WeightToFloat(float value) { return value; }
// bfloat16 weights as their bits: a shift, so the loop vectorises.
inline float WeightToFloat(uint16_t bfloat16_bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bfloat16_bits) << 16);
}

// Outputs [begin, end) of every row: rows are float32 [row_count, in_features]; output float32
// [row_count, out_features]. Four weight rows at a time, each dot product in 8 float lanes summed in
// a fixed order (so results do not depend on the thread count).
template <typename weight_t>
__attribute__((always_inline)) inline void SkinnyBlock(const weight_t* weight, const float* rows, float* output,
                                                       int64_t row_count, int64_t in_features, int64_t out_features,
                                                       int64_t begin, int64_t end) {
  for (int64_t out = begin; out < end; ++out) {
    const weight_t* weight_row = weight + out * in_features;
    for (int64_t row = 0; row < row_count; ++row) {
      const float* input = rows + row * in_features;
      // float32 weights: products summed in double, so the result is within 1e-6 of any float32
      // GEMM's sum whatever its order. bfloat16 weights: float32 sums (the output is rounded to
      // bfloat16 anyway), which keeps the loop as fast as the halved weight bytes allow.
      using Accumulator = std::conditional_t<std::is_same_v<weight_t, float>, double, float>;
      Accumulator sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < in_features; ++i) sum += static_cast<Accumulator>(WeightToFloat(weight_row[i]) * input[i]);
      output[row * out_features + out] = static_cast<float>(sum);
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
template <typename weight_t>
__attribute__((target("avx2,fma"))) void SkinnyBlockAvx2(const weight_t* weight, const float* rows, float* output,
                                                         int64_t row_count, int64_t in_features, int64_t out_features,
                                                         int64_t begin, int64_t end) {
  SkinnyBlock(weight, rows, output, row_count, in_features, out_features, begin, end);
}
const bool kHasAvx2Fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");

// Note [AVX-512 skinny linear]: batch-1 decode is a stream of weight bytes, each used for one
// multiply-add, so the loop must (a) keep both cores' loads in flight and (b) cost less than the
// memory bus per byte. Summing in double (the AVX2 loop above) spends two conversions and two adds
// per 8 products — compute-bound at about 60% of this machine's read bandwidth (measured in
// models_bench). Here each output keeps 16 float32 lanes that each sum in_features / 16 products
// (36 at hidden 576, 96 at 1536), and only the final 16-lane reduction runs in double: the error
// is that of a 36-96-term float32 sum, below MKL's own (it sums whole 64-256-term blocks in
// float32), so the 1e-6-of-the-largest-output tolerance holds with margin (kernels_test). Four
// outputs share each input load; 1 or 2 input rows share each weight load.
__attribute__((target("avx512f,avx512bw,avx512vl,fma"), always_inline)) inline float SumLanes(__m512 lanes) {
  const __m512d low = _mm512_cvtps_pd(_mm512_castps512_ps256(lanes));
  const __m512d high = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(lanes), 1)));
  return static_cast<float>(_mm512_reduce_add_pd(_mm512_add_pd(low, high)));
}

// kOutputs consecutive outputs [out, out + kOutputs) of kRows input rows.
template <int kOutputs, int kRows, typename weight_t>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"), always_inline)) inline void SkinnyTileAvx512(
    const weight_t* weight, const float* rows, float* output, int64_t in_features, int64_t out_features,
    int64_t out) {
  __m512 sums[kOutputs][kRows];
  for (int o = 0; o < kOutputs; ++o) {
    for (int r = 0; r < kRows; ++r) sums[o][r] = _mm512_setzero_ps();
  }
  const weight_t* weight_rows = weight + out * in_features;
  int64_t i = 0;
  for (; i + 16 <= in_features; i += 16) {
    __m512 inputs[kRows];
    for (int r = 0; r < kRows; ++r) inputs[r] = _mm512_loadu_ps(rows + r * in_features + i);
    for (int o = 0; o < kOutputs; ++o) {
      const __m512 weights = LoadLanes(weight_rows + o * in_features + i);
      for (int r = 0; r < kRows; ++r) sums[o][r] = _mm512_fmadd_ps(weights, inputs[r], sums[o][r]);
    }
  }
  if (i < in_features) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (in_features - i)) - 1u);
    __m512 inputs[kRows];
    for (int r = 0; r < kRows; ++r) inputs[r] = _mm512_maskz_loadu_ps(mask, rows + r * in_features + i);
    for (int o = 0; o < kOutputs; ++o) {
      const __m512 weights = LoadLanes(weight_rows + o * in_features + i, mask);
      for (int r = 0; r < kRows; ++r) sums[o][r] = _mm512_fmadd_ps(weights, inputs[r], sums[o][r]);
    }
  }
  for (int o = 0; o < kOutputs; ++o) {
    for (int r = 0; r < kRows; ++r) output[r * out_features + out + o] = SumLanes(sums[o][r]);
  }
}

template <int kRows, typename weight_t>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void SkinnyRowsAvx512(const weight_t* weight,
                                                                               const float* rows, float* output,
                                                                               int64_t in_features,
                                                                               int64_t out_features, int64_t begin,
                                                                               int64_t end) {
  int64_t out = begin;
  for (; out + 4 <= end; out += 4) {
    SkinnyTileAvx512<4, kRows>(weight, rows, output, in_features, out_features, out);
  }
  for (; out < end; ++out) SkinnyTileAvx512<1, kRows>(weight, rows, output, in_features, out_features, out);
}

// Note [bfloat16 dot products]: a bfloat16 model's decode reads half the bytes of float32, and
// widening each 16 weights to float32 (a zero-extend and a shift before the FMA) made the loop
// above compute-bound: SmolLM2's bfloat16 products streamed at about 70% of the read probe while
// float32 reached it. Where the CPU has AVX512-BF16, `vdpbf16ps` multiplies 32 bfloat16 weights by
// 32 bfloat16 inputs (the model's activations, not widened) in one instruction and adds each pair
// of products into a float32 lane; a product of two bfloat16 values is exact in float32, so the
// sum differs from the widened loop's only in its order (and in reading values below 2^-126 as
// zero, as the other AVX512-BF16 kernels do: Note [Register-resident rows] in cpu_kernels.cc).
template <int kOutputs, int kRows>
__attribute__((target("avx512f,avx512bw,avx512vl,fma,avx512bf16"), always_inline)) inline void SkinnyTileBFloat16Dot(
    const uint16_t* weight, const uint16_t* rows, float* output, int64_t in_features, int64_t out_features,
    int64_t out) {
  __m512 sums[kOutputs][kRows];
  for (int o = 0; o < kOutputs; ++o) {
    for (int r = 0; r < kRows; ++r) sums[o][r] = _mm512_setzero_ps();
  }
  const uint16_t* weight_rows = weight + out * in_features;
  int64_t i = 0;
  for (; i + 32 <= in_features; i += 32) {
    __m512bh inputs[kRows];
    for (int r = 0; r < kRows; ++r) inputs[r] = (__m512bh)_mm512_loadu_si512(rows + r * in_features + i);
    for (int o = 0; o < kOutputs; ++o) {
      const __m512bh weights = (__m512bh)_mm512_loadu_si512(weight_rows + o * in_features + i);
      for (int r = 0; r < kRows; ++r) sums[o][r] = _mm512_dpbf16_ps(sums[o][r], weights, inputs[r]);
    }
  }
  if (i < in_features) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (in_features - i)) - 1u);
    __m512bh inputs[kRows];
    for (int r = 0; r < kRows; ++r) inputs[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, rows + r * in_features + i);
    for (int o = 0; o < kOutputs; ++o) {
      const __m512bh weights = (__m512bh)_mm512_maskz_loadu_epi16(mask, weight_rows + o * in_features + i);
      for (int r = 0; r < kRows; ++r) sums[o][r] = _mm512_dpbf16_ps(sums[o][r], weights, inputs[r]);
    }
  }
  for (int o = 0; o < kOutputs; ++o) {
    for (int r = 0; r < kRows; ++r) output[r * out_features + out + o] = SumLanes(sums[o][r]);
  }
}

template <int kRows>
__attribute__((target("avx512f,avx512bw,avx512vl,fma,avx512bf16"))) void SkinnyRowsBFloat16Dot(
    const uint16_t* weight, const uint16_t* rows, float* output, int64_t in_features, int64_t out_features,
    int64_t begin, int64_t end) {
  int64_t out = begin;
  for (; out + 4 <= end; out += 4) {
    SkinnyTileBFloat16Dot<4, kRows>(weight, rows, output, in_features, out_features, out);
  }
  for (; out < end; ++out) SkinnyTileBFloat16Dot<1, kRows>(weight, rows, output, in_features, out_features, out);
}

// Outputs [begin, end) of every row, bfloat16 rows against bfloat16 weights (both as bits).
void SkinnyBlockBFloat16Dot(const uint16_t* weight, const uint16_t* rows, float* output, int64_t row_count,
                            int64_t in_features, int64_t out_features, int64_t begin, int64_t end) {
  int64_t row = 0;
  for (; row + 1 < row_count; row += 2) {
    SkinnyRowsBFloat16Dot<2>(weight, rows + row * in_features, output + row * out_features, in_features,
                             out_features, begin, end);
  }
  if (row < row_count) {
    SkinnyRowsBFloat16Dot<1>(weight, rows + row * in_features, output + row * out_features, in_features,
                             out_features, begin, end);
  }
}

const bool kHasAvx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
#else
constexpr bool kHasAvx2Fma = false;
#endif

template <typename weight_t>
void SkinnyBlockDispatch(const weight_t* weight, const float* rows, float* output, int64_t row_count,
                         int64_t in_features, int64_t out_features, int64_t begin, int64_t end) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasAvx512) {
    if (row_count == 1) {
      SkinnyRowsAvx512<1>(weight, rows, output, in_features, out_features, begin, end);
    } else {
      for (int64_t row = 0; row + 1 < row_count; row += 2) {
        SkinnyRowsAvx512<2>(weight, rows + row * in_features, output + row * out_features, in_features, out_features,
                            begin, end);
      }
      if (row_count % 2 == 1) {
        const int64_t row = row_count - 1;
        SkinnyRowsAvx512<1>(weight, rows + row * in_features, output + row * out_features, in_features, out_features,
                            begin, end);
      }
    }
    return;
  }
  if (kHasAvx2Fma) {
    SkinnyBlockAvx2(weight, rows, output, row_count, in_features, out_features, begin, end);
    return;
  }
#endif
  SkinnyBlock(weight, rows, output, row_count, in_features, out_features, begin, end);
}

}  // namespace

bool SkinnyLinearApplies(const at::Tensor& input, const at::Tensor& weight) {
  if (!input.device().is_cpu() || !weight.device().is_cpu() || input.dim() < 1 || input.numel() == 0 ||
      weight.dim() != 2 || !weight.is_contiguous() || input.size(-1) != weight.size(1)) {
    return false;
  }
  const bool types = (weight.scalar_type() == at::kFloat && input.scalar_type() == at::kFloat) ||
                     (weight.scalar_type() == at::kBFloat16 && input.scalar_type() == at::kBFloat16);
  return types && input.numel() / input.size(-1) <= kMaxRows && weight.size(0) >= 64;
}

std::vector<at::Tensor> SkinnyLinearGroup(const at::Tensor& input, const std::vector<at::Tensor>& weights,
                                          const std::vector<at::Tensor>& biases) {
  TORCH_CHECK(!weights.empty() && (biases.empty() || biases.size() == weights.size()),
              "SkinnyLinearGroup: expected one or more weights and as many biases (or none); got ", weights.size(),
              " weights and ", biases.size(), " biases");
  for (const at::Tensor& weight : weights) {
    TORCH_CHECK(SkinnyLinearApplies(input, weight), "SkinnyLinear: expected at most ", kMaxRows,
                " CPU rows of float32 (or bfloat16 with bfloat16 weights) against a contiguous [out, in] weight; got "
                "input ", input.sizes(), " ", input.scalar_type(), " and weight ", weight.sizes(), " ",
                weight.scalar_type());
  }
  const int64_t in_features = input.size(-1);
  // A decode step's float32 input is used as it is and the outputs are allocated in their final
  // shape: each of the ~120 products of a SmolLM2 token otherwise paid a reshape, two conversions
  // and a view through the dispatcher (about 1 µs a product, against its 10-100 µs of streaming).
  const bool float_input = input.scalar_type() == at::kFloat && input.is_contiguous();
  // bfloat16 input (hence bfloat16 weights) on AVX512-BF16: the rows as they are (Note [bfloat16 dot
  // products]); otherwise float32 rows.
  bool bfloat16_dot = false;
#if defined(__x86_64__) && defined(__GNUC__)
  bfloat16_dot = input.scalar_type() == at::kBFloat16 && UseBFloat16DotProducts();
#endif
  at::Tensor rows = input;
  if (!float_input) {
    rows = input.reshape({-1, in_features});
    rows = (bfloat16_dot ? rows : rows.to(at::kFloat)).contiguous();
  }
  const int64_t row_count = input.numel() / in_features;
  const float* row_data = bfloat16_dot ? nullptr : rows.const_data_ptr<float>();
  const uint16_t* row_bits =
      bfloat16_dot ? reinterpret_cast<const uint16_t*>(rows.const_data_ptr<c10::BFloat16>()) : nullptr;
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  // The members' outputs as one index space [0, total): a thread's slice may span two weights.
  std::vector<at::Tensor> outputs;
  std::vector<int64_t> first_output = {0};
  for (const at::Tensor& weight : weights) {
    shape.back() = weight.size(0);
    outputs.push_back(at::empty(float_input ? shape : std::vector<int64_t>{row_count, weight.size(0)},
                                at::TensorOptions().dtype(at::kFloat)));
    first_output.push_back(first_output.back() + weight.size(0));
  }
  const int64_t total = first_output.back();
  const int64_t threads = at::get_num_threads();
  // One contiguous stretch of weight rows per thread (the memory bus, not the cores, is the limit).
  const int64_t grain = std::max<int64_t>(kOutputsPerBlock * 16, (total + threads - 1) / threads);
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    for (size_t member = 0; member < weights.size(); ++member) {
      const int64_t member_begin = std::max(begin, first_output[member]) - first_output[member];
      const int64_t member_end = std::min(end, first_output[member + 1]) - first_output[member];
      if (member_begin >= member_end) continue;
      const at::Tensor& weight = weights[member];
      float* output_data = outputs[member].mutable_data_ptr<float>();
      if (weight.scalar_type() == at::kFloat) {
        SkinnyBlockDispatch(weight.const_data_ptr<float>(), row_data, output_data, row_count, in_features,
                            weight.size(0), member_begin, member_end);
#if defined(__x86_64__) && defined(__GNUC__)
      } else if (bfloat16_dot) {
        SkinnyBlockBFloat16Dot(reinterpret_cast<const uint16_t*>(weight.const_data_ptr<c10::BFloat16>()), row_bits,
                               output_data, row_count, in_features, weight.size(0), member_begin, member_end);
#endif
      } else {
        SkinnyBlockDispatch(reinterpret_cast<const uint16_t*>(weight.const_data_ptr<c10::BFloat16>()), row_data,
                            output_data, row_count, in_features, weight.size(0), member_begin, member_end);
      }
    }
  });
  for (size_t member = 0; member < weights.size(); ++member) {
    at::Tensor& output = outputs[member];
    if (!biases.empty() && biases[member].defined()) output.add_(biases[member].to(at::kFloat));
    if (float_input) continue;
    shape.back() = weights[member].size(0);
    output = output.to(input.scalar_type()).view(shape);
  }
  return outputs;
}

at::Tensor SkinnyLinear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
  return SkinnyLinearGroup(input, {weight}, {bias})[0];
}

// Note [Prefill linear through oneDNN]: ATen sends a float32 at::linear to MKL's sgemm, which on
// AMD CPUs runs its AVX2 ("zen") kernels; oneDNN, also inside libtorch, runs AVX-512 kernels
// there — about 2x the GFLOP/s at prefill shapes ([128, 576] x [576, 1536], one thread, measured
// with torch.ops.mkldnn._linear_pointwise beside F.linear). Same float32 products and float32
// sums in another order: within 1e-6 of the largest output, as any two GEMMs (kernels_test).
bool PrefillLinearApplies(const at::Tensor& input, const at::Tensor& weight) {
  static const bool available = at::hasMKLDNN() && c10::Dispatcher::singleton()
                                                       .findSchema({"mkldnn::_linear_pointwise", ""})
                                                       .has_value();
  return available && input.device().is_cpu() && weight.device().is_cpu() && input.scalar_type() == at::kFloat &&
         weight.scalar_type() == at::kFloat && weight.dim() == 2 && weight.is_contiguous() && input.dim() >= 1 &&
         input.size(-1) == weight.size(1) && input.numel() > 0 && weight.numel() > 0;
}

at::Tensor PrefillLinear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(PrefillLinearApplies(input, weight), "PrefillLinear: expected float32 CPU input [..., ", weight.size(-1),
              "] and a contiguous float32 [out, in] weight with oneDNN available; got input ", input.sizes(), " ",
              input.scalar_type(), " and weight ", weight.sizes(), " ", weight.scalar_type());
  static const auto linear_pointwise = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  const at::Tensor rows = input.reshape({-1, input.size(-1)}).contiguous();
  torch::jit::Stack stack;
  stack.emplace_back(rows);
  stack.emplace_back(weight);
  stack.emplace_back(bias.defined() ? c10::IValue(bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(c10::IValue());
  linear_pointwise.callBoxed(&stack);
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = weight.size(0);
  return stack.back().toTensor().view(shape);
}

}  // namespace flotilla::kernels::cpu
