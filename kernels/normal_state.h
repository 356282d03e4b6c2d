// kernels/normal_state.h: internals of NormalBuffer shared by its files: the per-rank state, the ring
// ends of each channel, the per-call jobs the channel threads run, and the progress-loop helper.
//
// Files: normal.cc (API, validation, setup), normal_notify.cc (count exchange), normal_dispatch.cc and
// normal_combine.cc (channel progress loops), ring.cc (the credit ring), normal_config.cc (layouts).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "core/fault.h"  // EPX_FAULT_POINT hooks of normal_*.cc
#include "core/wait.h"
#include "kernels/normal.h"
#include "kernels/normal_plan.h"
#include "kernels/ring.h"
#include "kernels/worker_pool.h"
#include "transport/rdma.h"

namespace epx {

// The ring ends one channel thread owns. Sequence numbers persist across calls (kernels/ring.h).
struct ChannelRings {
  std::vector<RingSender> nd_send;    // [L]       node dispatch, to local rank l
  std::vector<RingReceiver> nd_recv;  // [L]       node dispatch, from forwarder local g
  std::vector<RingSender> nc_send;    // [L * NN]  node combine, to forwarder g for source node a: g*NN+a
  std::vector<RingReceiver> nc_recv;  // [L * NN]  node combine, from local h for source node a: h*NN+a
  std::vector<RingSender> rd_send;    // [NN]      RDMA dispatch to node b (own node unused)
  std::vector<RingReceiver> rd_recv;  // [NN]      RDMA dispatch from node a
  std::vector<RingSender> rc_send;    // [NN]      RDMA combine to source node a
  std::vector<RingReceiver> rc_recv;  // [NN]      RDMA combine from node b
  std::vector<float> acc;             // [max_hidden] FP32 reduction scratch
  std::vector<bf16> own_partial;      // [max_hidden] own node's BF16 partial (several nodes)
};

struct NormalState {
  Context& ctx;
  NormalPlan plan;
  uint64_t id = 0;
  int rank = 0, node = 0, local = 0;
  int64_t timeout_ms = 60000;
  std::unique_ptr<RdmaDomain> rdma;  // several nodes only
  uint64_t notify_target = 0;        // NotifyCounter after the last exchange's blocks: its value at creation,
                                     // + the live remote nodes of each exchange (masked nodes send none)
  uint64_t epoch = 0;                // count exchanges done
  std::vector<ChannelRings> channels;
  std::unique_ptr<WorkerPool> pool;
  // The count exchange's waits: fewer spins when the host's ranks share cpus (BackoffPolicy::ForCpus).
  BackoffPolicy wait;
  BackoffPolicy idle;   // channel threads' back-off: `wait` with cfg.idle_yields yields
  bool broken = false;  // a call failed midway: rings are in an unknown state
  // Masking (NormalBuffer::MaskRank): masked[r] != 0 -> r gets no tokens, sends none, and no wait is for
  // it (several nodes: see `via` below). Changed only between calls, by the caller's thread.
  std::vector<uint8_t> masked;      // [R]
  uint64_t mask_epoch = 0;          // bumped by every change; handles remember it
  std::vector<uint64_t> masked_at;  // [R] `calls` when r was masked (UnmaskRank's check)
  uint64_t calls = 0;               // dispatch and combine calls begun
  // Routes into each node (several nodes; UpdateRoutes after every mask change): via[s * NN + n] = the
  // local index of the rank of node n through which source s's tokens enter n and their partials leave
  // it; -1 for a masked s. Normally s's own index l (RDMA flows between same-index ranks only). When
  // (n, l) is masked but node n is not, s = (a, l) is RELAYED: it hands its node-n stream (count block,
  // tokens) over shared memory to the relay (a, g), g the first index after l (cyclic) live on both
  // nodes, which sends it on its own RDMA ring to (n, g) right after its own stream; (n, g) forwards it
  // like its own, and in combine the partials come back the same way (g hands them to l over the node
  // dispatch ring g -> l, idle in combine; the tokens go l -> g over the node combine ring for node n,
  // idle in dispatch). route_error: why the current mask leaves some live rank without a route.
  std::vector<int8_t> via;       // [R * NN]
  std::vector<int8_t> via_here;  // [R]: Via(s, node), the forwarder on this node of each source
  std::string route_error;

  explicit NormalState(Context& c) : ctx(c) {}
  int RankOf(int node_index, int l) const { return node_index * plan.L + l; }
  // Every rank of node n is masked (several nodes: nothing goes to or comes from n, no RDMA to it).
  bool NodeMasked(int n) const {
    for (int l = 0; l < plan.L; ++l)
      if (!masked[static_cast<size_t>(RankOf(n, l))]) return false;
    return true;
  }
  uint8_t* heap() const { return ctx.heap().base(); }
  int Via(int s, int n) const { return via[static_cast<size_t>(s) * plan.NN + n]; }
  // This rank relays node peer l's stream into node n.
  bool Relays(int l, int n) const { return l != local && n != node && Via(RankOf(node, l), n) == local; }
  void UpdateRoutes();  // kernels/normal.cc
};

// Tokens [begin, end) of channel c on a rank with n tokens: contiguous ranges of ceil(n/C).
inline void ChannelRange(int n, int C, int c, int* begin, int* end) {
  const int per = (n + C - 1) / C;
  *begin = std::min(n, per * c);
  *end = std::min(n, per * (c + 1));
}

// The rows rank (b, x) expects from the forwarder with local index g on channel c: tokens of the sources
// whose route into node b is g (NormalState::via: (a, g) of every node a, and those g relays), in c.
inline int ExpectedFromForwarder(const NormalState& st, const NormalHandle& h, int g, int c) {
  const int C = h.num_channels;
  int n = 0;
  for (int s = 0; s < h.num_ranks; ++s) {
    if (st.Via(s, st.node) != g) continue;
    const int* p = &h.recv_channel_prefix[static_cast<size_t>(s) * (C + 1)];
    n += p[c + 1] - p[c];
  }
  return n;
}

// What this rank relays on channel c, per node peer l: into which node (-1: none) and how many messages
// (the handle's relay counts; a relayed stream carries one message per token each way).
inline Status RelayPlanOf(const NormalState& st, const NormalHandle& h, int c, int* relay_node,
                          int* to_relay) {
  const int L = st.plan.L;
  for (int l = 0; l < L; ++l) {
    relay_node[l] = -1;
    for (int n = 0; n < st.plan.NN; ++n)
      if (st.Relays(l, n)) relay_node[l] = n;
    to_relay[l] = h.relay.empty() ? 0 : h.relay[static_cast<size_t>(c) * L + l];
    EPX_CHECK_OR_RETURN(relay_node[l] >= 0 || to_relay[l] == 0,
                        "rank {} channel {}: the handle has {} tokens of rank {} to relay, the routes none",
                        st.rank, c, to_relay[l], st.RankOf(st.node, l));
  }
  return Status::Ok();
}

// The sources whose stream into node b arrives through forwarder (b, g) from node a, in ring order: (a, g)
// itself, then the ones (a, g) relays, ascending. Returns their number.
inline int RingSources(const NormalState& st, int a, int b, int g, int* out) {
  int n = 0;
  const int own = st.RankOf(a, g);
  if (st.Via(own, b) == g) out[n++] = own;
  for (int l = 0; l < st.plan.L; ++l)
    if (l != g && st.Via(st.RankOf(a, l), b) == g) out[n++] = st.RankOf(a, l);
  return n;
}

// Progress-loop pacing of a channel thread: back off after a pass without progress, give up after
// EPX_TIMEOUT without progress, when another channel failed, or when a peer is known dead. Two health
// sources: `health`, the Context's PeerLiveness (processes of this host), and `remote`, the RDMA
// domain's (RdmaDomain::health(): liveness probes of peers on other hosts, failed QPs). The ring waits
// read counters without ever calling WaitCounter, so without `remote` nothing would drive the probes
// and a death on another host would end as a bare timeout. Both are asked only on the slow path: every
// 64th idle pass once the idle stretch is kLivenessAfter old or the back-off sleeps (the channel
// threads' yield phase is long, EPX_NORMAL_YIELD_ITERS), and both rate-limit their own syscalls
// (liveness scans, probe posts).
class ProgressWatch {
 public:
  static constexpr std::chrono::milliseconds kLivenessAfter{20};
  // The RDMA domain's health sends probes: asked only in idle stretches this long (a healthy call
  // rarely idles that long; a probe left in flight to a peer that then dies delays our exit).
  static constexpr std::chrono::milliseconds kRemoteAfter{500};

  ProgressWatch(int64_t timeout_ms, const BackoffPolicy& policy, const std::atomic<bool>* abort,
                WaitHealth* health = nullptr, WaitHealth* remote = nullptr)
      : timeout_ms_(timeout_ms), abort_(abort), health_(health), remote_(remote), backoff_(policy) {}
  // After each pass. Returns an error when the call must stop; `diag()` names what was missing.
  template <typename Diag>
  Status AfterPass(bool progressed, Diag&& diag) {
    if (progressed) {
      backoff_.Reset();
      idle_ = 0;
      dead_ = nullptr;
      return Status::Ok();
    }
    if (idle_++ == 0) {
      idle_since_ = Clock::now();  // an idle stretch starts; it may last EPX_TIMEOUT
      deadline_ = idle_since_ + std::chrono::milliseconds(timeout_ms_);
    } else if (dead_ != nullptr) {
      // A whole pass ran after the death was seen and moved nothing: what it sent before dying (or
      // before exiting normally) has been taken, the rest will never come.
      return dead_->PeerFailure("a normal-mode call",
                                fmt::format("{} (no progress for {} ms)", diag(), IdleMs()));
    } else if ((idle_ & 63) == 0) {
      if (abort_->load(std::memory_order_relaxed)) {
        // Not logged: the failing channel logged the cause. If that was a dead peer, say so here too
        // (more telling than "stopped"); a plain stop is an echo the worker pool reports only when no
        // channel has a cause of its own (kernels/worker_pool.h).
        // (The remote health only once the stretch is long: asking may send probes.)
        const bool remote_due = Clock::now() - idle_since_ >= kRemoteAfter;
        for (WaitHealth* h : {health_, remote_due ? remote_ : nullptr})
          if (h != nullptr && h->PeerDead())
            return h->PeerFailure("a normal-mode call",
                                  fmt::format("{} (stopped: another channel saw the death)", diag()));
        return StoppedByOtherWorker();
      }
      const Clock::time_point now = Clock::now();
      if (now >= deadline_) {
        // Last look before a bare timeout: a failure known now is the better explanation.
        for (WaitHealth* h : {health_, remote_})
          if (h != nullptr && h->PeerDead())
            return h->PeerFailure("a normal-mode call",
                                  fmt::format("{} (no progress for {} ms)", diag(), IdleMs()));
        return EPX_ERROR(kTimeout, "{} (no progress for {} ms)", diag(), timeout_ms_);
      }
      if (backoff_.sleeping() || now - idle_since_ >= kLivenessAfter) {
        // Fail after one more pass without progress (see above). A death another host reported first
        // (it costs nothing to ask: transport/verbs death notices): a rank of this host found dead after
        // that is most likely a survivor that failed on it and exited. Then this host's scan: it names a
        // killed local rank within its interval, and it is the precise one.
        if (remote_ != nullptr && remote_->PeerReportedDead()) [[unlikely]]
          dead_ = remote_;
        else if (health_ != nullptr && health_->PeerDead()) [[unlikely]]
          dead_ = health_;
        else if (remote_ != nullptr && now - idle_since_ >= kRemoteAfter && remote_->PeerDead()) [[unlikely]]
          dead_ = remote_;
      }
    }
    backoff_.Pause();
    return Status::Ok();
  }

 private:
  int64_t IdleMs() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - idle_since_).count();
  }

  int64_t timeout_ms_;
  const std::atomic<bool>* abort_;
  WaitHealth* health_;
  WaitHealth* remote_;
  Clock::time_point idle_since_{}, deadline_{};
  Backoff backoff_;
  uint32_t idle_ = 0;
  WaitHealth* dead_ = nullptr;  // the health that saw a death (fail after one more idle pass)
};

// Drives the thread of channel c: repeats `pass(&progressed)` (a StatusOr<bool>: all roles done) until it
// returns true, backing off after passes that moved nothing. Every pass is non-blocking, so a thread
// never waits on one ring while another of its rings could move.
template <typename Pass, typename Diag>
Status RunProgressLoop(const NormalState& st, int c, const std::atomic<bool>& abort, Pass&& pass,
                       Diag&& diag) {
  ProgressWatch watch(st.timeout_ms, st.idle, &abort, &st.ctx.liveness(),
                      st.rdma ? &st.rdma->health() : nullptr);
  uint32_t idle_passes = 0;  // of the whole call (never reset): the Poll below is every 64th of them
  for (;;) {
    bool progressed = false;
    EPX_ASSIGN_OR_RETURN(bool done, pass(&progressed));
    // Idle: ask the NIC about our posted work now and then, so a broken QP is named at once (rdma.h Poll).
    if (st.rdma && !progressed && (++idle_passes & 63) == 0) EPX_RETURN_IF_ERROR(st.rdma->Poll(c));
    if (done) return Status::Ok();
    EPX_RETURN_IF_ERROR(watch.AfterPass(progressed, diag));
  }
}

// One Dispatch call as the channel threads see it.
struct DispatchJob {
  const DispatchInput* in = nullptr;
  DispatchOutput* out = nullptr;
  const NormalHandle* handle = nullptr;
  NormalHandle* record = nullptr;  // non-null: forwarders record masks (non-cached dispatch)
  DispatchMsgLayout msg;
  std::atomic<bool> abort{false};
};

struct CombineJob {
  const CombineInput* in = nullptr;
  CombineOutput* out = nullptr;
  const NormalHandle* handle = nullptr;
  CombineMsgLayout msg;
  std::atomic<bool> abort{false};
};

// What the progress loop of one channel thread holds for one call (DispatchJob or CombineJob): the
// buffer's state, the job and its handle, the plan and the channel's rings (normal_dispatch.cc and
// normal_combine.cc derive their loops from it).
template <typename Job>
class ChannelTask {
 protected:
  ChannelTask(NormalState& st, Job& job, int c)
      : st_(st),
        job_(job),
        h_(*job.handle),
        P_(st.plan),
        c_(c),
        rings_(st.channels[c]),
        L_(P_.L),
        NN_(P_.NN) {}

  NormalState& st_;
  Job& job_;
  const NormalHandle& h_;
  const NormalPlan& P_;
  const int c_;
  ChannelRings& rings_;
  const int L_, NN_;
};

// Channel progress loops (normal_dispatch.cc, normal_combine.cc).
Status RunDispatchChannel(NormalState& st, DispatchJob& job, int c);
Status RunCombineChannel(NormalState& st, CombineJob& job, int c);

// Count exchange (normal_notify.cc): fills the receive-side and forwarder-side fields of `h` from the
// source-side ones (is_token_in_rank) and `tokens_per_expert` (this rank's (token, k) counts over all
// E experts); `shape` must be equal on all ranks (ShapeSignature), else every rank fails naming the odd
// one out.
Status ExchangeCounts(NormalState& st, const std::vector<int>& tokens_per_expert, uint32_t shape,
                      NormalHandle* h);
inline uint32_t ShapeSignature(int hidden, TokenDtype dtype, int topk, int num_experts) {
  return static_cast<uint32_t>(hidden) * 2654435761u ^ static_cast<uint32_t>(topk) << 20 ^
         static_cast<uint32_t>(dtype) << 30 ^ static_cast<uint32_t>(num_experts) * 40503u;
}

}  // namespace epx
