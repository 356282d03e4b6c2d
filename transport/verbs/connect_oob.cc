// Out-of-band RC connection: QPN/PSN through the bootstrap, then the state transitions by hand
// (ibv_modify_qp(3); attribute masks as in rdma-core's examples, NCCL and perftest).
#include <algorithm>
#include <cstring>
#include <random>

#include "core/log.h"
#include "transport/bootstrap.h"
#include "transport/verbs/connect.h"

namespace epx::verbs {

PortAddress MakePortAddress(const DeviceChoice& dev, uint8_t rd_atom) {
  PortAddress a{};
  std::memcpy(a.gid, dev.gid.raw, 16);
  a.lid = dev.lid;
  a.port = static_cast<uint8_t>(dev.port);
  a.link_layer = dev.link_layer;
  a.mtu = static_cast<uint8_t>(dev.active_mtu);
  a.rd_atom = rd_atom;
  a.use_grh = dev.gid_index >= 0 ? 1 : 0;
  return a;
}

ibv_qp_init_attr InitAttr(const QpConfig& cfg, size_t slot, uint32_t max_inline) {
  ibv_qp_init_attr a{};
  a.send_cq = cfg.send_cq[slot];
  a.recv_cq = cfg.recv_cq[slot];
  a.cap = cfg.cap[slot];
  a.cap.max_inline_data = max_inline;
  a.qp_type = IBV_QPT_RC;
  a.sq_sig_all = 0;  // selective signaling: only WRs flagged IBV_SEND_SIGNALED complete successfully
  return a;
}

std::string SlotName(const QpSlot& s, int channels) {
  return s.ch == channels ? fmt::format("rank {} control QP", s.peer)
                          : fmt::format("rank {} channel {}", s.peer, s.ch);
}

namespace {

Status ToInit(ibv_qp* qp, int port, const std::string& what) {
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_INIT;
  a.pkey_index = 0;
  a.port_num = static_cast<uint8_t>(port);
  a.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
  EPX_IBV(ibv_modify_qp, (qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS),
          "RESET->INIT of QP 0x{:x} to {}", qp->qp_num, what);
  return Status::Ok();
}

Status ToRtr(ibv_qp* qp, const DeviceChoice& dev, const PortAddress& remote, const OobQp& rq, uint8_t rd_atom,
             const std::string& what) {
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_RTR;
  // path MTU = the smaller active MTU of the two ports (a larger one would be dropped on the way).
  a.path_mtu = PathMtu(dev.active_mtu, remote);
  a.dest_qp_num = rq.qpn;
  a.rq_psn = rq.psn;
  a.max_dest_rd_atomic = std::min(rd_atom, remote.rd_atom);
  a.min_rnr_timer = 12;  // 0.64 ms before a sender retries a receive-not-ready NAK
  a.ah_attr.port_num = static_cast<uint8_t>(dev.port);
  a.ah_attr.dlid = remote.lid;
  a.ah_attr.sl = 0;
  if (remote.use_grh && dev.gid_index >= 0) {
    // RoCE: every packet carries a GRH addressed by GID; the source GID index picks our address.
    a.ah_attr.is_global = 1;
    std::memcpy(a.ah_attr.grh.dgid.raw, remote.gid, 16);
    a.ah_attr.grh.sgid_index = static_cast<uint8_t>(dev.gid_index);
    a.ah_attr.grh.hop_limit = 255;
  }
  ibv_gid rg;
  std::memcpy(rg.raw, remote.gid, 16);
  EPX_IBV(ibv_modify_qp,
          (qp, &a,
           IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
               IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER),
          "INIT->RTR of QP 0x{:x} to {} (remote QP 0x{:x}, gid {}, lid {}, mtu {})", qp->qp_num, what, rq.qpn,
          GidToString(rg), remote.lid, MtuBytes(a.path_mtu));
  return Status::Ok();
}

Status ToRts(ibv_qp* qp, uint32_t psn, const QpConfig& cfg, uint8_t rd_atom, const std::string& what) {
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_RTS;
  a.sq_psn = psn;
  // timeout 0 would disable retransmission; the tunables table keeps it in 14..31.
  a.timeout = static_cast<uint8_t>(cfg.timeout);
  a.retry_cnt = static_cast<uint8_t>(cfg.retry_cnt);
  a.rnr_retry = 7;  // receive-not-ready: retry forever; a missing receive shows up as a wait timeout
  a.max_rd_atomic = rd_atom;
  EPX_IBV(ibv_modify_qp,
          (qp, &a,
           IBV_QP_STATE | IBV_QP_SQ_PSN | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
               IBV_QP_MAX_QP_RD_ATOMIC),
          "RTR->RTS of QP 0x{:x} to {}", qp->qp_num, what);
  return Status::Ok();
}

}  // namespace

StatusOr<std::vector<QpOwner>> ConnectOob(Bootstrap& boot, const DeviceChoice& dev,
                                          std::span<const PortAddress> addrs, const QpConfig& cfg,
                                          std::span<const QpSlot> slots, int channels) {
  const int world = boot.world_size(), me = boot.rank(), k1 = channels + 1;
  std::vector<QpOwner> qps(slots.size());
  std::vector<OobQp> mine(static_cast<size_t>(world) * k1, OobQp{0, 0});
  std::vector<uint32_t> psn(slots.size());
  std::random_device rd;
  std::mt19937 rng(rd() ^ static_cast<uint32_t>(me * 2654435761u));

  for (size_t i = 0; i < slots.size(); ++i) {
    const std::string what = SlotName(slots[i], channels);
    EPX_ASSIGN_OR_RETURN(ibv_qp * qp,
                         CreateWithInlineFallback(cfg, i, "ibv_create_qp", what, [&](ibv_qp_init_attr& a) {
                           return ibv_create_qp(cfg.pd, &a);
                         }));
    qps[i] = QpOwner(qp);
    EPX_RETURN_IF_ERROR(ToInit(qp, dev.port, what));
    if (cfg.on_created) EPX_RETURN_IF_ERROR(cfg.on_created(i, qp));
    psn[i] = rng() & 0xffffff;  // 24-bit PSN, random so a stale packet of an old QP is not accepted
    mine[static_cast<size_t>(slots[i].peer) * k1 + slots[i].ch] = OobQp{qp->qp_num, psn[i]};
  }

  // One all-gather: rank r's table says which QP it made for each (peer, channel).
  EPX_ASSIGN_OR_RETURN(
      auto all, boot.AllGather("verbs-oob-qps",
                               {reinterpret_cast<const uint8_t*>(mine.data()), mine.size() * sizeof(OobQp)}));
  for (size_t i = 0; i < slots.size(); ++i) {
    const QpSlot& s = slots[i];
    const std::string what = SlotName(s, channels);
    auto remote_or = DecodeOobQp(all, world, channels, s.peer, me, s.ch);
    if (!remote_or.ok())
      return internal::MakeError(remote_or.status().code(), __FILE__, __LINE__,
                                 "out-of-band connect: " + remote_or.status().message());
    const OobQp remote = *remote_or;
    const PortAddress& ra = addrs[s.peer];
    if (ra.link_layer != dev.link_layer)
      return EPX_ERROR(kFailedPrecondition,
                       "rank {} uses a {} port and rank {} a {} port: they cannot be connected", s.peer,
                       ra.link_layer == IBV_LINK_LAYER_INFINIBAND ? "InfiniBand" : "Ethernet", me,
                       dev.link_layer == IBV_LINK_LAYER_INFINIBAND ? "InfiniBand" : "Ethernet");
    const uint8_t rd_atom = std::min(cfg.rd_atom, ra.rd_atom);
    EPX_RETURN_IF_ERROR(ToRtr(qps[i].qp(), dev, ra, remote, rd_atom, what));
    EPX_RETURN_IF_ERROR(ToRts(qps[i].qp(), psn[i], cfg, rd_atom, what));
  }
  return qps;
}

}  // namespace epx::verbs
