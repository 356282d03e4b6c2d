// transport/verbs/domain.h (internal): the ibverbs RdmaDomain class, shared by verbs_setup.cc (device,
// registration, record exchange, connection) and verbs_domain.cc (the data path). Contract:
// transport/rdma.h. Per rank:
//
//   one PD; the symmetric heap as ONE MR (local write, remote write/read/atomic), so a put is
//   addressed as (peer, offset) with the peer's (addr, rkey) exchanged at setup;
//   per channel: one send CQ and one RC QP per connected peer (the channel's thread owns them);
//   one receive CQ shared by all data QPs, polled by whichever thread reads counters or immediates;
//   per peer: one control QP (own CQ) that carries nothing but liveness probes and death notices.
//
// Send-side rules (what keeps the SQ and the CQ from overflowing, and what Quiet relies on):
//   * Posts append WRs to the QP's chain; a full chain, Flush or Quiet hands the whole chain to one
//     ibv_post_send (one doorbell, one syscall on rxe).
//   * Selective signaling: every `signal_every_`-th WR is signaled. A signaled completion retires it
//     and every earlier WR of that QP (RC completes in order), so `completed` jumps to its sequence
//     number. In-flight WRs (posted - completed) never exceed `sq_depth_`: a post that would exceed
//     it first posts the chain (which carries a signaled WR, since the unsignaled tail is shorter than
//     signal_every_ <= sq_depth_/4) and polls until there is room.
//   * Failed WRs complete even when unsignaled, so every WR id encodes (QP, operation, sequence) and
//     each CQ has room for one entry per WR that can be in flight.
//   * Quiet signals the last WR of every QP of the channel (or appends a zero-length signaled write)
//     and waits until `completed == posted`: RC acknowledges a WRITE only once it is placed at the
//     target, so the data is in the peer's heap when Quiet returns. QPs of masked peers are skipped.
//   * Failures are per QP (a dead peer breaks only its own QPs): the QP keeps its first error, posts to
//     it return that error, and Flush/Quiet/Poll return it unless the peer is masked (MaskPeer), so a
//     kernel that masked a dead rank keeps using the channel for everyone else.
// Death notices: a rank's process scan (transport/liveness.h) sees a rank of its own host die within
// ~50 ms; ranks of other hosts would only learn it from a probe or QP error after the transport retry
// budget (seconds), by when the survivors of its host may have failed and exited too, so they would
// name one of those (a cascade). So the scan's death listener (NotifyDeath) writes word `dead` of the
// heap's ctl::kDeathNotice array of every connected peer of another host over its control QP, and waits
// (bounded) for the acknowledgements before the death fails any wait of this process: RC acknowledges
// a write once it is placed, so the notice is there even if this process exits right after. The slow
// path of every wait reads the array (CheckNotices) and records a noticed death as the failure of that
// rank; PeerFailureOf names a noticed death before any other failure (QP errors to the survivors that
// exited are its cascade).
// Receive side: every data QP keeps `rq_depth_` zero-length receives posted; a WRITE_WITH_IMM
// (user immediate, IBV_WC_RECV_RDMA_WITH_IMM) or a SEND_WITH_IMM (emulated fetch-add, IBV_WC_RECV)
// consumes one and it is re-posted at once. Telling the two apart by opcode leaves user immediates
// all 32 bits.
#pragma once

#include <endian.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/wait.h"
#include "transport/context.h"
#include "transport/rdma.h"
#include "transport/verbs/connect.h"
#include "transport/verbs/device.h"
#include "transport/verbs/ibv_wrap.h"
#include "transport/verbs/verbs_domain.h"

namespace epx::verbs {

constexpr uint32_t kChainMax = 32;     // WRs per ibv_post_send
constexpr int kPollBatch = 16;         // CQEs per ibv_poll_cq
constexpr uint32_t kWantSq = 256;      // send WRs in flight per data QP
constexpr uint32_t kWantRq = 128;      // receives posted per data QP
constexpr uint32_t kWantInline = 256;  // lowered until the device accepts it
constexpr uint32_t kCtrlDepth = 4;
constexpr uint8_t kWantRdAtom = 16;

// Operation tags carried in the WR id (for error messages: a failed WC has no valid opcode).
enum Op : uint8_t { kOpWrite = 1, kOpWriteImm, kOpFetchAdd, kOpEmuAdd, kOpQuietMark, kOpProbe, kOpNotice };
inline const char* OpName(uint8_t op) {
  switch (op) {
    case kOpWrite:
      return "write";
    case kOpWriteImm:
      return "write_with_imm";
    case kOpFetchAdd:
      return "fetch_add";
    case kOpEmuAdd:
      return "fetch_add (emulated by send_with_imm)";
    case kOpQuietMark:
      return "quiet marker (zero-length write)";
    case kOpProbe:
      return "liveness probe (zero-length write)";
    case kOpNotice:
      return "death notice (8-byte write)";
    default:
      return "?";
  }
}
inline ibv_wr_opcode OpOpcode(uint8_t op) {
  switch (op) {
    case kOpWriteImm:
      return IBV_WR_RDMA_WRITE_WITH_IMM;
    case kOpFetchAdd:
      return IBV_WR_ATOMIC_FETCH_AND_ADD;
    case kOpEmuAdd:
      return IBV_WR_SEND_WITH_IMM;
    default:
      return IBV_WR_RDMA_WRITE;
  }
}

// wr_id = QP index (20 bits) | op (4 bits) | sequence number (low 40 bits).
constexpr int kOpShift = 40, kIndexShift = 44;
constexpr uint64_t kSeqMask = (uint64_t{1} << kOpShift) - 1;
inline uint64_t WrId(uint32_t index, uint8_t op, uint64_t seq) {
  return (uint64_t{index} << kIndexShift) | (uint64_t{op} << kOpShift) | (seq & kSeqMask);
}

struct SendQp {
  ibv_qp* qp = nullptr;
  uint32_t qpn = 0;
  uint32_t index = 0;  // slot index: wr_id and receive wr_id
  int peer = -1;
  int ch = -1;
  uint64_t rbase = 0;  // peer's heap: address, size, rkey
  uint64_t rsize = 0;
  uint32_t rkey = 0;
  uint32_t max_inline = 0;
  uint64_t posted = 0;     // WRs handed to ibv_post_send
  uint64_t completed = 0;  // WRs known complete (in-order retirement by signaled CQEs)
  uint64_t signaled = 0;   // sequence number of the last WR flagged IBV_SEND_SIGNALED
  uint32_t n_chain = 0;    // WRs appended, not yet posted
  uint32_t since_signal = 0;
  bool in_dirty = false;
  // Failure of this QP (first failed completion or post; the rest of its queue only flushes). Set and
  // read by the channel's thread only. A failed QP fails posts to its peer, and the channel's
  // Flush/Quiet/Poll unless the peer is masked: other peers' QPs of the channel go on.
  bool failed = false;
  Status error;
  ibv_send_wr wr[kChainMax];
  ibv_sge sge[kChainMax];
};

struct alignas(64) Channel {
  CqPtr cq;
  std::vector<SendQp*> qps;
  std::vector<int32_t> by_peer;  // world-sized: index into qps, -1 when not connected
  std::vector<SendQp*> dirty;    // QPs with a non-empty chain (capacity reserved: no allocation)
  uint64_t scratch_addr = 0;     // 8-byte landing slot of native fetch-add results (discarded)
  bool failed = false;
  Status error;  // sticky: the send CQ itself failed (ibv_poll_cq < 0): nothing on the channel works
};

struct ProbeState {
  bool inflight = false;  // a probe
  int notices = 0;        // death notices in flight on the control QP
  Clock::time_point sent{};
  Clock::time_point last_ok{};
};

inline bool Fits(size_t off, size_t len, size_t size) {
  return off <= size && len <= size - off;
}

class VerbsDomain final : public RdmaDomain {
 public:
  VerbsDomain(Context& ctx, const RdmaOptions& o)
      : ctx_(ctx),
        heap_(ctx.heap()),
        opts_(o),
        me_(ctx.rank()),
        world_(ctx.world_size()),
        k_(o.channels),
        fail_seq_(static_cast<size_t>(ctx.world_size()), 0),
        masked_(static_cast<size_t>(ctx.world_size()), 0),
        live_(ctx.shared_liveness()) {}

  Status Init();
  ~VerbsDomain() override {
    // Through live_, not ctx_: a buffer may be destroyed after its Context (statics outlive main()).
    if (death_listener_ != 0) live_->RemoveDeathListener(death_listener_);
    if (cause_source_ != 0) live_->RemoveDeathListener(cause_source_);
  }

  const RdmaCaps& caps() const override { return caps_; }
  int num_channels() const override { return k_; }
  bool Connected(int peer) const override {
    return peer >= 0 && peer < world_ && connected_[static_cast<size_t>(peer)];
  }

  Status Write(int ch, int peer, size_t lo, size_t ro, size_t len) override {
    Channel* c = nullptr;
    SendQp* q = nullptr;
    EPX_RETURN_IF_ERROR(Route(ch, peer, "write", c, q));
    if (!Fits(lo, len, heap_.size()) || !Fits(ro, len, q->rsize) || len > caps_.max_msg) [[unlikely]]
      return RangeError("write", peer, lo, ro, len, q->rsize);
    return Append(*c, *q, kOpWrite, lo, q->rbase + ro, len, 0, 0);
  }

  Status WriteImm(int ch, int peer, size_t lo, size_t ro, size_t len, uint32_t imm) override {
    Channel* c = nullptr;
    SendQp* q = nullptr;
    EPX_RETURN_IF_ERROR(Route(ch, peer, "write_with_imm", c, q));
    if (!Fits(lo, len, heap_.size()) || !Fits(ro, len, q->rsize) || len > caps_.max_msg) [[unlikely]]
      return RangeError("write_with_imm", peer, lo, ro, len, q->rsize);
    return Append(*c, *q, kOpWriteImm, lo, q->rbase + ro, len, imm, 0);
  }

  Status FetchAdd(int ch, int peer, size_t ro, uint64_t add) override {
    Channel* c = nullptr;
    SendQp* q = nullptr;
    EPX_RETURN_IF_ERROR(Route(ch, peer, "fetch_add", c, q));
    EPX_RETURN_IF_ERROR(CheckCounter("fetch_add", peer, ro, add));
    return AppendAdd(*c, *q, ro, add);
  }

  Status Signal(int ch, int peer, size_t lo, size_t ro, size_t len, size_t flag_off, uint64_t add) override {
    Channel* c = nullptr;
    SendQp* q = nullptr;
    EPX_RETURN_IF_ERROR(Route(ch, peer, "signal", c, q));
    if (!Fits(lo, len, heap_.size()) || !Fits(ro, len, q->rsize) || len > caps_.max_msg) [[unlikely]]
      return RangeError("signal", peer, lo, ro, len, q->rsize);
    EPX_RETURN_IF_ERROR(CheckCounter("signal", peer, flag_off, add));
    // Same QP, data first: the responder executes RC requests in order, so the flag (an atomic, or a
    // send whose receive completion implies all earlier data is placed) lands after the data.
    EPX_RETURN_IF_ERROR(Append(*c, *q, kOpWrite, lo, q->rbase + ro, len, 0, 0));
    return AppendAdd(*c, *q, flag_off, add);
  }

  Status Flush(int ch) override {
    if (ch < 0 || ch >= k_) [[unlikely]]
      return BadChannel(ch);
    Channel& c = *chans_[static_cast<size_t>(ch)];
    if (c.failed) [[unlikely]]
      return c.error;
    return FlushChannel(c);
  }

  Status Quiet(int ch) override;
  Status Poll(int ch) override {
    if (ch < 0 || ch >= k_) [[unlikely]]
      return BadChannel(ch);
    Channel& c = *chans_[static_cast<size_t>(ch)];
    EPX_RETURN_IF_ERROR(PollSend(c));
    return ChannelError(c);
  }

  StatusOr<uint64_t> ReadCounter(size_t off) override {
    if (off % 8 != 0 || off < opts_.counter_off || off + 8 > opts_.counter_off + opts_.counter_bytes)
        [[unlikely]]
      return CounterRangeError("read_counter", me_, off);
    TryProgressRecv();
    return LoadCounter(off);
  }

  Status WaitCounter(size_t off, uint64_t target, std::string_view what, const uint8_t* cancel = nullptr,
                     int writer = -1) override;
  StatusOr<size_t> PollImm(std::span<ImmEvent> out) override;
  WaitHealth& health() override { return health_; }
  void MaskPeer(int peer, bool masked) override;
  std::vector<int> FailedPeers() override;

  const VerbsInfo& info() const { return info_; }
  Status CorruptRkey(int peer) {
    if (!Connected(peer)) return EPX_ERROR(kInvalidArgument, "corrupt rkey: rank {} is not a peer", peer);
    for (auto& q : sqp_)
      if (q->peer == peer) q->rkey = ~q->rkey;
    return Status::Ok();
  }

 private:
  // ---- helpers of the data path ----
  uint64_t LoadCounter(size_t off) const {
    return __atomic_load_n(reinterpret_cast<const uint64_t*>(heap_.base() + off), __ATOMIC_ACQUIRE);
  }

  Status Route(int ch, int peer, const char* op, Channel*& c, SendQp*& q) {
    if (ch < 0 || ch >= k_) [[unlikely]]
      return BadChannel(ch);
    c = chans_[static_cast<size_t>(ch)].get();
    if (c->failed) [[unlikely]]
      return c->error;
    if (peer < 0 || peer >= world_ || c->by_peer[static_cast<size_t>(peer)] < 0) [[unlikely]]
      return EPX_ERROR(kInvalidArgument, "rdma {}: rank {} is not a connected peer of rank {}", op, peer,
                       me_);
    q = c->qps[static_cast<size_t>(c->by_peer[static_cast<size_t>(peer)])];
    if (q->failed) [[unlikely]]
      return q->error;
    return Status::Ok();
  }
  bool Masked(int peer) const {
    return __atomic_load_n(&masked_[static_cast<size_t>(peer)], __ATOMIC_ACQUIRE) != 0;
  }
  // The first failed QP of `c` whose peer is not masked (what Flush/Quiet/Poll report), else Ok.
  Status ChannelError(const Channel& c) const {
    for (const SendQp* q : c.qps)
      if (q->failed && !Masked(q->peer)) [[unlikely]]
        return q->error;
    return Status::Ok();
  }

  Status CheckCounter(const char* op, int peer, size_t off, uint64_t add) const {
    if (off % 8 != 0 || off < opts_.counter_off || off + 8 > opts_.counter_off + opts_.counter_bytes)
        [[unlikely]]
      return CounterRangeError(op, peer, off);
    if (!native_atomics_ && add >= (1u << 16)) [[unlikely]]
      return EPX_ERROR(
          kInvalidArgument,
          "rdma {} to rank {}: add {} too large; emulated atomics (no native fetch-add on this device "
          "or EPX_IB_FORCE_EMULATED_ATOMICS=1) carry adds below 65536",
          op, peer, add);
    return Status::Ok();
  }

  Status AppendAdd(Channel& c, SendQp& q, size_t off, uint64_t add) {
    if (native_atomics_) return Append(c, q, kOpFetchAdd, 0, q.rbase + off, 8, 0, add);
    // Emulated: counter index and add ride in the immediate of a zero-length SEND.
    const uint32_t imm =
        static_cast<uint32_t>(((off - opts_.counter_off) / 8) << 16) | static_cast<uint32_t>(add);
    return Append(c, q, kOpEmuAdd, 0, 0, 0, imm, 0);
  }

  Status Append(Channel& c, SendQp& q, uint8_t op, size_t lo, uint64_t raddr, size_t len, uint32_t imm,
                uint64_t add) {
    if (q.posted + q.n_chain + 1 - q.completed > sq_depth_) [[unlikely]]
      EPX_RETURN_IF_ERROR(MakeRoom(c, q));
    const uint32_t i = q.n_chain++;
    const uint64_t seq = q.posted + i + 1;
    ibv_send_wr& w = q.wr[i];
    ibv_sge& s = q.sge[i];
    w.wr_id = WrId(q.index, op, seq);
    w.next = nullptr;
    w.sg_list = &s;
    w.num_sge = 0;
    w.send_flags = 0;
    w.opcode = OpOpcode(op);
    switch (op) {
      case kOpFetchAdd:
        s.addr = c.scratch_addr;
        s.length = 8;
        s.lkey = scratch_mr_->lkey;
        w.num_sge = 1;
        w.wr.atomic.remote_addr = raddr;
        w.wr.atomic.compare_add = add;
        w.wr.atomic.swap = 0;
        w.wr.atomic.rkey = q.rkey;
        break;
      case kOpEmuAdd:
        w.imm_data = htobe32(imm);
        break;
      default:  // writes
        w.wr.rdma.remote_addr = raddr;
        w.wr.rdma.rkey = q.rkey;
        if (op == kOpWriteImm) w.imm_data = htobe32(imm);
        if (len > 0) {
          s.addr = reinterpret_cast<uint64_t>(heap_.base() + lo);
          s.length = static_cast<uint32_t>(len);
          s.lkey = heap_mr_->lkey;
          w.num_sge = 1;
          // Inline: the provider copies the bytes into the WQE at ibv_post_send (no lkey check, no DMA
          // read later); the source may change only after Quiet anyway.
          if (len <= q.max_inline) w.send_flags |= IBV_SEND_INLINE;
        }
        break;
    }
    if (++q.since_signal >= signal_every_ || op == kOpQuietMark) {
      w.send_flags |= IBV_SEND_SIGNALED;
      q.since_signal = 0;
      q.signaled = seq;
    }
    if (!q.in_dirty) {
      q.in_dirty = true;
      c.dirty.push_back(&q);
    }
    if (q.n_chain == chain_max_) return PostChain(q);
    return Status::Ok();
  }

  Status PostChain(SendQp& q) {
    const uint32_t n = q.n_chain;
    for (uint32_t i = 0; i + 1 < n; ++i) q.wr[i].next = &q.wr[i + 1];
    q.wr[n - 1].next = nullptr;
    ibv_send_wr* bad = nullptr;
    const int rc = ibv_post_send(q.qp, q.wr, &bad);
    if (rc != 0) [[unlikely]]
      return PostFailed(q, rc, bad);
    q.posted += n;
    q.n_chain = 0;
    return Status::Ok();
  }

  // Posts every non-empty chain. A failed QP's chain is dropped (it would only flush); its error is
  // returned unless its peer is masked.
  Status FlushChannel(Channel& c) {
    Status st;
    for (SendQp* q : c.dirty) {
      q->in_dirty = false;
      if (q->failed) [[unlikely]] {
        q->n_chain = 0;
        if (st.ok() && !Masked(q->peer)) st = q->error;
      } else if (q->n_chain > 0 && st.ok()) {
        st = PostChain(*q);
      }
    }
    c.dirty.clear();
    return st;
  }

  void TryProgressRecv() {
    if (recv_busy_.exchange(true, std::memory_order_acquire)) return;  // another thread is at it
    ProgressRecvLocked();
    recv_busy_.store(false, std::memory_order_release);
  }

  // ---- out of line: setup, slow paths, errors ----
  Status MakeRoom(Channel& c, SendQp& q);
  Status PollSend(Channel& c);
  void OnSendError(SendQp& q, uint8_t op, const ibv_wc& wc);
  Status PostFailed(SendQp& q, int rc, ibv_send_wr* bad);
  void ProgressRecvLocked();
  // Whether `peer` (-1: this rank's own CQs) already has a failure recorded: its later symptoms (flushed
  // work requests, other QPs of the peer) are not logged again.
  bool PeerKnownFailed(int peer);
  void MarkPeerFailed(int peer, const Status& why);
  // Recomputes failing_ (health_mu_ held).
  void CountFailing();
  Status PeerFailure(std::string_view what, size_t off, uint64_t target, int writer = -1);
  // The error of a wait that cannot finish because a peer failed: `prefer`'s failure if it has one (the
  // peer the wait is for), else the earliest recorded one; the other failed peers are listed after it.
  Status PeerFailureOf(int prefer, std::string_view what, std::string_view waiting);
  // Slow path of any wait: sends the liveness probes when the domain-wide interval is due (one thread
  // claims it) and collects probe completions. True once a peer is known failed.
  bool ProbeIfDue();
  void ProbeTick(bool send);
  // A control-QP completion (probe_mu_ held): a probe's or notice's failure is its peer's.
  void OnCtrlCompletion(const ibv_wc& wc, Clock::time_point now);
  // Death notices ("Death notices" above): the liveness listener, and the slow-path check.
  void NotifyDeath(int dead);
  void CheckNotices();
  // The unmasked rank other than `except` whose death notice was recorded first, or -1 (health_mu_ held).
  int EarliestNoticeLocked(int except) const;
  // CheckNotices, then whether an unmasked rank is known dead by a death notice.
  bool AnyNoticedDeath();
  // CheckNotices, then the message of the earliest unmasked noticed death, or "".
  std::string NoticedCause();
  // Slow path of a send-side wait on `peer` (unmasked): its death notice as the error, if it has one.
  template <typename Waiting>
  Status NoticedDeath(int peer, Waiting&& waiting) {
    CheckNotices();
    if (Masked(peer)) return Status::Ok();
    Status why;
    {
      std::lock_guard<std::mutex> g(health_mu_);
      if (!by_notice_[static_cast<size_t>(peer)]) return Status::Ok();
      why = peer_status_[static_cast<size_t>(peer)];
    }
    return Status(why.code(), why.message()).With(waiting());  // logged once, where CheckNotices recorded it
  }
  std::string ProbeSummary();
  Status BadChannel(int ch) const {
    return EPX_ERROR(kInvalidArgument, "rdma(verbs): channel {} not in 0..{}", ch, k_ - 1);
  }
  Status RangeError(const char* op, int peer, size_t lo, size_t ro, size_t len, size_t rsize) const;
  Status CounterRangeError(const char* op, int peer, size_t off) const;
  Status SetupDevice(const std::string& connect);
  Status CreateQueues();
  StatusOr<std::vector<RankRecord>> ExchangeRecords(bool rdmacm);
  Status BuildQps(std::vector<QpOwner> qps, const std::vector<RankRecord>& recs);

  // RdmaDomain::health(): the probes and peer failures of this domain, for waits outside it.
  class Health final : public WaitHealth {
   public:
    explicit Health(VerbsDomain& d) : d_(d) {}
    bool PeerDead() override { return d_.ProbeIfDue(); }
    bool PeerReportedDead() override { return d_.AnyNoticedDeath(); }
    Status PeerFailure(std::string_view what, std::string_view waiting) override {
      return d_.PeerFailureOf(-1, what, waiting);
    }

   private:
    VerbsDomain& d_;
  };

  Context& ctx_;
  SymmetricHeap& heap_;
  RdmaOptions opts_;
  const int me_, world_, k_;
  RdmaCaps caps_;
  VerbsInfo info_;
  DeviceChoice dev_;
  int timeout_ = 14, retry_ = 7;
  bool native_atomics_ = true;
  uint8_t rd_atom_ = 1;
  uint32_t sq_depth_ = kWantSq, signal_every_ = kWantSq / 4, chain_max_ = kChainMax, rq_depth_ = kWantRq;
  int64_t probe_interval_ms_ = 1000;
  std::vector<bool> connected_;
  std::vector<int> peers_;  // sorted
  std::vector<QpSlot> slots_;

  // Verbs objects, in creation order; members are destroyed in reverse: QPs, CQs, MRs, PD, cm, context.
  ContextPtr own_ctx_;
  std::unique_ptr<RdmacmConnector> cm_;
  ibv_context* verbs_ = nullptr;
  PdPtr pd_;
  MrPtr heap_mr_;
  std::unique_ptr<uint8_t, decltype(&std::free)> scratch_{nullptr, &std::free};
  MrPtr scratch_mr_;
  CqPtr recv_cq_;
  CqPtr ctrl_cq_;
  std::vector<std::unique_ptr<Channel>> chans_;
  std::vector<QpOwner> qps_;
  std::vector<std::unique_ptr<SendQp>> sqp_;  // per slot
  std::vector<int> ctrl_slot_;                // world-sized: control QP slot of a peer, -1 if none

  // Receive side: guarded by recv_busy_ (a try-lock: pollers never wait for each other).
  std::atomic<bool> recv_busy_{false};
  std::vector<ImmEvent> ring_;  // user immediates drained from the CQ, not yet returned by PollImm
  uint64_t ring_head_ = 0, ring_tail_ = 0;

  // Peer health: set by send/receive/probe completions of any thread. failing_ counts the failures
  // that fail waits: failed peers that are not masked, and this rank's own CQ failure (index me_).
  std::atomic<int> failing_{0};
  std::mutex health_mu_;
  std::vector<Status> peer_status_;     // world-sized; non-OK = failed
  std::vector<uint64_t> fail_seq_;      // world-sized; order in which peer_status_ entries failed (1, 2, ..)
  uint64_t failures_ = 0;               // failures recorded so far (guarded by health_mu_)
  std::vector<uint8_t> masked_;         // world-sized; MaskPeer (atomic byte access)
  std::vector<uint8_t> by_notice_;      // world-sized; the failure came from a death notice (health_mu_)
  std::vector<uint8_t> same_host_;      // world-sized; this host's ranks (and me_): no notices about them
  std::vector<uint8_t> noticed_;        // world-sized; CheckNotices recorded it (atomic byte access)
  std::shared_ptr<PeerLiveness> live_;  // ctx_'s, kept alive for the destructor
  int death_listener_ = 0;              // PeerLiveness listener id, 0 = none
  int cause_source_ = 0;                // PeerLiveness cause source id, 0 = none
  std::mutex probe_mu_;
  std::vector<ProbeState> probe_;       // world-sized
  std::atomic<int64_t> next_probe_{0};  // steady_clock ticks: the next probe round is due at/after it
  Health health_{*this};
};

}  // namespace epx::verbs
