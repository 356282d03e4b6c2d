// Bootstrap collectives across all ranks: rank-coded blobs, every root, many rounds.
#include <gtest/gtest.h>

#include "tests/transport/mr_env.h"

namespace epx::test {
namespace {

std::vector<uint8_t> Blob(int rank, int round, size_t n) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(rank * 31 + round * 7 + i);
  return b;
}

TEST(Bootstrap, AllGatherRankOrdered) {
  Bootstrap& b = Ctx().bootstrap();
  for (int round = 0; round < 20; ++round) {
    auto mine = Blob(b.rank(), round, 100);
    auto all = b.AllGather("t-allgather", mine);
    ASSERT_TRUE(all.ok()) << all.status().ToString();
    ASSERT_EQ(all->size(), 100u * b.world_size());
    for (int r = 0; r < b.world_size(); ++r) {
      auto want = Blob(r, round, 100);
      ASSERT_TRUE(std::equal(want.begin(), want.end(), all->begin() + r * 100)) << "rank " << r;
    }
  }
}

TEST(Bootstrap, AllGatherVariableSizes) {
  Bootstrap& b = Ctx().bootstrap();
  auto mine = Blob(b.rank(), 1, 10 * b.rank() + 1);  // rank r sends 10r+1 bytes
  auto all = b.AllGatherV("t-allgatherv", mine);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  for (int r = 0; r < b.world_size(); ++r) EXPECT_EQ((*all)[r], Blob(r, 1, 10 * r + 1));
}

TEST(Bootstrap, BroadcastFromEveryRoot) {
  Bootstrap& b = Ctx().bootstrap();
  for (int root = 0; root < b.world_size(); ++root) {
    auto data = Blob(root, 2, 1000);
    auto got = b.Broadcast("t-bcast", root, b.rank() == root ? data : std::vector<uint8_t>{});
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(*got, data);
  }
}

TEST(Bootstrap, PodAllGatherAndBarrier) {
  Bootstrap& b = Ctx().bootstrap();
  struct Rec {
    int32_t rank;
    uint64_t v;
  };
  auto all = b.AllGatherPod("t-pod", Rec{b.rank(), 1000u + b.rank()});
  ASSERT_TRUE(all.ok());
  for (int r = 0; r < b.world_size(); ++r) {
    EXPECT_EQ((*all)[r].rank, r);
    EXPECT_EQ((*all)[r].v, 1000u + r);
  }
  for (int i = 0; i < 50; ++i) ASSERT_OK(b.Barrier("t-barrier"));
}

TEST(Bootstrap, BadArgumentsAreRejectedLocally) {
  Bootstrap& b = Ctx().bootstrap();
  auto r = b.Broadcast("t-bad-root", b.world_size(), {});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("root"), std::string::npos);
}

}  // namespace
}  // namespace epx::test
