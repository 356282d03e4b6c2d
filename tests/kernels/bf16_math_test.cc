// tests/kernels/bf16_math_test.cc: the vectorised combine arithmetic (kernels/bf16_math.h) against a
// scalar loop written straight from the header's definition, bitwise, for every row count from 0 to
// 9 and widths around the vector and strip sizes (16 and 64 columns), with NaN, infinities, signed
// zeros, subnormals and values whose sum rounds to a BF16 tie among the inputs.
#include "kernels/bf16_math.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace epx {
namespace {

// Random BF16 bits, with one special value in ~8: +-0, +-inf, NaN, a subnormal, a large finite.
std::vector<bf16> RandomRow(std::mt19937& rng, int n) {
  static constexpr uint16_t kSpecial[] = {0x0000, 0x8000, 0x7f80, 0xff80, 0x7fc1,
                                          0xffa0, 0x0001, 0x7f7f, 0x3f80};
  std::uniform_int_distribution<int> pick(0, 63);
  std::normal_distribution<float> d(0.0f, 4.0f);
  std::vector<bf16> row(n);
  for (auto& v : row) {
    const int k = pick(rng);
    v = k < 9 ? bf16{kSpecial[k]} : FloatToBf16(d(rng));
  }
  return row;
}

bf16 Reference(const std::vector<std::vector<bf16>>& rows, const float* w, int j) {
  if (rows.empty()) return bf16{0};
  float a = 0.0f;
  for (size_t r = 0; r < rows.size(); ++r) {
    const float y = Bf16ToFloat(rows[r][j]);
    const float t =
        w ? w[r] * y : y;  // rounded to FP32 here: the build does not contract (-ffp-contract=off)
    a = a + t;
  }
  return FloatToBf16(a);
}

TEST(Bf16Math, SumAndWeightedSumMatchTheScalarDefinitionBitwise) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> wd(-2.0f, 2.0f);
  int checked = 0;
  for (int n : {1, 7, 15, 16, 17, 31, 48, 63, 64, 65, 100, 127, 128, 129, 7168, 7169}) {
    for (int num_rows = 0; num_rows <= 9; ++num_rows) {
      std::vector<std::vector<bf16>> rows;
      std::vector<const bf16*> ptrs;
      for (int r = 0; r < num_rows; ++r) rows.push_back(RandomRow(rng, n));
      for (auto& r : rows) ptrs.push_back(r.data());
      std::vector<float> w(num_rows);
      for (auto& x : w) x = wd(rng);
      if (num_rows > 2) w[1] = 0.0f;  // a zero weight times inf is NaN: the definition keeps it
      // Guard columns on both sides: the kernels write exactly n elements.
      std::vector<bf16> sum(n + 2, bf16{0x1234}), wsum(n + 2, bf16{0x1234});
      std::vector<float> acc(n);
      SumBf16Rows(sum.data() + 1, acc.data(), ptrs.data(), num_rows, n);
      WeightedSumBf16Rows(wsum.data() + 1, acc.data(), ptrs.data(), w.data(), num_rows, n);
      ASSERT_EQ(sum[0].bits, 0x1234);
      ASSERT_EQ(sum[n + 1].bits, 0x1234) << "n=" << n << " rows=" << num_rows;
      ASSERT_EQ(wsum[0].bits, 0x1234);
      ASSERT_EQ(wsum[n + 1].bits, 0x1234) << "n=" << n << " rows=" << num_rows;
      for (int j = 0; j < n; ++j) {
        ASSERT_EQ(sum[j + 1].bits, Reference(rows, nullptr, j).bits)
            << "sum n=" << n << " rows=" << num_rows << " column " << j;
        ASSERT_EQ(wsum[j + 1].bits, Reference(rows, w.data(), j).bits)
            << "weighted n=" << n << " rows=" << num_rows << " column " << j;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 100000);
}

TEST(Bf16Math, TiesRoundToEvenAndNegativeZeroBecomesPositive) {
  // 1 + 2^-8 is a tie between the BF16 neighbours 1 and 1 + 2^-7: rounds to even (1). -0 + -0 = -0 in
  // IEEE, but the definition starts from +0: 0 + -0 = +0.
  const bf16 one = FloatToBf16(1.0f), tiny = FloatToBf16(std::ldexp(1.0f, -8)), nz{0x8000};
  const bf16* a[] = {&one, &tiny};
  const bf16* z[] = {&nz, &nz};
  bf16 out{0x1234};
  float acc[1];
  SumBf16Rows(&out, acc, a, 2, 1);
  EXPECT_EQ(out.bits, one.bits);
  SumBf16Rows(&out, acc, z, 2, 1);
  EXPECT_EQ(out.bits, 0x0000);
}

}  // namespace
}  // namespace epx
