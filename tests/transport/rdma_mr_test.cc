// Multi-rank suite of the RDMA domain (transport/rdma.h). One binary for every backend: the backend is
// EPX_RDMA (verbs or shm, required), and every test first checks that the domain it got is that backend
// and, for verbs, that the device is a real soft-RoCE (rxe) device: no test skips.
//
// Run as R rank processes on N logical nodes (epx-run -n R --nodes N); a rank's peers are the ranks of
// the other logical nodes. Verbs cases run over both connection methods (out-of-band and rdma_cm), and
// the atomic cases also with emulated atomics (EPX_IB_FORCE_EMULATED_ATOMICS=1).
//
// The RdmaFailureMode.DISABLED_* cases are not part of the suite: tests/transport/rdma_failure_test.cc
// runs them in two rank processes of which one kills itself mid-stream.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/wait.h"
#include "tests/transport/mr_env.h"
#include "transport/rdma.h"
#include "transport/verbs/verbs_domain.h"

namespace epx::test {
namespace {

// Heap layout of every test: counters, then data.
constexpr size_t kCounterOff = kHeapControlBytes;
constexpr size_t kCounterBytes = 64 * 1024;
constexpr size_t kDataOff = kCounterOff + kCounterBytes;
constexpr size_t Ctr(size_t i) {
  return kCounterOff + 8 * i;
}

std::string Backend() {
  const char* v = std::getenv("EPX_RDMA");
  return v != nullptr ? v : "";
}
bool IsVerbs() {
  return Backend() == "verbs";
}

struct Mode {
  std::string connect;  // oob | rdmacm | auto (shm)
  bool emulated = false;
  std::string Name() const { return IsVerbs() ? connect + (emulated ? "_emulated_atomics" : "") : "shm"; }
};
void PrintTo(const Mode& m, std::ostream* os) {
  *os << m.Name();
}
std::vector<Mode> DataModes() {
  if (!IsVerbs()) return {Mode{"auto", false}};
  return {Mode{"oob", false}, Mode{"rdmacm", false}};
}
std::vector<Mode> AtomicModes() {
  if (!IsVerbs()) return {Mode{"auto", false}};
  return {Mode{"oob", false}, Mode{"rdmacm", false}, Mode{"oob", true}};
}

const Placement& P() {
  return Ctx().placement();
}
int Me() {
  return Ctx().rank();
}
// Ranks of the other logical nodes: the domain's default peers, ascending.
std::vector<int> PeersOf(int r) {
  std::vector<int> v;
  for (int x = 0; x < P().world_size; ++x)
    if (x / P().local_size != r / P().local_size) v.push_back(x);
  return v;
}
std::vector<int> Peers() {
  return PeersOf(Me());
}
// Position of `who` in `of`'s peer list: which receive slot / counter `who` uses at `of`.
int SlotAt(int of, int who) {
  auto v = PeersOf(of);
  return static_cast<int>(std::find(v.begin(), v.end(), who) - v.begin());
}
// Ring over the logical nodes: send to the same local rank of the next node, receive from the previous.
int RingTo() {
  return (Me() + P().local_size) % P().world_size;
}
int RingFrom() {
  return (Me() - P().local_size + P().world_size) % P().world_size;
}

uint8_t* Heap(size_t off) {
  return Ctx().heap().base() + off;
}

Status Barrier(const std::string& what) {
  return Ctx().bootstrap().Barrier(what);
}

// Asserts the domain is the backend EPX_RDMA asks for, on real rxe for verbs.
void ExpectBackend(const RdmaDomain& d) {
  ASSERT_TRUE(Backend() == "verbs" || Backend() == "shm")
      << "set EPX_RDMA=verbs or EPX_RDMA=shm for this suite";
  ASSERT_EQ(d.caps().kind, Backend()) << d.caps().device;
  const VerbsInfo* v = GetVerbsInfo(d);
  if (Backend() == "verbs") {
    ASSERT_NE(v, nullptr);
    EXPECT_EQ(v->vendor_id, 0xffffffu) << "not soft-RoCE: " << d.caps().device;
    EXPECT_EQ(v->device.rfind("rxe", 0), 0u) << "not soft-RoCE: " << d.caps().device;
  } else {
    EXPECT_EQ(v, nullptr);
  }
}

// Zeroes the counter area and `data_bytes` of data (before the collective creation, whose final
// barrier keeps peers from touching them earlier), then creates the domain.
std::unique_ptr<RdmaDomain> MakeDomain(int channels, const Mode& m, size_t data_bytes) {
  std::memset(Heap(kCounterOff), 0, kCounterBytes);
  std::memset(Heap(kDataOff), 0, data_bytes);
  setenv("EPX_IB_FORCE_EMULATED_ATOMICS", m.emulated ? "1" : "0", 1);
  auto o = RdmaOptions::FromEnv();
  EXPECT_TRUE(o.ok()) << o.status().ToString();
  if (!o.ok()) return nullptr;
  o->channels = channels;
  o->connect = m.connect;
  o->counter_off = kCounterOff;
  o->counter_bytes = kCounterBytes;
  auto d = CreateRdmaDomain(Ctx(), *o);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  if (!d.ok()) return nullptr;
  ExpectBackend(**d);
  if (IsVerbs()) {
    EXPECT_EQ(GetVerbsInfo(**d)->connect, m.connect == "auto" ? "oob" : m.connect);
    EXPECT_EQ((*d)->caps().native_atomics, !m.emulated);
  }
  return std::move(*d);
}

uint8_t Pattern(int src, size_t size, int msg, size_t byte) {
  return static_cast<uint8_t>(src * 131 + size * 7 + msg * 29 + byte * 13 + (byte >> 8));
}

// Bulk payloads (up to 8 MiB): a seeded xorshift stream, 8 bytes per step, so that filling and checking
// megabytes stays cheap under TCG; the seed codes the sender rank, the size and the message.
void FillStream(uint8_t* dst, size_t len, uint64_t seed) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(dst + i, &x, 8);
  }
  x ^= x << 13, x ^= x >> 7, x ^= x << 17;
  std::memcpy(dst + i, &x, len - i);
}
uint64_t Seed(int src, size_t size, int msg) {
  return (uint64_t(src) << 48) ^ (uint64_t(size) << 8) ^ uint64_t(msg);
}
// -1 if equal, else the first differing byte.
long CheckStream(const uint8_t* got, size_t len, uint64_t seed) {
  std::vector<uint8_t> want(len);
  FillStream(want.data(), len, seed);
  if (std::memcmp(got, want.data(), len) == 0) return -1;
  for (size_t b = 0; b < len; ++b)
    if (got[b] != want[b]) return static_cast<long>(b);
  return -1;
}

// ---------------------------------------------------------------------------------------------------

TEST(RdmaBackend, IsTheRequestedOneWithAnAutoChosenRoceV2Gid) {
  auto d = MakeDomain(1, Mode{"auto", false}, 0);
  ASSERT_NE(d, nullptr);
  for (int r = 0; r < P().world_size; ++r) {
    auto peers = Peers();
    EXPECT_EQ(d->Connected(r), std::find(peers.begin(), peers.end(), r) != peers.end()) << "rank " << r;
  }
  EXPECT_FALSE(d->Connected(Me()));
  EXPECT_GE(d->caps().max_msg, size_t{8} << 20);
  if (IsVerbs()) {
    const VerbsInfo* v = GetVerbsInfo(*d);
    EXPECT_TRUE(v->gid_roce_v2) << v->gid;
    EXPECT_TRUE(v->gid_ipv4_mapped) << v->gid;
    EXPECT_EQ(v->gid.rfind("::ffff:", 0), 0u) << v->gid;
    if (const char* g = std::getenv("EPX_RXE_GID_IDX")) {
      EXPECT_EQ(v->gid_index, std::atoi(g)) << v->gid;
    }
    EXPECT_GT(d->caps().max_inline, 0u);
    EXPECT_LE(d->caps().max_inline, 512u);  // rxe's limit
    EXPECT_GE(v->sq_depth, 4 * v->signal_every);
    EXPECT_TRUE(d->caps().native_atomics);  // rxe has ATOMIC_HCA
  }
  ASSERT_OK(Barrier("t-backend"));
}

class RdmaOps : public ::testing::TestWithParam<Mode> {};
class RdmaAtomics : public ::testing::TestWithParam<Mode> {};

TEST_P(RdmaOps, WriteAllSizesUnalignedToAllPeers) {
  constexpr int kCh = 2;
  const std::vector<size_t> sizes = {
      1, 3, 8, 63, 255, 256, 257, 511, 512, 513, 4095, 4096, 65537, (1u << 20) + 5, 8u << 20};
  const auto peers = Peers();
  const size_t kSlot = (8u << 20) + 4096;  // one receive slot per source peer, the source buffer after them
  const size_t src = kDataOff + peers.size() * kSlot;
  ASSERT_LE(src + kSlot, Ctx().heap().size()) << "EPX_HEAP_SIZE too small for this test (32M needed)";
  auto d = MakeDomain(kCh, GetParam(), src + kSlot - kDataOff);
  ASSERT_NE(d, nullptr);

  uint64_t round = 0;
  for (size_t s : sizes) {
    ++round;
    const int count = s <= 4096 ? 8 : s <= 65537 ? 4 : s <= (1u << 20) + 5 ? 2 : 1;
    const size_t stride = (s + 64) & ~size_t{7};
    // Unaligned on both sides: local offset 3 + 5i, remote offset 1 + 3i inside the message's stride.
    auto lo = [&](int i) { return src + i * stride + 3 + 5 * i % 8; };
    auto ro = [&](int i) { return i * stride + 1 + 3 * i % 8; };
    for (int i = 0; i < count; ++i) FillStream(Heap(lo(i)), s, Seed(Me(), s, i));
    for (int p : peers)
      for (int i = 0; i < count; ++i)
        ASSERT_OK(d->Write(i % kCh, p, lo(i), kDataOff + SlotAt(p, Me()) * kSlot + ro(i), s));
    // Quiet: every write is placed at its target; only then the "done" add, on another channel.
    for (int ch = 0; ch < kCh; ++ch) ASSERT_OK(d->Quiet(ch));
    for (int p : peers) ASSERT_OK(d->FetchAdd(1, p, Ctr(SlotAt(p, Me())), 1));
    ASSERT_OK(d->Quiet(1));
    for (size_t j = 0; j < peers.size(); ++j) {
      ASSERT_OK(d->WaitCounter(Ctr(j), round, "t-write-sizes done"));
      for (int i = 0; i < count; ++i)
        ASSERT_EQ(CheckStream(Heap(kDataOff + j * kSlot + ro(i)), s, Seed(peers[j], s, i)), -1)
            << "first wrong byte; size " << s << " msg " << i << " from rank " << peers[j];
    }
    ASSERT_OK(Barrier("t-write-sizes-" + std::to_string(s)));  // slots are reused by the next size
  }
}

TEST_P(RdmaOps, QuietMeansPlacedAtTheTarget) {
  // One thread per channel; each writes small (non-inline) and large messages to every peer, then
  // Quiet. The only notification is the out-of-band bootstrap barrier: after it, the data must be there.
  constexpr int kCh = 4, kSmall = 40;
  constexpr size_t kSmallLen = 1000, kLarge = 256 << 10;
  const auto peers = Peers();
  const size_t per_ch = kSmall * 1024 + kLarge;
  const size_t per_src = kCh * per_ch;
  const size_t src = kDataOff + peers.size() * per_src;
  auto d = MakeDomain(kCh, GetParam(), src + per_src - kDataOff);
  ASSERT_NE(d, nullptr);
  for (int rep = 0; rep < 2; ++rep) {
    FillStream(Heap(src), per_src, Seed(Me(), per_src, rep));
    std::vector<std::thread> ts;
    std::atomic<int> bad{0};
    for (int ch = 0; ch < kCh; ++ch)
      ts.emplace_back([&, ch] {
        const size_t base = ch * per_ch;
        for (int p : peers) {
          const size_t dst = kDataOff + SlotAt(p, Me()) * per_src;
          for (int i = 0; i < kSmall; ++i)
            if (!d->Write(ch, p, src + base + i * 1024, dst + base + i * 1024, kSmallLen).ok()) ++bad;
          if (!d->Write(ch, p, src + base + kSmall * 1024, dst + base + kSmall * 1024, kLarge).ok()) ++bad;
        }
        if (!d->Quiet(ch).ok()) ++bad;
        if (!d->Quiet(ch).ok()) ++bad;  // idle Quiet returns at once
      });
    for (auto& t : ts) t.join();
    ASSERT_EQ(bad.load(), 0);
    ASSERT_OK(Barrier("t-quiet-" + std::to_string(rep)));
    for (size_t j = 0; j < peers.size(); ++j) {
      std::vector<uint8_t> want(per_src);
      FillStream(want.data(), per_src, Seed(peers[j], per_src, rep));
      const uint8_t* got = Heap(kDataOff + j * per_src);
      for (int ch = 0; ch < kCh; ++ch) {
        const size_t base = ch * per_ch;
        for (int i = 0; i < kSmall; ++i)
          ASSERT_EQ(std::memcmp(got + base + i * 1024, want.data() + base + i * 1024, kSmallLen), 0)
              << "rep " << rep << " ch " << ch << " msg " << i << " from rank " << peers[j];
        ASSERT_EQ(std::memcmp(got + base + kSmall * 1024, want.data() + base + kSmall * 1024, kLarge), 0)
            << "large, rep " << rep << " ch " << ch << " from rank " << peers[j];
      }
    }
    ASSERT_OK(Barrier("t-quiet-checked-" + std::to_string(rep)));
  }
}

TEST_P(RdmaOps, ManyWritesWithoutQuietNeverOverflowTheSendQueue) {
  // Far more WRs than the send queue holds, one channel, no Quiet until the end: the domain must
  // throttle on completions (selective signaling) instead of overflowing the SQ or the CQ.
  constexpr int kMsgs = 3000;
  constexpr size_t kLen = 24;  // inline on verbs
  const auto peers = Peers();
  const size_t per_src = kMsgs * 32;
  const size_t src = kDataOff + peers.size() * per_src;
  auto d = MakeDomain(1, GetParam(), src + per_src - kDataOff);
  ASSERT_NE(d, nullptr);
  if (const VerbsInfo* v = GetVerbsInfo(*d)) {
    ASSERT_GT(kMsgs, 4 * v->sq_depth);
  }
  for (int i = 0; i < kMsgs; ++i)
    for (size_t b = 0; b < kLen; ++b) Heap(src + i * 32)[b] = Pattern(Me(), kLen, i, b);
  for (int i = 0; i < kMsgs; ++i)
    for (int p : peers)
      ASSERT_OK(d->Write(0, p, src + i * 32, kDataOff + SlotAt(p, Me()) * per_src + i * 32, kLen));
  ASSERT_OK(d->Quiet(0));
  ASSERT_OK(Barrier("t-sq-depth"));
  for (size_t j = 0; j < peers.size(); ++j)
    for (int i = 0; i < kMsgs; ++i)
      for (size_t b = 0; b < kLen; ++b)
        ASSERT_EQ(Heap(kDataOff + j * per_src + i * 32)[b], Pattern(peers[j], kLen, i, b)) << "msg " << i;
  ASSERT_OK(Barrier("t-sq-depth-checked"));
}

TEST_P(RdmaAtomics, WriteImmDeliversFull32BitImmediatesAfterTheirData) {
  // Every immediate carries the top bit (user immediates keep all 32 bits) and names (source, index);
  // the receiver checks the message's data the moment its immediate shows up. Emulated fetch-adds are
  // interleaved on the same QPs: they must not appear as immediates.
  constexpr int kCh = 2, kMsgs = 300, kAddEvery = 10;
  constexpr size_t kLen = 40, kStride = 64;
  const auto peers = Peers();
  const size_t per_src = kMsgs * kStride;
  const size_t src = kDataOff + peers.size() * per_src;
  auto d = MakeDomain(kCh, GetParam(), src + per_src - kDataOff);
  ASSERT_NE(d, nullptr);
  for (int i = 0; i < kMsgs; ++i)
    for (size_t b = 0; b < kLen; ++b) Heap(src + i * kStride)[b] = Pattern(Me(), kLen, i, b);

  std::string recv_error;
  std::thread receiver([&] {
    std::set<std::pair<int, int>> seen;
    std::vector<ImmEvent> ev(64);
    const auto deadline = Deadline::After(std::chrono::seconds(120));
    Backoff b;
    while (seen.size() < peers.size() * kMsgs && recv_error.empty()) {
      auto n = d->PollImm(ev);
      if (!n.ok()) {
        recv_error = n.status().ToString();
        break;
      }
      if (*n == 0) {
        if (deadline.Expired()) recv_error = "timed out with " + std::to_string(seen.size()) + " immediates";
        b.Pause();
        continue;
      }
      b.Reset();
      for (size_t k = 0; k < *n && recv_error.empty(); ++k) {
        const uint32_t imm = ev[k].imm;
        const int s = static_cast<int>((imm >> 16) & 0x7fff), i = static_cast<int>(imm & 0xffff);
        const auto j = std::find(peers.begin(), peers.end(), ev[k].src_rank) - peers.begin();
        if ((imm & 0x80000000u) == 0 || s != ev[k].src_rank || j == static_cast<long>(peers.size()) ||
            i >= kMsgs || !seen.insert({s, i}).second) {
          recv_error = fmt::format("bad or duplicate immediate 0x{:08x} from rank {}", imm, ev[k].src_rank);
          break;
        }
        const uint8_t* got = Heap(kDataOff + j * per_src + i * kStride);
        for (size_t bb = 0; bb < kLen; ++bb)
          if (got[bb] != Pattern(s, kLen, i, bb)) {
            recv_error =
                fmt::format("immediate of msg {} from rank {} arrived before its data (byte {})", i, s, bb);
            break;
          }
      }
    }
  });
  for (int i = 0; i < kMsgs; ++i)
    for (int p : peers) {
      const uint32_t imm = 0x80000000u | (static_cast<uint32_t>(Me()) << 16) | static_cast<uint32_t>(i);
      ASSERT_OK(d->WriteImm(i % kCh, p, src + i * kStride, kDataOff + SlotAt(p, Me()) * per_src + i * kStride,
                            kLen, imm));
      if (i % kAddEvery == 0) ASSERT_OK(d->FetchAdd(i % kCh, p, Ctr(SlotAt(p, Me())), 1));
    }
  for (int ch = 0; ch < kCh; ++ch) ASSERT_OK(d->Quiet(ch));
  receiver.join();
  ASSERT_EQ(recv_error, "");
  for (size_t j = 0; j < peers.size(); ++j)
    ASSERT_OK(d->WaitCounter(Ctr(j), kMsgs / kAddEvery, "t-imm adds"));
  ASSERT_OK(Barrier("t-imm"));
  std::vector<ImmEvent> ev(8);
  auto n = d->PollImm(ev);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 0u) << "emulated adds or duplicates leaked into PollImm";
  for (size_t j = 0; j < peers.size(); ++j) EXPECT_EQ(*d->ReadCounter(Ctr(j)), uint64_t{kMsgs / kAddEvery});
  ASSERT_OK(Barrier("t-imm-checked"));
}

TEST_P(RdmaAtomics, FetchAddIsExactFromManyChannelsAndThreads) {
  // Thread t (channel t) adds t+1 to every peer's shared counter and 1 to its per-source counter, N
  // times; counters must come out exact. Then the size limit of emulated adds, or a large native add.
  constexpr int kCh = 3, kN = 150;
  const auto peers = Peers();
  auto d = MakeDomain(kCh, GetParam(), 0);
  ASSERT_NE(d, nullptr);
  constexpr size_t kShared = 100;
  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (int t = 0; t < kCh; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < kN; ++i)
        for (int p : peers) {
          if (!d->FetchAdd(t, p, Ctr(kShared), t + 1).ok()) ++bad;
          if (!d->FetchAdd(t, p, Ctr(SlotAt(p, Me())), 1).ok()) ++bad;
        }
      if (!d->Quiet(t).ok()) ++bad;
    });
  for (auto& t : ts) t.join();
  ASSERT_EQ(bad.load(), 0);
  const uint64_t shared = peers.size() * kN * (kCh * (kCh + 1) / 2);
  ASSERT_OK(d->WaitCounter(Ctr(kShared), shared, "t-fadd shared"));
  for (size_t j = 0; j < peers.size(); ++j)
    ASSERT_OK(d->WaitCounter(Ctr(j), uint64_t{kCh} * kN, "t-fadd per-src"));
  ASSERT_OK(Barrier("t-fadd"));
  EXPECT_EQ(*d->ReadCounter(Ctr(kShared)), shared);
  for (size_t j = 0; j < peers.size(); ++j) EXPECT_EQ(*d->ReadCounter(Ctr(j)), uint64_t{kCh} * kN);

  const int to = RingTo();
  if (d->caps().native_atomics) {
    ASSERT_OK(d->FetchAdd(0, to, Ctr(kShared + 1), uint64_t{1} << 40));
    ASSERT_OK(d->Quiet(0));
    ASSERT_OK(d->WaitCounter(Ctr(kShared + 1), uint64_t{1} << 40, "t-fadd large"));
  } else {
    Status s = d->FetchAdd(0, to, Ctr(kShared + 1), 1 << 16);
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("65536"), std::string::npos) << s.ToString();
    ASSERT_OK(d->FetchAdd(0, to, Ctr(kShared + 1), 65535));
    ASSERT_OK(d->Quiet(0));
    ASSERT_OK(d->WaitCounter(Ctr(kShared + 1), 65535, "t-fadd max emulated"));
  }
  ASSERT_OK(Barrier("t-fadd-large"));
}

TEST_P(RdmaAtomics, SignalDataThenFlagOrderingOver10kMessages) {
  // Ring over the nodes. The sender puts a rank-coded 64-byte payload into a 64-slot ring in the
  // receiver's heap with Signal (data, then +1 on the receiver's flag); every time the receiver sees
  // the flag advance it checks every newly covered payload, then returns credits (FetchAdd on the
  // sender's ack counter, other channel) so the sender reuses a slot only once it has been read.
  constexpr int kMsgs = 10000, kRing = 64, kFlushEvery = 16;
  constexpr size_t kMsg = 64;
  constexpr size_t kFlag = 0, kAck = 1;
  const int to = RingTo(), from = RingFrom();
  const size_t ring = kDataOff, src = kDataOff + kRing * kMsg;
  auto d = MakeDomain(2, GetParam(), 2 * kRing * kMsg);
  ASSERT_NE(d, nullptr);

  std::string recv_error;
  std::thread receiver([&] {
    uint64_t next = 1;
    while (next <= kMsgs) {
      Status s = d->WaitCounter(Ctr(kFlag), next, "t-order flag");
      if (!s.ok()) {
        recv_error = s.ToString();
        return;
      }
      const uint64_t upto = *d->ReadCounter(Ctr(kFlag));
      for (uint64_t q = next; q <= upto; ++q) {
        const uint64_t* m = reinterpret_cast<const uint64_t*>(Heap(ring + (q % kRing) * kMsg));
        for (size_t w = 0; w < kMsg / 8; ++w)
          if (m[w] != ((uint64_t(from) << 56) | (q << 8) | w)) {
            recv_error = fmt::format("flag at {} but message {} word {} is 0x{:x} (data after flag)", upto, q,
                                     w, m[w]);
            return;
          }
      }
      if (!d->FetchAdd(1, from, Ctr(kAck), upto - next + 1).ok() || !d->Flush(1).ok()) {
        recv_error = "ack failed";
        return;
      }
      next = upto + 1;
    }
    if (!d->Quiet(1).ok()) recv_error = "ack quiet failed";
  });
  for (uint64_t q = 1; q <= kMsgs; ++q) {
    if (q > kRing) {
      ASSERT_OK(d->Flush(0));  // nothing moves before a flush: never wait on credits for unflushed work
      ASSERT_OK(d->WaitCounter(Ctr(kAck), q - kRing, "t-order credit"));
    }
    uint64_t* m = reinterpret_cast<uint64_t*>(Heap(src + (q % kRing) * kMsg));
    for (size_t w = 0; w < kMsg / 8; ++w) m[w] = (uint64_t(Me()) << 56) | (q << 8) | w;
    ASSERT_OK(d->Signal(0, to, src + (q % kRing) * kMsg, ring + (q % kRing) * kMsg, kMsg, Ctr(kFlag), 1));
    if (q % kFlushEvery == 0) ASSERT_OK(d->Flush(0));
  }
  ASSERT_OK(d->Quiet(0));
  receiver.join();
  ASSERT_EQ(recv_error, "");
  ASSERT_OK(Barrier("t-order"));
}

INSTANTIATE_TEST_SUITE_P(Modes, RdmaOps, ::testing::ValuesIn(DataModes()),
                         [](const auto& info) { return info.param.Name(); });
INSTANTIATE_TEST_SUITE_P(Modes, RdmaAtomics, ::testing::ValuesIn(AtomicModes()),
                         [](const auto& info) { return info.param.Name(); });

TEST(RdmaErrors, BadOffsetsPeersAndRkeysAreClearErrors) {
  auto d = MakeDomain(2, Mode{"auto", false}, 4096);
  ASSERT_NE(d, nullptr);
  const int to = RingTo();
  const size_t heap = Ctx().heap().size();
  auto expect = [](Status s, Code code, std::initializer_list<const char*> words) {
    EXPECT_EQ(s.code(), code) << s.ToString();
    for (const char* w : words)
      EXPECT_NE(s.message().find(w), std::string::npos) << "'" << w << "' in " << s.ToString();
  };
  const std::string rank_to = fmt::format("rank {}", to);
  expect(d->Write(0, to, kDataOff, heap - 10, 64), Code::kInvalidArgument,
         {rank_to.c_str(), "outside", "remote"});
  expect(d->Write(0, to, heap - 10, kDataOff, 64), Code::kInvalidArgument, {"local", "outside"});
  expect(d->Write(0, to, kDataOff, kDataOff, d->caps().max_msg + 1), Code::kInvalidArgument, {});
  expect(d->FetchAdd(0, to, Ctr(1) + 4, 1), Code::kInvalidArgument, {"aligned", "counter area"});
  expect(d->FetchAdd(0, to, kDataOff, 1), Code::kInvalidArgument, {"counter area"});
  expect(d->Write(0, Me(), kDataOff, kDataOff, 8), Code::kInvalidArgument, {"not a connected peer"});
  expect(d->Write(2, to, kDataOff, kDataOff, 8), Code::kInvalidArgument, {"channel 2"});
  expect(d->WaitCounter(Ctr(0) + 1, 1, "t"), Code::kInvalidArgument, {"aligned"});
  // The checks reject before posting: the channel still works.
  ASSERT_OK(d->Signal(0, to, kDataOff, kDataOff + 64, 8, Ctr(0), 1));
  ASSERT_OK(d->Quiet(0));
  ASSERT_OK(d->WaitCounter(Ctr(0), 1, "t-errors ok"));
  ASSERT_OK(Barrier("t-errors-bounds"));

  if (IsVerbs() && Me() == 0) {
    // A wrong rkey is caught by the peer's NIC: remote access error naming the peer and the QP.
    ASSERT_OK(VerbsCorruptRemoteKeyForTest(*d, to));
    ASSERT_OK(d->Write(1, to, kDataOff, kDataOff, 16));
    Status s = d->Quiet(1);
    expect(s, Code::kTransport, {rank_to.c_str(), "QP 0x", "REM_ACCESS_ERR", "rkey"});
    // Sticky for that peer: the next post to it reports the same failure.
    expect(d->Write(1, to, kDataOff, kDataOff, 16), Code::kTransport, {"REM_ACCESS_ERR"});
    EXPECT_EQ(d->FailedPeers(), std::vector<int>{to});
  }
  // Failures are per peer (transport/rdma.h "Errors", "Masking"): rank 0 still reaches another remote
  // peer on the broken channel, whose Quiet reports `to` until `to` is masked, then completes without it.
  const int to0 = P().local_size % P().world_size;  // rank 0's RingTo()
  int other = -1;
  for (int r = 0; r < P().world_size && other < 0; ++r)
    if (r / P().local_size != 0 && r != to0) other = r;
  if (IsVerbs() && Me() == 0) {
    if (other >= 0) ASSERT_OK(d->Signal(1, other, kDataOff, kDataOff + 128, 8, Ctr(3), 1));
    expect(d->Quiet(1), Code::kTransport, {rank_to.c_str(), "REM_ACCESS_ERR"});
    d->MaskPeer(to, true);
    ASSERT_OK(d->Quiet(1));
    ASSERT_OK(d->Poll(1));
    d->MaskPeer(to, false);
    expect(d->Poll(1), Code::kTransport, {rank_to.c_str(), "REM_ACCESS_ERR"});
  }
  if (IsVerbs() && Me() == other)
    ASSERT_OK(d->WaitCounter(Ctr(3), 1, "t-errors: signal past a broken peer", nullptr, 0));
  ASSERT_OK(Barrier("t-errors-rkey"));  // then every rank drops the (now broken) domain
}

class RdmaAllToAll : public ::testing::TestWithParam<Mode> {};

TEST_P(RdmaAllToAll, ExchangeVerifiedEndToEnd) {
  // Every rank sends a rank-coded block to every peer (Signal: data then the peer's per-source flag),
  // waits for the blocks of all its peers and checks them. Two rounds, two sizes.
  constexpr int kCh = 2;
  const auto peers = Peers();
  constexpr size_t kMax = (64 << 10) + 16;
  const size_t src = kDataOff + peers.size() * kMax;
  auto d = MakeDomain(kCh, GetParam(), src + kMax - kDataOff);
  ASSERT_NE(d, nullptr);
  int round = 0;
  for (size_t len : {size_t{4096 + 3}, size_t{64 << 10}}) {
    ++round;
    for (size_t b = 0; b < len; ++b) Heap(src + 1)[b] = Pattern(Me(), len, round, b);
    for (size_t k = 0; k < peers.size(); ++k) {
      const int p = peers[k];
      const size_t slot = SlotAt(p, Me());
      ASSERT_OK(
          d->Signal(static_cast<int>(k % kCh), p, src + 1, kDataOff + slot * kMax + 5, len, Ctr(slot), 1));
    }
    for (int ch = 0; ch < kCh; ++ch) ASSERT_OK(d->Flush(ch));
    for (size_t j = 0; j < peers.size(); ++j) {
      ASSERT_OK(d->WaitCounter(Ctr(j), static_cast<uint64_t>(round), "t-alltoall"));
      const uint8_t* got = Heap(kDataOff + j * kMax + 5);
      for (size_t b = 0; b < len; ++b)
        ASSERT_EQ(got[b], Pattern(peers[j], len, round, b)) << "from rank " << peers[j] << " byte " << b;
    }
    for (int ch = 0; ch < kCh; ++ch) ASSERT_OK(d->Quiet(ch));
    ASSERT_OK(Barrier("t-alltoall-" + std::to_string(round)));
  }
  std::printf("rank %d: all-to-all with %zu peers verified (%s)\n", Me(), peers.size(),
              d->caps().device.c_str());
}

INSTANTIATE_TEST_SUITE_P(Modes, RdmaAllToAll, ::testing::ValuesIn(DataModes()),
                         [](const auto& info) { return info.param.Name(); });

// ---- failure modes (driven by rdma_failure_test: 2 ranks on 2 nodes, EPX_TIMEOUT=5s) -------------

double TimeoutSeconds() {
  auto o = RdmaOptions::FromEnv();
  return o.ok() ? o->timeout_ms / 1000.0 : 60.0;
}

// Both ranks exchange a few hundred signals (the connection works), meet at the bootstrap, then rank
// 1 kills itself. Returns the domain for rank 0 to go on with.
std::unique_ptr<RdmaDomain> WarmUpThenKillRank1() {
  EXPECT_EQ(P().world_size, 2);
  const char* connect = std::getenv("EPX_CONNECT");
  auto d = MakeDomain(1, Mode{connect != nullptr ? connect : "auto", false}, 4096);
  if (d == nullptr) return nullptr;
  const int peer = 1 - Me();
  for (int i = 0; i < 200; ++i) EXPECT_TRUE(d->Signal(0, peer, kDataOff, kDataOff + 64, 64, Ctr(0), 1).ok());
  EXPECT_TRUE(d->Quiet(0).ok());
  EXPECT_TRUE(d->WaitCounter(Ctr(0), 200, "warm-up").ok());
  EXPECT_TRUE(Barrier("t-failure-warm").ok());
  if (Me() == 1) {
    std::printf("victim rank 1 pid %d: dying now\n", getpid());
    std::fflush(stdout);
    raise(SIGKILL);
  }
  return d;
}

TEST(RdmaFailureMode, DISABLED_PeerKilledWhileStreaming) {
  auto d = WarmUpThenKillRank1();
  ASSERT_NE(d, nullptr);
  // Rank 0 keeps streaming writes with a Quiet every 16; the first Quiet after the death must fail,
  // naming rank 1, within the deadline.
  const auto t_end = Clock::now() + std::chrono::seconds(60);
  Status s;
  double quiet_s = 0;
  int quiets = 0;
  while (s.ok() && Clock::now() < t_end) {
    for (int i = 0; i < 16 && s.ok(); ++i) s = d->Write(0, 1, kDataOff, kDataOff + 128, 256);
    if (!s.ok()) break;
    const auto t0 = Clock::now();
    s = d->Quiet(0);
    quiet_s = std::chrono::duration<double>(Clock::now() - t0).count();
    ++quiets;
  }
  ASSERT_FALSE(s.ok()) << "peer death never detected";
  std::printf("survivor: quiet #%d failed after %.2f s: %s\n", quiets, quiet_s, s.ToString().c_str());
  EXPECT_TRUE(s.code() == Code::kPeerFailure || s.code() == Code::kTransport) << s.ToString();
  EXPECT_NE(s.message().find("rank 1"), std::string::npos) << s.ToString();
  EXPECT_LE(quiet_s, TimeoutSeconds() + 1.0);
  // The failure is known now: a wait fails at once, naming the peer.
  const auto t0 = Clock::now();
  Status w = d->WaitCounter(Ctr(0), 1000, "after the death");
  const double wait_s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_EQ(w.code(), Code::kPeerFailure) << w.ToString();
  EXPECT_NE(w.message().find("rank 1"), std::string::npos) << w.ToString();
  EXPECT_LT(wait_s, 1.0);
}

TEST(RdmaFailureMode, DISABLED_PeerKilledWhileWaiting) {
  auto d = WarmUpThenKillRank1();
  ASSERT_NE(d, nullptr);
  // Rank 0 only waits for a signal that will never come; the wait must name the dead peer (liveness
  // probes), not just time out, and within the deadline.
  const auto t0 = Clock::now();
  Status w = d->WaitCounter(Ctr(0), 201, "signal from the dead peer");
  const double wait_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("survivor: wait failed after %.2f s: %s\n", wait_s, w.ToString().c_str());
  if (IsVerbs()) {
    EXPECT_EQ(w.code(), Code::kPeerFailure) << w.ToString();
    EXPECT_NE(w.message().find("rank 1"), std::string::npos) << w.ToString();
  } else {
    EXPECT_EQ(w.code(), Code::kTimeout) << w.ToString();
  }
  EXPECT_LE(wait_s, TimeoutSeconds() + 1.0);
}

}  // namespace
}  // namespace epx::test
