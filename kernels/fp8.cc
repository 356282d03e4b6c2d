#include "kernels/fp8.h"

#include <algorithm>
#include <cmath>

namespace epx {

uint8_t FloatToE4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= kE4m3Max) return sign | 0x7e;  // saturate to 448 (0x7e = exp 15, man 6)
  // Smallest normal is 2^-6; below it the step is 2^-9 (subnormals).
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int exp = e - 1;    // a in [2^exp, 2^(exp+1))
  if (exp < -6) exp = -6;
  // Quantise to steps of 2^(exp-3) with round-half-even (nearbyint uses the current mode: to-nearest-even).
  const float step = std::ldexp(1.0f, exp - 3);
  float q = std::nearbyint(a / step);  // exact: a/step is a power-of-two scaling
  float v = q * step;
  if (v >= kE4m3Max) return sign | 0x7e;
  if (v == 0.0f) return sign;
  int ve;
  std::frexp(v, &ve);
  int vexp = ve - 1;  // rounding may carry into the next binade
  if (vexp < -6) {    // subnormal: value = man * 2^-9
    return sign | static_cast<uint8_t>(std::lround(std::ldexp(v, 9)));
  }
  const int man = static_cast<int>(std::lround(std::ldexp(v, -vexp) * 8.0f)) - 8;
  return sign | static_cast<uint8_t>(((vexp + 7) << 3) | man);
}

void CastRowToFp8(const bf16* in, int hidden, const Fp8Options& opt, uint8_t* out, void* scales) {
  const int nb = Fp8NumBlocks(hidden);
  float* fs = static_cast<float*>(scales);
  uint8_t* bytes = static_cast<uint8_t*>(scales);
  for (int b = 0; b < nb; ++b) {
    const int c0 = b * kFp8Block, c1 = std::min(hidden, c0 + kFp8Block);
    float amax = kFp8AmaxFloor;
    for (int c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(Bf16ToFloat(in[c])));
    float scale_inv = amax / kE4m3Max;
    float scale;
    if (opt.round_scale) {
      // 2^ceil(log2(scale_inv)) computed on the exponent bits: exact, no libm rounding questions.
      int e;
      float m = std::frexp(scale_inv, &e);  // scale_inv = m * 2^e, m in [0.5, 1)
      scale_inv = (m == 0.5f) ? std::ldexp(1.0f, e - 1) : std::ldexp(1.0f, e);
      scale = 1.0f / scale_inv;  // exact for powers of two in range
    } else {
      scale = kE4m3Max / amax;
    }
    for (int c = c0; c < c1; ++c) out[c] = FloatToE4m3(Bf16ToFloat(in[c]) * scale);
    if (opt.ue8m0) bytes[b] = static_cast<uint8_t>(std::bit_cast<uint32_t>(scale_inv) >> 23);
    else fs[b] = scale_inv;
  }
  if (opt.ue8m0)
    for (int b = nb; b < Ue8m0Words(hidden) * 4; ++b) bytes[b] = 0;  // padding bytes of the last word
}

void CastRowFromFp8(const uint8_t* in, const void* scales, int hidden, bool ue8m0, float* out) {
  const int nb = Fp8NumBlocks(hidden);
  for (int b = 0; b < nb; ++b) {
    float s = ue8m0 ? std::bit_cast<float>(static_cast<uint32_t>(static_cast<const uint8_t*>(scales)[b]) << 23)
                    : static_cast<const float*>(scales)[b];
    const int c0 = b * kFp8Block, c1 = std::min(hidden, c0 + kFp8Block);
    for (int c = c0; c < c1; ++c) out[c] = E4m3ToFloat(in[c]) * s;
  }
}

}  // namespace epx
