// transport/verbs/connect.h: bringing RC QPs to RTS, apart from the data path. Two methods:
//
//   out-of-band (connect_oob.cc)  QPs created with ibv_create_qp; QPN/PSN of every QP exchanged through
//                                 the TCP bootstrap (one all-gather), then RESET->INIT->RTR->RTS by
//                                 hand. Works on every device and netdev, rxe bound to `lo` included.
//   rdma_cm (connect_rdmacm.cc)   every rank listens on its device's IPv4 address; for each pair the
//                                 higher rank connects, with a small versioned hello in the private
//                                 data (<= 56 bytes on connect). rdma_cm resolves the route and moves
//                                 the QPs itself. Needs an IPv4 address on the device's netdev (not `lo`).
//
// Both hand back one QpOwner per requested slot, in RTS, with receives already posted (the data path's
// `on_created` hook runs while the QP is in INIT, before any peer can send to it).
#pragma once

#include <infiniband/verbs.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/wait.h"
#include "transport/verbs/connect_wire.h"
#include "transport/verbs/device.h"
#include "transport/verbs/ibv_wrap.h"

namespace epx {
class Bootstrap;
}

namespace epx::verbs {

// What a peer needs to address this rank's port (PortAddress: transport/verbs/connect_wire.h).
PortAddress MakePortAddress(const DeviceChoice& dev, uint8_t rd_atom);

// One QP of this rank: to `peer` for channel `ch` (ch == number of data channels: the control QP).
struct QpSlot {
  int peer;
  int ch;
};

struct QpConfig {
  ibv_pd* pd = nullptr;
  std::vector<ibv_cq*> send_cq;  // per slot
  std::vector<ibv_cq*> recv_cq;  // per slot
  std::vector<ibv_qp_cap> cap;   // per slot; max_inline_data is a wish (lowered until the device agrees)
  int timeout = 14;              // local ACK timeout exponent (4.096 us * 2^timeout)
  int retry_cnt = 7;
  uint8_t rd_atom = 1;
  // Runs once per QP, in INIT, before any peer can reach it: posts the receives.
  std::function<Status(size_t slot, ibv_qp*)> on_created;
};

// ibv_qp_init_attr for slot i with the given inline wish.
ibv_qp_init_attr InitAttr(const QpConfig& cfg, size_t slot, uint32_t max_inline);

// Tries the wished inline size, then smaller ones (devices reject an inline size they cannot do with
// EINVAL at create time). `create` makes one QP or fails with the errno.
template <typename Create>
StatusOr<ibv_qp*> CreateWithInlineFallback(const QpConfig& cfg, size_t slot, const char* call,
                                           std::string_view what, Create&& create) {
  int err = 0;
  for (uint32_t inl = cfg.cap[slot].max_inline_data;; inl = inl > 64 ? inl / 2 : 0) {
    ibv_qp_init_attr a = InitAttr(cfg, slot, inl);
    errno = 0;
    ibv_qp* qp = create(a);
    if (qp != nullptr) return qp;
    err = errno != 0 ? errno : EIO;
    if (err != EINVAL || inl == 0) break;
  }
  return VerbsError(call, err, what);
}

std::string SlotName(const QpSlot& s, int channels);  // "rank 3 channel 1" / "rank 3 control QP"

// Out-of-band: collective over every rank of `boot` (ranks without slots take part too).
// `addrs[r]` is rank r's port address (validated: CheckRankRecord); `channels` = data channels per peer
// (slots use 0..channels).
StatusOr<std::vector<QpOwner>> ConnectOob(Bootstrap& boot, const DeviceChoice& dev,
                                          std::span<const PortAddress> addrs, const QpConfig& cfg,
                                          std::span<const QpSlot> slots, int channels);

class RdmacmConnector {
 public:
  // Creates the event channel and a listener bound to the device's IPv4 address (the kernel picks
  // the port). Fails if rdma_cm maps that address to another device than `dev`.
  static StatusOr<std::unique_ptr<RdmacmConnector>> Listen(const DeviceChoice& dev);
  ~RdmacmConnector();

  // librdmacm's context of the device: PD, CQs and MRs must be created on it (rdma_create_qp checks).
  ibv_context* verbs() const;
  CmEndpoint endpoint() const { return self_; }

  // Connects every slot (the higher rank of a pair is the active side), retrying address/route
  // errors and early rejects with back-off until `deadline`. Collective with the peers in `slots`.
  // The returned QPs own their cm ids and must be destroyed before this connector (its channel).
  StatusOr<std::vector<QpOwner>> Connect(int rank, uint64_t job_tag, std::span<const CmEndpoint> endpoints,
                                         const QpConfig& cfg, std::span<const QpSlot> slots, int channels,
                                         const Deadline& deadline);

 private:
  RdmacmConnector() = default;
  EventChannelPtr channel_;
  CmIdOwner listener_;
  CmEndpoint self_{};
};

}  // namespace epx::verbs
