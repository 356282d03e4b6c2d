#include "transport/context.h"

#include "core/fault.h"
#include "core/log.h"
#include "core/tunables.h"

namespace epx {

StatusOr<ContextOptions> ContextOptions::FromEnv() {
  ContextOptions o;
  EPX_ASSIGN_OR_RETURN(o.heap, HeapOptions::FromEnv());
  EPX_ASSIGN_OR_RETURN(o.timeout_ms, TunableMs("EPX_TIMEOUT"));
  EPX_ASSIGN_OR_RETURN(o.bootstrap_timeout_ms, TunableMs("EPX_BOOTSTRAP_TIMEOUT"));
  return o;
}

StatusOr<std::unique_ptr<Context>> Context::Create() {
  EPX_RETURN_IF_ERROR(ValidateTunableEnv());
  EPX_ASSIGN_OR_RETURN(Placement p, PlacementFromEnv());
  EPX_ASSIGN_OR_RETURN(ContextOptions o, ContextOptions::FromEnv());
  return Create(p, o);
}

StatusOr<std::unique_ptr<Context>> Context::Create(const Placement& p, const ContextOptions& o) {
  SetLogRank(p.rank);
  // Before anything that starts threads: the armed point is read without ordering by every thread.
  EPX_RETURN_IF_ERROR(ArmFaultInjection(p.rank, p.world_size, p.restart_count));
  std::unique_ptr<Context> c(new Context(p, o));
  EPX_ASSIGN_OR_RETURN(c->boot_, Bootstrap::Create(p, std::chrono::milliseconds(o.bootstrap_timeout_ms)));
  EPX_ASSIGN_OR_RETURN(c->heap_, SymmetricHeap::Create(o.heap, p.rank, p.world_size));
  c->alloc_ = HeapAllocator(c->heap_->size());
  EPX_RETURN_IF_ERROR(c->heap_->MapHostPeers(*c->boot_, p.job_id));
  for (int l = 0; l < p.local_size; ++l) {
    int r = p.RankOf(p.node, l);
    if (!c->heap_->IsMapped(r))
      return EPX_ERROR(kFailedPrecondition,
                       "rank {} is in logical node {} with rank {} but runs on another host (or network namespace): "
                       "node-local ranks must share a host; check the launcher's ranks-per-node ({})",
                       r, p.node, p.rank, p.local_size);
    c->node_ranks_.push_back(r);
  }
  EPX_ASSIGN_OR_RETURN(c->live_, PeerLiveness::Create(*c->boot_, p.node, c->heap_->host_peers()));
  c->node_ = std::make_unique<ShmTransport>(*c->heap_, c->node_ranks_, ctl::kNodeBarrier, o.timeout_ms);
  c->node_->SetHealth(c->live_.get());
  if (p.rank == 0)
    EPX_INFO("context up: {} ranks, {} nodes x {} local; heap {} MiB {}; generation {}", p.world_size,
             p.num_nodes, p.local_size, c->heap_->size() >> 20, PageKindName(c->heap_->page_kind()),
             c->boot_->generation());
  return c;
}

}  // namespace epx
