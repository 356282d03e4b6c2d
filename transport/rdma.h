// transport/rdma.h: the inter-node domain ("the NIC"): one-sided operations addressed as
// (peer rank, offset in its symmetric heap), the epx stand-in for NVSHMEM/IBGDA.
//
// Two implementations behind this one interface, chosen at setup by EPX_RDMA:
//   verbs  ibverbs RC QPs (rdmacm or out-of-band connection), the heap registered as one MR
//          (transport/verbs/). Works on any verbs NIC: ConnectX, RoCE NICs, soft-RoCE (rxe).
//   shm    the same semantics over the shared-memory mappings of the heap, so several logical
//          nodes can run on one host without an RDMA device (transport/rdma_shm.cc). For development
//          speed only; it never replaces a verbs test.
//
// Channels: a domain has `num_channels()` independent posting contexts. Channel c owns one QP per
// connected peer (EPX_QPS_PER_PEER = channels) and is used by one worker thread at a time, so posting
// takes no lock. Operations on one (channel, peer) are executed by the peer in posting order.
//
// Completion and visibility contract (what kernels may rely on):
//   * Post calls queue work; `Flush(ch)` rings the doorbell (posting may also flush early when the
//     chain is full). Nothing is guaranteed to move before a flush.
//   * `Quiet(ch)` flushes and returns once every operation posted on `ch` so far has completed at
//     the target: its data is placed in the peer's heap. Local source buffers may be reused then.
//   * `Signal(...)` = Write(data) then FetchAdd(flag) on the same QP: a peer that observes the flag
//     increment through `WaitCounter`/`ReadCounter` also observes the data (RC in-order execution;
//     the flag is its own 8-byte word, posted last in the chain).
//   * Counters: 8-byte aligned words inside the counter area given at creation. A counter that
//     peers FetchAdd must not be modified by its owner's CPU (rxe runs remote atomics under a lock
//     that CPU atomics do not take); the owner reads it only with ReadCounter/WaitCounter. Without
//     native atomics (`caps().native_atomics == false`) FetchAdd is emulated with write-with-
//     immediate and the receiver applies it while it waits/reads; `add` must then be < 2^16.
//   * Errors: a failed work completion is the failure of its peer: later posts to that peer, and the
//     next Flush/Quiet/Poll of the channel, return an error naming the peer, QP, opcode and status
//     (flushed work requests are reported as flushed); posts to other peers go on. A dead peer gives
//     an error within EPX_TIMEOUT, never a hang: WaitCounter and Quiet probe remote peers and consult
//     the Context's process scan for ranks of this host; other waits ask `health()`.
//   * Masking: a rank masked with MaskPeer (a kernel goes on without a failed rank; any rank, connected
//     or not: a death notice about it fails nothing either) no longer matters:
//     Quiet neither signals nor waits for its QPs, and its failure fails no wait, Flush, Quiet or Poll.
//     Posts to it still return its error once it failed (kernels do not post to masked peers).
//
// Hot-path rules: Write/WriteImm/FetchAdd/Signal/Flush/ReadCounter allocate nothing, take no lock
// and make no syscall beyond the doorbell (ibv_post_send); strategy choices (inline threshold,
// signaling interval, atomics vs emulation) are fixed at setup.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/wait.h"

namespace epx {

class Context;

struct RdmaCaps {
  std::string kind;    // "verbs" or "shm"
  std::string device;  // e.g. "rxe0 port 1 gid 1 (::ffff:10.99.0.1)"; "shared memory" for shm
  bool native_atomics = true;
  size_t max_inline = 0;  // bytes a post may carry inline
  size_t max_msg = 0;     // largest single write
};

// A write-with-immediate that arrived: who sent it and its 32-bit immediate.
struct ImmEvent {
  int src_rank;
  uint32_t imm;
};

struct RdmaOptions {
  std::string kind = "auto";    // EPX_RDMA: auto | verbs | shm
  std::string connect = "auto"; // EPX_CONNECT: auto | rdmacm | oob (verbs only)
  int channels = 1;             // EPX_QPS_PER_PEER
  size_t counter_off = 0;       // counter area in every heap (same on all ranks)
  size_t counter_bytes = 0;     // 8 * number of counters
  std::vector<int> peers;       // ranks to connect; empty = every rank on another logical node
  int64_t timeout_ms = 60000;   // EPX_TIMEOUT
  static StatusOr<RdmaOptions> FromEnv();
};

class RdmaDomain {
 public:
  virtual ~RdmaDomain() = default;
  virtual const RdmaCaps& caps() const = 0;
  virtual int num_channels() const = 0;
  virtual bool Connected(int peer) const = 0;

  // len may be 0..caps().max_msg; offsets need no alignment.
  virtual Status Write(int ch, int peer, size_t local_off, size_t remote_off, size_t len) = 0;
  // Write then deliver `imm` to the peer's PollImm (after the data is placed).
  virtual Status WriteImm(int ch, int peer, size_t local_off, size_t remote_off, size_t len, uint32_t imm) = 0;
  // Adds `add` to the peer's counter at remote_off (8-byte aligned, inside the counter area).
  virtual Status FetchAdd(int ch, int peer, size_t remote_off, uint64_t add) = 0;
  // Write(data) then FetchAdd(flag) on the same QP: data visible no later than the flag.
  virtual Status Signal(int ch, int peer, size_t local_off, size_t remote_off, size_t len, size_t flag_off,
                        uint64_t add) = 0;
  virtual Status Flush(int ch) = 0;
  virtual Status Quiet(int ch) = 0;
  // Non-blocking: collects the completions of what `ch` posted; returns the error of a failed work
  // request (peer, QP, status). Progress loops call it when idle, so a QP that broke (e.g. its retries
  // ran out) is reported at once instead of as a timeout of whatever waited on it.
  virtual Status Poll(int ch) = 0;

  // Local counter (in this rank's counter area) as updated by peers' FetchAdd/Signal.
  virtual StatusOr<uint64_t> ReadCounter(size_t local_off) = 0;
  // Waits (with back-off, deadline EPX_TIMEOUT) until the counter >= target; the error names `what`,
  // the counter and its value. `cancel`: a byte another thread may set (atomic store) to end the wait
  // early with kFailedPrecondition "cancelled" (checked on the slow path; e.g. the writer was masked).
  // `writer`: the rank expected to move the counter, if one is (-1: unknown): when several peers have
  // failed, the error names it first (others follow), since survivors that fail and exit make more
  // peers fail soon after the first death.
  virtual Status WaitCounter(size_t local_off, uint64_t target, std::string_view what,
                             const uint8_t* cancel = nullptr, int writer = -1) = 0;
  // Collects arrived write-with-immediate events without blocking; returns how many were stored.
  virtual StatusOr<size_t> PollImm(std::span<ImmEvent> out) = 0;

  // Peer health for waits that do not go through WaitCounter (e.g. the normal-mode progress loops,
  // which poll ring counters with ReadCounter): PeerDead() runs the domain's liveness probes when one
  // is due, collects their completions and tells whether a connected peer is known to have failed
  // (failed work request, flushed receive, unanswered probe); PeerFailure() names it (the earliest
  // failure, the others listed). Slow paths only (after idle passes, once the back-off sleeps): it may
  // take a lock and post a probe (a syscall on rxe), at most once per probe interval per domain.
  // The shm domain's peers are processes of this host, watched by the Context's PeerLiveness: its
  // health never reports a failure.
  virtual WaitHealth& health() = 0;

  // Masking (see "Masking" above). Any thread, any time: the mask is read with atomics by waits of
  // other channels, which stop waiting for a peer as soon as it is masked.
  virtual void MaskPeer(int peer, bool masked) = 0;
  // Peers this domain has seen fail (QP error, flushed receive, unanswered probe), masked or not,
  // ascending. The shm domain's peers are watched by the Context's PeerLiveness: always empty.
  virtual std::vector<int> FailedPeers() = 0;
};

// Builds the domain chosen by opts.kind over ctx's heap, connecting opts.peers (collective: every
// rank of the context must call it). "auto" = verbs when a device exists, else shm.
StatusOr<std::unique_ptr<RdmaDomain>> CreateRdmaDomain(Context& ctx, const RdmaOptions& opts);

}  // namespace epx
