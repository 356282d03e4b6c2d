// bench_floor_test: the combine traffic floor's job (bench/copy_limit.h CombineTrafficOf) on routings small
// enough to count by hand: which groups a rank pre-reduces for other ranks' tokens, and what its own tokens
// gather from itself and from each other rank.
#include "bench/copy_limit.h"

#include <gtest/gtest.h>

namespace epx::bench {
namespace {

using V8 = std::vector<uint8_t>;

// R = 2, E = 4 (2 experts per rank), K = 4; -1: no expert.
const std::vector<std::vector<int64_t>> kTwoRanks = {
    {0, 1, 2, 3, /**/ 2, 3, -1,
     -1},           // rank 0: token 0 -> 2 rows on rank 0, 2 on rank 1; token 1 -> 2 on rank 1
    {0, 2, 3, -1},  // rank 1: token 0 -> 1 row on rank 0, 2 on rank 1
};

TEST(CombineTraffic, CountsRowsPerTokenAndRank) {
  const CombineTrafficJob r0 = CombineTrafficOf(kTwoRanks, 4, 2, 0, 7168);
  EXPECT_EQ(r0.hidden, 7168);
  EXPECT_EQ(r0.pre, V8({1}));      // rank 1's token 0 has one row here: staged as a row, not a partial
  EXPECT_EQ(r0.own, V8({2, 0}));   // own rows per own token
  EXPECT_EQ(r0.peer, V8({2, 2}));  // both own tokens have 2 rows on rank 1
  EXPECT_EQ(r0.peer_end, std::vector<int>({1, 2}));

  const CombineTrafficJob r1 = CombineTrafficOf(kTwoRanks, 4, 2, 1, 7168);
  EXPECT_EQ(r1.pre, V8({2, 2}));  // rank 0's tokens 0 and 1 have 2 rows here each
  EXPECT_EQ(r1.own, V8({2}));
  EXPECT_EQ(r1.peer, V8({1}));  // token 0's single row on rank 0
  EXPECT_EQ(r1.peer_end, std::vector<int>({1}));
}

// A token with no row on a rank adds nothing for it, and ranks without rows of a token are not listed.
TEST(CombineTraffic, SkipsRanksWithoutRows) {
  const std::vector<std::vector<int64_t>> idx = {{0, 1, -1}, {}, {4, 5, 0}};  // R = 3, E = 6, K = 3
  const CombineTrafficJob r1 = CombineTrafficOf(idx, 3, 2, 1, 16);
  EXPECT_TRUE(r1.pre.empty());
  EXPECT_TRUE(r1.own.empty());
  EXPECT_TRUE(r1.peer_end.empty());
  const CombineTrafficJob r2 = CombineTrafficOf(idx, 3, 2, 2, 16);
  EXPECT_TRUE(r2.pre.empty());  // rank 0's token has no expert on rank 2
  EXPECT_EQ(r2.own, V8({2}));
  EXPECT_EQ(r2.peer, V8({1}));  // expert 0 on rank 0; rank 1 has none
  const CombineTrafficJob r0 = CombineTrafficOf(idx, 3, 2, 0, 16);
  EXPECT_EQ(r0.pre, V8({1}));  // rank 2's token: expert 0
  EXPECT_EQ(r0.own, V8({2}));
  EXPECT_TRUE(r0.peer.empty());
  EXPECT_EQ(r0.peer_end, std::vector<int>({0}));
}

}  // namespace
}  // namespace epx::bench
