#include "services/preprocess/image/resample.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace flotilla::image {
namespace {

// The antialiasing filters of ATen's HelperInterpLinear / HelperInterpCubic (Keys, a = -0.5, as
// Pillow). This file is compiled with -ffp-contract=off, so each operation rounds on its own.
double LinearFilter(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double CubicFilter(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2.0) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0.0;
}

// The same polynomial as a compiler that contracts a * b + c into fused multiply-adds evaluates
// it (ATen's AVX2 kernels are built with -mfma). Weights are made both ways; an axis whose int16
// weights differ between the two is marked inexact and the caller falls back to ATen.
double CubicFilterFused(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return std::fma(std::fma(a + 2, x, -(a + 3)) * x, x, 1.0);
  if (x < 2.0) return std::fma(std::fma(std::fma(a, x, -5 * a), x, 8 * a), x, -4 * a);
  return 0.0;
}

struct AxisWeights {
  std::vector<int32_t> first, count;
  std::vector<int16_t> weights;
  int taps = 0;
  int precision = 0;
};

// HelperInterpBase::_compute_index_ranges_int16_weights with antialias=true, align_corners=false.
template <typename Filter>
AxisWeights ComputeWeights(int64_t input_size, int64_t output_size, int interp_size, Filter filter) {
  const double scale = static_cast<double>(input_size) / static_cast<double>(output_size);
  const double support = scale >= 1.0 ? (interp_size * 0.5) * scale : interp_size * 0.5;
  AxisWeights axis;
  axis.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  axis.first.resize(output_size);
  axis.count.resize(output_size);
  std::vector<double> weights(static_cast<size_t>(output_size * axis.taps), 0.0);
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  double weight_max = 0.0;
  for (int64_t i = 0; i < output_size; ++i) {
    const double center = scale * (static_cast<double>(i) + 0.5);
    const int64_t first = std::max(static_cast<int64_t>(center - support + 0.5), int64_t{0});
    int64_t count = std::min(static_cast<int64_t>(center + support + 0.5), input_size) - first;
    count = std::clamp(count, int64_t{0}, static_cast<int64_t>(axis.taps));
    double* row = &weights[static_cast<size_t>(i * axis.taps)];
    double total = 0.0;
    for (int64_t j = 0; j < count; ++j) {
      const double w = filter((static_cast<double>(j + first) - center + 0.5) * invscale);
      row[j] = w;
      total += w;
    }
    if (total != 0.0) {
      for (int64_t j = 0; j < count; ++j) {
        row[j] /= total;
        weight_max = std::max(weight_max, row[j]);
      }
    }
    axis.first[i] = static_cast<int32_t>(first);
    axis.count[i] = static_cast<int32_t>(count);
  }
  for (axis.precision = 0; axis.precision < 22; ++axis.precision) {
    const int next = static_cast<int>(0.5 + weight_max * (1 << (axis.precision + 1)));
    if (next >= (1 << 15)) break;
  }
  axis.weights.resize(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) {
    const double v = weights[k] * (1 << axis.precision);
    axis.weights[k] = static_cast<int16_t>(v < 0 ? static_cast<int>(-0.5 + v) : static_cast<int>(0.5 + v));
  }
  return axis;
}

bool HasAvx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

uint8_t ClampToByte(int32_t value) { return static_cast<uint8_t>(std::clamp(value, 0, 255)); }

void HorizontalScalar(const uint8_t* input, const ResampleAxis& axis, int64_t out_begin, int64_t out_end,
                      uint8_t* output, int64_t input_first_column) {
  const int32_t rounding = 1 << (axis.precision - 1);
  for (int64_t x = out_begin; x < out_end; ++x, output += 4) {
    const uint8_t* pixel = input + 3 * (static_cast<int64_t>(axis.first[x]) - input_first_column);
    const int16_t* weights = &axis.weights[static_cast<size_t>(x * axis.taps)];
    int32_t red = rounding, green = rounding, blue = rounding;
    for (int k = 0; k < axis.count[x]; ++k, pixel += 3) {
      red += weights[k] * pixel[0];
      green += weights[k] * pixel[1];
      blue += weights[k] * pixel[2];
    }
    output[0] = ClampToByte(red >> axis.precision);
    output[1] = ClampToByte(green >> axis.precision);
    output[2] = ClampToByte(blue >> axis.precision);
    output[3] = 0;
  }
}

__attribute__((target("avx2"))) void HorizontalAvx2(const uint8_t* input, const ResampleAxis& axis,
                                                    int64_t out_begin, int64_t out_end, uint8_t* output,
                                                    int64_t input_first_column) {
  // Both 128-bit lanes hold the same 16 input bytes (pixels p0..p4, RGB); lane 0 picks the int16
  // pairs (r0 r1, g0 g1, b0 b1, 0 0), lane 1 (r2 r3, g2 g3, b2 b3, 0 0), for _mm256_madd_epi16
  // against (w0 w1 x4 | w2 w3 x4).
  const __m256i pick = _mm256_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,  //
                                        6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1);
  const __m128i rounding = _mm_set1_epi32(1 << (axis.precision - 1));
  const int groups = axis.taps_padded / 4;
  for (int64_t x = out_begin; x < out_end; ++x, output += 4) {
    const uint8_t* pixel = input + 3 * (static_cast<int64_t>(axis.first[x]) - input_first_column);
    const int16_t* weights = &axis.weights_avx2[static_cast<size_t>(x * groups * 16)];
    __m256i sum = _mm256_setzero_si256();
    for (int group = 0; group < groups; ++group, pixel += 12, weights += 16) {
      const __m256i bytes = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pixel)));
      const __m256i values = _mm256_shuffle_epi8(bytes, pick);
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(weights));
      sum = _mm256_add_epi32(sum, _mm256_madd_epi16(values, w));
    }
    __m128i total = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    total = _mm_srai_epi32(_mm_add_epi32(total, rounding), axis.precision);
    total = _mm_packus_epi16(_mm_packs_epi32(total, total), total);
    const int32_t packed = _mm_cvtsi128_si32(total);
    std::memcpy(output, &packed, 4);
  }
}

void VerticalScalar(const uint8_t* intermediate, int64_t first_row, int64_t stride, int64_t row_bytes, const ResampleAxis& axis,
                    int64_t out_row, uint8_t* output) {
  const int32_t rounding = 1 << (axis.precision - 1);
  const uint8_t* rows = intermediate + (axis.first[out_row] - first_row) * stride;
  const int16_t* weights = &axis.weights[static_cast<size_t>(out_row * axis.taps)];
  for (int64_t b = 0; b < row_bytes; ++b) {
    int32_t sum = rounding;
    for (int k = 0; k < axis.count[out_row]; ++k) sum += weights[k] * rows[k * stride + b];
    output[b] = ClampToByte(sum >> axis.precision);
  }
}

__attribute__((target("avx2"))) void VerticalAvx2(const uint8_t* intermediate, int64_t first_row, int64_t stride, int64_t row_bytes,
                                                  const ResampleAxis& axis, int64_t out_row, uint8_t* output) {
  const __m256i rounding = _mm256_set1_epi32(1 << (axis.precision - 1));
  const uint8_t* rows = intermediate + (axis.first[out_row] - first_row) * stride;
  const int16_t* weights = &axis.weights[static_cast<size_t>(out_row * axis.taps)];
  const int count = axis.count[out_row];
  for (int64_t offset = 0; offset < row_bytes; offset += 16) {
    __m256i low = rounding, high = rounding;
    for (int k = 0; k < count; k += 2) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + k * stride + offset));
      const bool pair = k + 1 < count;
      const __m128i b = pair ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + (k + 1) * stride + offset))
                             : _mm_setzero_si128();
      const uint32_t w0 = static_cast<uint16_t>(weights[k]);
      const uint32_t w1 = pair ? static_cast<uint16_t>(weights[k + 1]) : 0;
      const __m256i w = _mm256_set1_epi32(static_cast<int32_t>(w0 | (w1 << 16)));
      low = _mm256_add_epi32(low, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)), w));
      high = _mm256_add_epi32(high, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b)), w));
    }
    low = _mm256_srai_epi32(low, axis.precision);
    high = _mm256_srai_epi32(high, axis.precision);
    // packs works per 128-bit lane: (low0 high0 | low1 high1) -> reorder to (low0 low1 | high0 high1).
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(low, high), 0xD8);
    const __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(output + offset), bytes);
  }
}

}  // namespace

ResampleAxis MakeResampleAxis(int64_t input_size, int64_t output_size, ResampleFilter filter) {
  ResampleAxis axis;
  axis.input_size = input_size;
  axis.output_size = output_size;
  AxisWeights weights = filter == ResampleFilter::kBicubic ? ComputeWeights(input_size, output_size, 4, CubicFilter)
                                                           : ComputeWeights(input_size, output_size, 2, LinearFilter);
  if (filter == ResampleFilter::kBicubic) {
    const AxisWeights fused = ComputeWeights(input_size, output_size, 4, CubicFilterFused);
    axis.exact = fused.weights == weights.weights && fused.precision == weights.precision;
  }
  axis.taps = weights.taps;
  axis.precision = weights.precision;
  axis.first = std::move(weights.first);
  axis.count = std::move(weights.count);
  axis.weights = std::move(weights.weights);
  axis.taps_padded = (axis.taps + 3) / 4 * 4;
  const int groups = axis.taps_padded / 4;
  axis.weights_avx2.assign(static_cast<size_t>(output_size * groups * 16), 0);
  for (int64_t x = 0; x < output_size; ++x) {
    for (int k = 0; k < axis.count[x]; ++k) {
      const int group = k / 4, within = k % 4;
      int16_t* target = &axis.weights_avx2[static_cast<size_t>((x * groups + group) * 16 + (within / 2) * 8)];
      for (int lane_pair = 0; lane_pair < 4; ++lane_pair) target[lane_pair * 2 + within % 2] = axis.weights[x * axis.taps + k];
    }
  }
  return axis;
}

int64_t HorizontalOverreadBytes(const ResampleAxis& axis) { return 3 * static_cast<int64_t>(axis.taps_padded) + 16; }

void ResampleRowHorizontally(const uint8_t* input, const ResampleAxis& axis, int64_t out_begin, int64_t out_end,
                             uint8_t* output, int64_t input_first_column) {
  if (HasAvx2()) {
    HorizontalAvx2(input, axis, out_begin, out_end, output, input_first_column);
  } else {
    HorizontalScalar(input, axis, out_begin, out_end, output, input_first_column);
  }
}

void ResampleRowVertically(const uint8_t* intermediate, int64_t first_row, int64_t stride, int64_t row_bytes,
                           const ResampleAxis& axis, int64_t out_row, uint8_t* output) {
  if (HasAvx2()) {
    VerticalAvx2(intermediate, first_row, stride, row_bytes, axis, out_row, output);
  } else {
    VerticalScalar(intermediate, first_row, stride, row_bytes, axis, out_row, output);
  }
}

}  // namespace flotilla::image
