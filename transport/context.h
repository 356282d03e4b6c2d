// transport/context.h: one rank's runtime: placement, bootstrap, symmetric heap, the liveness watch of
// the host's peers, and the node's shared-memory transport, set up in that order. Creation also arms
// fault injection (EPX_FAULT, core/fault.h) on the rank it names.
//
// After a wait failed with kPeerFailure (a peer died), the Context is not usable any more: its peers'
// rings and counters hold an unknown part of a call. Destroy it (and its buffers) and create a new one.
//
//   auto ctx = Context::Create();            // placement from the environment (any launcher)
//   ctx->node().Put(peer, off, src, n);      // NVLink stand-in inside the logical node
//   ctx->node().Barrier("step");
//
// Re-admission of a restarted rank (e.g. `epx-run --respawn`): every rank, the survivors and the
// restarted process alike, destroys its buffers and its Context (the survivors; the restarted process has
// none) and calls Create() again with the same placement. That is collective like the first Create: it
// returns once every rank is back, or fails after EPX_BOOTSTRAP_TIMEOUT naming the ranks that did not
// come. Each such round is a new generation of the job (generation(): 1, 2, ...; transport/bootstrap.h
// "Generations"): the process remembers the last one it joined and the bootstrap refuses a stale process
// (an older incarnation of a restarted rank) instead of mixing it in, so the caller passes nothing.
// A survivor (masking the dead rank meanwhile, kernels/ll.h) can destroy its Context at any time: no
// destructor holds a barrier or waits for a peer to answer (an LlBuffer only quiets the RDMA work it
// posted itself: at once with EPX_RDMA=shm; on verbs, work towards a dead peer completes with an error
// once the QP gives up, within EPX_TIMEOUT), and the heap memfds, their mappings and every socket go with
// it, so generations share nothing but the master port. The new Context's liveness watch (liveness())
// knows the restarted process by its new pid.
#pragma once

#include <memory>
#include <vector>

#include "core/status.h"
#include "transport/bootstrap.h"
#include "transport/heap.h"
#include "transport/liveness.h"
#include "transport/placement.h"
#include "transport/shm.h"

namespace epx {

// Offsets inside the heap's control block [0, kHeapControlBytes); one cache line each so that words
// written by different ranks never share a line.
namespace ctl {
constexpr size_t kNodeBarrier = 0;
constexpr size_t kScratch = 64;  // 8 bytes of test/diagnostic scratch
// Write-with-immediate queue of the shm-emulated RDMA domain (transport/rdma_shm.cc): a bounded
// multi-producer queue of kImmSlots entries that peers enqueue into and this rank drains.
constexpr size_t kImmEnqueue = 4096;
constexpr size_t kImmDequeue = 4096 + 64;
constexpr size_t kImmSlots0 = 4096 + 128;
constexpr size_t kImmSlots = 1024;  // 16 bytes each
// Death notices of the verbs domain (transport/verbs/domain.h "Death notices"): word r != 0 says rank r
// died, written over RDMA by a rank of r's host that saw it die (value: that rank + 1). Ranks past
// kDeathNoticeRanks get no notices (their deaths are still found by probes and QP errors).
constexpr size_t kDeathNotice = kImmSlots0 + 16 * kImmSlots;
constexpr size_t kDeathNoticeRanks = 4096;
constexpr size_t kFirstFree = kDeathNotice + 8 * kDeathNoticeRanks;
static_assert(kFirstFree <= kHeapControlBytes);
}  // namespace ctl

struct ContextOptions {
  HeapOptions heap;
  int64_t timeout_ms = 60000;            // data-path waits (EPX_TIMEOUT)
  int64_t bootstrap_timeout_ms = 60000;  // EPX_BOOTSTRAP_TIMEOUT
  static StatusOr<ContextOptions> FromEnv();
};

class Context {
 public:
  static StatusOr<std::unique_ptr<Context>> Create();  // placement + options from the environment
  static StatusOr<std::unique_ptr<Context>> Create(const Placement& p, const ContextOptions& o);

  const Placement& placement() const { return placement_; }
  int rank() const { return placement_.rank; }
  int world_size() const { return placement_.world_size; }
  // Which formation of the job this Context belongs to: 1 for the first, +1 for each re-creation.
  uint64_t generation() const { return boot_->generation(); }
  Bootstrap& bootstrap() { return *boot_; }
  SymmetricHeap& heap() { return *heap_; }
  HeapAllocator& allocator() { return alloc_; }
  ShmTransport& node() { return *node_; }  // ranks of this logical node
  const std::vector<int>& node_ranks() const { return node_ranks_; }
  const ContextOptions& options() const { return opts_; }
  // Dead-peer detection for the ranks of this host (transport/liveness.h); waits that depend on peers
  // pass it to core/wait.h as their WaitHealth.
  PeerLiveness& liveness() { return *live_; }
  // The same, shared: for objects that may outlive this Context (a buffer in a static destroyed after
  // main() returned) and must still unregister from it.
  std::shared_ptr<PeerLiveness> shared_liveness() const { return live_; }

 private:
  Context(const Placement& p, const ContextOptions& o) : placement_(p), opts_(o), alloc_(0) {}
  Placement placement_;
  ContextOptions opts_;
  std::unique_ptr<Bootstrap> boot_;
  std::unique_ptr<SymmetricHeap> heap_;
  std::shared_ptr<PeerLiveness> live_;
  HeapAllocator alloc_;
  std::unique_ptr<ShmTransport> node_;
  std::vector<int> node_ranks_;
};

}  // namespace epx
