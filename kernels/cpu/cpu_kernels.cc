#include "kernels/cpu/cpu_kernels.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>

#include "kernels/cpu/avx512_lanes.h"
#include "kernels/cpu/vector_math.h"
#include "kernels/kernels.h"

namespace flotilla::kernels::cpu {
namespace {

// Note [CPU kernel vectorisation]: the row loops are plain C++ that GCC vectorises (`omp simd`,
// -O3 -fno-trapping-math on this file: without the latter GCC will not turn a clamp into a blend);
// each hot function is cloned for AVX-512F and AVX2 and picked at load time, so the library still
// runs on any x86-64. The clones name ISA extensions, not an -march: GCC refuses to inline a default-target
// helper into an "arch=" clone, and an un-inlined helper in a loop stops vectorisation. Rows are
// converted to float32 scratch once, computed on, and rounded back once, so bfloat16 costs two
// cheap conversion passes and no scalar c10 calls. Where the CPU has AVX-512F/BW/VL/DQ, float32 and
// bfloat16 take the intrinsics of Note [Register-resident rows] instead (no scratch passes at
// all); these loops remain for float16 and for other CPUs.
#if defined(__x86_64__) && defined(__GNUC__)
#define FLOTILLA_KERNEL_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FLOTILLA_KERNEL_TARGET_CLONES
#endif

template <typename scalar_t>
inline void LoadRow(const scalar_t* source, float* destination, int64_t count) {
  for (int64_t i = 0; i < count; ++i) destination[i] = static_cast<float>(source[i]);
}
template <>
inline void LoadRow<float>(const float* source, float* destination, int64_t count) {
  std::memcpy(destination, source, static_cast<size_t>(count) * sizeof(float));
}
// Note [bfloat16 rows at full width]: the `avx512f` clones convert 16-bit lanes with 256-bit
// instructions (narrowing and blending 16-bit lanes at 512 bits needs AVX-512BW, which
// `target_clones` cannot name, and an `arch=` clone stops the helpers inlining). Whole chunks are
// therefore converted by these out-of-line AVX-512BW functions when the CPU has it — one call per
// 512 elements — with the same rounding as FloatToBFloat16Bits (to nearest even, NaN -> 0x7FC0).
#if defined(__x86_64__) && defined(__GNUC__)
const bool kHasAvx512Bw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");

__attribute__((target("avx512f,avx512bw"), noinline)) void BFloat16ToFloatAvx512(const uint16_t* source,
                                                                                 float* destination, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512i widened = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(source + i)));
    _mm512_storeu_ps(destination + i, _mm512_castsi512_ps(_mm512_slli_epi32(widened, 16)));
  }
  for (; i < count; ++i) destination[i] = BFloat16BitsToFloat(source[i]);
}

__attribute__((target("avx512f,avx512bw"), always_inline)) inline __m512i FloatToBFloat16Lanes(__m512 values) {
  const __m512i bits = _mm512_castps_si512(values);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(values, values, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
}

__attribute__((target("avx512f,avx512bw"), noinline)) void FloatToBFloat16Avx512(const float* source,
                                                                                 uint16_t* destination, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512i lanes = FloatToBFloat16Lanes(_mm512_loadu_ps(source + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(destination + i), _mm512_cvtepi32_epi16(lanes));
  }
  for (; i < count; ++i) destination[i] = FloatToBFloat16Bits(source[i]);
}

__attribute__((target("avx512f,avx512bw"), noinline)) void RoundToBFloat16Avx512(float* row, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512i lanes = FloatToBFloat16Lanes(_mm512_loadu_ps(row + i));
    _mm512_storeu_ps(row + i, _mm512_castsi512_ps(_mm512_slli_epi32(lanes, 16)));
  }
  for (; i < count; ++i) row[i] = BFloat16BitsToFloat(FloatToBFloat16Bits(row[i]));
}
#else
constexpr bool kHasAvx512Bw = false;
#endif

template <>
inline void LoadRow<c10::BFloat16>(const c10::BFloat16* source, float* destination, int64_t count) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(source);
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasAvx512Bw) return BFloat16ToFloatAvx512(bits, destination, count);
#endif
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) destination[i] = BFloat16BitsToFloat(bits[i]);
}

template <typename scalar_t>
inline void StoreRow(const float* source, scalar_t* destination, int64_t count) {
  for (int64_t i = 0; i < count; ++i) destination[i] = static_cast<scalar_t>(source[i]);
}
template <>
inline void StoreRow<float>(const float* source, float* destination, int64_t count) {
  std::memcpy(destination, source, static_cast<size_t>(count) * sizeof(float));
}
template <>
inline void StoreRow<c10::BFloat16>(const float* source, c10::BFloat16* destination, int64_t count) {
  uint16_t* bits = reinterpret_cast<uint16_t*>(destination);
#if defined(__x86_64__) && defined(__GNUC__)
  if (kHasAvx512Bw) return FloatToBFloat16Avx512(source, bits, count);
#endif
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) bits[i] = FloatToBFloat16Bits(source[i]);
}

// Rounds a float32 scratch row to the storage dtype and back (no-op for float32): the place where
// the eager ops store an intermediate in the dtype.
template <typename scalar_t>
inline void RoundRow(float* row, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (kHasAvx512Bw) return RoundToBFloat16Avx512(row, count);
#endif
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) row[i] = BFloat16BitsToFloat(FloatToBFloat16Bits(row[i]));
  } else if constexpr (!std::is_same_v<scalar_t, float>) {
    for (int64_t i = 0; i < count; ++i) row[i] = static_cast<float>(static_cast<scalar_t>(row[i]));
  }
}

// The rows one parallel task takes: a call splits across threads only from 32768 elements
// (at::internal::GRAIN_SIZE), where the eager elementwise ops it replaces split too. Splitting
// smaller calls (the grains were 16384 and, for rotary, 4096 elements) saved 0.6-2.4 us of a
// 3-7 us call on a quiet machine, but each split is an OpenMP fork and join: with another process
// on the second core, the join waits for that core's time slice, and such calls took 7-8 ms where
// the eager ops, on one thread, did not (two of three full kernels_bench runs, 2026-12-07 15:0x).
inline int64_t RowsPerTask(int64_t row_elements) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(row_elements, 1));
}

// Rows are processed in chunks of kChunk elements converted into float32 stack buffers: no heap
// allocation per call, and the chunk stays in L1 between the passes over it.
constexpr int64_t kChunk = 512;

// A float32 view of `count` elements: float32 operands are read where they are (copying them into
// the chunk buffers took a third of a kernel's time: glibc's memcpy of a 2 KiB chunk runs
// `rep movsq`), others are converted into `buffer`.
template <typename scalar_t>
inline const float* RowAsFloat(const scalar_t* source, float* buffer, int64_t count) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return source;
  } else {
    LoadRow(source, buffer, count);
    return buffer;
  }
}
// Where to compute a chunk whose result goes to `destination`: the destination itself for float32,
// else `buffer` (then StoreRowFrom converts it into place).
template <typename scalar_t>
inline float* ResultRow(scalar_t* destination, float* buffer) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return destination;
  } else {
    return buffer;
  }
}
template <typename scalar_t>
inline void StoreRowFrom(const float* result, scalar_t* destination, int64_t count) {
  if constexpr (!std::is_same_v<scalar_t, float>) StoreRow(result, destination, count);
}

template <typename scalar_t>
FLOTILLA_KERNEL_TARGET_CLONES void RmsNormRows(const scalar_t* input, const scalar_t* residual_in, scalar_t* residual_out,
                                               const scalar_t* weight, scalar_t* output, int64_t begin, int64_t end,
                                               int64_t hidden_size, float epsilon) {
  alignas(64) float x_buffer[kChunk];
  alignas(64) float other_buffer[kChunk];
  for (int64_t index = begin; index < end; ++index) {
    const scalar_t* input_row = input + index * hidden_size;
    // With a residual, the first pass writes residual + input (rounded, as the eager add) into the
    // residual and the second reads it back from there.
    const scalar_t* normalized_source = input_row;
    // Summed in double: eager's float32 mean is a pairwise (cascade) sum, far more accurate than a
    // running float sum over 4096 terms; double keeps this kernel within 1e-6 of it.
    double sum_of_squares = 0.0;
    for (int64_t start = 0; start < hidden_size; start += kChunk) {
      const int64_t count = std::min(kChunk, hidden_size - start);
      const float* x = RowAsFloat(input_row + start, x_buffer, count);
      if (residual_in != nullptr) {
        const float* other = RowAsFloat(residual_in + index * hidden_size + start, other_buffer, count);
        scalar_t* sum_destination = residual_out + index * hidden_size + start;
        float* sum = ResultRow(sum_destination, x_buffer);
#pragma omp simd
        for (int64_t i = 0; i < count; ++i) sum[i] = other[i] + x[i];
        RoundRow<scalar_t>(sum, count);
        StoreRowFrom(sum, sum_destination, count);
        x = sum;
      }
#pragma omp simd reduction(+ : sum_of_squares)
      for (int64_t i = 0; i < count; ++i) sum_of_squares += static_cast<double>(x[i]) * x[i];
    }
    if (residual_in != nullptr) normalized_source = residual_out + index * hidden_size;
    const float variance = static_cast<float>(sum_of_squares / static_cast<double>(hidden_size));
    const float inverse_rms = 1.0f / std::sqrt(variance + epsilon);
    for (int64_t start = 0; start < hidden_size; start += kChunk) {
      const int64_t count = std::min(kChunk, hidden_size - start);
      const float* x = RowAsFloat(normalized_source + start, x_buffer, count);
      const float* scale = RowAsFloat(weight + start, other_buffer, count);
      scalar_t* destination = output + index * hidden_size + start;
      float* result = ResultRow(destination, x_buffer);
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) result[i] = x[i] * inverse_rms;
      // Round to the input dtype before the weight multiply, as the eager module does.
      RoundRow<scalar_t>(result, count);
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) result[i] = scale[i] * result[i];
      StoreRowFrom(result, destination, count);
    }
  }
}

template <typename scalar_t>
FLOTILLA_KERNEL_TARGET_CLONES void SiluAndMulRows(const scalar_t* gate, int64_t gate_stride, const scalar_t* up,
                                                  int64_t up_stride, scalar_t* output, int64_t begin, int64_t end,
                                                  int64_t width) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    // float32 needs no conversion: straight from the operands to the output, no scratch copies
    // (the memcpys into the chunk buffers were a third of this loop's time).
    for (int64_t index = begin; index < end; ++index) {
      const float* gate_row = gate + index * gate_stride;
      const float* up_row = up + index * up_stride;
      float* output_row = output + index * width;
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) {
        output_row[i] = (gate_row[i] / (1.0f + VectorExp(-gate_row[i]))) * up_row[i];
      }
    }
    return;
  }
  alignas(64) float g[kChunk];
  alignas(64) float u[kChunk];
  for (int64_t index = begin; index < end; ++index) {
    for (int64_t start = 0; start < width; start += kChunk) {
      const int64_t count = std::min(kChunk, width - start);
      LoadRow(gate + index * gate_stride + start, g, count);
      LoadRow(up + index * up_stride + start, u, count);
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) g[i] = g[i] / (1.0f + VectorExp(-g[i]));
      // silu rounds to the input dtype before the multiply, as F.silu(gate) * up does.
      RoundRow<scalar_t>(g, count);
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) g[i] = g[i] * u[i];
      StoreRow(g, output + index * width + start, count);
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512bw"), always_inline)) inline __m512 RoundToBFloat16Lanes(__m512 values) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(FloatToBFloat16Lanes(values), 16));
}

// Note [Register-resident rows]: RMSNorm (with or without the residual add), SiLU-and-mul and
// rotary in float32 and bfloat16 run as AVX-512 intrinsics when the CPU has AVX-512F/BW/VL/DQ:
// each 16 lanes are loaded (bfloat16 widened by a shift), computed on and rounded in registers, and
// stored once, so a bfloat16 row costs no float32 scratch passes (the chunked path below converts
// a chunk into a buffer, computes over it, rounds it in place and converts it out: four passes
// over L1 and a call per conversion: in the run before this change the bfloat16 norms were
// 1.6-2.1x eager at 256 tokens, SiLU-and-mul 1.5-2.5x). The tail of a row is the same code under
// a lane mask. float16 and CPUs without AVX-512 take the chunked path.
// Rounding to bfloat16 — each intermediate the eager ops store, and the result — is one
// vcvtneps2bf16 where the CPU has AVX512-BF16 (kNative; Zen 4 and Sapphire Rapids do), else the
// seven-instruction integer sequence of FloatToBFloat16Lanes (as c10: to nearest even, NaN ->
// 0x7FC0). With that sequence the one-pass bfloat16 SiLU measured 1.0-1.55x eager, slower than
// the chunked loop: the SiLU loop is bound by its instruction count (float32: ~15 vector
// instructions per 16 lanes, ~2.6 ns; bfloat16 with the sequence: ~32, ~8 ns; with vcvtneps2bf16
// ~24, ~4.5 ns; with the multiply as vdpbf16ps, below, ~22, ~3.8 ns), not by memory. Both
// round to nearest even; vcvtneps2bf16 differs from c10 only in that it flushes float32 results
// below 2^-126 (1.2e-38) to zero and keeps a NaN's payload (quieted) instead of 0x7FC0 (vdpbf16ps
// likewise reads bfloat16 inputs below 2^-126 as zero), so the kernels equal eager's bits (rotary,
// the residual sum) except where a value is that small.
// Every function here is compiled for AVX512-BF16 too, but only the kNative instantiations contain
// its instructions (intrinsics only: no __bf16 arithmetic), and they run only where the CPU has it.
#define FLOTILLA_AVX512_ROWS __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define FLOTILLA_AVX512_LANES \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16"), always_inline)) inline

const bool kHasAvx512Rows =
    kHasAvx512Bw && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
const bool kHasAvx512BFloat16 = kHasAvx512Rows && __builtin_cpu_supports("avx512bf16");
// SetAvx512RowsForTesting(false, ...) sends every call to the chunked loops, (true, false) the
// bfloat16 rows to the integer rounding.
std::atomic<bool> avx512_rows_enabled{true};
std::atomic<bool> bfloat16_instructions_enabled{true};
bool UseAvx512Rows() { return kHasAvx512Rows && avx512_rows_enabled.load(std::memory_order_relaxed); }
bool UseBFloat16Instructions() {
  return kHasAvx512BFloat16 && bfloat16_instructions_enabled.load(std::memory_order_relaxed);
}

// float32 -> bfloat16 bits: vcvtneps2bf16 when kNative (one instruction), else FloatToBFloat16Lanes.
template <bool kNative>
FLOTILLA_AVX512_LANES __m256i NarrowToBFloat16Lanes(__m512 values) {
  if constexpr (kNative) {
    return (__m256i)_mm512_cvtneps_pbh(values);
  } else {
    return _mm512_cvtepi32_epi16(FloatToBFloat16Lanes(values));
  }
}

// The storage of a row the AVX-512 path handles: float32, or bfloat16 as its bits.
template <typename scalar_t>
struct Avx512Storage {
  using type = void;
};
template <>
struct Avx512Storage<float> {
  using type = float;
};
template <>
struct Avx512Storage<c10::BFloat16> {
  using type = uint16_t;
};
template <typename scalar_t>
auto AsStorage(scalar_t* pointer) {
  using Storage = typename Avx512Storage<std::remove_const_t<scalar_t>>::type;
  if constexpr (std::is_const_v<scalar_t>) {
    return reinterpret_cast<const Storage*>(pointer);
  } else {
    return reinterpret_cast<Storage*>(pointer);
  }
}

constexpr __mmask16 kAllLanes = 0xFFFF;

// Stores `values` in the storage dtype and returns them as stored (rounded for bfloat16).
template <typename Storage, bool kNative>
FLOTILLA_AVX512_LANES __m512 StoreLanes(Storage* destination, __mmask16 mask, __m512 values) {
  if constexpr (std::is_same_v<Storage, float>) {
    _mm512_mask_storeu_ps(destination, mask, values);
    return values;
  } else {
    const __m256i bits = NarrowToBFloat16Lanes<kNative>(values);
    _mm256_mask_storeu_epi16(destination, mask, bits);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
  }
}
// An intermediate the eager ops store in the dtype: rounded to it (no-op for float32).
template <typename Storage, bool kNative>
FLOTILLA_AVX512_LANES __m512 RoundLanes(__m512 values) {
  if constexpr (std::is_same_v<Storage, float>) {
    return values;
  } else if constexpr (kNative) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(NarrowToBFloat16Lanes<true>(values)), 16));
  } else {
    return RoundToBFloat16Lanes(values);
  }
}

// Where rotary's rows are: item = (batch_index * length + position) * rows_per_position + head,
// the query's heads first, then the key's; cos/sin are [batch, length, head_dim] contiguous.
struct RotaryRows {
  int64_t query_heads = 0;
  int64_t rows_per_position = 0;
  int64_t length = 0;
  int64_t head_dim = 0;
  std::array<int64_t, 3> query_strides{};
  std::array<int64_t, 3> key_strides{};
};

// Rows [begin, end) of apply_rotary_pos_emb in place, in registers: for each 16 lanes j of the
// first half, x1 = row[j] and x2 = row[j + half] give
//   row[j]        = round(round(x1 * cos[j]) - round(x2 * sin[j]))
//   row[j + half] = round(round(x2 * cos[j + half]) + round(x1 * sin[j + half])),
// each product rounded to the dtype as the eager ops store it (round(-x) = -round(x), so the
// negated rotate_half is the subtraction). cos/sin are read in the dtype (no float32 copies).
// head_dim a multiple of 32.
template <typename Storage, bool kNative>
FLOTILLA_AVX512_ROWS void RotateRowsAvx512(Storage* query, Storage* key, const Storage* cos, const Storage* sin,
                                           const RotaryRows& rows, int64_t begin, int64_t end) {
  const int64_t half = rows.head_dim / 2;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t head = item % rows.rows_per_position;
    const int64_t position = (item / rows.rows_per_position) % rows.length;
    const int64_t batch_index = item / rows.rows_per_position / rows.length;
    Storage* row = head < rows.query_heads
                       ? query + batch_index * rows.query_strides[0] + head * rows.query_strides[1] +
                             position * rows.query_strides[2]
                       : key + batch_index * rows.key_strides[0] + (head - rows.query_heads) * rows.key_strides[1] +
                             position * rows.key_strides[2];
    const int64_t offset = (batch_index * rows.length + position) * rows.head_dim;
    const Storage* cos_row = cos + offset;
    const Storage* sin_row = sin + offset;
    for (int64_t j = 0; j < half; j += 16) {
      const __m512 first = LoadLanes(row + j, kAllLanes);
      const __m512 second = LoadLanes(row + j + half, kAllLanes);
      const __m512 new_first =
          _mm512_sub_ps(RoundLanes<Storage, kNative>(_mm512_mul_ps(first, LoadLanes(cos_row + j, kAllLanes))),
                        RoundLanes<Storage, kNative>(_mm512_mul_ps(second, LoadLanes(sin_row + j, kAllLanes))));
      const __m512 new_second = _mm512_add_ps(
          RoundLanes<Storage, kNative>(_mm512_mul_ps(second, LoadLanes(cos_row + j + half, kAllLanes))),
          RoundLanes<Storage, kNative>(_mm512_mul_ps(first, LoadLanes(sin_row + j + half, kAllLanes))));
      StoreLanes<Storage, kNative>(row + j, kAllLanes, new_first);
      StoreLanes<Storage, kNative>(row + j + half, kAllLanes, new_second);
    }
  }
}

// residual_out = round(residual_in + input) when kWithResidual; the squares of what is normalised
// summed in double (as RmsNormRows: within 1e-6 of eager's pairwise float32 mean).
template <typename Storage, bool kNative, bool kWithResidual>
FLOTILLA_AVX512_LANES void SumSquaresLanes(const Storage* input, const Storage* residual_in, Storage* residual_out,
                                           __mmask16 mask, __m512d& sum_low, __m512d& sum_high) {
  __m512 x = LoadLanes(input, mask);
  if constexpr (kWithResidual) {
    x = StoreLanes<Storage, kNative>(residual_out, mask, _mm512_add_ps(LoadLanes(residual_in, mask), x));
  }
  const __m512d low = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
  const __m512d high = _mm512_cvtps_pd(_mm512_extractf32x8_ps(x, 1));
  sum_low = _mm512_fmadd_pd(low, low, sum_low);
  sum_high = _mm512_fmadd_pd(high, high, sum_high);
}

// weight * round(x * inverse_rms), as the eager module rounds before the weight multiply.
template <typename Storage, bool kNative>
FLOTILLA_AVX512_LANES void NormalizeLanes(const Storage* source, const Storage* weight, Storage* destination,
                                          __mmask16 mask, __m512 inverse_rms) {
  const __m512 normalized = RoundLanes<Storage, kNative>(_mm512_mul_ps(LoadLanes(source, mask), inverse_rms));
  StoreLanes<Storage, kNative>(destination, mask, _mm512_mul_ps(LoadLanes(weight, mask), normalized));
}

template <typename Storage, bool kNative, bool kWithResidual>
FLOTILLA_AVX512_ROWS void RmsNormRowsAvx512(const Storage* input, const Storage* residual_in, Storage* residual_out,
                                            const Storage* weight, Storage* output, int64_t begin, int64_t end,
                                            int64_t hidden_size, float epsilon) {
  const int64_t full = hidden_size - hidden_size % 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (hidden_size - full)) - 1u);
  for (int64_t index = begin; index < end; ++index) {
    const int64_t offset = index * hidden_size;
    const Storage* input_row = input + offset;
    Storage* output_row = output + offset;
    // Without a residual these are not read or written (placeholders, so no arithmetic on null).
    const Storage* residual_row = kWithResidual ? residual_in + offset : input_row;
    Storage* sum_row = kWithResidual ? residual_out + offset : output_row;
    // Four double accumulators: two chains of dependent FMAs would bound the loop by their latency.
    __m512d sums[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
    int64_t j = 0;
    for (; j + 32 <= full; j += 32) {
      SumSquaresLanes<Storage, kNative, kWithResidual>(input_row + j, residual_row + j, sum_row + j, kAllLanes, sums[0],
                                              sums[1]);
      SumSquaresLanes<Storage, kNative, kWithResidual>(input_row + j + 16, residual_row + j + 16, sum_row + j + 16,
                                                       kAllLanes,
                                              sums[2], sums[3]);
    }
    if (j < full) {
      SumSquaresLanes<Storage, kNative, kWithResidual>(input_row + j, residual_row + j, sum_row + j, kAllLanes, sums[0],
                                              sums[1]);
      j += 16;
    }
    if (tail != 0) {
      SumSquaresLanes<Storage, kNative, kWithResidual>(input_row + j, residual_row + j, sum_row + j, tail, sums[2],
                                                       sums[3]);
    }
    const double sum_of_squares = _mm512_reduce_add_pd(
        _mm512_add_pd(_mm512_add_pd(sums[0], sums[1]), _mm512_add_pd(sums[2], sums[3])));
    const float variance = static_cast<float>(sum_of_squares / static_cast<double>(hidden_size));
    const __m512 inverse_rms = _mm512_set1_ps(1.0f / std::sqrt(variance + epsilon));
    // With a residual the sum is read back from residual_out, where the first pass rounded it.
    const Storage* source = kWithResidual ? sum_row : input_row;
    for (j = 0; j < full; j += 16) {
      NormalizeLanes<Storage, kNative>(source + j, weight + j, output_row + j, kAllLanes, inverse_rms);
    }
    if (tail != 0) NormalizeLanes<Storage, kNative>(source + j, weight + j, output_row + j, tail, inverse_rms);
  }
}

// silu(gate) = gate / (1 + exp(-gate)), with exp(-gate) = 2^t, t = -gate * log2(e), split as
// n = round(t) and f = t - n in [-0.5, 0.5]: 2^f is a degree-6 polynomial (a Chebyshev fit to
// relative error, 1e-7 in float32 Horner: as VectorExp's Cephes polynomial) and vscalefps multiplies
// by 2^n, saturating as IEEE does (inf above, 0 below) without an exponent clamp. This costs
// 9 multiply-class operations per 16 lanes against Cephes' 13 (the FMA pipes bound this loop).
// Rounding t itself errs by |t| * 2^-24 relative, which the silu damps by exp(-gate) / (1 +
// exp(-gate))^2 <= 1/4: within float32's rounding of the result. Any finite t works (f stays in
// [-0.5, 0.5]; from 2^23 on, n = t and f = 0); t = -inf (gate = +inf) is raised to -150, where 2^t
// is 0 already, so that silu(+inf) = +inf as eager's, not inf - inf; gate = -inf gives NaN as
// eager's -inf / inf does, and a NaN passes through (vmaxps returns its second operand then).
FLOTILLA_AVX512_LANES __m512 SiluLanes(__m512 gate) {
  __m512 t = _mm512_mul_ps(gate, _mm512_set1_ps(-1.44269504088896341f));
  t = _mm512_max_ps(_mm512_set1_ps(-150.0f), t);
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(1.53375775e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.33998599e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.61851981e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.55032901e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.40226462e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.93147182e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512 exp_negated = _mm512_scalef_ps(p, n);
  return _mm512_div_ps(gate, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_negated));
}

// round(round(silu(gate)) * up): silu rounds to the dtype before the multiply, as F.silu(gate) * up.
template <typename Storage, bool kNative>
FLOTILLA_AVX512_LANES void SiluAndMulLanes(const Storage* gate, const Storage* up, Storage* output, __mmask16 mask) {
  if constexpr (kNative) {
    // The product of two bfloat16 values is exact in float32, so vdpbf16ps on (value, 0) pairs —
    // each 16-bit value zero-extended into its 32-bit lane — computes it without widening either
    // operand to float32 first.
    const __m512i activated = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(SiluLanes(LoadLanes(gate, mask))));
    const __m512i up_pairs = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, up));
    StoreLanes<Storage, kNative>(output, mask,
                                 _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)activated, (__m512bh)up_pairs));
    return;
  }
  const __m512 activated = RoundLanes<Storage, kNative>(SiluLanes(LoadLanes(gate, mask)));
  StoreLanes<Storage, kNative>(output, mask, _mm512_mul_ps(activated, LoadLanes(up, mask)));
}

// Note [Streamed SiLU output]: a float32 output of 8 MiB or more (256 tokens x 11008 is 11 MiB,
// with 22 MiB of inputs: more than the 32 MiB L3 holds together) is written with non-temporal
// stores, which skip reading each output line into the cache before overwriting it. With ordinary
// stores that shape ran at 1.2-2.7x of eager from run to run, depending on what the cache held.
constexpr int64_t kStreamedSiluOutputBytes = 8 << 20;

template <typename Storage, bool kNative>
FLOTILLA_AVX512_ROWS void SiluAndMulRowsAvx512(const Storage* gate, int64_t gate_stride, const Storage* up,
                                               int64_t up_stride, Storage* output, int64_t begin, int64_t end,
                                               int64_t width, bool streamed) {
  const int64_t full = width - width % 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (width - full)) - 1u);
  for (int64_t index = begin; index < end; ++index) {
    const Storage* gate_row = gate + index * gate_stride;
    const Storage* up_row = up + index * up_stride;
    Storage* output_row = output + index * width;
    int64_t j = 0;
    if constexpr (std::is_same_v<Storage, float>) {
      if (streamed) {
        for (; j < full; j += 16) {
          const __m512 activated = SiluLanes(_mm512_loadu_ps(gate_row + j));
          _mm512_stream_ps(output_row + j, _mm512_mul_ps(activated, _mm512_loadu_ps(up_row + j)));
        }
      }
    }
    for (; j < full; j += 16) SiluAndMulLanes<Storage, kNative>(gate_row + j, up_row + j, output_row + j, kAllLanes);
    if (tail != 0) SiluAndMulLanes<Storage, kNative>(gate_row + j, up_row + j, output_row + j, tail);
  }
  if (streamed) _mm_sfence();  // the streamed stores are seen before the task reports done
}
#endif

// The AVX-512 rows where they apply (Note [Register-resident rows]), else the chunked loops.
template <typename scalar_t>
void RmsNormRowsDispatch(const scalar_t* input, const scalar_t* residual_in, scalar_t* residual_out,
                         const scalar_t* weight, scalar_t* output, int64_t begin, int64_t end, int64_t hidden_size,
                         float epsilon) {
#if defined(__x86_64__) && defined(__GNUC__)
  using Storage = typename Avx512Storage<scalar_t>::type;
  if constexpr (!std::is_void_v<Storage>) {
    if (UseAvx512Rows()) {
      auto run = [&]<bool kNative>() {
        if (residual_in != nullptr) {
          RmsNormRowsAvx512<Storage, kNative, true>(AsStorage(input), AsStorage(residual_in), AsStorage(residual_out),
                                                    AsStorage(weight), AsStorage(output), begin, end, hidden_size,
                                                    epsilon);
        } else {
          RmsNormRowsAvx512<Storage, kNative, false>(AsStorage(input), nullptr, nullptr, AsStorage(weight),
                                                     AsStorage(output), begin, end, hidden_size, epsilon);
        }
      };
      if (std::is_same_v<Storage, uint16_t> && UseBFloat16Instructions()) {
        run.template operator()<true>();
      } else {
        run.template operator()<false>();
      }
      return;
    }
  }
#endif
  RmsNormRows<scalar_t>(input, residual_in, residual_out, weight, output, begin, end, hidden_size, epsilon);
}

template <typename scalar_t>
void SiluAndMulRowsDispatch(const scalar_t* gate, int64_t gate_stride, const scalar_t* up, int64_t up_stride,
                            scalar_t* output, int64_t begin, int64_t end, int64_t width, int64_t output_bytes) {
#if defined(__x86_64__) && defined(__GNUC__)
  using Storage = typename Avx512Storage<scalar_t>::type;
  if constexpr (!std::is_void_v<Storage>) {
    if (UseAvx512Rows()) {
      if (std::is_same_v<Storage, uint16_t> && UseBFloat16Instructions()) {
        SiluAndMulRowsAvx512<Storage, true>(AsStorage(gate), gate_stride, AsStorage(up), up_stride, AsStorage(output),
                                            begin, end, width, false);
      } else {
        // Note [Streamed SiLU output]: every row starts on a 64-byte line, as the stores need.
        const bool streamed = std::is_same_v<Storage, float> && output_bytes >= kStreamedSiluOutputBytes &&
                              reinterpret_cast<uintptr_t>(output) % 64 == 0 && (width * sizeof(float)) % 64 == 0;
        SiluAndMulRowsAvx512<Storage, false>(AsStorage(gate), gate_stride, AsStorage(up), up_stride,
                                             AsStorage(output), begin, end, width, streamed);
      }
      return;
    }
  }
#endif
  SiluAndMulRows<scalar_t>(gate, gate_stride, up, up_stride, output, begin, end, width);
}


// One row of apply_rotary_pos_emb in place. Each of q*cos, rotate_half(q)*sin and their sum is
// rounded to the dtype, as the three eager ops store them.
template <typename scalar_t>
FLOTILLA_KERNEL_TARGET_CLONES void RotateRow(scalar_t* row, const float* cos, const float* sin, float* scratch,
                                             float* rotated, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  LoadRow(row, scratch, head_dim);
  for (int64_t i = 0; i < half; ++i) rotated[i] = -scratch[i + half];
  for (int64_t i = half; i < head_dim; ++i) rotated[i] = scratch[i - half];
#pragma omp simd
  for (int64_t i = 0; i < head_dim; ++i) {
    scratch[i] = scratch[i] * cos[i];
    rotated[i] = rotated[i] * sin[i];
  }
  RoundRow<scalar_t>(scratch, head_dim);
  RoundRow<scalar_t>(rotated, head_dim);
#pragma omp simd
  for (int64_t i = 0; i < head_dim; ++i) scratch[i] = scratch[i] + rotated[i];
  StoreRow(scratch, row, head_dim);
}

void CheckRotaryOperand(const at::Tensor& tensor, const char* name, const at::Tensor& cos) {
  TORCH_CHECK(tensor.dim() == 4, "RotaryEmbeddingInPlace: ", name, " must be [batch, heads, length, head_dim] but is ",
              tensor.sizes());
  TORCH_CHECK(tensor.size(0) == cos.size(0) && tensor.size(2) == cos.size(1) && tensor.size(3) == cos.size(2),
              "RotaryEmbeddingInPlace: ", name, " ", tensor.sizes(), " does not match cos/sin ", cos.sizes());
  TORCH_CHECK(tensor.size(3) == 0 || tensor.stride(3) == 1, "RotaryEmbeddingInPlace: ", name,
              "'s last dimension must be contiguous but its strides are ", tensor.strides());
  TORCH_CHECK(tensor.scalar_type() == cos.scalar_type(), "RotaryEmbeddingInPlace: ", name, " dtype ",
              tensor.scalar_type(), " differs from cos/sin dtype ", cos.scalar_type());
}

}  // namespace

void SetAvx512RowsForTesting(bool enabled, bool bfloat16_instructions) {
#if defined(__x86_64__) && defined(__GNUC__)
  avx512_rows_enabled.store(enabled, std::memory_order_relaxed);
  bfloat16_instructions_enabled.store(bfloat16_instructions, std::memory_order_relaxed);
#else
  (void)enabled;
  (void)bfloat16_instructions;
#endif
}

bool UseBFloat16DotProducts() {
#if defined(__x86_64__) && defined(__GNUC__)
  return UseAvx512Rows() && UseBFloat16Instructions();
#else
  return false;
#endif
}

at::Tensor RmsNorm(const at::Tensor& hidden_states, const at::Tensor& weight, double epsilon) {
  at::Tensor no_residual;
  TORCH_CHECK(hidden_states.dim() >= 1, "RmsNorm: hidden_states must have at least one dimension");
  const int64_t hidden_size = hidden_states.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == hidden_size, "RmsNorm: weight must be [", hidden_size,
              "] but is ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == hidden_states.scalar_type(), "RmsNorm: weight dtype ", weight.scalar_type(),
              " differs from hidden_states dtype ", hidden_states.scalar_type());
  const at::Tensor input = hidden_states.contiguous();
  const at::Tensor weight_contiguous = weight.contiguous();
  at::Tensor output = at::empty_like(input);
  const int64_t rows = hidden_size == 0 ? 0 : input.numel() / hidden_size;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "RmsNorm", [&] {
    const scalar_t* input_data = input.const_data_ptr<scalar_t>();
    const scalar_t* weight_data = weight_contiguous.const_data_ptr<scalar_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, RowsPerTask(hidden_size), [&](int64_t begin, int64_t end) {
      RmsNormRowsDispatch<scalar_t>(input_data, nullptr, nullptr, weight_data, output_data, begin, end, hidden_size,
                                    static_cast<float>(epsilon));
    });
  });
  return output;
}

namespace {

// residual_out = residual + hidden_states (rounded, as the eager add), returns RmsNorm of it;
// residual_out may be residual itself (the in-place form).
at::Tensor AddRmsNormInto(const char* name, const at::Tensor& hidden_states, const at::Tensor& residual,
                          at::Tensor& residual_out, const at::Tensor& weight, double epsilon) {
  TORCH_CHECK(hidden_states.dim() >= 1, name, ": hidden_states must have at least one dimension");
  TORCH_CHECK(residual.sizes() == hidden_states.sizes() && residual.scalar_type() == hidden_states.scalar_type(),
              name, ": residual ", residual.sizes(), " ", residual.scalar_type(), " must match hidden_states ",
              hidden_states.sizes(), " ", hidden_states.scalar_type());
  TORCH_CHECK(residual_out.is_contiguous(), name, ": the sum is written in place and must be contiguous");
  const int64_t hidden_size = hidden_states.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == hidden_size, name, ": weight must be [", hidden_size,
              "] but is ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == hidden_states.scalar_type(), name, ": weight dtype ", weight.scalar_type(),
              " differs from hidden_states dtype ", hidden_states.scalar_type());
  const at::Tensor input = hidden_states.contiguous();
  const at::Tensor residual_in = residual.contiguous();  // residual_out itself when that is residual
  const at::Tensor weight_contiguous = weight.contiguous();
  at::Tensor output = at::empty_like(input);
  const int64_t rows = hidden_size == 0 ? 0 : input.numel() / hidden_size;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "AddRmsNorm", [&] {
    scalar_t* residual_out_data = residual_out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, RowsPerTask(hidden_size), [&](int64_t begin, int64_t end) {
      RmsNormRowsDispatch<scalar_t>(input.const_data_ptr<scalar_t>(), residual_in.const_data_ptr<scalar_t>(),
                                    residual_out_data, weight_contiguous.const_data_ptr<scalar_t>(),
                                    output.mutable_data_ptr<scalar_t>(), begin, end, hidden_size,
                                    static_cast<float>(epsilon));
    });
  });
  return output;
}

}  // namespace

at::Tensor FusedAddRmsNorm(const at::Tensor& hidden_states, at::Tensor& residual, const at::Tensor& weight,
                           double epsilon) {
  return AddRmsNormInto("FusedAddRmsNorm", hidden_states, residual, residual, weight, epsilon);
}

std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& hidden_states, const at::Tensor& residual,
                                             const at::Tensor& weight, double epsilon) {
  at::Tensor sum = at::empty(hidden_states.sizes(), hidden_states.options());
  at::Tensor normalized = AddRmsNormInto("AddRmsNorm", hidden_states, residual, sum, weight, epsilon);
  return {std::move(normalized), std::move(sum)};
}

at::Tensor SiluAndMul(const at::Tensor& gate_and_up) {
  TORCH_CHECK(gate_and_up.dim() >= 1 && gate_and_up.size(-1) % 2 == 0,
              "SiluAndMul: the last dimension must be even (gate and up halves) but is ", gate_and_up.sizes());
  const int64_t width = gate_and_up.size(-1) / 2;
  const at::Tensor input = gate_and_up.contiguous();
  std::vector<int64_t> output_shape = input.sizes().vec();
  output_shape.back() = width;
  at::Tensor output = at::empty(output_shape, input.options());
  const int64_t rows = width == 0 ? 0 : input.numel() / (2 * width);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "SiluAndMul", [&] {
    const scalar_t* input_data = input.const_data_ptr<scalar_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, RowsPerTask(width), [&](int64_t begin, int64_t end) {
      SiluAndMulRowsDispatch<scalar_t>(input_data, 2 * width, input_data + width, 2 * width, output_data, begin, end,
                                       width, output.nbytes());
    });
  });
  return output;
}

at::Tensor SiluAndMul(const at::Tensor& gate, const at::Tensor& up) {
  TORCH_CHECK(gate.dim() >= 1 && gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type(),
              "SiluAndMul: gate ", gate.sizes(), " ", gate.scalar_type(), " and up ", up.sizes(), " ",
              up.scalar_type(), " must have one shape and dtype");
  const int64_t width = gate.size(-1);
  const at::Tensor gate_contiguous = gate.contiguous();
  const at::Tensor up_contiguous = up.contiguous();
  at::Tensor output = at::empty(gate.sizes(), gate.options());
  const int64_t rows = width == 0 ? 0 : gate.numel() / width;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate.scalar_type(), "SiluAndMul", [&] {
    const scalar_t* gate_data = gate_contiguous.const_data_ptr<scalar_t>();
    const scalar_t* up_data = up_contiguous.const_data_ptr<scalar_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, RowsPerTask(width), [&](int64_t begin, int64_t end) {
      SiluAndMulRowsDispatch<scalar_t>(gate_data, width, up_data, width, output_data, begin, end, width,
                                       output.nbytes());
    });
  });
  return output;
}

void RotaryEmbeddingInPlace(at::Tensor& query, at::Tensor& key, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(cos.dim() == 3 && sin.sizes() == cos.sizes() && sin.scalar_type() == cos.scalar_type(),
              "RotaryEmbeddingInPlace: cos ", cos.sizes(), " and sin ", sin.sizes(),
              " must both be [batch, length, head_dim] of one dtype");
  TORCH_CHECK(cos.size(2) % 2 == 0, "RotaryEmbeddingInPlace: head_dim must be even but is ", cos.size(2));
  CheckRotaryOperand(query, "query", cos);
  CheckRotaryOperand(key, "key", cos);
  const int64_t batch = cos.size(0);
  const int64_t length = cos.size(1);
  const int64_t head_dim = cos.size(2);
  if (batch == 0 || length == 0 || head_dim == 0) return;
  const int64_t query_heads = query.size(1);
  const int64_t key_heads = key.size(1);
  const int64_t rows_per_position = query_heads + key_heads;
#if defined(__x86_64__) && defined(__GNUC__)
  const at::ScalarType type = query.scalar_type();
  if (UseAvx512Rows() && head_dim % 32 == 0 && (type == at::kFloat || type == at::kBFloat16)) {
    const at::Tensor cos_contiguous = cos.contiguous();
    const at::Tensor sin_contiguous = sin.contiguous();
    const RotaryRows rows{.query_heads = query_heads,
                          .rows_per_position = rows_per_position,
                          .length = length,
                          .head_dim = head_dim,
                          .query_strides = {query.stride(0), query.stride(1), query.stride(2)},
                          .key_strides = {key.stride(0), key.stride(1), key.stride(2)}};
    auto run = [&]<typename Storage, bool kNative>() {
      Storage* query_data = static_cast<Storage*>(query.data_ptr());
      Storage* key_data = static_cast<Storage*>(key.data_ptr());
      const Storage* cos_data = static_cast<const Storage*>(cos_contiguous.const_data_ptr());
      const Storage* sin_data = static_cast<const Storage*>(sin_contiguous.const_data_ptr());
      at::parallel_for(0, batch * length * rows_per_position, RowsPerTask(head_dim),
                       [&](int64_t begin, int64_t end) {
                         RotateRowsAvx512<Storage, kNative>(query_data, key_data, cos_data, sin_data, rows, begin,
                                                            end);
                       });
    };
    if (type == at::kFloat) {
      run.template operator()<float, false>();
    } else if (UseBFloat16Instructions()) {
      run.template operator()<uint16_t, true>();
    } else {
      run.template operator()<uint16_t, false>();
    }
    return;
  }
#endif
  // cos/sin in float32 once ([batch, length, head_dim]), shared by every head.
  const at::Tensor cos_float = cos.to(at::kFloat).contiguous();
  const at::Tensor sin_float = sin.to(at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "RotaryEmbeddingInPlace", [&] {
    scalar_t* query_data = query.mutable_data_ptr<scalar_t>();
    scalar_t* key_data = key.mutable_data_ptr<scalar_t>();
    const float* cos_data = cos_float.const_data_ptr<float>();
    const float* sin_data = sin_float.const_data_ptr<float>();
    at::parallel_for(0, batch * length * rows_per_position, RowsPerTask(head_dim),
                     [&](int64_t begin, int64_t end) {
                       std::vector<float> scratch(static_cast<size_t>(head_dim)), rotated(static_cast<size_t>(head_dim));
                       for (int64_t item = begin; item < end; ++item) {
                         const int64_t row = item % rows_per_position;
                         const int64_t position = (item / rows_per_position) % length;
                         const int64_t batch_index = item / rows_per_position / length;
                         scalar_t* target =
                             row < query_heads
                                 ? query_data + batch_index * query.stride(0) + row * query.stride(1) +
                                       position * query.stride(2)
                                 : key_data + batch_index * key.stride(0) + (row - query_heads) * key.stride(1) +
                                       position * key.stride(2);
                         const int64_t offset = (batch_index * length + position) * head_dim;
                         RotateRow<scalar_t>(target, cos_data + offset, sin_data + offset, scratch.data(),
                                             rotated.data(), head_dim);
                       }
                     });
  });
}

}  // namespace flotilla::kernels::cpu
