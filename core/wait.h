// core/wait.h: deadlines and the back-off every wait in epx uses.
//
// Tests run 4-16 rank processes (each with worker threads) on 2 cores, so a waiter that spins
// forever starves the very peer it waits for. Every wait loop therefore goes
//   pause (cpu_relax) x spin_iters -> sched_yield x yield_iters -> nanosleep, doubling 1 us .. max_sleep
// and checks a deadline; on expiry it returns kTimeout with a caller-built diagnostic (peer, phase,
// counters). The diagnostic lambda runs only on the error path, so waits allocate nothing.
//
// Dead peers: a wait that depends on other processes may also ask a `WaitHealth` (implemented by
// transport/liveness.h for the ranks of this host) whether one of them died, so that a kill -9 is
// reported as such within a fraction of a second instead of as a bare timeout. It asks only on the
// slow path, once its back-off sleeps: a wait that ends within the spin/yield budget never pays for
// it, and the health object rate-limits its own syscalls.
#pragma once

#include <sched.h>
#include <time.h>

#include <chrono>
#include <cstdint>
#include <string_view>

#include "core/status.h"

namespace epx {

using Clock = std::chrono::steady_clock;

class Deadline {
 public:
  static Deadline After(std::chrono::milliseconds d) { return Deadline(Clock::now() + d); }
  static Deadline Never() { return Deadline(Clock::time_point::max()); }
  bool Expired() const { return Clock::now() >= at_; }
  int64_t RemainingMs() const {
    auto r = std::chrono::duration_cast<std::chrono::milliseconds>(at_ - Clock::now()).count();
    return r < 0 ? 0 : r;
  }
  Clock::time_point at() const { return at_; }

 private:
  explicit Deadline(Clock::time_point at) : at_(at) {}
  Clock::time_point at_;
};

struct BackoffPolicy {
  uint32_t spin_iters = 256;
  uint32_t yield_iters = 64;
  uint32_t max_sleep_us = 1000;
  // EPX_MAX_SLEEP is clamped to 1 us .. this (60 s): doubling a sleep below it never wraps a uint32_t.
  static constexpr uint32_t kMaxSleepCapUs = 60'000'000;
  // From EPX_SPIN_ITERS / EPX_YIELD_ITERS / EPX_MAX_SLEEP (validated by the tunables table), read
  // from the environment now; Default() reads them once.
  static BackoffPolicy FromTunables();
  static const BackoffPolicy& Default();
  // Spins before yielding when the threads of an exchange outnumber the cpus they may run on (ranks
  // share a core): the thread a waiter waits for may be the one its own cpu would run next, so spinning
  // only delays it. 16 instead of 256 at R=4 on 2 cores: -2 .. -8 % per call (bench/results/README.md).
  static constexpr uint32_t kSharedCpuSpinIters = 16;
  // Default(); when `threads_share_cpus` and EPX_SPIN_ITERS is not set, spin_iters at most
  // kSharedCpuSpinIters. Chosen once per buffer at setup (HostThreadsOutnumberCpus,
  // transport/host_topology.h).
  static BackoffPolicy ForCpus(bool threads_share_cpus);
};

class Backoff {
 public:
  explicit Backoff(const BackoffPolicy& p = BackoffPolicy::Default()) : p_(p) {}
  void Pause() {
    if (n_ < p_.spin_iters) {
      ++n_;
      __builtin_ia32_pause();
    } else if (n_ < p_.spin_iters + p_.yield_iters) {
      ++n_;
      sched_yield();
    } else {
      // tv_nsec must stay below 1e9: nanosleep rejects {0, 1e9} with EINVAL without sleeping at all.
      timespec ts{static_cast<time_t>(sleep_us_ / 1000000), static_cast<long>(sleep_us_ % 1000000) * 1000};
      nanosleep(&ts, nullptr);
      if (sleep_us_ < p_.max_sleep_us)
        sleep_us_ = sleep_us_ * 2 > p_.max_sleep_us ? p_.max_sleep_us : sleep_us_ * 2;
    }
  }
  void Reset() { n_ = 0, sleep_us_ = 1; }
  // Past the spin and yield phases: the wait is long, slow-path checks may make syscalls.
  bool sleeping() const { return n_ >= p_.spin_iters + p_.yield_iters; }

 private:
  const BackoffPolicy& p_;
  uint32_t n_ = 0;
  uint32_t sleep_us_ = 1;
};

// What a wait asks, on its slow path, about the processes it waits for (transport/liveness.h).
class WaitHealth {
 public:
  virtual ~WaitHealth() = default;
  // True once a peer is known to be dead. Cheap when called often: implementations rate-limit the
  // syscalls they make to look, so callers may ask on every slow-path poll.
  virtual bool PeerDead() = 0;
  // True once another process reported a peer dead (the verbs domain's death notices from the dead rank's
  // host): a cause, not a symptom, and cheap to ask (it sends nothing), so waits that ask PeerDead() only
  // now and then may ask this on every slow pass, and before other checks (kernels/normal_state.h).
  virtual bool PeerReportedDead() { return false; }
  // The error of a wait that cannot finish because of that: names the dead peer(s), `what` the wait
  // was for (operation, phase) and `waiting` (the wait's own diagnostic: counters, expected vs seen).
  virtual Status PeerFailure(std::string_view what, std::string_view waiting) = 0;
};

// Waits until pred() is true. Deadline checks are amortised (every 64 polls) so the fast path is a load.
// On expiry: kTimeout with "<diag()> after <ms> ms". `diag` returns std::string.
template <typename Pred, typename Diag>
Status WaitUntil(Pred&& pred, const Deadline& deadline, Diag&& diag) {
  Backoff b;
  for (uint32_t i = 0;; ++i) {
    if (pred()) return Status::Ok();
    if ((i & 63) == 63 && deadline.Expired()) {
      if (pred()) return Status::Ok();
      return EPX_ERROR(kTimeout, "{}", diag());
    }
    b.Pause();
  }
}

// Same, and on the slow path asks `health` (may be null) whether a peer died: then, unless pred()
// turned true meanwhile (the peer may have published its word and exited normally), it fails with
// health->PeerFailure(what, diag(ms)). `diag(ms)` (std::string) describes the wait after `ms`
// milliseconds and is also the kTimeout message; it runs only on those error paths. `policy` must outlive
// the call.
template <typename Pred, typename Diag>
Status WaitUntil(Pred&& pred, const Deadline& deadline, Diag&& diag, WaitHealth* health,
                 std::string_view what, const BackoffPolicy& policy = BackoffPolicy::Default()) {
  if (pred()) return Status::Ok();
  const Clock::time_point t0 = Clock::now();  // only once the first poll fell short: the wait is real
  auto waited_ms = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  };
  Backoff b(policy);
  for (uint32_t i = 0;; ++i) {
    if (pred()) return Status::Ok();
    if ((i & 63) == 63) {
      if (deadline.Expired()) {
        if (pred()) return Status::Ok();
        return EPX_ERROR(kTimeout, "{}", diag(waited_ms()));
      }
      if (health != nullptr && b.sleeping() && health->PeerDead()) [[unlikely]] {
        if (pred()) return Status::Ok();
        return health->PeerFailure(what, diag(waited_ms()));
      }
    }
    b.Pause();
  }
}

}  // namespace epx
