// tests/kernels/bf16_math_test.cc: the vectorised combine arithmetic (kernels/bf16_math.h) against a
// scalar loop written straight from the header's definition, bitwise, for every row count from 0 to 9
// and widths around the vector and strip sizes (8 and 16 lanes, 32- and 64-column strips), with NaN,
// infinities, signed zeros, subnormals and values whose sum rounds to a BF16 tie among the inputs.
// tests/kernels/CMakeLists.txt runs it once per kernel family (EPX_KERNEL_ISA, kernels/isa.h).
#include "kernels/bf16_math.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/isa.h"
#include "kernels/stream_copy.h"

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

// Bitwise equality of two BF16 or FP32 results. The AVX-512 and AVX2 bodies keep the running sum as the
// first operand of each add, as the scalar definition compiled here does, and x86 returns the first
// operand's NaN when two meet, so their NaNs match bit for bit too. The portable body's operand order is
// the vectoriser's choice (C++ leaves NaN payloads unspecified): under EPX_KERNEL_ISA=baseline two NaNs
// only have to agree on being NaN.
template <typename Bits>
testing::AssertionResult SameBits(Bits got, Bits want, bool got_nan, bool want_nan) {
  if (got == want || (KernelIsa() == Isa::kBaseline && got_nan && want_nan))
    return testing::AssertionSuccess();
  return testing::AssertionFailure() << std::hex << "got 0x" << got << ", want 0x" << want << " ("
                                     << IsaName(KernelIsa()) << " kernels)";
}
testing::AssertionResult SameBits(bf16 got, bf16 want) {
  return SameBits<uint32_t>(got.bits, want.bits, (got.bits & 0x7fff) > 0x7f80, (want.bits & 0x7fff) > 0x7f80);
}
testing::AssertionResult SameBits(float got, float want) {
  return SameBits(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want), std::isnan(got),
                  std::isnan(want));
}

// num_rows random rows of n columns, their pointers and weights in [-2, 2).
struct Terms {
  Terms(std::mt19937& rng, int n, int num_rows) : w(num_rows) {
    std::uniform_real_distribution<float> wd(-2.0f, 2.0f);
    for (int r = 0; r < num_rows; ++r) rows.push_back(RandomRow(rng, n));
    for (auto& r : rows) ptrs.push_back(r.data());
    for (auto& x : w) x = wd(rng);
  }
  std::vector<std::vector<bf16>> rows;
  std::vector<const bf16*> ptrs;
  std::vector<float> w;
};

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
  int checked = 0;
  for (int n : {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 127, 128, 129, 7168, 7169}) {
    for (int num_rows = 0; num_rows <= 9; ++num_rows) {
      const Terms terms(rng, n, num_rows);
      const auto& [rows, ptrs, w0] = terms;
      std::vector<float> w = w0;
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
      // The streaming variant, at a 16-byte aligned output (streaming stores) and at sum's 2-byte offset.
      std::vector<bf16> st(n + 10, bf16{0x1234});
      const size_t lead = (16 - reinterpret_cast<uintptr_t>(st.data() + 1) % 16) % 16 / 2 + 1;
      ASSERT_LE(lead + n, st.size() - 1);
      SumBf16RowsStream(st.data() + lead, acc.data(), ptrs.data(), num_rows, n);
      std::vector<bf16> st_odd(n + 2, bf16{0x1234});
      SumBf16RowsStream(st_odd.data() + 1, acc.data(), ptrs.data(), num_rows, n);
      StreamFence();
      ASSERT_EQ(st[lead - 1].bits, 0x1234);
      ASSERT_EQ(st[lead + n].bits, 0x1234) << "n=" << n << " rows=" << num_rows;
      for (int j = 0; j < n; ++j) {
        ASSERT_EQ(st[lead + j].bits, sum[j + 1].bits)
            << "stream n=" << n << " rows=" << num_rows << " column " << j;
        ASSERT_EQ(st_odd[j + 1].bits, sum[j + 1].bits) << "stream n=" << n << " column " << j;
      }
      for (int j = 0; j < n; ++j) {
        ASSERT_TRUE(SameBits(sum[j + 1], Reference(rows, nullptr, j)))
            << "sum n=" << n << " rows=" << num_rows << " column " << j;
        ASSERT_TRUE(SameBits(wsum[j + 1], Reference(rows, w.data(), j)))
            << "weighted n=" << n << " rows=" << num_rows << " column " << j;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 100000);
}

// The grouped order written out: every group's partial from +0 in FP32, then +0 plus the partials.
float GroupPartialRef(const std::vector<std::vector<bf16>>& rows, const float* w, int first, int count,
                      int j) {
  float p = 0.0f;
  for (int r = first; r < first + count; ++r) {
    const float t = w[r] * Bf16ToFloat(rows[r][j]);  // a named term: the sum stays the first operand
    p = p + t;
  }
  return p;
}

TEST(Bf16Math, GroupedSumAndPartialsMatchTheScalarDefinitionBitwise) {
  std::mt19937 rng(12);
  std::uniform_int_distribution<int> split(0, 3);
  int checked = 0;
  for (int n : {1, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129, 7168, 7169}) {
    for (int num_rows = 1; num_rows <= 9; ++num_rows) {
      const Terms terms(rng, n, num_rows);
      const auto& [rows, ptrs, w0] = terms;
      std::vector<float> w = w0;
      // Random groups of consecutive terms; every other one handed over as a precomputed partial, which
      // WeightedPartialF32 must produce exactly (its guard columns untouched).
      std::vector<SumGroup> groups;
      std::vector<std::pair<int, int>> spans;  // each group's terms [first, first + count)
      std::vector<std::vector<float>> partials;
      partials.reserve(num_rows);
      for (int r = 0; r < num_rows;) {
        const int c = std::min(num_rows - r, 1 + split(rng));
        SumGroup g{r, c, nullptr};
        if (groups.size() % 2 == 1) {
          partials.emplace_back(n + 2, 1234.5f);
          WeightedPartialF32(partials.back().data() + 1, ptrs.data() + r, w.data() + r, c, n);
          ASSERT_EQ(partials.back()[0], 1234.5f);
          ASSERT_EQ(partials.back()[n + 1], 1234.5f) << "n=" << n;
          for (int j = 0; j < n; ++j) {
            const float want = GroupPartialRef(rows, w.data(), r, c, j), got = partials.back()[j + 1];
            ASSERT_TRUE(SameBits(got, want))
                << "partial n=" << n << " terms " << r << ".." << r + c << " column " << j;
          }
          // The streaming variant: bitwise the same, at a 32-byte-aligned output (streamed where the AVX2
          // kernels run) and at one that is not (the plain path), with nothing written around either.
          std::vector<float> st_buf(static_cast<size_t>(n) + 24, 1234.5f);
          for (size_t lead : {size_t{8}, size_t{9}}) {
            float* base = st_buf.data();
            float* o =
                reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(base) + 31) & ~uintptr_t{31}) + lead;
            std::fill(st_buf.begin(), st_buf.end(), 1234.5f);
            WeightedPartialF32Stream(o, ptrs.data() + r, w.data() + r, c, n);
            StreamFence();
            ASSERT_EQ(o[-1], 1234.5f);
            ASSERT_EQ(o[n], 1234.5f) << "stream partial n=" << n;
            for (int j = 0; j < n; ++j)
              ASSERT_EQ(std::bit_cast<uint32_t>(o[j]), std::bit_cast<uint32_t>(partials.back()[j + 1]))
                  << "stream partial n=" << n << " lead " << lead << " column " << j;
          }
          g = SumGroup{0, 0, partials.back().data() + 1};
        }
        groups.push_back(g);
        spans.emplace_back(r, c);
        r += c;
      }
      std::vector<bf16> out(n + 2, bf16{0x1234}), one(n + 2, bf16{0x1234}), plain(n);
      std::vector<float> acc(2 * static_cast<size_t>(n));
      GroupedWeightedSumBf16(out.data() + 1, acc.data(), ptrs.data(), w.data(), groups.data(),
                             static_cast<int>(groups.size()), n);
      ASSERT_EQ(out[0].bits, 0x1234);
      ASSERT_EQ(out[n + 1].bits, 0x1234) << "n=" << n;
      // One group of all terms is the ungrouped weighted sum, bitwise.
      const SumGroup all{0, num_rows, nullptr};
      GroupedWeightedSumBf16(one.data() + 1, acc.data(), ptrs.data(), w.data(), &all, 1, n);
      WeightedSumBf16Rows(plain.data(), acc.data(), ptrs.data(), w.data(), num_rows, n);
      for (int j = 0; j < n; ++j) {
        float a = 0.0f;
        for (auto [r, c] : spans) {
          // Two NaNs meeting keep the first operand's payload (x86): the running sum, as in the kernels.
          const float part = GroupPartialRef(rows, w.data(), r, c, j);
          a = a + part;
        }
        ASSERT_TRUE(SameBits(out[j + 1], FloatToBf16(a)))
            << "grouped n=" << n << " rows=" << num_rows << " column " << j;
        ASSERT_TRUE(SameBits(one[j + 1], plain[j]))
            << "one group n=" << n << " rows=" << num_rows << " column " << j;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 50000);
  // No groups: +0.
  bf16 z{0x1234};
  float acc[2];
  GroupedWeightedSumBf16(&z, acc, nullptr, nullptr, nullptr, 0, 1);
  EXPECT_EQ(z.bits, 0x0000);
}

// The cap of EPX_KERNEL_ISA holds (tests/kernels/CMakeLists.txt runs the suites under "avx2" and
// "baseline"): never a family above it, and never one the CPU lacks.
TEST(KernelIsa, CapIsHonoured) {
  const char* cap = std::getenv("EPX_KERNEL_ISA");
  const std::string want = cap ? cap : "auto";
  const Isa isa = KernelIsa();
  if (want == "baseline") {
    EXPECT_EQ(isa, Isa::kBaseline);
  }
  if (want == "avx2") {
    EXPECT_LE(static_cast<int>(isa), static_cast<int>(Isa::kAvx2));
  }
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (isa == Isa::kAvx2) {
    EXPECT_TRUE(__builtin_cpu_supports("avx2"));
  }
  if (isa == Isa::kAvx512) {
    EXPECT_TRUE(__builtin_cpu_supports("avx512bw"));
  }
  if (want == "auto" && __builtin_cpu_supports("avx2")) {
    EXPECT_NE(isa, Isa::kBaseline);
  }
#endif
  std::printf("kernel family: %s (EPX_KERNEL_ISA=%s)\n", IsaName(isa), want.c_str());
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
