// Fuzz target: the decoders of RC connection setup records (transport/verbs/connect_wire.h): the rank
// record all-gathered at setup, the out-of-band QP tables and the rdma_cm hello/reject private data.
// The first byte picks the decoder. Checked: nothing crashes or reads out of bounds, an accepted record
// has only values its users can take (a valid enum ibv_mtu, a heap range that does not wrap, 24-bit
// QPN/PSN, ...), and decode(encode(x)) == x for the QP tables.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstring>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "transport/verbs/connect_wire.h"

namespace epx::verbs {
namespace {

template <typename T>
T Take(FuzzedDataProvider& in) {
  T x{};
  const auto b = in.ConsumeBytes<uint8_t>(sizeof(T));
  if (!b.empty()) std::memcpy(&x, b.data(), b.size());  // short input: the rest stays zero
  return x;
}

void FuzzRankRecord(FuzzedDataProvider& in) {
  const int rank = in.ConsumeIntegralInRange<int>(0, 7);
  const RankRecord mine = Take<RankRecord>(in);
  const RankRecord x = Take<RankRecord>(in);
  const Status st = CheckRankRecord(x, rank, mine);
  if (!st.ok()) {
    FUZZ_CHECK(st.code() == Code::kFailedPrecondition || st.code() == Code::kInvalidArgument ||
                   st.code() == Code::kInternal,
               "{}", st.ToString());
    return;
  }
  FUZZ_CHECK(x.magic == kRecordMagic && x.version == kRecordVersion && x.rank == rank, "");
  FUZZ_CHECK(x.channels == mine.channels && x.rdmacm == mine.rdmacm && x.counter_off == mine.counter_off &&
                 x.counter_bytes == mine.counter_bytes,
             "options differ but the record was accepted");
  // What connection setup and the data path then do with the record.
  const ibv_mtu mtu = PathMtu(IBV_MTU_4096, x.port);
  FUZZ_CHECK(mtu >= IBV_MTU_256 && mtu <= IBV_MTU_4096, "path mtu {}", static_cast<int>(mtu));
  FUZZ_CHECK(x.port.use_grh <= 1 && x.port.link_layer <= IBV_LINK_LAYER_ETHERNET, "");
  FUZZ_CHECK(x.heap_size > 0 && x.heap_addr + x.heap_size > x.heap_addr, "heap [0x{:x}, +{}) wraps",
             x.heap_addr, x.heap_size);
  FUZZ_CHECK(x.counter_off <= x.heap_size && x.counter_bytes <= x.heap_size - x.counter_off,
             "counters [{}, +{}) outside the {}-byte heap", x.counter_off, x.counter_bytes, x.heap_size);
  FUZZ_CHECK(x.native_atomics <= 1 && x.rdmacm <= 1, "flags {} {}", x.native_atomics, x.rdmacm);
  if (x.rdmacm)
    FUZZ_CHECK(x.cm.ipv4 != 0 && x.cm.port != 0, "rdma_cm endpoint {:x}:{}", x.cm.ipv4, x.cm.port);
}

void FuzzOobTable(FuzzedDataProvider& in) {
  const int world = in.ConsumeIntegralInRange<int>(-1, 9);
  const int channels = in.ConsumeIntegralInRange<int>(-1, 4);
  const int peer = in.ConsumeIntegralInRange<int>(-1, 9), me = in.ConsumeIntegralInRange<int>(-1, 9);
  const int ch = in.ConsumeIntegralInRange<int>(-1, 5);
  const auto all = in.ConsumeRemainingBytes<uint8_t>();
  auto q = DecodeOobQp({all.data(), all.size()}, world, channels, peer, me, ch);
  if (!q.ok()) return;
  FUZZ_CHECK(peer >= 0 && peer < world && me >= 0 && me < world && ch >= 0 && ch <= channels,
             "entry ({}, {}, {}) of {} x {}", peer, me, ch, world, channels + 1);
  FUZZ_CHECK(all.size() == static_cast<size_t>(world) * world * (channels + 1) * sizeof(OobQp), "{} bytes",
             all.size());
  FUZZ_CHECK(q->qpn != 0 && q->qpn <= 0xffffff && q->psn <= 0xffffff, "qpn 0x{:x} psn 0x{:x}", q->qpn,
             q->psn);
}

void FuzzOobRoundTrip(FuzzedDataProvider& in) {
  const int world = in.ConsumeIntegralInRange<int>(1, 6), channels = in.ConsumeIntegralInRange<int>(0, 3);
  const size_t k1 = static_cast<size_t>(channels) + 1;
  std::vector<OobQp> all(static_cast<size_t>(world) * world * k1);
  for (auto& e : all)
    e = OobQp{in.ConsumeIntegralInRange<uint32_t>(1, 0xffffff), in.ConsumeIntegral<uint32_t>() & 0xffffff};
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(all.data()),
                                       all.size() * sizeof(OobQp));
  for (int peer = 0; peer < world; ++peer)
    for (int me = 0; me < world; ++me)
      for (int ch = 0; ch <= channels; ++ch) {
        auto q = DecodeOobQp(bytes, world, channels, peer, me, ch);
        const OobQp& want = all[(static_cast<size_t>(peer) * world + me) * k1 + ch];
        FUZZ_CHECK(q.ok() && q->qpn == want.qpn && q->psn == want.psn, "entry ({}, {}, {})", peer, me, ch);
      }
}

void FuzzCmHello(FuzzedDataProvider& in) {
  const uint64_t job = in.ConsumeBool() ? 0x1234 : in.ConsumeIntegral<uint64_t>();
  const int rank = in.ConsumeIntegralInRange<int>(0, 7);
  const auto pd = in.ConsumeRemainingBytes<uint8_t>();
  const CmHelloVerdict v = DecodeCmHello({pd.data(), pd.size()}, job, rank);
  if (v.reject != 0) {
    FUZZ_CHECK(v.reject == kBadHello || v.reject == kOtherJob, "reject {}", v.reject);
    FUZZ_CHECK(std::string_view(RejectText(v.reject)) != "?" && !v.why.empty(), "");
    return;
  }
  FUZZ_CHECK(pd.size() >= sizeof(CmHello) && std::memcmp(&v.hello, pd.data(), sizeof(CmHello)) == 0, "");
  FUZZ_CHECK(v.hello.magic == kHelloMagic && v.hello.version == kHelloVersion && v.hello.job_tag == job &&
                 v.hello.dst_rank == rank,
             "");
}

void FuzzCmReject(FuzzedDataProvider& in) {
  const auto pd = in.ConsumeRemainingBytes<uint8_t>();
  if (auto r = DecodeCmReject({pd.data(), pd.size()})) {
    FUZZ_CHECK(pd.size() >= sizeof(CmReject), "");
    (void)RejectText(*r);
  }
}

}  // namespace
}  // namespace epx::verbs

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace epx::verbs;
  if (size == 0) return 0;
  // The first byte picks the decoder (FuzzedDataProvider takes integers from the end, bytes from the front).
  FuzzedDataProvider in(data + 1, size - 1);
  switch (data[0] % 5) {
    case 0:
      FuzzRankRecord(in);
      break;
    case 1:
      FuzzOobTable(in);
      break;
    case 2:
      FuzzOobRoundTrip(in);
      break;
    case 3:
      FuzzCmHello(in);
      break;
    case 4:
      FuzzCmReject(in);
      break;
  }
  return 0;
}
