// Small inline float helpers the CPU kernels' vectorised loops call (each inlines into the caller's
// AVX2 / AVX-512 clone, so the loop around it still vectorises). Internal to kernels/cpu.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

namespace flotilla::kernels::cpu {

// bfloat16 <-> float32 as c10::BFloat16 does it (round to nearest even, NaN kept a quiet NaN),
// written on bits so that the loops vectorise.
inline float BFloat16BitsToFloat(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }
inline uint16_t FloatToBFloat16Bits(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint32_t rounded = (bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16;
  return value != value ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
}

// exp for the SiLU and the softmax: Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial), within
// two float32 ulps of std::exp where the result is a normal float, and vectorisable where std::exp
// is a call. The range is clamped on the integer exponent, not on x: a float clamp becomes a select
// that GCC if-converts by computing the division in silu for the clamped value in every lane, and
// that division's denormal results cost a microcode assist per vector (measured: 6x slower).
// Beyond the clamp the result saturates (to 0 or inf), where silu is -0 or g. x itself is first
// held to [-87.3, 88.7] with min and max (vminps/vmaxps, no select; NaN passes through): beyond
// about 1e7 the rounding below no longer rounds and the reduced argument is as large as x, so the
// polynomial overflowed to -inf for x <= -1e7 and silu of a gate of 1e7 or more came out 0. Held
// there, exp stays a normal float (1.2e-38 .. 3.4e38): silu of a gate below -88.7 is g / 3.4e38,
// at most 1e-6 of the gate's magnitude where eager gives -0.
inline float VectorExp(float x) {
  x = std::min(std::max(x, -87.33654f), 88.72283f);
  // Round to nearest by adding and removing 1.5 * 2^23 (no floor call, so the loop vectorises).
  const float rounded = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const int32_t exponent = std::min(std::max(static_cast<int32_t>(rounded), -126), 127);
  const float n = static_cast<float>(exponent);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  return y * std::bit_cast<float>((exponent + 127) << 23);
}

}  // namespace flotilla::kernels::cpu
