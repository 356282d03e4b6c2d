// transport/liveness.h: dead-peer detection for the ranks of this host (node-local peers, and the
// "remote" peers of the shm-emulated RDMA domain, which are processes of this host too).
//
// At Context creation every rank publishes its identity over the bootstrap all-gather: pid, start time
// (/proc/<pid>/stat field 22, which tells a restarted process or a reused pid apart), pid namespace and
// logical node. Waits that depend on other ranks ask `PeerDead()` on their slow path (core/wait.h:
// once the back-off sleeps); at most every kScanInterval one caller looks at every watched peer:
// /proc/<pid>/stat missing (ESRCH), a zombie (state Z or X: exited or killed, not yet reaped) or a
// different start time all mean dead. A death, once seen, stays: from then on PeerDead() is one
// atomic load and every wait fails at once with kPeerFailure (a wait first re-checks its condition,
// since a peer may publish its last word and then exit normally):
//
//   "rank 1 (pid 1234, node 0) died (no longer running) during normal-mode call; rank 0 was waiting:
//    normal dispatch: rank 0 channel 1 stuck; receive from forwarder 1: 3 of 12 (...) (no progress for
//    120 ms). The Context and every buffer made from it are not usable any more (peers may hold part of a
//    call): destroy them and create a new Context"
//
// The message is logged once per process (at the first wait that fails because of it); later waits
// return the same explanation without logging it again.
//
// Masking: a caller that goes on without a dead rank (it masked it) calls Acknowledge(rank); that death
// then no longer fails waits, while a further death still does. IsDead(rank) tells whether the rank a
// wait was for is itself dead, or another one (the wait's peer may be alive and merely held up).
//
// Peers on other hosts (verbs) are not watched here: their pids mean nothing on this kernel. The verbs
// domain detects them with QP errors and its liveness probes (transport/verbs/), and it tells the other
// hosts what this scan saw (death notices): it listens here (AddDeathListener).
//
// Thread safety: PeerDead()/PeerFailure() may be called by any thread at any time (channel threads of
// several buffers wait concurrently); the scan is claimed with a compare-exchange, so it runs on one
// thread at a time and at most once per interval.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/wait.h"

namespace epx {

class Bootstrap;

// What a rank publishes about its process. Trivially copyable: it travels in the bootstrap all-gather.
struct ProcessIdentity {
  int32_t pid = 0;
  int32_t node = 0;          // logical node (for messages)
  uint64_t start_ticks = 0;  // /proc/<pid>/stat starttime (clock ticks since boot); 0 if unknown
  uint64_t pidns = 0;        // inode of /proc/self/ns/pid; 0 if unknown
  static ProcessIdentity Self(int node);
};

// How a watched process looks now.
enum class ProcessState : uint8_t {
  kAlive,
  kGone,      // no such process
  kZombie,    // exited or killed, not reaped yet
  kReplaced,  // the pid now belongs to another process (start time differs)
};
const char* ProcessStateText(ProcessState s);
// Looks at `id` (a process of this pid namespace) with /proc/<pid>/stat, falling back to kill(pid, 0)
// where /proc cannot tell. A few syscalls, no allocation.
ProcessState ProbeProcess(const ProcessIdentity& id);

class PeerLiveness final : public WaitHealth {
 public:
  static constexpr std::chrono::milliseconds kScanInterval{50};

  // Collective over the bootstrap (one all-gather): watches the ranks of `host_peers` (this host,
  // self excluded) that share this process's pid namespace.
  static StatusOr<std::unique_ptr<PeerLiveness>> Create(Bootstrap& boot, int node,
                                                        const std::vector<int>& host_peers);
  // From known identities (rank-indexed), e.g. in tests.
  PeerLiveness(int rank, std::vector<ProcessIdentity> ids, std::vector<int> watched);

  // True once a watched peer is known dead and its death was not acknowledged. Between scans this is
  // one atomic load and a clock read.
  bool PeerDead() override {
    if (unacked_.load(std::memory_order_acquire) > 0) return true;
    const int64_t now = Clock::now().time_since_epoch().count();
    if (now < next_scan_.load(std::memory_order_relaxed)) return false;
    return Scan(now);
  }
  Status PeerFailure(std::string_view what, std::string_view waiting) override;

  // Whether `rank` was found dead (acknowledged or not); no scan.
  bool IsDead(int rank) const;
  // The caller has taken `rank`'s death into account (e.g. masked the rank: calls no longer wait for
  // it), so it no longer fails waits. May come before the death is seen (a rank masked after a timeout).
  void Acknowledge(int rank);

  // Death listeners: fn(rank) runs once per rank found dead, on the thread whose scan found it, BEFORE
  // the death fails any wait of this process (so a listener's work, e.g. telling other hosts, is done
  // before a survivor that fails can exit). Keep it short and bounded: waits of other threads see the
  // death only once it returns. Remove blocks until a running call of that listener has returned.
  using DeathListener = std::function<void(int rank)>;
  int AddDeathListener(DeathListener fn);
  void RemoveDeathListener(int id);
  // Cause sources: fn() returns "" or a death that another host reported (the verbs domain's death
  // notices). PeerFailure names such a death first: this host's deaths after it are survivors that failed
  // on it and exited (a cascade), however the wait and the scan raced. Removed with RemoveDeathListener.
  using CauseSource = std::function<std::string()>;
  int AddCauseSource(CauseSource fn);

  // "rank 1 (pid 1234, node 0) died (no longer running)" for every unacknowledged dead peer; "" if none.
  std::string DeadPeers() const;
  // Ranks found dead (acknowledged or not), ascending.
  std::vector<int> dead_ranks() const;
  const std::vector<int>& watched() const { return watched_; }
  const ProcessIdentity& identity(int rank) const { return ids_[static_cast<size_t>(rank)]; }

 private:
  bool Scan(int64_t now);

  int rank_;
  std::vector<ProcessIdentity> ids_;  // [world]
  std::vector<int> watched_;
  std::atomic<int64_t> next_scan_{0};  // steady_clock ticks; a scan is due at or after it
  std::atomic<int> unacked_{0};        // dead and not acknowledged; raised after state_ is written
  std::atomic<bool> reported_{false};  // the first PeerFailure logged it
  mutable std::mutex mu_;              // guards the three below
  std::vector<ProcessState> state_;    // [world] kAlive until a scan saw otherwise
  std::vector<uint8_t> acked_;         // [world]
  std::vector<uint8_t> reporting_;     // [world] a scan found it dead (its listeners may still run)
  std::mutex listen_mu_;  // guards listeners_ and causes_; held while they run (Remove waits for them)
  std::vector<std::pair<int, DeathListener>> listeners_;
  std::vector<std::pair<int, CauseSource>> causes_;
  int next_listener_ = 0;
};

}  // namespace epx
