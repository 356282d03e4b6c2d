#include "transport/verbs/connect_wire.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace epx::verbs {
namespace {

Status Corrupt(std::string msg) {
  return Status(Code::kInternal, std::move(msg));
}

}  // namespace

Status CheckPortAddress(const PortAddress& a) {
  // Only values of enum ibv_mtu may become one: static_cast to an enum without a fixed underlying type
  // is undefined for a value outside its range (0..7 here), and 0, 6 and 7 are no MTU either.
  if (a.mtu < IBV_MTU_256 || a.mtu > IBV_MTU_4096) return Corrupt(fmt::format("mtu enum {}", a.mtu));
  if (a.link_layer > IBV_LINK_LAYER_ETHERNET) return Corrupt(fmt::format("link layer {}", a.link_layer));
  if (a.use_grh > 1) return Corrupt(fmt::format("use_grh {}", a.use_grh));
  return Status::Ok();
}

ibv_mtu PathMtu(ibv_mtu local, const PortAddress& remote) {
  // The remote value was range-checked by CheckPortAddress; clamp anyway so a missed check cannot
  // produce an invalid enum.
  const int m = std::clamp<int>(remote.mtu, IBV_MTU_256, IBV_MTU_4096);
  return std::min(local, static_cast<ibv_mtu>(m));
}

Status CheckRankRecord(const RankRecord& x, int rank, const RankRecord& mine) {
  if (x.magic != kRecordMagic || x.version != kRecordVersion || x.rank != rank)
    return Status(Code::kFailedPrecondition,
                  fmt::format("rank {} sent a record of another epx version (magic 0x{:x} version {})", rank,
                              x.magic, x.version));
  if (x.channels != mine.channels || x.rdmacm != mine.rdmacm || x.counter_off != mine.counter_off ||
      x.counter_bytes != mine.counter_bytes)
    return Status(
        Code::kInvalidArgument,
        fmt::format("ranks disagree on the domain options: rank {} has {} channels, connect {}, counters "
                    "[{}, +{}); rank {} has {}, {}, [{}, +{}) (EPX_QPS_PER_PEER / EPX_CONNECT must match)",
                    rank, x.channels, x.rdmacm ? "rdmacm" : "oob", x.counter_off, x.counter_bytes, mine.rank,
                    mine.channels, mine.rdmacm ? "rdmacm" : "oob", mine.counter_off, mine.counter_bytes));
  // Remote addresses are heap_addr + offset with offsets checked against heap_size: the range must not
  // wrap, and the counter area (same offsets on every rank) must lie inside it.
  if (x.heap_size == 0 || x.heap_addr + x.heap_size < x.heap_addr)
    return Corrupt(fmt::format("rank {} sent a heap range [0x{:x}, +{})", rank, x.heap_addr, x.heap_size));
  if (x.counter_off > x.heap_size || x.counter_bytes > x.heap_size - x.counter_off)
    return Status(
        Code::kInvalidArgument,
        fmt::format("rank {}'s heap of {} bytes does not hold the counter area [{}, +{}) (EPX_HEAP_SIZE "
                    "must be equal on all ranks)",
                    rank, x.heap_size, x.counter_off, x.counter_bytes));
  if (x.native_atomics > 1 || x.rdmacm > 1)
    return Corrupt(
        fmt::format("rank {} sent flags native_atomics={} rdmacm={}", rank, x.native_atomics, x.rdmacm));
  if (x.rdmacm && (x.cm.ipv4 == 0 || x.cm.port == 0))
    return Corrupt(fmt::format("rank {} sent no rdma_cm endpoint", rank));
  if (Status st = CheckPortAddress(x.port); !st.ok())
    return Corrupt(fmt::format("rank {} sent an invalid port address: {}", rank, st.message()));
  return Status::Ok();
}

StatusOr<OobQp> DecodeOobQp(std::span<const uint8_t> all, int world, int channels, int peer, int me, int ch) {
  if (world < 1 || channels < 0 || peer < 0 || peer >= world || me < 0 || me >= world || ch < 0 ||
      ch > channels)
    return Corrupt(fmt::format("QP table entry (rank {}, rank {}, channel {}) outside {} ranks x {} channels",
                               peer, me, ch, world, channels + 1));
  // 64-bit sizes: world and channels are ints, so no product below overflows.
  const uint64_t k1 = static_cast<uint64_t>(channels) + 1, row = static_cast<uint64_t>(world) * k1;
  if (all.size() != static_cast<uint64_t>(world) * row * sizeof(OobQp))
    return Corrupt(fmt::format("QP tables of {} bytes for {} ranks x {} channels", all.size(), world, k1));
  OobQp q;
  std::memcpy(
      &q,
      all.data() + (static_cast<uint64_t>(peer) * row + static_cast<uint64_t>(me) * k1 + ch) * sizeof(OobQp),
      sizeof(OobQp));
  if (q.qpn == 0)
    return Status(
        Code::kFailedPrecondition,
        fmt::format("rank {} made no QP for rank {} channel {} (do the peer lists agree?)", peer, me, ch));
  if (q.qpn > 0xffffff || q.psn > 0xffffff)
    return Corrupt(fmt::format("rank {} sent QPN 0x{:x} PSN 0x{:x} (24-bit fields)", peer, q.qpn, q.psn));
  return q;
}

const char* RejectText(uint16_t r) {
  switch (r) {
    case kBadHello:
      return "malformed or other-version hello";
    case kOtherJob:
      return "hello from another job";
    case kUnexpected:
      return "no such (rank, channel) expected";
    case kDuplicate:
      return "already connected";
    default:
      return "?";
  }
}

CmHelloVerdict DecodeCmHello(std::span<const uint8_t> pd, uint64_t job_tag, int rank) {
  CmHelloVerdict v;
  CmHello& h = v.hello;
  if (pd.size() < sizeof(h)) {
    v.reject = kBadHello;
    v.why = fmt::format("{} bytes of private data", pd.size());
    return v;
  }
  std::memcpy(&h, pd.data(), sizeof(h));
  if (h.magic != kHelloMagic || h.version != kHelloVersion) {
    v.reject = kBadHello;
    v.why = fmt::format("magic 0x{:x} version {}", h.magic, h.version);
  } else if (h.job_tag != job_tag || h.dst_rank != rank) {
    v.reject = kOtherJob;
    v.why = fmt::format("from rank {} for rank {}", h.src_rank, h.dst_rank);
  }
  return v;
}

std::optional<uint16_t> DecodeCmReject(std::span<const uint8_t> pd) {
  CmReject r{};
  if (pd.size() < sizeof(r)) return std::nullopt;
  std::memcpy(&r, pd.data(), sizeof(r));
  if (r.magic != kRejectMagic) return std::nullopt;
  return r.reason;
}

}  // namespace epx::verbs
