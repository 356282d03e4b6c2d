#include "kernels/fp8.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace epx {
namespace {

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

TEST(Bf16, RoundTripAndNearestEven) {
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f)), 1.0f);
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)).bits, FloatToBf16(1.0f).bits);  // tie -> even
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, FloatToBf16(1.0f).bits + 2);
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(std::nanf("")))));
}

}  // namespace
}  // namespace epx
