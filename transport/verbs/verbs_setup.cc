// Setup of the ibverbs RdmaDomain: device and GID choice, heap registration, queues, the rank-record
// exchange, connection (out-of-band or rdma_cm) and the public entry points of verbs_domain.h.
#include <algorithm>
#include <cstdlib>

#include "core/log.h"
#include "core/tunables.h"
#include "transport/verbs/domain.h"

namespace epx {
namespace verbs {
namespace {

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

constexpr int kRxeMinAckTimeout = 17;

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Setup

Status VerbsDomain::Init() {
  EPX_ASSIGN_OR_RETURN(int64_t t, TunableInt("EPX_IB_TIMEOUT"));
  EPX_ASSIGN_OR_RETURN(int64_t r, TunableInt("EPX_IB_RETRY_CNT"));
  EPX_ASSIGN_OR_RETURN(std::string force_emu, TunableStr("EPX_IB_FORCE_EMULATED_ATOMICS"));
  timeout_ = static_cast<int>(t);
  retry_ = static_cast<int>(r);
  probe_interval_ms_ = std::clamp<int64_t>(opts_.timeout_ms / 5, 50, 2000);
  std::string connect = opts_.connect == "auto" ? "oob" : opts_.connect;
  if (connect != "oob" && connect != "rdmacm")
    return EPX_ERROR(kInvalidArgument, "EPX_CONNECT='{}': expected auto, rdmacm or oob", opts_.connect);

  // Peers: every pair must list each other, or connection setup would wait forever on one side.
  connected_.assign(static_cast<size_t>(world_), false);
  for (int p : opts_.peers) connected_[static_cast<size_t>(p)] = true;
  std::vector<uint8_t> mine(static_cast<size_t>(world_));
  for (int p = 0; p < world_; ++p) mine[static_cast<size_t>(p)] = connected_[static_cast<size_t>(p)];
  EPX_ASSIGN_OR_RETURN(auto lists, ctx_.bootstrap().AllGather("verbs-peers", mine));
  for (int a = 0; a < world_; ++a)
    for (int b = a + 1; b < world_; ++b)
      if (lists[static_cast<size_t>(a) * world_ + b] != lists[static_cast<size_t>(b) * world_ + a])
        return EPX_ERROR(kInvalidArgument, "rdma(verbs): rank {} lists rank {} as a peer but not the reverse",
                         lists[static_cast<size_t>(a) * world_ + b] ? a : b,
                         lists[static_cast<size_t>(a) * world_ + b] ? b : a);
  for (int p = 0; p < world_; ++p)
    if (connected_[static_cast<size_t>(p)]) peers_.push_back(p);
  for (int p : peers_) {
    for (int ch = 0; ch < k_; ++ch) slots_.push_back({p, ch});
    slots_.push_back({p, k_});  // control QP
  }

  EPX_RETURN_IF_ERROR(SetupDevice(connect));
  if (dev_.is_rxe() && retry_ == 7) {
    // Soft-RoCE treats retry_cnt 7 as "retry forever" (rxe_comp.c: `if (retry_cnt != 7) retry_cnt--`),
    // so a dead peer would never fail a work request. 6 keeps a finite budget, as on hardware.
    retry_ = 6;
    static std::atomic<bool> noted{false};
    if (!noted.exchange(true))
      EPX_INFO("rdma(verbs): {} is soft-RoCE: QP retry_cnt 7 means infinite there; using 6", dev_.name);
  }
  if (dev_.is_rxe() && std::getenv("EPX_IB_TIMEOUT") == nullptr && timeout_ < kRxeMinAckTimeout) {
    // Soft-RoCE under emulation loses packets in bursts (the guest's link and timers stall while the host
    // is busy: measured ~1000 retransmits per test run between two TCG guests) and counts its jiffy-based
    // ACK timer in stalled time, so 6 retries of 67 ms (the default 14) ran out about once in three suite
    // runs: a QP in the error state for a healthy peer. 2^17 * 4.096 us = 0.54 s per retry gives a ~4 s
    // budget; a dead peer still fails within it (and the liveness probes use the same QPs' timers).
    timeout_ = kRxeMinAckTimeout;
    static std::atomic<bool> noted{false};
    if (!noted.exchange(true))
      EPX_INFO("rdma(verbs): {} is soft-RoCE: ACK timeout exponent {} (EPX_IB_TIMEOUT overrides)", dev_.name,
               timeout_);
  }
  native_atomics_ = dev_.attr.atomic_cap != IBV_ATOMIC_NONE && rd_atom_ > 0 && force_emu != "1";
  EPX_RETURN_IF_ERROR(CreateQueues());
  EPX_ASSIGN_OR_RETURN(auto recs, ExchangeRecords(connect == "rdmacm"));
  if (!native_atomics_ && opts_.counter_bytes / 8 > 65536)
    return EPX_ERROR(kInvalidArgument,
                     "rdma(verbs): emulated atomics address at most 65536 counters; the counter area has {}",
                     opts_.counter_bytes / 8);

  // QP attributes per slot; receives are posted while the QP is in INIT, before a peer can send.
  QpConfig cfg;
  cfg.pd = pd_.get();
  cfg.timeout = timeout_;
  cfg.retry_cnt = retry_;
  cfg.rd_atom = rd_atom_;
  for (const QpSlot& s : slots_) {
    const bool data = s.ch < k_;
    cfg.send_cq.push_back(data ? chans_[static_cast<size_t>(s.ch)]->cq.get() : ctrl_cq_.get());
    cfg.recv_cq.push_back(data ? recv_cq_.get() : ctrl_cq_.get());
    ibv_qp_cap cap{};
    cap.max_send_wr = data ? sq_depth_ : kCtrlDepth;
    cap.max_recv_wr = data ? rq_depth_ : 1;
    cap.max_send_sge = 1;
    cap.max_recv_sge = 1;
    cap.max_inline_data = data ? kWantInline : 0;
    cfg.cap.push_back(cap);
  }
  cfg.on_created = [this](size_t slot, ibv_qp* qp) -> Status {
    if (slots_[slot].ch == k_) return Status::Ok();
    std::vector<ibv_recv_wr> wrs(rq_depth_);
    for (uint32_t i = 0; i < rq_depth_; ++i) {
      wrs[i] = ibv_recv_wr{};
      wrs[i].wr_id = slot;
      wrs[i].next = i + 1 < rq_depth_ ? &wrs[i + 1] : nullptr;
    }
    ibv_recv_wr* bad = nullptr;
    EPX_IBV(ibv_post_recv, (qp, wrs.data(), &bad), "{} receives on QP 0x{:x} ({})", rq_depth_, qp->qp_num,
            SlotName(slots_[slot], k_));
    return Status::Ok();
  };

  std::vector<QpOwner> qps;
  if (connect == "rdmacm") {
    std::vector<CmEndpoint> eps;
    for (const auto& rec : recs) eps.push_back(rec.cm);
    const auto deadline = Deadline::After(std::chrono::milliseconds(ctx_.options().bootstrap_timeout_ms));
    EPX_ASSIGN_OR_RETURN(qps,
                         cm_->Connect(me_, Fnv1a(ctx_.placement().job_id), eps, cfg, slots_, k_, deadline));
  } else {
    std::vector<PortAddress> addrs;
    for (const auto& rec : recs) addrs.push_back(rec.port);
    EPX_ASSIGN_OR_RETURN(qps, ConnectOob(ctx_.bootstrap(), dev_, addrs, cfg, slots_, k_));
  }
  EPX_RETURN_IF_ERROR(BuildQps(std::move(qps), recs));

  // Every rank's QPs are in RTS with receives posted before anyone sends.
  EPX_RETURN_IF_ERROR(ctx_.bootstrap().Barrier("verbs-ready"));

  info_.device = dev_.name;
  info_.vendor_id = dev_.vendor_id;
  info_.port = dev_.port;
  info_.gid_index = dev_.gid_index;
  info_.gid = GidToString(dev_.gid);
  info_.gid_roce_v2 = dev_.gid_roce_v2;
  info_.gid_ipv4_mapped = GidIsIpv4Mapped(dev_.gid);
  info_.connect = connect;
  info_.sq_depth = static_cast<int>(sq_depth_);
  info_.signal_every = static_cast<int>(signal_every_);
  info_.recv_depth = static_cast<int>(rq_depth_);
  info_.max_inline = caps_.max_inline;
  info_.native_atomics = native_atomics_;
  caps_.kind = "verbs";
  caps_.device = dev_.Describe() + ", " + connect;
  caps_.native_atomics = native_atomics_;

  // Death notices (domain.h): heard from this host's process scan, sent to the connected peers of other
  // hosts (whose heaps this rank does not map).
  by_notice_.assign(static_cast<size_t>(world_), 0);
  noticed_.assign(static_cast<size_t>(world_), 0);
  same_host_.assign(static_cast<size_t>(world_), 0);
  for (int r = 0; r < world_; ++r) same_host_[static_cast<size_t>(r)] = r == me_ || heap_.IsMapped(r);
  death_listener_ = ctx_.liveness().AddDeathListener([this](int dead) { NotifyDeath(dead); });
  cause_source_ = ctx_.liveness().AddCauseSource([this] { return NoticedCause(); });

  static std::atomic<bool> logged{false};
  if (!logged.exchange(true))
    EPX_INFO(
        "rdma(verbs): {}; {} channel(s) x {} peer(s), sq {} (signal every {}), rq {}, inline {}, atomics {}",
        caps_.device, k_, peers_.size(), sq_depth_, signal_every_, rq_depth_, caps_.max_inline,
        native_atomics_ ? "native" : "emulated (send_with_imm)");
  return Status::Ok();
}

Status VerbsDomain::SetupDevice(const std::string& connect) {
  EPX_ASSIGN_OR_RETURN(DeviceRequest req, DeviceRequest::FromEnv(heap_.numa_node()));
  EPX_ASSIGN_OR_RETURN(own_ctx_, OpenChosenDevice(req, dev_));
  verbs_ = own_ctx_.get();
  if (connect == "rdmacm") {
    // rdma_create_qp insists that the PD lives on librdmacm's own context of the device.
    EPX_ASSIGN_OR_RETURN(cm_, RdmacmConnector::Listen(dev_));
    verbs_ = cm_->verbs();
    own_ctx_.reset();
  }
  const ibv_device_attr& a = dev_.attr;
  rd_atom_ = static_cast<uint8_t>(std::min<int>({kWantRdAtom, a.max_qp_rd_atom, a.max_qp_init_rd_atom}));

  ibv_pd* pd;
  EPX_IBV_NEW(pd, ibv_alloc_pd, (verbs_), "{}", dev_.name);
  pd_.reset(pd);
  // The whole heap, once: every put is (peer, offset) against this registration.
  const int access =
      IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
  ibv_mr* mr;
  EPX_IBV_NEW(mr, ibv_reg_mr, (pd, heap_.base(), heap_.size(), access), "symmetric heap of {} MiB on {}",
              heap_.size() >> 20, dev_.name);
  heap_mr_.reset(mr);
  const size_t scratch_bytes = 64 * static_cast<size_t>(k_);
  scratch_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, scratch_bytes)));
  if (!scratch_) return EPX_ERROR(kResource, "rdma(verbs): {} bytes of atomic scratch", scratch_bytes);
  std::memset(scratch_.get(), 0, scratch_bytes);
  // An int, not the enumerator: the ibv_reg_mr macro ANDs it with an enumerator of another enum type
  // (IBV_ACCESS_OPTIONAL_RANGE), which clang rejects in C++20 (-Wdeprecated-enum-enum-conversion).
  const int scratch_access = IBV_ACCESS_LOCAL_WRITE;
  EPX_IBV_NEW(mr, ibv_reg_mr, (pd, scratch_.get(), scratch_bytes, scratch_access), "atomic result scratch");
  scratch_mr_.reset(mr);
  return Status::Ok();
}

Status VerbsDomain::CreateQueues() {
  const ibv_device_attr& a = dev_.attr;
  const uint32_t npeers = static_cast<uint32_t>(std::max<size_t>(peers_.size(), 1));
  const uint32_t max_cqe = static_cast<uint32_t>(a.max_cqe);
  // A channel CQ must hold one entry per WR that can be in flight on all of its QPs (failed WRs
  // complete even when unsignaled); the receive CQ one per posted receive.
  sq_depth_ = std::min({kWantSq, static_cast<uint32_t>(a.max_qp_wr), max_cqe / npeers});
  if (sq_depth_ < 16)
    return EPX_ERROR(kResource, "rdma(verbs): {} peers need {}x16 CQ entries; {} allows {}", npeers, npeers,
                     dev_.name, max_cqe);
  signal_every_ = sq_depth_ / 4;
  chain_max_ = std::min(kChainMax, signal_every_);
  const uint32_t ndata = npeers * static_cast<uint32_t>(k_);
  rq_depth_ = std::min({kWantRq, static_cast<uint32_t>(a.max_qp_wr), max_cqe / ndata});
  if (rq_depth_ < 4)
    return EPX_ERROR(kResource, "rdma(verbs): {} data QPs need {}x4 receive CQ entries; {} allows {}", ndata,
                     ndata, dev_.name, max_cqe);
  ibv_cq* cq;
  for (int ch = 0; ch < k_; ++ch) {
    auto c = std::make_unique<Channel>();
    EPX_IBV_NEW(cq, ibv_create_cq, (verbs_, static_cast<int>(npeers * sq_depth_), nullptr, nullptr, 0),
                "send CQ of channel {} ({} entries)", ch, npeers * sq_depth_);
    c->cq.reset(cq);
    c->by_peer.assign(static_cast<size_t>(world_), -1);
    c->dirty.reserve(peers_.size());
    c->scratch_addr = reinterpret_cast<uint64_t>(scratch_.get() + 64 * ch);
    chans_.push_back(std::move(c));
  }
  EPX_IBV_NEW(cq, ibv_create_cq, (verbs_, static_cast<int>(ndata * rq_depth_), nullptr, nullptr, 0),
              "receive CQ ({} entries)", ndata * rq_depth_);
  recv_cq_.reset(cq);
  EPX_IBV_NEW(cq, ibv_create_cq, (verbs_, static_cast<int>(npeers * (kCtrlDepth + 1)), nullptr, nullptr, 0),
              "control CQ");
  ctrl_cq_.reset(cq);
  size_t cap = 64;
  while (cap < static_cast<size_t>(ndata) * rq_depth_) cap *= 2;
  ring_.resize(cap);
  return Status::Ok();
}

StatusOr<std::vector<RankRecord>> VerbsDomain::ExchangeRecords(bool rdmacm) {
  RankRecord r{};
  r.magic = kRecordMagic;
  r.version = kRecordVersion;
  r.rank = me_;
  r.world = world_;
  r.channels = k_;
  r.native_atomics = native_atomics_;
  r.rdmacm = rdmacm;
  r.heap_addr = reinterpret_cast<uint64_t>(heap_.base());
  r.heap_size = heap_.size();
  r.rkey = heap_mr_->rkey;
  r.counter_off = opts_.counter_off;
  r.counter_bytes = opts_.counter_bytes;
  r.port = MakePortAddress(dev_, rd_atom_);
  if (cm_) r.cm = cm_->endpoint();
  EPX_ASSIGN_OR_RETURN(auto recs, ctx_.bootstrap().AllGatherPod("verbs-ranks", r));
  bool all_native = true;
  for (int i = 0; i < world_; ++i) {
    const RankRecord& x = recs[static_cast<size_t>(i)];
    // Every field a peer sent is validated before it is used (port address, heap range, endpoint).
    if (Status st = CheckRankRecord(x, i, r); !st.ok())
      return internal::MakeError(st.code(), __FILE__, __LINE__, "rdma(verbs): " + st.message());
    all_native = all_native && x.native_atomics;
  }
  // A counter must see either only NIC atomics or only CPU adds (rxe's atomics are not atomic against
  // the CPU): one rank without native atomics makes every rank emulate.
  if (native_atomics_ && !all_native)
    EPX_INFO("rdma(verbs): a peer lacks native atomics; emulating fetch-add");
  native_atomics_ = all_native;
  return recs;
}

Status VerbsDomain::BuildQps(std::vector<QpOwner> qps, const std::vector<RankRecord>& recs) {
  qps_ = std::move(qps);
  ctrl_slot_.assign(static_cast<size_t>(world_), -1);
  probe_.assign(static_cast<size_t>(world_), ProbeState{});
  peer_status_.assign(static_cast<size_t>(world_), Status::Ok());
  caps_.max_inline = SIZE_MAX;
  for (size_t i = 0; i < slots_.size(); ++i) {
    const QpSlot& s = slots_[i];
    auto q = std::make_unique<SendQp>();
    q->qp = qps_[i].qp();
    q->qpn = q->qp->qp_num;
    q->index = static_cast<uint32_t>(i);
    q->peer = s.peer;
    q->ch = s.ch;
    const RankRecord& rec = recs[static_cast<size_t>(s.peer)];
    q->rbase = rec.heap_addr;
    q->rsize = rec.heap_size;
    q->rkey = rec.rkey;
    ibv_qp_attr attr{};
    ibv_qp_init_attr init{};
    EPX_IBV(ibv_query_qp, (q->qp, &attr, IBV_QP_CAP, &init), "QP 0x{:x} ({})", q->qpn, SlotName(s, k_));
    q->max_inline = std::min(init.cap.max_inline_data, attr.cap.max_inline_data);
    if (s.ch == k_) {
      ctrl_slot_[static_cast<size_t>(s.peer)] = static_cast<int>(i);
    } else {
      Channel& c = *chans_[static_cast<size_t>(s.ch)];
      c.by_peer[static_cast<size_t>(s.peer)] = static_cast<int32_t>(c.qps.size());
      c.qps.push_back(q.get());
      caps_.max_inline = std::min<size_t>(caps_.max_inline, q->max_inline);
    }
    sqp_.push_back(std::move(q));
  }
  if (caps_.max_inline == SIZE_MAX) caps_.max_inline = 0;
  caps_.max_msg = dev_.max_msg;
  return Status::Ok();
}

}  // namespace verbs

bool VerbsDeviceAvailable() {
  return verbs::AnyActiveDevice();
}

StatusOr<std::unique_ptr<RdmaDomain>> CreateVerbsDomain(Context& ctx, const RdmaOptions& opts) {
  auto d = std::make_unique<verbs::VerbsDomain>(ctx, opts);
  EPX_RETURN_IF_ERROR(d->Init());
  return std::unique_ptr<RdmaDomain>(std::move(d));
}

const VerbsInfo* GetVerbsInfo(const RdmaDomain& d) {
  const auto* v = dynamic_cast<const verbs::VerbsDomain*>(&d);
  return v != nullptr ? &v->info() : nullptr;
}

Status VerbsCorruptRemoteKeyForTest(RdmaDomain& d, int peer) {
  auto* v = dynamic_cast<verbs::VerbsDomain*>(&d);
  if (v == nullptr) return EPX_ERROR(kInvalidArgument, "VerbsCorruptRemoteKeyForTest: not a verbs domain");
  return v->CorruptRkey(peer);
}
}  // namespace epx
