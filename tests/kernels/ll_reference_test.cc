// Hand-checked cases of the low-latency serial reference (kernels/ll_reference.h): placement, counts,
// src_info and layout_range of a tiny problem worked out on paper, FP8 rows against kernels/fp8.h,
// combine values and its top-k summation order, and the validation errors.
#include "kernels/ll_reference.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/ll.h"  // the design header must at least compile

namespace epx {
namespace {

// R=2, E=4 (2 per rank), H=4, K=2, T_max=3.
//   rank 0: t0 -> {1, 2}, t1 -> {2, -1}, t2 -> {3, 1}
//   rank 1: t0 -> {2, 0}, t1 -> {-1, -1}
// x(s, t)[j] = 100 s + 10 t + j (exact in BF16).
struct Tiny {
  LlRefProblem p;
  std::vector<std::vector<bf16>> x;  // [R][T_max * H]
  Tiny() {
    p.num_ranks = 2;
    p.num_experts = 4;
    p.hidden = 4;
    p.topk = 2;
    p.max_tokens = 3;
    p.num_tokens = {3, 2};
    p.topk_idx = {{1, 2, 2, -1, 3, 1}, {2, 0, -1, -1}};
    p.topk_weights = {{0.5f, 0.25f, 2.0f, 7.0f, 1.0f, -1.0f}, {0.125f, 3.0f, 1.0f, 1.0f}};
    x.assign(2, std::vector<bf16>(3 * 4));
    for (int s = 0; s < 2; ++s)
      for (int t = 0; t < 3; ++t)
        for (int j = 0; j < 4; ++j) x[s][t * 4 + j] = FloatToBf16(100.0f * s + 10.0f * t + j);
    p.x_row = [this](int s, int t) { return x[s].data() + t * 4; };
  }
};

float RowValue(const LlRefDispatch& d, int e, int i, int j) {
  bf16 v;
  std::memcpy(&v, d.row(e, i) + 2 * j, 2);
  return Bf16ToFloat(v);
}

TEST(LlReference, DispatchPlacementIsBySourceThenToken) {
  Tiny tc;
  auto r1 = LlReferenceDispatch(tc.p, 1, {});
  ASSERT_TRUE(r1.ok());
  const LlRefDispatch& d = *r1;
  ASSERT_EQ(d.local_experts, 2);
  ASSERT_EQ(d.rows, 6);  // R * T_max
  // Expert 2 (local 0): rank 0 tokens 0 and 1, then rank 1 token 0.
  EXPECT_EQ(d.count, (std::vector<int32_t>{3, 1}));
  EXPECT_EQ(std::vector<int32_t>(d.src_info.begin(), d.src_info.begin() + 6),
            (std::vector<int32_t>{0, 1, 0, -1, -1, -1}));
  EXPECT_EQ(std::vector<int32_t>(d.src_info.begin() + 6, d.src_info.end()),
            (std::vector<int32_t>{2, -1, -1, -1, -1, -1}));
  EXPECT_EQ(d.layout_range, (std::vector<int64_t>{LlPackRange(0, 2), LlPackRange(2, 1),     // expert 2
                                                  LlPackRange(0, 1), LlPackRange(1, 0)}));  // expert 3
  for (int j = 0; j < 4; ++j) {
    EXPECT_EQ(RowValue(d, 0, 0, j), 0.0f + j);
    EXPECT_EQ(RowValue(d, 0, 1, j), 10.0f + j);
    EXPECT_EQ(RowValue(d, 0, 2, j), 100.0f + j);
    EXPECT_EQ(RowValue(d, 1, 0, j), 20.0f + j);
    EXPECT_EQ(RowValue(d, 0, 3, j), 0.0f);  // rows past count are zero
  }
  EXPECT_TRUE(d.scales.empty());

  auto r0 = LlReferenceDispatch(tc.p, 0, {});
  ASSERT_TRUE(r0.ok());
  EXPECT_EQ(r0->count, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(r0->src_info[0], 0);  // expert 0: rank 1 token 0
  EXPECT_EQ(r0->src_info[6], 0);  // expert 1: rank 0 tokens 0, 2
  EXPECT_EQ(r0->src_info[7], 2);
  EXPECT_EQ(r0->layout_range, (std::vector<int64_t>{LlPackRange(0, 0), LlPackRange(0, 1),     // expert 0
                                                    LlPackRange(0, 2), LlPackRange(2, 0)}));  // expert 1
  EXPECT_EQ(RowValue(*r0, 0, 0, 3), 103.0f);
  EXPECT_EQ(RowValue(*r0, 1, 1, 1), 21.0f);
}

TEST(LlReference, RowOfMatchesDispatch) {
  Tiny tc;
  EXPECT_EQ(LlRowOf(tc.p, 0, 0, 2), 0);
  EXPECT_EQ(LlRowOf(tc.p, 0, 1, 2), 1);
  EXPECT_EQ(LlRowOf(tc.p, 1, 0, 2), 2);
  EXPECT_EQ(LlRowOf(tc.p, 0, 2, 1), 1);
  EXPECT_EQ(LlRowOf(tc.p, 1, 0, 0), 0);
  EXPECT_EQ(LlRowOf(tc.p, 0, 1, 3), -1);  // token 1 of rank 0 does not select expert 3
}

TEST(LlReference, Fp8RowsAndScalesAreTheReferenceCast) {
  for (Fp8Options o : {Fp8Options{false, false}, Fp8Options{true, false}, Fp8Options{true, true}}) {
    // H = 300: three scale blocks, the last one partial (44 columns).
    Tiny tc;
    tc.p.hidden = 300;
    for (int s = 0; s < 2; ++s) {
      tc.x[s].resize(3 * 300);
      for (int t = 0; t < 3; ++t)
        for (int j = 0; j < 300; ++j)
          tc.x[s][t * 300 + j] = FloatToBf16(0.01f * ((s * 31 + t * 17 + j * 7) % 101) - 0.5f);
    }
    tc.p.x_row = [&tc](int s, int t) { return tc.x[s].data() + t * 300; };
    LlDispatchOptions opt{true, o};
    auto d = LlReferenceDispatch(tc.p, 1, opt);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->row_bytes, 300u);
    EXPECT_EQ(d->scale_row_bytes, o.ue8m0 ? 4u : 12u);
    // Expert 2 row 2 is (rank 1, token 0).
    std::vector<uint8_t> q(300), sc(d->scale_row_bytes);
    CastRowToFp8(tc.p.x_row(1, 0), 300, o, q.data(), sc.data());
    EXPECT_EQ(std::memcmp(d->row(0, 2), q.data(), 300), 0);
    EXPECT_EQ(std::memcmp(d->scales.data() + 2 * d->scale_row_bytes, sc.data(), sc.size()), 0);
  }
}

TEST(LlReference, CombineIsWeightedSumInTopkOrder) {
  Tiny tc;
  // y(rank, local expert, row)[j] = 4 * global expert + row + j.
  std::vector<bf16> store;
  LlExpertOutput y = [&store](int r, int le, int row) {
    store.resize(4);
    for (int j = 0; j < 4; ++j) store[j] = FloatToBf16(4.0f * (r * 2 + le) + row + j);
    return store.data();
  };
  auto out0 = LlReferenceCombine(tc.p, 0, y);
  ASSERT_TRUE(out0.ok());
  for (int j = 0; j < 4; ++j) {
    // t0: 0.5 * expert 1 row 0 + 0.25 * expert 2 row 0
    EXPECT_EQ(Bf16ToFloat((*out0)[0 * 4 + j]), 0.5f * (4 + j) + 0.25f * (8 + j));
    // t1: 2 * expert 2 row 1 (slot 1 is -1: its weight 7 is ignored)
    EXPECT_EQ(Bf16ToFloat((*out0)[1 * 4 + j]), 2.0f * (9 + j));
    // t2: 1 * expert 3 row 0 - 1 * expert 1 row 1
    EXPECT_EQ(Bf16ToFloat((*out0)[2 * 4 + j]), (12.0f + j) - (5.0f + j));
  }
  auto out1 = LlReferenceCombine(tc.p, 1, y);
  ASSERT_TRUE(out1.ok());
  for (int j = 0; j < 4; ++j) {
    EXPECT_EQ(Bf16ToFloat((*out1)[j]), 0.125f * (10 + j) + 3.0f * (0 + j));  // expert 2 row 2, expert 0 row 0
    EXPECT_EQ((*out1)[4 + j].bits, 0);                                       // no expert: +0
  }
}

TEST(LlReference, CombineSumsInTopkOrderInFp32) {
  // One rank, 3 experts, weights 1: values 2^24, 1, -2^24. In top-k order (0 + 2^24) + 1 rounds back
  // to 2^24 in FP32, so the sum is 0; the reversed order gives (-2^24 + 1) + 2^24 = 1.
  const float v[3] = {16777216.0f, 1.0f, -16777216.0f};
  for (bool reversed : {false, true}) {
    LlRefProblem p;
    p.num_experts = 3;
    p.hidden = 1;
    p.topk = 3;
    p.max_tokens = 1;
    p.num_tokens = {1};
    p.topk_idx = {reversed ? std::vector<int64_t>{2, 1, 0} : std::vector<int64_t>{0, 1, 2}};
    p.topk_weights = {{1.0f, 1.0f, 1.0f}};
    bf16 rows[3];
    for (int e = 0; e < 3; ++e) rows[e] = FloatToBf16(v[e]);
    auto out = LlReferenceCombine(p, 0, [&rows](int, int le, int row) {
      EXPECT_EQ(row, 0);
      return &rows[le];
    });
    ASSERT_TRUE(out.ok());
    EXPECT_EQ(Bf16ToFloat((*out)[0]), reversed ? 1.0f : 0.0f);
  }
}

TEST(LlReference, CombineGroupsByExpertRank) {
  // Two ranks, experts 0-1 on rank 0 and 2-3 on rank 1; the token picks 2, 0, 3 (weights 1) with values
  // 2^24, 1, -2^24. Top-k order would give ((0 + 2^24) + 1) - 2^24 = 0; grouped by rank it is
  // (0 + P_0) + P_1 = (0 + 1) + ((0 + 2^24) - 2^24) = 1. (Inside a group the order is top-k order:
  // CombineSumsInTopkOrderInFp32.)
  LlRefProblem p;
  p.num_ranks = 2;
  p.num_experts = 4;
  p.hidden = 1;
  p.topk = 3;
  p.max_tokens = 1;
  p.num_tokens = {1, 0};
  p.topk_idx = {{2, 0, 3}, {}};
  p.topk_weights = {{1.0f, 1.0f, 1.0f}, {}};
  const float v[4] = {1.0f, 0.0f, 16777216.0f, -16777216.0f};  // by global expert
  bf16 rows[4];
  for (int e = 0; e < 4; ++e) rows[e] = FloatToBf16(v[e]);
  auto out = LlReferenceCombine(p, 0, [&rows](int r, int le, int row) {
    EXPECT_EQ(row, 0);
    return &rows[r * 2 + le];
  });
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(Bf16ToFloat((*out)[0]), 1.0f);
}

// Properties on random problems (R=4, E=8, K=3, -1 entries, ranks with fewer than T_max or no tokens):
// every (token, expert) pair lands exactly once, blocks are contiguous in source order with increasing
// tokens, rows are the source rows, LlRowOf agrees, and combine of "identity experts" (y = the
// dispatched row) is the weighted sum of the token's own row.
TEST(LlReference, RandomProblemsSatisfyTheContract) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(seed);
    LlRefProblem p;
    p.num_ranks = 4;
    p.num_experts = 8;
    p.hidden = 8;
    p.topk = 3;
    p.max_tokens = 5;
    std::vector<std::vector<bf16>> x(4);
    size_t pairs = 0;
    for (int s = 0; s < 4; ++s) {
      const int n = seed % 4 == static_cast<uint32_t>(s) ? 0 : static_cast<int>(rng() % 6);
      p.num_tokens.push_back(n);
      p.topk_idx.emplace_back();
      p.topk_weights.emplace_back();
      x[s].resize(static_cast<size_t>(n) * 8);
      for (int t = 0; t < n; ++t) {
        std::vector<int64_t> e(8);
        std::iota(e.begin(), e.end(), 0);
        std::shuffle(e.begin(), e.end(), rng);
        for (int k = 0; k < 3; ++k) {
          const int64_t g = rng() % 4 == 0 ? -1 : e[k];
          pairs += g >= 0;
          p.topk_idx[s].push_back(g);
          p.topk_weights[s].push_back(static_cast<float>(rng() % 8) * 0.125f);
        }
        for (int j = 0; j < 8; ++j) x[s][t * 8 + j] = FloatToBf16(static_cast<float>(s * 64 + t * 8 + j));
      }
    }
    p.x_row = [&x](int s, int t) { return x[s].data() + t * 8; };
    std::vector<LlRefDispatch> d;
    size_t got = 0;
    for (int r = 0; r < 4; ++r) {
      auto dr = LlReferenceDispatch(p, r, {});
      ASSERT_TRUE(dr.ok());
      d.push_back(std::move(*dr));
      for (int e = 0; e < 2; ++e) {
        got += d[r].count[e];
        int next = 0;
        for (int s = 0; s < 4; ++s) {
          const int64_t range = d[r].layout_range[e * 4 + s];
          ASSERT_EQ(LlRangeBegin(range), next);
          for (int i = 0; i < LlRangeCount(range); ++i) {
            const int row = next + i, t = d[r].src_info[e * d[r].rows + row];
            if (i > 0) {
              EXPECT_LT(d[r].src_info[e * d[r].rows + row - 1], t);
            }
            EXPECT_EQ(std::memcmp(d[r].row(e, row), p.x_row(s, t), 16), 0);
            EXPECT_EQ(LlRowOf(p, s, t, r * 2 + e), row);
          }
          next += LlRangeCount(range);
        }
        EXPECT_EQ(next, d[r].count[e]);
      }
    }
    EXPECT_EQ(got, pairs) << "seed " << seed;
    LlExpertOutput y = [&d](int r, int e, int row) {
      return reinterpret_cast<const bf16*>(d[r].row(e, row));
    };
    for (int s = 0; s < 4; ++s) {
      auto out = LlReferenceCombine(p, s, y);
      ASSERT_TRUE(out.ok());
      for (int t = 0; t < p.num_tokens[s]; ++t)
        for (int j = 0; j < 8; ++j) {
          float acc = 0.0f;
          for (int k = 0; k < 3; ++k)
            if (p.topk_idx[s][t * 3 + k] >= 0)
              acc += p.topk_weights[s][t * 3 + k] * Bf16ToFloat(x[s][t * 8 + j]);
          EXPECT_EQ((*out)[t * 8 + j].bits, FloatToBf16(acc).bits)
              << "seed " << seed << " s " << s << " t " << t;
        }
    }
  }
}

TEST(LlReference, RejectsBadProblems) {
  {
    Tiny tc;
    tc.p.num_tokens[1] = 4;  // > T_max
    tc.p.topk_idx[1].resize(8, -1);
    EXPECT_EQ(LlReferenceDispatch(tc.p, 0, {}).status().code(), Code::kInvalidArgument);
  }
  {
    Tiny tc;
    tc.p.topk_idx[0][1] = 1;  // token 0 selects expert 1 twice
    EXPECT_EQ(LlReferenceDispatch(tc.p, 0, {}).status().code(), Code::kInvalidArgument);
  }
  {
    Tiny tc;
    tc.p.topk_idx[0][0] = 4;  // out of range
    EXPECT_EQ(LlReferenceDispatch(tc.p, 0, {}).status().code(), Code::kInvalidArgument);
  }
  {
    Tiny tc;
    tc.p.num_experts = 3;  // not a multiple of R
    EXPECT_FALSE(LlReferenceDispatch(tc.p, 0, {}).ok());
  }
  {
    Tiny tc;
    EXPECT_EQ(LlReferenceDispatch(tc.p, 0, {true, {false, true}}).status().code(), Code::kInvalidArgument);
  }
  {
    Tiny tc;
    tc.p.topk_weights.clear();
    EXPECT_FALSE(LlReferenceCombine(tc.p, 0, [](int, int, int) { return nullptr; }).ok());
  }
}

}  // namespace
}  // namespace epx
