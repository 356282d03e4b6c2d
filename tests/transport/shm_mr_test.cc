// Shared-memory transport (NVLink stand-in) between the ranks of one node: concurrent puts and
// atomics from several threads per rank, data-then-flag ordering, barriers, bounds errors.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "tests/transport/mr_env.h"

namespace epx::test {
namespace {

constexpr int kThreads = 4;
constexpr int kIters = 64;
constexpr size_t kSlot = 64;

// Per-test region at the same offset on every rank, zeroed, with all node peers past the zeroing.
size_t FreshRegion(size_t bytes, const char* what) {
  Context& c = Ctx();
  HeapAllocator a(c.heap().size());
  auto off = a.Allocate(bytes, 4096, what);
  EXPECT_TRUE(off.ok()) << off.status().ToString();
  std::memset(c.heap().base() + *off, 0, bytes);
  EXPECT_TRUE(c.node().Barrier(what).ok());
  return *off;
}

uint8_t Pattern(int src, int thread, int iter, size_t byte) {
  return static_cast<uint8_t>(src * 97 + thread * 31 + iter * 7 + byte);
}

TEST(Shm, ConcurrentPutsAndAtomicsAreExact) {
  Context& c = Ctx();
  ShmTransport& shm = c.node();
  const auto& peers = c.node_ranks();
  const int L = static_cast<int>(peers.size());
  const int me = c.placement().local_rank;
  // Layout in every rank's heap: [counter total][counter per source L] then slots[src][thread][iter].
  const size_t counters = 8 * (1 + L);
  const size_t slots_off = (counters + 63) & ~size_t(63);
  const size_t bytes = slots_off + size_t(L) * kThreads * kIters * kSlot;
  const size_t base = FreshRegion(bytes, "t-shm-concurrent");

  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint8_t buf[kSlot];
      for (int i = 0; i < kIters; ++i) {
        for (size_t b = 0; b < kSlot; ++b) buf[b] = Pattern(c.rank(), t, i, b);
        for (int p : peers) {
          size_t slot = base + slots_off + ((size_t(me) * kThreads + t) * kIters + i) * kSlot;
          if (!shm.Put(p, slot, buf, kSlot).ok()) failures++;
          shm.AtomicAdd(p, base, 1);
          shm.AtomicAdd(p, base + 8 * (1 + me), 1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  ASSERT_OK(shm.Barrier("t-shm-concurrent-done"));

  const int self = c.rank();
  EXPECT_EQ(shm.AtomicLoad(self, base), uint64_t(L) * kThreads * kIters);
  for (int s = 0; s < L; ++s) EXPECT_EQ(shm.AtomicLoad(self, base + 8 * (1 + s)), uint64_t(kThreads) * kIters) << s;
  const uint8_t* mem = c.heap().base() + base + slots_off;
  for (int s = 0; s < L; ++s)
    for (int t = 0; t < kThreads; ++t)
      for (int i = 0; i < kIters; ++i)
        for (size_t b = 0; b < kSlot; ++b)
          ASSERT_EQ(mem[((size_t(s) * kThreads + t) * kIters + i) * kSlot + b], Pattern(peers[s], t, i, b))
              << "src " << peers[s] << " thread " << t << " iter " << i << " byte " << b;
  ASSERT_OK(shm.Barrier("t-shm-concurrent-checked"));
}

TEST(Shm, DataThenFlagOrderingOver10kMessages) {
  // Ring inside the node: local rank l sends to l+1. Payload into a K-slot ring in the receiver's
  // heap, then a release store of the sequence number; the receiver's acquire wait must then see the
  // whole payload. The receiver acks into the sender's heap so slots are reused only when consumed.
  Context& c = Ctx();
  ShmTransport& shm = c.node();
  const auto& peers = c.node_ranks();
  const int L = static_cast<int>(peers.size());
  const int me = c.placement().local_rank;
  const int to = peers[(me + 1) % L], from = peers[(me + L - 1) % L];
  constexpr int kMsgs = 10000, kRing = 64;
  constexpr size_t kFlag = 0, kAck = 64, kRingOff = 128, kMsg = 256;
  const size_t base = FreshRegion(kRingOff + kRing * kMsg, "t-shm-order");

  std::thread receiver([&] {
    uint64_t seen = 0;
    for (uint64_t seq = 1; seq <= kMsgs; ++seq) {
      if (seen < seq) {
        ASSERT_OK(shm.WaitGE(c.rank(), base + kFlag, seq, "t-shm-order recv"));
        seen = shm.AtomicLoad(c.rank(), base + kFlag);
      }
      const uint64_t* msg = reinterpret_cast<const uint64_t*>(c.heap().base() + base + kRingOff + (seq % kRing) * kMsg);
      for (size_t w = 0; w < kMsg / 8; ++w) ASSERT_EQ(msg[w], seq * 1000 + w) << "msg " << seq << " word " << w;
      shm.AtomicStore(from, base + kAck, seq);
    }
  });
  uint64_t payload[kMsg / 8];
  for (uint64_t seq = 1; seq <= kMsgs; ++seq) {
    if (seq > kRing) ASSERT_OK(shm.WaitGE(c.rank(), base + kAck, seq - kRing, "t-shm-order credit"));
    for (size_t w = 0; w < kMsg / 8; ++w) payload[w] = seq * 1000 + w;
    ASSERT_OK(shm.Put(to, base + kRingOff + (seq % kRing) * kMsg, payload, kMsg));
    shm.AtomicStore(to, base + kFlag, seq);
  }
  receiver.join();
  ASSERT_OK(shm.Barrier("t-shm-order-done"));
}

TEST(Shm, BarrierManyTimes) {
  ShmTransport& shm = Ctx().node();
  for (int i = 0; i < 200; ++i) ASSERT_OK(shm.Barrier("t-shm-barrier"));
}

TEST(Shm, GetReadsPeerMemory) {
  Context& c = Ctx();
  const size_t base = FreshRegion(4096, "t-shm-get");
  uint64_t v = 0xabc000 + c.rank();
  std::memcpy(c.heap().base() + base, &v, 8);
  ASSERT_OK(c.node().Barrier("t-shm-get-written"));
  for (int p : c.node_ranks()) {
    uint64_t got = 0;
    ASSERT_OK(c.node().Get(p, base, &got, 8));
    EXPECT_EQ(got, 0xabc000u + p);
  }
  ASSERT_OK(c.node().Barrier("t-shm-get-read"));
}

TEST(Shm, OutOfBoundsAndUnreachableAreErrors) {
  Context& c = Ctx();
  ShmTransport& shm = c.node();
  uint8_t b[16] = {};
  Status s = shm.Put(c.rank(), c.heap().size() - 8, b, 16);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("outside"), std::string::npos) << s.message();
  EXPECT_EQ(shm.Put(c.world_size() + 3, 0, b, 1).code(), Code::kInvalidArgument);
  EXPECT_EQ(shm.CheckWord(c.rank(), 12, "t").code(), Code::kInvalidArgument);
  EXPECT_TRUE(shm.CheckWord(c.rank(), 16, "t").ok());
  if (c.placement().num_nodes > 1) {
    int other = (c.rank() + c.placement().local_size) % c.world_size();
    EXPECT_FALSE(shm.Reaches(other));
    EXPECT_NE(shm.Put(other, 0, b, 1).message().find("not reachable"), std::string::npos);
  }
}

TEST(Shm, WaitTimesOutWithDiagnostic) {
  // A local wait on a word nobody writes: must fail within the deadline and name peer and counter.
  Context& c = Ctx();
  ShmTransport quick(c.heap(), c.node_ranks(), ctl::kNodeBarrier + 8, 200);
  const size_t base = FreshRegion(4096, "t-shm-timeout");
  auto t0 = Clock::now();
  Status s = quick.WaitGE(c.rank(), base, 1, "t-wait");
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  EXPECT_EQ(s.code(), Code::kTimeout);
  EXPECT_NE(s.message().find("t-wait"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("0 < 1"), std::string::npos) << s.message();
  EXPECT_LT(ms, 3000);
  ASSERT_OK(c.node().Barrier("t-shm-timeout-done"));
}

}  // namespace
}  // namespace epx::test
