#include "kernels/fp8.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace epx {
namespace {

// The scalar FloatToE4m3 that kernels/fp8.cc had before its bit-manipulation rewrite, kept verbatim as the
// specification: the kernel must give the same code for every input.
uint8_t ReferenceFloatToE4m3(float f) {
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

// The CastRowToFp8 of the same revision, on ReferenceFloatToE4m3.
void ReferenceCastRowToFp8(const bf16* in, int hidden, const Fp8Options& opt, uint8_t* out, void* scales) {
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
      int e;
      float m = std::frexp(scale_inv, &e);  // scale_inv = m * 2^e, m in [0.5, 1)
      scale_inv = (m == 0.5f) ? std::ldexp(1.0f, e - 1) : std::ldexp(1.0f, e);
      scale = 1.0f / scale_inv;
    } else {
      scale = kE4m3Max / amax;
    }
    for (int c = c0; c < c1; ++c) out[c] = ReferenceFloatToE4m3(Bf16ToFloat(in[c]) * scale);
    if (opt.ue8m0)
      bytes[b] = static_cast<uint8_t>(std::bit_cast<uint32_t>(scale_inv) >> 23);
    else
      fs[b] = scale_inv;
  }
  if (opt.ue8m0)
    for (int b = nb; b < Ue8m0Words(hidden) * 4; ++b) bytes[b] = 0;
}

std::vector<float> FiniteE4m3Values() {
  std::vector<float> v;
  for (int c = 0; c < 128; ++c)
    if (c != 0x7f) v.push_back(E4m3ToFloat(static_cast<uint8_t>(c)));
  return v;  // non-negative codes 0..0x7e, increasing
}

TEST(Fp8, DecodeKnownCodes) {
  EXPECT_EQ(E4m3ToFloat(0x00), 0.0f);
  EXPECT_EQ(E4m3ToFloat(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(E4m3ToFloat(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(E4m3ToFloat(0x38), 1.0f);
  EXPECT_EQ(E4m3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(E4m3ToFloat(0xfe), -448.0f);
  EXPECT_TRUE(std::isnan(E4m3ToFloat(0x7f)));
}

TEST(Fp8, EveryCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) continue;
    EXPECT_EQ(FloatToE4m3(E4m3ToFloat(static_cast<uint8_t>(c))), c) << "code " << c;
  }
}

TEST(Fp8, RoundsToNearestEvenAndSaturates) {
  auto vals = FiniteE4m3Values();
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> mag(-12.0f, 9.5f);
  for (int i = 0; i < 200000; ++i) {
    float x = std::exp2(mag(rng)) * (rng() & 1 ? -1.0f : 1.0f);
    uint8_t q = FloatToE4m3(x);
    float a = std::fabs(x), got = std::fabs(E4m3ToFloat(q));
    ASSERT_EQ(q & 0x80, x < 0 ? 0x80 : 0) << x;
    if (a >= 448.0f) {
      ASSERT_EQ(got, 448.0f) << x;
      continue;
    }
    // Brute force: the nearest representable value; ties go to the even code.
    float best = 0;
    int best_code = 0;
    for (size_t c = 0; c < vals.size(); ++c) {
      float d = std::fabs(vals[c] - a), bd = std::fabs(best - a);
      if (d < bd || (d == bd && (c % 2 == 0))) best = vals[c], best_code = static_cast<int>(c);
    }
    ASSERT_EQ(q & 0x7f, best_code) << "x=" << x << " got " << got << " want " << best;
  }
  EXPECT_EQ(FloatToE4m3(1e9f), 0x7e);
  EXPECT_EQ(FloatToE4m3(-1e9f), 0xfe);
  EXPECT_EQ(FloatToE4m3(std::nanf("")), 0x7f);
}

std::vector<bf16> RandomRow(int h, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 3.0f);
  std::vector<bf16> r(h);
  for (auto& v : r) v = FloatToBf16(n(rng));
  return r;
}

TEST(Fp8, RowCastScalesAndErrorBound) {
  const int h = 7168 + 40;  // last block narrower than 128
  auto row = RandomRow(h, 7);
  std::vector<uint8_t> q(h);
  std::vector<float> s(Fp8NumBlocks(h)), back(h);
  CastRowToFp8(row.data(), h, {}, q.data(), s.data());
  CastRowFromFp8(q.data(), s.data(), h, false, back.data());
  for (int b = 0; b < Fp8NumBlocks(h); ++b) {
    float amax = 1e-4f;
    for (int c = b * 128; c < std::min(h, b * 128 + 128); ++c) amax = std::max(amax, std::fabs(Bf16ToFloat(row[c])));
    EXPECT_EQ(s[b], amax / 448.0f) << "block " << b;
  }
  for (int c = 0; c < h; ++c) {
    float x = Bf16ToFloat(row[c]);
    EXPECT_LE(std::fabs(back[c] - x), std::fabs(x) / 16 + s[c / 128] * 0.002f + 1e-6f) << c;  // 3 mantissa bits
  }
}

TEST(Fp8, RoundScaleAndUe8m0) {
  const int h = 512;
  auto row = RandomRow(h, 9);
  std::vector<uint8_t> q1(h), q2(h);
  std::vector<float> s1(4);
  std::vector<uint32_t> s2(Ue8m0Words(h));
  CastRowToFp8(row.data(), h, {true, false}, q1.data(), s1.data());
  CastRowToFp8(row.data(), h, {true, true}, q2.data(), s2.data());
  EXPECT_EQ(q1, q2);  // same payload, scales only packed differently
  for (int b = 0; b < 4; ++b) {
    int e;
    EXPECT_EQ(std::frexp(s1[b], &e), 0.5f) << "scale " << s1[b] << " is not a power of two";
    float amax = 1e-4f;
    for (int c = b * 128; c < b * 128 + 128; ++c) amax = std::max(amax, std::fabs(Bf16ToFloat(row[c])));
    EXPECT_GE(s1[b], amax / 448.0f);
    EXPECT_LT(s1[b], 2 * amax / 448.0f);
    uint8_t byte = reinterpret_cast<uint8_t*>(s2.data())[b];
    EXPECT_EQ(std::bit_cast<float>(static_cast<uint32_t>(byte) << 23), s1[b]);
  }
  std::vector<float> b1(h), b2(h);
  CastRowFromFp8(q1.data(), s1.data(), h, false, b1.data());
  CastRowFromFp8(q2.data(), s2.data(), h, true, b2.data());
  EXPECT_EQ(b1, b2);
}

// FloatToE4m3 (bit manipulation) against ReferenceFloatToE4m3, bit pattern by bit pattern. All 2^32 floats
// would take about 3 minutes in the debug build (the reference alone costs ~40 ns a call there), so:
//  * dense: both signs and every exponent of [2^-17, 2^11), a range that holds [-1024, 1024], every E4M3
//    value, rounding boundary (the lowest, 2^-10, is half the smallest subnormal step) and the saturation at
//    448; all 2^15 values of the top 15 mantissa bits, and 16 values of the low 8 (0, 1, 2, 0x7f, 0x80,
//    0x81, 0xfe, 0xff and 8 that vary with the top bits: together every low byte, many times). Rounding to
//    3 mantissa bits (fewer for subnormal codes) keeps mantissa bits 20 and up and reads the round bit at
//    bit 19 or higher, all in the exhaustive part; the low 8 bits only take part in the sticky bit, whose
//    zero case (ties) the sample 0 covers and whose smallest nonzero case the sample 1 covers.
//  * sparse: both signs and every exponent 0..255 (float subnormals, +-inf, NaN payloads), with 2048
//    random mantissas and 16 edge mantissas each;
//  * a list of special values (zeros, infinities, quiet and signalling NaNs of both signs, float extremes).
TEST(Fp8, FloatToE4m3MatchesReference) {
  int64_t checked = 0, mismatches = 0, batch_mismatches = 0;
  // FloatsToE4m3 (the row cast's vector kernel on this CPU) sees the same floats, in batches.
  std::vector<float> batch;
  std::vector<uint8_t> codes;
  auto flush = [&] {
    codes.assign(batch.size(), 0);
    FloatsToE4m3(batch.data(), batch.size(), codes.data());
    for (size_t i = 0; i < batch.size(); ++i) {
      const uint8_t want = ReferenceFloatToE4m3(batch[i]);
      if (codes[i] != want && ++batch_mismatches <= 10)
        ADD_FAILURE() << std::hex << "FloatsToE4m3: float bits 0x" << std::bit_cast<uint32_t>(batch[i])
                      << ": got 0x" << int{codes[i]} << ", reference 0x" << int{want};
    }
    batch.clear();
  };
  auto check = [&](uint32_t bits) {
    const float f = std::bit_cast<float>(bits);
    const uint8_t got = FloatToE4m3(f), want = ReferenceFloatToE4m3(f);
    ++checked;
    if (got != want && ++mismatches <= 10)
      ADD_FAILURE() << std::hex << "float bits 0x" << bits << " (" << f << "): got 0x" << int{got} << ", reference 0x"
                    << int{want};
    batch.push_back(f);
    // 64 x 64 + 16 + 8 + 3: every loop of the kernels runs (AVX-512: 64-wide, 16-wide, scalar; AVX2:
    // 32-wide, scalar).
    if (batch.size() == 4123) flush();
  };
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t e = 127 - 17; e < 127 + 11; ++e) {
      for (uint32_t hi = 0; hi < (1u << 15); ++hi) {
        const uint32_t base = sign | e << 23 | hi << 8;
        for (uint32_t lo : {0x00u, 0x01u, 0x02u, 0x7fu, 0x80u, 0x81u, 0xfeu, 0xffu}) check(base | lo);
        uint32_t h = (hi ^ e << 15) * 0x9e3779b1u;  // 8 more low bytes, varying with the upper bits
        for (int j = 0; j < 8; ++j, h = h * 0x2c1b3c6du + 0x297a2d39u) check(base | h >> 24);
      }
    }
  }
  std::mt19937 rng(5);
  const uint32_t edges[] = {0,        1,        2,        0x7fffff, 0x7ffffe, 0x400000, 0x3fffff, 0x400001,
                            0x080000, 0x07ffff, 0x080001, 0x0fffff, 0x100000, 0x180000, 0x280000, 0x380000};
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t e = 0; e < 256; ++e) {
      for (uint32_t m : edges) check(sign | e << 23 | m);
      for (int i = 0; i < 2048; ++i) check(sign | e << 23 | (rng() & 0x7fffff));
    }
  }
  for (uint32_t bits :
       {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u,
        0x7fffffffu, 0xffffffffu, 0x7f7fffffu, 0xff7fffffu, 0x00000001u, 0x80000001u, 0x00800000u, 0x80800000u})
    check(bits);
  flush();
  EXPECT_EQ(mismatches, 0) << "of " << checked << " floats";
  EXPECT_EQ(batch_mismatches, 0) << "FloatsToE4m3, of " << checked << " floats";
  EXPECT_GT(checked, 29'000'000);
}

// A random row of the given kind: 0 N(0, 1); 1 magnitudes 2^-40..2^40 (zero and subnormal codes next to
// large ones); 2 all below the 1e-4 amax floor; 3 signed zeros only; 4 any bf16 bit pattern (NaN, inf,
// subnormals); 5 N(0, 1) with infinities, NaNs and huge outliers sprinkled in.
std::vector<bf16> TestRow(int kind, int h, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(-40.0f, 40.0f);
  const std::array<float, 6> specials = {INFINITY, -INFINITY, NAN, -NAN, 3.3e38f, -1e30f};
  std::vector<bf16> r(h);
  for (auto& v : r) {
    float x = n(rng);
    if (kind == 1) x *= std::exp2(u(rng));
    if (kind == 2) x *= 1e-5f;
    if (kind == 3) x = std::signbit(x) ? -0.0f : 0.0f;
    if (kind == 5 && rng() % 61 == 0) x = specials[rng() % specials.size()];
    v = kind == 4 ? bf16{static_cast<uint16_t>(rng())} : FloatToBf16(x);
  }
  return r;
}

// CastRowToFp8 (in a release build the vectorized kernel, for whichever ISA this CPU selects, or the one
// EPX_KERNEL_ISA caps it to) against the reference row cast: every code byte and every scale byte (incl.
// UE8M0 padding, and 64 bytes past the end of both, which must stay untouched), for H with and without a
// partial last block, rows longer than the vector kernels' chunk of 64 blocks (9000: a second chunk of 6;
// 17543: chunks of 64, 64, 9), and each Fp8Options variant; the second row of each kind with a next row to
// prefetch (the dispatch passes one: it must not change a bit).
TEST(Fp8, RowCastMatchesReference) {
  const Fp8Options opts[] = {{false, false}, {true, false}, {true, true}};
  std::mt19937 rng(11);
  for (int h : {1, 7, 100, 127, 128, 129, 300, 1000, 4096, 7168, 7208, 9000, 17543}) {
    // The scales (Fp8NumBlocks(h) * 4 >= Ue8m0Words(h) * 4 bytes) and 64 bytes past them.
    const size_t scale_bytes = static_cast<size_t>(Fp8NumBlocks(h)) * 4 + 64;
    for (int kind = 0; kind < 6; ++kind) {
      for (int rep = 0; rep < 2; ++rep) {
        const auto row = TestRow(kind, h, rng), next = TestRow(kind, h, rng);
        for (const Fp8Options& o : opts) {
          std::vector<uint8_t> q(h + 64, 0xcd), want_q(h + 64, 0xcd), s(scale_bytes, 0xcd),
              want_s(scale_bytes, 0xcd);
          CastRowToFp8(row.data(), h, o, q.data(), s.data(), rep == 1 ? next.data() : nullptr);
          ReferenceCastRowToFp8(row.data(), h, o, want_q.data(), want_s.data());
          const auto where = std::mismatch(q.begin(), q.end(), want_q.begin()).first - q.begin();
          EXPECT_EQ(where, h + 64) << "H=" << h << " kind " << kind << " round_scale " << o.round_scale
                                   << " ue8m0 " << o.ue8m0 << ": first differing code at column " << where;
          EXPECT_EQ(s, want_s) << "H=" << h << " kind " << kind << " round_scale " << o.round_scale << " ue8m0 "
                               << o.ue8m0;
        }
      }
    }
  }
}

TEST(Bf16, RoundTripAndNearestEven) {
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f)), 1.0f);
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)).bits, FloatToBf16(1.0f).bits);  // tie -> even
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, FloatToBf16(1.0f).bits + 2);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
}

}  // namespace
}  // namespace epx
