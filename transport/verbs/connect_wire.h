// transport/verbs/connect_wire.h: the bytes ranks exchange to set up RC connections, apart from verbs
// calls and sockets, so that every decoder of what a peer sent is a pure function (and a fuzz target:
// tests/fuzz/connect_wire_fuzz.cc):
//   RankRecord   one per rank, all-gathered through the bootstrap: heap (addr, size, rkey), the
//                domain options that must agree, the port address, the rdma_cm endpoint;
//   OobQp        the out-of-band QP table: (QPN, PSN) of every (peer, channel), all-gathered;
//   CmHello      rdma_cm private data of a connect request; CmReject that of a reject.
// Records are fixed-layout structs in host byte order (one build, one ISA per job). A peer's field is
// used only after it is validated here: an MTU outside enum ibv_mtu would be undefined behaviour as
// an ibv_mtu, a heap range that wraps would make remote addresses wrap, a 24-bit QPN or PSN with high
// bits set is not one. Errors are returned, not logged; the caller adds context and logs once.
#pragma once

#include <infiniband/verbs.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "core/status.h"

namespace epx::verbs {

// What a peer needs to address this rank's port (part of the rank record exchanged at setup).
struct PortAddress {
  uint8_t gid[16];
  uint16_t lid;
  uint8_t port;
  uint8_t link_layer;
  uint8_t mtu;      // enum ibv_mtu
  uint8_t rd_atom;  // RDMA reads/atomics in flight, as initiator and as target
  uint8_t use_grh;  // 1: address by GID (RoCE, or IB with EPX_IB_GID_INDEX)
  uint8_t pad;
};
static_assert(sizeof(PortAddress) == 24);

// rdma_cm endpoint of a rank: IPv4 (network order) and port of its listener.
struct CmEndpoint {
  uint32_t ipv4;
  uint16_t port;
  uint16_t pad;
};

constexpr uint32_t kRecordMagic = 0x56585045;  // "EPXV"
constexpr uint32_t kRecordVersion = 1;

// Setup record every rank publishes (one bootstrap all-gather).
struct RankRecord {
  uint32_t magic;
  uint32_t version;
  int32_t rank;
  int32_t world;
  int32_t channels;
  uint8_t native_atomics;
  uint8_t rdmacm;
  uint16_t pad0;
  uint64_t heap_addr;
  uint64_t heap_size;
  uint32_t rkey;
  uint32_t pad1;
  uint64_t counter_off;
  uint64_t counter_bytes;
  PortAddress port;
  CmEndpoint cm;
};
static_assert(sizeof(RankRecord) == 96);

// A port address as a peer sent it: known link layer and MTU, use_grh 0 or 1.
Status CheckPortAddress(const PortAddress& a);
// Path MTU to a validated remote port: the smaller active MTU of the two.
ibv_mtu PathMtu(ibv_mtu local, const PortAddress& remote);

// Rank `rank`'s record `x`, as received by the rank whose own record is `mine`:
//   kFailedPrecondition  another epx version (magic, version) or not rank `rank`'s record;
//   kInvalidArgument     the domain options differ from `mine` (channels, connect method, counters);
//   kInternal            a field no epx rank sends (port address, flags, heap range, cm endpoint).
Status CheckRankRecord(const RankRecord& x, int rank, const RankRecord& mine);

// Out-of-band QP table entry: qpn 0 = no QP for this (rank, channel).
struct OobQp {
  uint32_t qpn;
  uint32_t psn;
};
static_assert(sizeof(OobQp) == 8);

// From the all-gathered tables (`world` rows of world * (channels + 1) entries): what rank `peer` made
// for rank `me`'s channel `ch`. kInternal if the table has another size or an index is out of range;
// kFailedPrecondition if the peer made no QP for it (qpn 0); kInternal for a QPN or PSN above 24 bits.
StatusOr<OobQp> DecodeOobQp(std::span<const uint8_t> all, int world, int channels, int peer, int me, int ch);

// rdma_cm private data. At most 56 bytes go with a connect (IB CM REQ); the CM may pad what arrives.
constexpr uint32_t kHelloMagic = 0x43585045;   // "EPXC"
constexpr uint32_t kRejectMagic = 0x52585045;  // "EPXR"
constexpr uint16_t kHelloVersion = 1;
struct CmHello {
  uint32_t magic;
  uint16_t version;
  uint16_t ch;
  int32_t src_rank;
  int32_t dst_rank;
  uint64_t job_tag;  // hash of the job id: a stray connect from another job is rejected
};
static_assert(sizeof(CmHello) == 24 && sizeof(CmHello) <= 56);
struct CmReject {
  uint32_t magic;
  uint16_t version;
  uint16_t reason;  // RejectReason
};
static_assert(sizeof(CmReject) == 8);
enum RejectReason : uint16_t { kBadHello = 1, kOtherJob = 2, kUnexpected = 3, kDuplicate = 4 };
const char* RejectText(uint16_t reason);  // "?" for a reason no epx rank sends

// Passive side: a connect request's private data for rank `rank` of job `job_tag`. `reject` is 0 when
// `hello` may be looked up among the expected connections, else kBadHello or kOtherJob, with `why`.
struct CmHelloVerdict {
  CmHello hello{};
  uint16_t reject = 0;
  std::string why;
};
CmHelloVerdict DecodeCmHello(std::span<const uint8_t> private_data, uint64_t job_tag, int rank);
// Active side: the reason of an epx reject; nullopt when the private data is not one (the CM's own reject).
std::optional<uint16_t> DecodeCmReject(std::span<const uint8_t> private_data);

}  // namespace epx::verbs
