// Symmetric heap: identical offsets, peers see each other's writes, NUMA placement, page kind.
#include <numa.h>
#include <numaif.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tests/transport/mr_env.h"

namespace epx::test {
namespace {

TEST(Heap, PeersSeeWritesAtTheSameOffset) {
  Context& c = Ctx();
  SymmetricHeap& h = c.heap();
  // Same allocation sequence on every rank -> same offset (checked across ranks via the bootstrap).
  HeapAllocator a(h.size());
  auto off = a.Allocate(4096, 64, "t-heap");
  ASSERT_TRUE(off.ok());
  auto offs = c.bootstrap().AllGatherPod("t-heap-off", *off);
  ASSERT_TRUE(offs.ok());
  for (size_t o : *offs) EXPECT_EQ(o, *off);

  uint64_t* mine = reinterpret_cast<uint64_t*>(h.base() + *off);
  for (int i = 0; i < 512; ++i) mine[i] = (uint64_t(c.rank()) << 32) | i;
  ASSERT_OK(c.bootstrap().Barrier("t-heap-written"));
  for (int r : h.host_peers()) {
    const uint64_t* theirs = reinterpret_cast<const uint64_t*>(h.PeerBase(r) + *off);
    for (int i = 0; i < 512; ++i) ASSERT_EQ(theirs[i], (uint64_t(r) << 32) | i) << "rank " << r << " word " << i;
  }
  ASSERT_OK(c.bootstrap().Barrier("t-heap-read"));
}

TEST(Heap, NodePeersAreMapped) {
  Context& c = Ctx();
  EXPECT_EQ(static_cast<int>(c.node_ranks().size()), c.placement().local_size);
  for (int r : c.node_ranks()) EXPECT_TRUE(c.heap().IsMapped(r)) << r;
  // Under epx-run all ranks share this host, so every rank is mapped (the shm-emulated RDMA domain
  // relies on that).
  EXPECT_EQ(static_cast<int>(c.heap().host_peers().size()), c.world_size());
}

TEST(Heap, PagesLiveOnTheRanksNumaNode) {
  SymmetricHeap& h = Ctx().heap();
  if (numa_available() < 0) GTEST_SKIP() << "libnuma reports no NUMA support on this kernel";
  ASSERT_GE(h.numa_node(), 0) << "heap should be NUMA-bound by default (EPX_NUMA_BIND=on)";
  // move_pages with nodes=NULL reports where each page currently is.
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<void*> pages;
  for (size_t off = 0; off < h.size(); off += h.size() / 64) pages.push_back(h.base() + (off & ~(page - 1)));
  std::vector<int> status(pages.size(), -1);
  ASSERT_EQ(move_pages(0, pages.size(), pages.data(), nullptr, status.data(), 0), 0) << strerror(errno);
  for (size_t i = 0; i < pages.size(); ++i) EXPECT_EQ(status[i], h.numa_node()) << "page " << i;
  // And the policy of the range is MPOL_BIND to that node.
  int mode = -1;
  unsigned long mask[16] = {};
  ASSERT_EQ(get_mempolicy(&mode, mask, sizeof(mask) * 8, h.base(), MPOL_F_ADDR), 0) << strerror(errno);
  EXPECT_EQ(mode, MPOL_BIND);
  EXPECT_TRUE(mask[h.numa_node() / 64] & (1ul << (h.numa_node() % 64)));
}

TEST(Heap, PageKindIsReported) {
  SymmetricHeap& h = Ctx().heap();
  EXPECT_FALSE(h.page_note().empty());
  if (h.page_kind() == PageKind::kHugeTlb2M) {
    EXPECT_EQ(h.size() % (2u << 20), 0u);
  } else {
    EXPECT_NE(h.page_note().find("4 KiB pages"), std::string::npos) << h.page_note();
  }
  if (Ctx().rank() == 0) std::printf("heap page kind: %s (%s)\n", PageKindName(h.page_kind()), h.page_note().c_str());
}

TEST(Heap, AllocatorIsDeterministicAndBounded) {
  HeapAllocator a(1 << 20);
  auto x = a.Allocate(100, 8, "x");
  auto y = a.Allocate(10, 4096, "y");
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(*x, kHeapControlBytes);
  EXPECT_EQ(*y % 4096, 0u);
  auto big = a.Allocate(1 << 20, 8, "too-big");
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), Code::kResource);
  EXPECT_NE(big.status().message().find("too-big"), std::string::npos);
  EXPECT_FALSE(a.Allocate(8, 3, "bad-align").ok());
}

}  // namespace
}  // namespace epx::test
