// The data path of the ibverbs RdmaDomain (out-of-line parts; the hot posting path is inline in
// domain.h): send completions and errors, Quiet, the receive side (counters, immediates, emulated
// fetch-add), peer health and liveness probes. Design notes: transport/verbs/domain.h.
#include <algorithm>

#include "core/log.h"
#include "transport/verbs/domain.h"

namespace epx::verbs {

// ---------------------------------------------------------------------------------------------------
// Send completions

Status VerbsDomain::MakeRoom(Channel& c, SendQp& q) {
  // Posting the chain puts its signaled WR (if any) in flight: in-flight WRs exceed the signal
  // interval here, so at least one of them is signaled and its completion will free room.
  if (q.n_chain > 0) EPX_RETURN_IF_ERROR(PostChain(q));
  const Deadline d = Deadline::After(std::chrono::milliseconds(opts_.timeout_ms));
  Backoff b;
  for (uint32_t i = 0; q.posted + 1 - q.completed > sq_depth_; ++i) {
    EPX_RETURN_IF_ERROR(PollSend(c));
    if (q.failed) [[unlikely]]
      return q.error;   // its WRs complete (flushed) anyway, but nothing posted to it would arrive
    TryProgressRecv();  // the peer may be blocked on us the same way (RNR): keep our receives posted
    if ((i & 63) == 63 && d.Expired())
      return EPX_ERROR(
          kTimeout,
          "rdma(verbs): rank {}: send queue of QP 0x{:x} (rank {}, channel {}) stayed full ({} WRs in "
          "flight) for {} ms",
          me_, q.qpn, q.peer, q.ch, q.posted - q.completed, opts_.timeout_ms);
    // Slow path: a dead peer of this host is named by the process scan (see Quiet), one of another host
    // by its death notice.
    if ((i & 63) == 63 && b.sleeping()) [[unlikely]]
      EPX_RETURN_IF_ERROR(NoticedDeath(q.peer, [&] {
        return fmt::format("rdma(verbs): rank {}: send queue of QP 0x{:x} (rank {}, channel {}) full", me_,
                           q.qpn, q.peer, q.ch);
      }));
    if ((i & 63) == 63 && b.sleeping() && q.posted + 1 - q.completed > sq_depth_ &&
        ctx_.liveness().PeerDead()) [[unlikely]]
      return ctx_.liveness().PeerFailure(
          "an RDMA post",
          fmt::format("rdma(verbs): rank {}: send queue of QP 0x{:x} (rank {}, channel {}) full "
                      "({} WRs in flight)",
                      me_, q.qpn, q.peer, q.ch, q.posted - q.completed));
    b.Pause();
  }
  return Status::Ok();
}

Status VerbsDomain::PollSend(Channel& c) {
  ibv_wc wc[kPollBatch];
  const int n = ibv_poll_cq(c.cq.get(), kPollBatch, wc);
  if (n < 0) [[unlikely]] {
    if (!c.failed) {
      c.failed = true;
      c.error = EPX_ERROR(kTransport, "rdma(verbs): ibv_poll_cq failed on the send CQ of channel {} ({})",
                          c.qps.empty() ? -1 : c.qps[0]->ch, n);
    }
    return c.error;
  }
  for (int i = 0; i < n; ++i) {
    SendQp& q = *sqp_[static_cast<size_t>(wc[i].wr_id >> kIndexShift)];
    const uint8_t op = static_cast<uint8_t>((wc[i].wr_id >> kOpShift) & 0xf);
    // Rebuild the full sequence number from its low 40 bits (it lies in (completed, posted]).
    uint64_t seq = (q.completed & ~kSeqMask) | (wc[i].wr_id & kSeqMask);
    if (seq < q.completed) seq += kSeqMask + 1;
    if (seq > q.completed) q.completed = seq;
    if (wc[i].status != IBV_WC_SUCCESS) [[unlikely]]
      OnSendError(q, op, wc[i]);
  }
  if (c.failed) [[unlikely]]
    return c.error;
  return Status::Ok();
}

namespace {
std::string FailureHint(ibv_wc_status s, int peer, int timeout, int retry) {
  switch (s) {
    case IBV_WC_RETRY_EXC_ERR:
      return fmt::format(
          "; rank {} did not acknowledge within the retry budget (ACK timeout exponent {}, retry_cnt {}): "
          "the "
          "process or its node is gone, the link is down, or the two sides disagree on GID/MTU",
          peer, timeout, retry);
    case IBV_WC_RNR_RETRY_EXC_ERR:
      return fmt::format("; rank {} had no receive posted", peer);
    case IBV_WC_REM_ACCESS_ERR:
      return fmt::format(
          "; rank {} refused the access: wrong rkey, or an address outside its registered heap", peer);
    case IBV_WC_REM_INV_REQ_ERR:
      return fmt::format("; rank {} found the request invalid (length? opcode?)", peer);
    case IBV_WC_WR_FLUSH_ERR:
      return "; flushed: the QP was already in the error state (an earlier request on it failed, or the "
             "connection "
             "broke)";
    case IBV_WC_LOC_PROT_ERR:
    case IBV_WC_LOC_ACCESS_ERR:
      return "; the local buffer is not inside the registered heap";
    default:
      return "";
  }
}
}  // namespace

void VerbsDomain::OnSendError(SendQp& q, uint8_t op, const ibv_wc& wc) {
  if (q.failed) return;  // the rest of the queue flushes after the first failure: keep the cause
  const Code code = wc.status == IBV_WC_RETRY_EXC_ERR || wc.status == IBV_WC_RNR_RETRY_EXC_ERR
                        ? Code::kPeerFailure
                        : Code::kTransport;
  q.failed = true;
  std::string msg = fmt::format(
      "rdma {} from rank {} to rank {} failed on channel {} (QP 0x{:x}, {}): {}, vendor_err 0x{:x}{}",
      OpName(op), me_, q.peer, q.ch, q.qpn, WrOpcodeName(OpOpcode(op)), WcStatusText(wc.status),
      wc.vendor_err, FailureHint(wc.status, q.peer, timeout_, retry_));
  // A rank already known dead by a death notice is the likely cause (the survivors of its host fail and
  // exit after it, breaking their QPs): say so first. The notice reached this heap before any such exit
  // (NotifyDeath waits for its acknowledgement), so it is read here in time.
  CheckNotices();
  {
    std::lock_guard<std::mutex> g(health_mu_);
    const int first = EarliestNoticeLocked(q.peer);
    if (first >= 0)
      msg = fmt::format("{}; then: {}", peer_status_[static_cast<size_t>(first)].message(), msg);
  }
  // Every QP keeps its own error to return, but a peer that is already known to have failed (another
  // channel, a receive, a probe) was logged there: this is its echo, not a new error.
  q.error = PeerKnownFailed(q.peer) ? Status(code, std::move(msg))
                                    : internal::MakeError(code, __FILE__, __LINE__, std::move(msg));
  MarkPeerFailed(q.peer, q.error);
}

Status VerbsDomain::PostFailed(SendQp& q, int rc, ibv_send_wr* bad) {
  const uint32_t k =
      bad != nullptr && bad >= q.wr && bad < q.wr + q.n_chain ? static_cast<uint32_t>(bad - q.wr) : 0;
  const ibv_send_wr& w = q.wr[k];
  q.posted += k;  // WRs before the bad one were queued
  q.n_chain = 0;
  const uint8_t op = static_cast<uint8_t>((w.wr_id >> kOpShift) & 0xf);
  const uint64_t raddr = op == kOpFetchAdd ? w.wr.atomic.remote_addr : w.wr.rdma.remote_addr;
  q.failed = true;
  q.error = VerbsError(
      "ibv_post_send", IbvErrno(rc),
      fmt::format("{} to rank {} on channel {}, QP 0x{:x}: WR {} of the chain, {} bytes, remote offset "
                  "{}{}",
                  OpName(op), q.peer, q.ch, q.qpn, k, w.num_sge ? w.sg_list->length : 0,
                  raddr >= q.rbase ? raddr - q.rbase : 0,
                  op == kOpFetchAdd ? " (atomics need an 8-byte aligned remote address)" : ""));
  return q.error;
}

Status VerbsDomain::Quiet(int ch) {
  if (ch < 0 || ch >= k_) [[unlikely]]
    return BadChannel(ch);
  Channel& c = *chans_[static_cast<size_t>(ch)];
  if (c.failed) return c.error;
  EPX_RETURN_IF_ERROR(ChannelError(c));
  // Make the newest WR of every QP signaled: its completion retires everything before it. Masked
  // peers are left out: a dead one would fail the marker only after the transport retry budget
  // (seconds), and nothing posted to it matters any more.
  for (SendQp* q : c.qps) {
    if (q->failed || Masked(q->peer)) continue;
    if (q->posted + q->n_chain == q->signaled) continue;  // idle, or the tail is already signaled
    if (q->n_chain > 0) {
      q->wr[q->n_chain - 1].send_flags |= IBV_SEND_SIGNALED;
      q->signaled = q->posted + q->n_chain;
      q->since_signal = 0;
    } else {
      EPX_RETURN_IF_ERROR(Append(c, *q, kOpQuietMark, 0, q->rbase, 0, 0, 0));
    }
  }
  EPX_RETURN_IF_ERROR(FlushChannel(c));
  const Deadline d = Deadline::After(std::chrono::milliseconds(opts_.timeout_ms));
  auto pending = [&] {  // error paths only
    std::string p;
    for (const SendQp* q : c.qps)
      if (q->completed < q->posted && !Masked(q->peer))
        p += fmt::format("{}rank {} (QP 0x{:x}): {} WRs", p.empty() ? "" : ", ", q->peer, q->qpn,
                         q->posted - q->completed);
    return p;
  };
  Backoff b;
  for (uint32_t i = 0;; ++i) {
    bool done = true;
    for (const SendQp* q : c.qps) done = done && (q->completed >= q->posted || Masked(q->peer));
    if (done) return Status::Ok();
    EPX_RETURN_IF_ERROR(PollSend(c));
    EPX_RETURN_IF_ERROR(ChannelError(c));  // a peer failed: what was posted to it will not arrive
    // Two ranks quieting towards each other with immediates/emulated adds in flight would wait on
    // each other's receive queues (RNR) forever: progress ours while we wait.
    TryProgressRecv();
    if ((i & 63) == 63 && d.Expired()) {
      EPX_RETURN_IF_ERROR(PollSend(c));
      std::string p = pending();
      if (p.empty()) return Status::Ok();
      return EPX_ERROR(kTimeout, "rdma quiet on channel {}: rank {} waited {} ms for completions from {}", ch,
                       me_, opts_.timeout_ms, p);
    }
    // Slow path: a peer on this host killed mid-quiet is named by the process scan at once (its QPs
    // fail only after the transport retry budget). A remote peer's QP fails by itself (RETRY_EXC_ERR),
    // or earlier, by the death notice of its host.
    if ((i & 63) == 63 && b.sleeping()) [[unlikely]] {
      for (const SendQp* q : c.qps)
        if (q->completed < q->posted)
          EPX_RETURN_IF_ERROR(NoticedDeath(q->peer, [&] {
            return fmt::format("rdma quiet on channel {}: rank {} waiting for completions from {}", ch, me_,
                               pending());
          }));
    }
    if ((i & 63) == 63 && b.sleeping() && ctx_.liveness().PeerDead()) [[unlikely]] {
      EPX_RETURN_IF_ERROR(PollSend(c));
      std::string p = pending();
      if (p.empty()) return Status::Ok();
      return ctx_.liveness().PeerFailure(
          "an RDMA quiet",
          fmt::format("rdma quiet on channel {}: rank {} waiting for completions from {}", ch, me_, p));
    }
    b.Pause();
  }
}

// ---------------------------------------------------------------------------------------------------
// Receive side, counters, immediates

void VerbsDomain::ProgressRecvLocked() {
  ibv_wc wc[kPollBatch];
  for (int round = 0; round < 4; ++round) {
    const size_t room = ring_.size() - static_cast<size_t>(ring_tail_ - ring_head_);
    if (room == 0) return;  // PollImm not called: leave CQEs (and receives) for later; senders see RNR
    const int n = ibv_poll_cq(recv_cq_.get(), static_cast<int>(std::min<size_t>(kPollBatch, room)), wc);
    if (n <= 0) {
      // Every later call polls again: the failure is logged and stored once (peer_status_[me_]).
      if (n < 0 && !PeerKnownFailed(-1))
        MarkPeerFailed(-1,
                       EPX_ERROR(kTransport, "rdma(verbs): ibv_poll_cq failed on the receive CQ ({})", n));
      return;
    }
    for (int i = 0; i < n; ++i) {
      SendQp& q = *sqp_[static_cast<size_t>(wc[i].wr_id)];
      if (wc[i].status != IBV_WC_SUCCESS) [[unlikely]] {
        // A broken QP flushes every receive posted on it (rq depth CQEs, over several calls), and a dead
        // peer breaks all its QPs: only the first failure of a peer is an error to log and keep
        // (peer_status_); the rest are its echo. Callers get the stored Status (PeerFailure, PollImm).
        if (!PeerKnownFailed(q.peer))
          MarkPeerFailed(
              q.peer,
              internal::MakeError(
                  wc[i].status == IBV_WC_WR_FLUSH_ERR ? Code::kPeerFailure : Code::kTransport, __FILE__,
                  __LINE__,
                  fmt::format(
                      "rdma(verbs): receive on QP 0x{:x} (rank {} -> rank {}, channel {}) "
                      "failed: {}{}",
                      q.qpn, q.peer, me_, q.ch, WcStatusText(wc[i].status),
                      wc[i].status == IBV_WC_WR_FLUSH_ERR ? "; the connection is in the error state" : "")));
        continue;  // no re-post on a broken QP
      }
      const uint32_t imm = be32toh(wc[i].imm_data);
      if (wc[i].opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
        ring_[ring_tail_++ & (ring_.size() - 1)] = ImmEvent{q.peer, imm};
      } else if (wc[i].opcode == IBV_WC_RECV && (wc[i].wc_flags & IBV_WC_WITH_IMM)) {
        // Emulated fetch-add. The receive completion implies the data the sender posted before it on
        // this QP is placed; the release add publishes that to whoever acquires the counter.
        const size_t off = opts_.counter_off + 8 * static_cast<size_t>(imm >> 16);
        if (off + 8 <= opts_.counter_off + opts_.counter_bytes)
          __atomic_fetch_add(reinterpret_cast<uint64_t*>(heap_.base() + off), imm & 0xffffu,
                             __ATOMIC_RELEASE);
      }
      ibv_recv_wr rw{};
      rw.wr_id = q.index;
      ibv_recv_wr* bad = nullptr;
      if (const int rc = ibv_post_recv(q.qp, &rw, &bad); rc != 0) [[unlikely]]
        MarkPeerFailed(q.peer,
                       VerbsError("ibv_post_recv", IbvErrno(rc),
                                  fmt::format("re-posting a receive on QP 0x{:x} (rank {})", q.qpn, q.peer)));
    }
    if (n < kPollBatch) return;
  }
}

bool VerbsDomain::PeerKnownFailed(int peer) {
  std::lock_guard<std::mutex> g(health_mu_);
  return !peer_status_[peer < 0 ? static_cast<size_t>(me_) : static_cast<size_t>(peer)].ok();
}

void VerbsDomain::MarkPeerFailed(int peer, const Status& why) {
  std::lock_guard<std::mutex> g(health_mu_);
  const size_t i = peer < 0 ? static_cast<size_t>(me_) : static_cast<size_t>(peer);
  if (peer_status_[i].ok()) {
    peer_status_[i] = why;
    fail_seq_[i] = ++failures_;
  }
  CountFailing();
}

void VerbsDomain::CountFailing() {
  int n = 0;
  for (size_t i = 0; i < peer_status_.size(); ++i)
    n += !peer_status_[i].ok() && (static_cast<int>(i) == me_ || !Masked(static_cast<int>(i)));
  failing_.store(n, std::memory_order_release);
}

void VerbsDomain::MaskPeer(int peer, bool masked) {
  if (peer < 0 || peer >= world_ || peer == me_) return;
  std::lock_guard<std::mutex> g(health_mu_);
  __atomic_store_n(&masked_[static_cast<size_t>(peer)], static_cast<uint8_t>(masked), __ATOMIC_RELEASE);
  CountFailing();
}

std::vector<int> VerbsDomain::FailedPeers() {
  std::lock_guard<std::mutex> g(health_mu_);
  std::vector<int> out;
  for (int i = 0; i < world_; ++i)
    if (i != me_ && !peer_status_[static_cast<size_t>(i)].ok()) out.push_back(i);
  return out;
}

Status VerbsDomain::PeerFailure(std::string_view what, size_t off, uint64_t target, int writer) {
  return PeerFailureOf(writer, what,
                       fmt::format("rank {} waiting for counter at offset {} to reach {} (at {})", me_, off,
                                   target, LoadCounter(off)));
}

Status VerbsDomain::PeerFailureOf(int prefer, std::string_view what, std::string_view waiting) {
  CheckNotices();  // a notice may explain the failure this wait saw (see OnSendError)
  // Which failure to report: the peer the wait is for, if it failed; else the first one recorded. A
  // dead rank's survivors fail and exit in turn, so later failures (probes to them, flushed QPs) are
  // often a cascade of the first: naming the lowest-index failed rank named the wrong one.
  Code code = Code::kPeerFailure;
  std::string msg;
  {
    std::lock_guard<std::mutex> g(health_mu_);
    // Failures of masked peers are not the cause of anything any more (the caller goes on without them).
    auto counts = [&](size_t i) {
      return !peer_status_[i].ok() && (static_cast<int>(i) == me_ || !Masked(static_cast<int>(i)));
    };
    size_t best = peer_status_.size();
    // A death notice names the cause itself (a process found dead on its host): it goes first, whatever
    // the wait was for (the failures of the survivors that exited after it are its cascade).
    if (const int n = EarliestNoticeLocked(-1); n >= 0) {
      prefer = n;
      best = static_cast<size_t>(n);
    } else if (prefer >= 0 && prefer < world_ && counts(static_cast<size_t>(prefer))) {
      best = static_cast<size_t>(prefer);
    }
    for (size_t i = 0; best != static_cast<size_t>(prefer) && i < peer_status_.size(); ++i)
      if (counts(i) && (best == peer_status_.size() || fail_seq_[i] < fail_seq_[best])) best = i;
    if (best == peer_status_.size()) {
      msg = "a peer failed";  // not reached: callers ask once failing_ > 0
    } else {
      code = peer_status_[best].code();
      msg = peer_status_[best].message();
      // The others, in the order they failed, each by its first clause ("rank 2 is unreachable: ...").
      std::vector<size_t> others;
      for (size_t i = 0; i < peer_status_.size(); ++i)
        if (i != best && counts(i)) others.push_back(i);
      std::sort(others.begin(), others.end(),
                [&](size_t a, size_t b) { return fail_seq_[a] < fail_seq_[b]; });
      for (size_t k = 0; k < others.size(); ++k) {
        const std::string& m = peer_status_[others[k]].message();
        msg += fmt::format("{}{}", k == 0 ? "; also failed since: " : " | ", m.substr(0, m.find(';')));
      }
    }
  }
  return Status(code, std::move(msg)).With(fmt::format("{}: {}", what, waiting));
}

bool VerbsDomain::ProbeIfDue() {
  CheckNotices();
  if (failing_.load(std::memory_order_acquire) > 0) return true;
  // One probe round per interval for the whole domain, whichever thread's wait is due first.
  const int64_t now = Clock::now().time_since_epoch().count();
  int64_t due = next_probe_.load(std::memory_order_relaxed);
  const bool send =
      now >= due &&
      next_probe_.compare_exchange_strong(
          due,
          now + std::chrono::duration_cast<Clock::duration>(std::chrono::milliseconds(probe_interval_ms_))
                    .count(),
          std::memory_order_relaxed);
  ProbeTick(send);
  return failing_.load(std::memory_order_acquire) > 0;
}

// Liveness probes: a zero-length signaled write on each peer's control QP. A dead peer's node never
// acknowledges it, so it fails with RETRY_EXC_ERR after the transport retry budget, naming the peer.
void VerbsDomain::ProbeTick(bool send) {
  std::unique_lock<std::mutex> g(probe_mu_, std::try_to_lock);
  if (!g.owns_lock()) return;
  ibv_wc wc[kPollBatch];
  const auto now = Clock::now();
  for (;;) {
    const int n = ibv_poll_cq(ctrl_cq_.get(), kPollBatch, wc);
    for (int i = 0; i < n; ++i) OnCtrlCompletion(wc[i], now);
    if (n < kPollBatch) break;
  }
  if (!send) return;
  for (int peer : peers_) {
    ProbeState& p = probe_[static_cast<size_t>(peer)];
    if (p.inflight || Masked(peer)) continue;  // a probe in flight to a dead peer holds up QP teardown
    if (1 + p.notices > static_cast<int>(kCtrlDepth)) continue;  // the control SQ is full
    {
      std::lock_guard<std::mutex> h(health_mu_);
      if (!peer_status_[static_cast<size_t>(peer)].ok()) continue;  // already known dead
    }
    SendQp& q = *sqp_[static_cast<size_t>(ctrl_slot_[static_cast<size_t>(peer)])];
    ibv_send_wr w{};
    w.wr_id = WrId(q.index, kOpProbe, 0);
    w.opcode = IBV_WR_RDMA_WRITE;
    w.send_flags = IBV_SEND_SIGNALED;
    w.wr.rdma.remote_addr = q.rbase;
    w.wr.rdma.rkey = q.rkey;
    ibv_send_wr* bad = nullptr;
    if (ibv_post_send(q.qp, &w, &bad) == 0) {
      p.inflight = true;
      p.sent = now;
    }
  }
}

void VerbsDomain::OnCtrlCompletion(const ibv_wc& wc, Clock::time_point now) {
  SendQp& q = *sqp_[static_cast<size_t>(wc.wr_id >> kIndexShift)];
  const auto op = static_cast<uint8_t>((wc.wr_id >> kOpShift) & 0xf);
  ProbeState& p = probe_[static_cast<size_t>(q.peer)];
  if (op == kOpNotice)
    --p.notices;
  else
    p.inflight = false;
  if (wc.status == IBV_WC_SUCCESS) {
    if (op == kOpProbe) p.last_ok = now;
    return;
  }
  if (PeerKnownFailed(q.peer)) return;  // in flight when the peer failed otherwise: its echo
  MarkPeerFailed(
      q.peer,
      internal::MakeError(
          Code::kPeerFailure, __FILE__, __LINE__,
          fmt::format(
              "rank {} is unreachable: {} from rank {} (control QP 0x{:x}) failed{}: {}{}", q.peer,
              op == kOpNotice ? "death notice" : "liveness probe", me_, q.qpn,
              op == kOpNotice
                  ? ""
                  : fmt::format(" after {} ms",
                                std::chrono::duration_cast<std::chrono::milliseconds>(now - p.sent).count()),
              WcStatusText(wc.status), FailureHint(wc.status, q.peer, timeout_, retry_))));
}

void VerbsDomain::NotifyDeath(int dead) {
  if (dead < 0 || dead >= world_ || static_cast<size_t>(dead) >= ctl::kDeathNoticeRanks) return;
  // A death on this host after a death notice from another host is most likely its cascade (a survivor
  // that failed and exited): telling the other hosts would only make them name it instead of the cause.
  if (AnyNoticedDeath()) return;
  const size_t off = ctl::kDeathNotice + 8 * static_cast<size_t>(dead);
  // The write's source is this rank's own word for `dead`: no one else writes it (notices about a rank
  // go only to hosts other than its own, and this is its host) and CheckNotices skips this host's ranks.
  __atomic_store_n(reinterpret_cast<uint64_t*>(heap_.base() + off), static_cast<uint64_t>(me_) + 1,
                   __ATOMIC_RELAXED);
  std::lock_guard<std::mutex> g(probe_mu_);  // the control QPs and their CQ
  int posted = 0;
  for (int peer : peers_) {
    const auto i = static_cast<size_t>(peer);
    ProbeState& p = probe_[i];
    if (same_host_[i] || Masked(peer) || PeerKnownFailed(peer)) continue;
    if ((p.inflight ? 1 : 0) + p.notices + 1 > static_cast<int>(kCtrlDepth)) continue;  // SQ full
    SendQp& q = *sqp_[static_cast<size_t>(ctrl_slot_[i])];
    ibv_sge sge{reinterpret_cast<uint64_t>(heap_.base() + off), 8, heap_mr_->lkey};
    ibv_send_wr w{};
    w.wr_id = WrId(q.index, kOpNotice, 0);
    w.sg_list = &sge;
    w.num_sge = 1;
    w.opcode = IBV_WR_RDMA_WRITE;
    w.send_flags = IBV_SEND_SIGNALED;
    w.wr.rdma.remote_addr = q.rbase + off;
    w.wr.rdma.rkey = q.rkey;
    ibv_send_wr* bad = nullptr;
    if (ibv_post_send(q.qp, &w, &bad) == 0) {
      ++p.notices;
      ++posted;
    }
  }
  if (posted == 0) return;
  // Until every notice is acknowledged (placed in the peer's heap) or failed; bounded: a peer that does
  // not answer is found by its probes, and the death must not wait on it.
  const Deadline d = Deadline::After(std::chrono::milliseconds(std::min<int64_t>(opts_.timeout_ms / 4, 300)));
  ibv_wc wc[kPollBatch];
  Backoff b;
  for (;;) {
    const int n = ibv_poll_cq(ctrl_cq_.get(), kPollBatch, wc);
    for (int i = 0; i < n; ++i) OnCtrlCompletion(wc[i], Clock::now());
    int left = 0;
    for (int peer : peers_) left += probe_[static_cast<size_t>(peer)].notices;
    if (left == 0 || d.Expired()) {
      EPX_DEBUG("rdma(verbs): rank {}: death of rank {} told to {} peer(s) of other hosts, {} unacknowledged",
                me_, dead, posted, left);
      return;
    }
    if (n == 0) b.Pause();
  }
}

void VerbsDomain::CheckNotices() {
  if (same_host_.empty()) return;  // Init has not finished
  const int n = static_cast<int>(std::min<size_t>(static_cast<size_t>(world_), ctl::kDeathNoticeRanks));
  for (int r = 0; r < n; ++r) {
    const auto i = static_cast<size_t>(r);
    if (same_host_[i] || __atomic_load_n(&noticed_[i], __ATOMIC_RELAXED)) continue;
    const uint64_t v = __atomic_load_n(
        reinterpret_cast<const uint64_t*>(heap_.base() + ctl::kDeathNotice + 8 * i), __ATOMIC_ACQUIRE);
    if (v == 0) continue;
    __atomic_store_n(&noticed_[i], uint8_t{1}, __ATOMIC_RELAXED);
    // v was written by a peer: only printed (as a rank when it is one).
    const std::string from = v - 1 < static_cast<uint64_t>(world_) ? fmt::format("rank {}", v - 1)
                                                                   : fmt::format("an invalid sender ({})", v);
    std::lock_guard<std::mutex> g(health_mu_);
    if (!peer_status_[i].ok()) continue;
    peer_status_[i] = internal::MakeError(
        Code::kPeerFailure, __FILE__, __LINE__,
        fmt::format(
            "rank {} died on its host (death notice from {} of that host, which saw it with its process "
            "scan; received by rank {})",
            r, from, me_));
    fail_seq_[i] = ++failures_;
    by_notice_[i] = 1;
    CountFailing();
  }
}

int VerbsDomain::EarliestNoticeLocked(int except) const {
  int first = -1;
  for (size_t i = 0; i < by_notice_.size(); ++i)
    if (by_notice_[i] && !Masked(static_cast<int>(i)) && static_cast<int>(i) != except &&
        (first < 0 || fail_seq_[i] < fail_seq_[static_cast<size_t>(first)]))
      first = static_cast<int>(i);
  return first;
}

bool VerbsDomain::AnyNoticedDeath() {
  CheckNotices();
  if (failing_.load(std::memory_order_acquire) == 0) return false;
  std::lock_guard<std::mutex> g(health_mu_);
  return EarliestNoticeLocked(-1) >= 0;
}

std::string VerbsDomain::NoticedCause() {
  CheckNotices();
  if (failing_.load(std::memory_order_acquire) == 0) return "";
  std::lock_guard<std::mutex> g(health_mu_);
  const int first = EarliestNoticeLocked(-1);
  return first < 0 ? std::string() : peer_status_[static_cast<size_t>(first)].message();
}

std::string VerbsDomain::ProbeSummary() {
  std::lock_guard<std::mutex> g(probe_mu_);
  const auto now = Clock::now();
  std::string s;
  for (int peer : peers_) {
    const ProbeState& p = probe_[static_cast<size_t>(peer)];
    auto ms = [&](Clock::time_point t) {
      return std::chrono::duration_cast<std::chrono::milliseconds>(now - t).count();
    };
    if (p.inflight)
      s += fmt::format("{}rank {}: probe unanswered for {} ms", s.empty() ? "" : ", ", peer, ms(p.sent));
    else if (p.last_ok != Clock::time_point{})
      s += fmt::format("{}rank {}: alive {} ms ago", s.empty() ? "" : ", ", peer, ms(p.last_ok));
  }
  return s.empty() ? "no liveness probe answered yet" : s;
}

Status VerbsDomain::WaitCounter(size_t off, uint64_t target, std::string_view what, const uint8_t* cancel,
                                int writer) {
  if (off % 8 != 0 || off < opts_.counter_off || off + 8 > opts_.counter_off + opts_.counter_bytes)
      [[unlikely]]
    return CounterRangeError("wait_counter", me_, off);
  const auto t0 = Clock::now();
  const Deadline d = Deadline::After(std::chrono::milliseconds(opts_.timeout_ms));
  PeerLiveness& live = ctx_.liveness();
  const auto probe_after = std::chrono::milliseconds(probe_interval_ms_);
  Backoff b;
  for (uint32_t i = 0;; ++i) {
    TryProgressRecv();
    if (LoadCounter(off) >= target) return Status::Ok();
    if ((i & 63) == 63) [[unlikely]] {
      if (cancel != nullptr && __atomic_load_n(cancel, __ATOMIC_ACQUIRE) != 0)
        return Status(Code::kFailedPrecondition, "cancelled");
      CheckNotices();
      if (failing_.load(std::memory_order_acquire) > 0) return PeerFailure(what, off, target, writer);
      // Slow path (the back-off sleeps). Peers of this host (several logical nodes over soft-RoCE or
      // a NIC in loopback) are watched by the Context's process scan, which names a killed one within
      // its scan interval and names the right rank; a probe only fails after the transport retry
      // budget (seconds), by when other survivors may have failed and exited too.
      if (b.sleeping() && live.PeerDead()) [[unlikely]] {
        TryProgressRecv();
        if (LoadCounter(off) >= target) return Status::Ok();  // it published, then exited
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
        return live.PeerFailure(
            what, fmt::format("rank {} waited {} ms for counter at offset {} to reach {} (at {})", me_, ms,
                              off, target, LoadCounter(off)));
      }
      // Probe the remote peers so that a dead one is named well before the deadline instead of a bare
      // timeout: once the wait is one probe interval old (short waits never send probes: a probe in
      // flight to a peer that dies holds up the teardown of our QP by the retry budget), then at
      // most once per interval for the whole domain. Completions are collected on every slow pass.
      if (Clock::now() - t0 >= probe_after) {
        if (ProbeIfDue()) return PeerFailure(what, off, target, writer);
      } else {
        ProbeTick(false);
      }
      if (d.Expired()) {
        TryProgressRecv();
        if (LoadCounter(off) >= target) return Status::Ok();
        if (failing_.load(std::memory_order_acquire) > 0) return PeerFailure(what, off, target, writer);
        return EPX_ERROR(kTimeout,
                         "{}: rank {} waited {} ms for counter at offset {} to reach {} (at {}); peers: {}",
                         what, me_, opts_.timeout_ms, off, target, LoadCounter(off), ProbeSummary());
      }
    }
    b.Pause();
  }
}

StatusOr<size_t> VerbsDomain::PollImm(std::span<ImmEvent> out) {
  // PollImm must not miss events another thread drained into the ring: take the lock (held only for
  // one CQ batch by anyone) instead of skipping when it is busy.
  Backoff b;
  while (recv_busy_.exchange(true, std::memory_order_acquire)) b.Pause();
  ProgressRecvLocked();
  size_t n = 0;
  while (n < out.size() && ring_head_ != ring_tail_) out[n++] = ring_[ring_head_++ & (ring_.size() - 1)];
  recv_busy_.store(false, std::memory_order_release);
  if (n == 0 && failing_.load(std::memory_order_acquire) > 0) [[unlikely]]
    return PeerFailureOf(-1, "poll_imm", fmt::format("rank {}", me_));
  return n;
}

Status VerbsDomain::RangeError(const char* op, int peer, size_t lo, size_t ro, size_t len,
                               size_t rsize) const {
  if (len > caps_.max_msg)
    return EPX_ERROR(kInvalidArgument,
                     "rdma {} to rank {}: {} bytes exceed the device's max message of {} bytes", op, peer,
                     len, caps_.max_msg);
  if (!Fits(lo, len, heap_.size()))
    return EPX_ERROR(kInvalidArgument,
                     "rdma {} to rank {}: local [{}, +{}) is outside this rank's {}-byte heap", op, peer, lo,
                     len, heap_.size());
  return EPX_ERROR(kInvalidArgument, "rdma {} to rank {}: remote [{}, +{}) is outside rank {}'s {}-byte heap",
                   op, peer, ro, len, peer, rsize);
}

Status VerbsDomain::CounterRangeError(const char* op, int peer, size_t off) const {
  return EPX_ERROR(
      kInvalidArgument,
      "rdma {} on rank {}: offset {} is not an 8-byte aligned word of the counter area [{}, +{})", op, peer,
      off, opts_.counter_off, opts_.counter_bytes);
}

}  // namespace epx::verbs
