#include "kernels/layout.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace epx {
namespace {

std::vector<int64_t> RandomTopk(int n, int k, int e, uint32_t seed, double p_minus1) {
  std::mt19937 rng(seed);
  std::vector<int64_t> idx(static_cast<size_t>(n) * k);
  for (int t = 0; t < n; ++t) {
    std::set<int64_t> used;
    for (int j = 0; j < k; ++j) {
      int64_t x;
      do x = rng() % e;
      while (used.count(x));
      used.insert(x);
      idx[t * k + j] = std::uniform_real_distribution<>(0, 1)(rng) < p_minus1 ? -1 : x;
    }
  }
  return idx;
}

// Independent restatement of the contract, token by token.
void CheckAgainstDefinition(const std::vector<int64_t>& idx, int n, int k, const ExpertPlacement& ep,
                            const DispatchLayout& l) {
  const int R = ep.num_ranks, epr = ep.num_experts / R;
  std::vector<int> per_rank(R), per_node(ep.num_nodes()), per_expert(ep.num_experts);
  for (int t = 0; t < n; ++t) {
    std::set<int> ranks, nodes;
    for (int j = 0; j < k; ++j) {
      int64_t e = idx[t * k + j];
      if (e < 0) continue;
      per_expert[e]++;
      ranks.insert(static_cast<int>(e / epr));
      nodes.insert(static_cast<int>(e / epr) / ep.local_size);
    }
    for (int r = 0; r < R; ++r) ASSERT_EQ(l.InRank(t, r), ranks.count(r) == 1) << "token " << t << " rank " << r;
    for (int r : ranks) per_rank[r]++;
    for (int nd : nodes) per_node[nd]++;
  }
  EXPECT_EQ(l.tokens_per_rank, per_rank);
  EXPECT_EQ(l.tokens_per_node, per_node);
  EXPECT_EQ(l.tokens_per_expert, per_expert);
}

TEST(Layout, MatchesDefinitionOverShapes) {
  for (int R : {1, 2, 4, 8})
    for (int L : {1, 2, 4})
      for (int k : {1, 2, 8}) {
        if (R % L) continue;
        ExpertPlacement ep{R * 9, R, L};  // E not a power of two
        if (k > ep.num_experts) continue;
        const int n = 97;
        auto idx = RandomTopk(n, k, ep.num_experts, R * 100 + L * 10 + k, 0.1);
        auto l = ComputeLayout(idx, n, k, ep);
        ASSERT_TRUE(l.ok()) << l.status().ToString();
        CheckAgainstDefinition(idx, n, k, ep, *l);
      }
}

TEST(Layout, TokenCountsOncePerRankAndNode) {
  ExpertPlacement ep{8, 4, 2};  // 2 experts per rank, 2 ranks per node
  std::vector<int64_t> idx = {0, 1, 2, -1};  // experts 0,1 on rank 0; 2 on rank 1; all node 0
  auto l = ComputeLayout(idx, 1, 4, ep);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->tokens_per_rank, (std::vector<int>{1, 1, 0, 0}));
  EXPECT_EQ(l->tokens_per_node, (std::vector<int>{1, 0}));
  EXPECT_EQ(l->tokens_per_expert, (std::vector<int>{1, 1, 1, 0, 0, 0, 0, 0}));
}

TEST(Layout, EmptyAndAllMinusOne) {
  ExpertPlacement ep{4, 2, 1};
  auto l0 = ComputeLayout({}, 0, 2, ep);
  ASSERT_TRUE(l0.ok());
  EXPECT_EQ(l0->tokens_per_rank, (std::vector<int>{0, 0}));
  std::vector<int64_t> idx = {-1, -1, -1, -1};
  auto l = ComputeLayout(idx, 2, 2, ep);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->tokens_per_node, (std::vector<int>{0, 0}));
}

TEST(Layout, BadInputIsNamed) {
  ExpertPlacement ep{6, 4, 1};
  EXPECT_NE(ComputeLayout({}, 0, 1, ep).status().message().find("E % R must be 0"), std::string::npos);
  ExpertPlacement ok{8, 4, 2};
  std::vector<int64_t> idx = {0, 9};
  auto l = ComputeLayout(idx, 1, 2, ok);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("topk_idx[0][1] = 9"), std::string::npos) << l.status().message();
  std::vector<int64_t> neg = {-2};
  EXPECT_FALSE(ComputeLayout(neg, 1, 1, ok).ok());
  EXPECT_NE(ComputeLayout(idx, 2, 2, ok).status().message().find("expected [2, 2]"), std::string::npos);
}

}  // namespace
}  // namespace epx
