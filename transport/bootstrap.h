// transport/bootstrap.h: TCP rendezvous for setup-time collectives on small byte blobs.
//
// Star topology: rank 0 listens on master_addr:master_port; every other rank connects (retrying
// until the deadline, since rank 0 may start later). Each collective is one round: every rank sends
// (sequence number, phase name, blob) to rank 0, rank 0 checks that all ranks are in the same
// phase, then answers each rank. Used to exchange memory handles, QP numbers and to fence setup
// steps; never on the data path.
//
// Every call has a deadline (EPX_BOOTSTRAP_TIMEOUT). Rank 0 names the missing ranks when it expires
// and forwards the failure to the ranks that did arrive, so all ranks report the same cause:
//   "bootstrap allgather 'heap-fds' (#3): ranks 2,5 did not arrive within 5000 ms"
// A peer that dies closes its socket; that is reported as kPeerFailure naming the rank and phase.
//
// Generations (re-joining after a rank died and was restarted, issue 7): a job may form its bootstrap
// again and again, on the same master port: every rank destroys its Context and creates a new one (the
// restarted process creates its first). Each formation is a generation 1, 2, ... of the job. A process
// remembers, per (job id, rank), the last generation it joined, and its hello asks for the next one; a
// process that never joined one (the first start, or a restarted process) asks for none and joins
// whatever forms. The root forms the generation after its own last one; a fresh root (rank 0 was itself
// restarted) takes the newest any rank asks for. A hello that asks for an older generation comes from a
// stale process (an older incarnation of a rank that was restarted since, or one that missed a
// re-creation): that connection is refused with kFailedPrecondition naming both generations, and the
// root goes on waiting for the rank (the timeout names the refusal). A fresh root that already let in
// ranks of an older generation refuses them once a newer one shows up; a root that is itself behind fails
// the formation. So two generations never mix, and nothing has to be passed around by the caller.
// The root stops listening once everyone joined, so a process that connects while a generation runs
// sees the port closed and retries until the next formation (or its deadline) instead of hanging in a
// backlog nobody accepts from.
// One corner is not told apart: if the root dies while sending the welcomes, the ranks it had not
// welcomed yet still ask for the previous generation and the next formation refuses them as stale.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "core/status.h"
#include "transport/bootstrap_wire.h"
#include "transport/placement.h"

namespace epx {

class Bootstrap {
 public:
  // Connects all ranks of `p`. Blocks until everyone is there or `timeout` passes.
  static StatusOr<std::unique_ptr<Bootstrap>> Create(const Placement& p, std::chrono::milliseconds timeout);
  // Same, with timeout from EPX_BOOTSTRAP_TIMEOUT.
  static StatusOr<std::unique_ptr<Bootstrap>> Create(const Placement& p);
  ~Bootstrap();
  Bootstrap(const Bootstrap&) = delete;
  Bootstrap& operator=(const Bootstrap&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_; }
  // The generation this bootstrap formed (1 for a job's first; see "Generations" above).
  uint64_t generation() const { return generation_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  // Result: world_size blobs of `mine.size()` bytes, rank-ordered. All ranks must pass equal sizes.
  StatusOr<std::vector<uint8_t>> AllGather(std::string_view phase, std::span<const uint8_t> mine);
  // Variable-size all-gather: blob i is what rank i passed.
  StatusOr<std::vector<std::vector<uint8_t>>> AllGatherV(std::string_view phase, std::span<const uint8_t> mine);
  // `data` matters on `root` only; every rank returns root's blob.
  StatusOr<std::vector<uint8_t>> Broadcast(std::string_view phase, int root, std::span<const uint8_t> data);
  Status Barrier(std::string_view phase);

  // Typed convenience for trivially copyable records.
  template <typename T>
  StatusOr<std::vector<T>> AllGatherPod(std::string_view phase, const T& mine) {
    static_assert(std::is_trivially_copyable_v<T>);
    EPX_ASSIGN_OR_RETURN(auto raw, AllGather(phase, {reinterpret_cast<const uint8_t*>(&mine), sizeof(T)}));
    std::vector<T> out(world_);
    EPX_CHECK_OR_RETURN(raw.size() == out.size() * sizeof(T), "all-gather '{}' of {} bytes", phase,
                        raw.size());
    std::memcpy(out.data(), raw.data(), raw.size());
    return out;
  }

 private:
  Bootstrap(int rank, int world, std::chrono::milliseconds timeout) : rank_(rank), world_(world), timeout_(timeout) {}
  using Kind = bootstrap_wire::Kind;
  // One round; returns the blob rank 0 sent back to this rank.
  StatusOr<std::vector<uint8_t>> Round(Kind kind, std::string_view phase, int root, std::span<const uint8_t> mine);
  StatusOr<std::vector<uint8_t>> RootRound(Kind kind, std::string_view phase, int root,
                                           std::span<const uint8_t> mine);

  int rank_;
  int world_;
  std::chrono::milliseconds timeout_;
  uint64_t generation_ = 0;
  uint64_t seq_ = 0;
  int listen_fd_ = -1;
  std::vector<int> fds_;  // rank 0: socket per rank (fds_[0] unused); others: fds_[0] = socket to rank 0
};

}  // namespace epx
