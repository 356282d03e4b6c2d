// kernels/dtypes.h: the element types epx moves: BF16 (token rows, expert outputs) and FP8 E4M3
// (dispatch payload), with exact, documented conversions shared by kernels and the serial reference
// (so "bitwise equal to the reference" compares one implementation with itself only where it should).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace epx {

// bfloat16 stored as its bit pattern.
struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2);

inline float Bf16ToFloat(bf16 v) { return std::bit_cast<float>(static_cast<uint32_t>(v.bits) << 16); }

// Round to nearest even; NaN stays a quiet NaN.
inline bf16 FloatToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// FP8 E4M3 ("e4m3fn": bias 7, no infinities, 0x7f/0xff = NaN, max finite 448).
inline constexpr float kE4m3Max = 448.0f;

inline float E4m3ToFloat(uint8_t v) {
  const int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
  float mag;
  if (exp == 0xf && man == 7) return std::nanf("");
  if (exp == 0) mag = std::ldexp(static_cast<float>(man), -9);  // subnormal: man/8 * 2^-6
  else mag = std::ldexp(1.0f + static_cast<float>(man) / 8.0f, exp - 7);
  return sign ? -mag : mag;
}

// Saturating cast: |f| > 448 -> +-448; round to nearest even; NaN -> NaN (0x7f).
uint8_t FloatToE4m3(float f);

}  // namespace epx
