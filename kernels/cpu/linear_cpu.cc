// Decode-sized linear layers on CPU (kernels/kernels.h: SkinnyLinear): a few rows times every
// weight of the layer, so the cost is reading the weight once. AVX2+FMA when the CPU has them.
#include <algorithm>
#include <bit>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

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
#else
constexpr bool kHasAvx2Fma = false;
#endif

template <typename weight_t>
void SkinnyBlockDispatch(const weight_t* weight, const float* rows, float* output, int64_t row_count,
                         int64_t in_features, int64_t out_features, int64_t begin, int64_t end) {
#if defined(__x86_64__) && defined(__GNUC__)
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

at::Tensor SkinnyLinear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(SkinnyLinearApplies(input, weight), "SkinnyLinear: expected at most ", kMaxRows,
              " CPU rows of float32 (or bfloat16 with bfloat16 weights) against a contiguous [out, in] weight; got "
              "input ", input.sizes(), " ", input.scalar_type(), " and weight ", weight.sizes(), " ",
              weight.scalar_type());
  const int64_t in_features = weight.size(1);
  const int64_t out_features = weight.size(0);
  const at::Tensor rows = input.reshape({-1, in_features}).to(at::kFloat).contiguous();
  const int64_t row_count = rows.size(0);
  at::Tensor output = at::empty({row_count, out_features}, rows.options());
  const float* row_data = rows.const_data_ptr<float>();
  float* output_data = output.mutable_data_ptr<float>();
  const int64_t threads = at::get_num_threads();
  // One contiguous slice of the weight per thread (the memory bus, not the cores, is the limit).
  const int64_t grain = std::max<int64_t>(kOutputsPerBlock * 16, (out_features + threads - 1) / threads);
  at::parallel_for(0, out_features, grain, [&](int64_t begin, int64_t end) {
    if (weight.scalar_type() == at::kFloat) {
      SkinnyBlockDispatch(weight.const_data_ptr<float>(), row_data, output_data, row_count, in_features, out_features,
                          begin, end);
    } else {
      SkinnyBlockDispatch(reinterpret_cast<const uint16_t*>(weight.const_data_ptr<c10::BFloat16>()), row_data, output_data, row_count, in_features,
                          out_features, begin, end);
    }
  });
  if (bias.defined()) output.add_(bias.to(at::kFloat));
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
  shape.back() = out_features;
  return output.to(input.scalar_type()).view(shape);
}

}  // namespace flotilla::kernels::cpu
