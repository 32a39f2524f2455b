// 16 float32 lanes loaded from float32 or bfloat16 storage, the one load every AVX-512 CPU kernel
// (the row kernels, the skinny linear, paged attention) widens its inputs with: bfloat16 as its
// bits, widened exactly by a 16-bit shift. Internal to kernels/cpu; x86-64 GCC/Clang only.
//
//   const __m512 row = LoadLanes(bits + i);                 // 16 bfloat16 values as float32
//   const __m512 tail = LoadLanes(values + i, tail_mask);   // masked-off lanes are 0
#pragma once

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <cstdint>

namespace flotilla::kernels::cpu {

#define FLOTILLA_AVX512_LOAD __attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline

FLOTILLA_AVX512_LOAD __m512 LoadLanes(const float* source) { return _mm512_loadu_ps(source); }
FLOTILLA_AVX512_LOAD __m512 LoadLanes(const uint16_t* source) {
  const __m512i widened = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(source)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(widened, 16));
}
FLOTILLA_AVX512_LOAD __m512 LoadLanes(const float* source, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, source);
}
FLOTILLA_AVX512_LOAD __m512 LoadLanes(const uint16_t* source, __mmask16 mask) {
  const __m512i widened = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, source));
  return _mm512_castsi512_ps(_mm512_slli_epi32(widened, 16));
}

#undef FLOTILLA_AVX512_LOAD

}  // namespace flotilla::kernels::cpu
#endif
