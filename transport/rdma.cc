#include "transport/rdma.h"

#include "core/tunables.h"
#include "transport/context.h"
#include "transport/rdma_shm.h"
#include "transport/verbs/verbs_domain.h"

namespace epx {

StatusOr<RdmaOptions> RdmaOptions::FromEnv() {
  RdmaOptions o;
  EPX_ASSIGN_OR_RETURN(o.kind, TunableStr("EPX_RDMA"));
  EPX_ASSIGN_OR_RETURN(o.connect, TunableStr("EPX_CONNECT"));
  EPX_ASSIGN_OR_RETURN(int64_t qps, TunableInt("EPX_QPS_PER_PEER"));
  o.channels = static_cast<int>(qps);
  EPX_ASSIGN_OR_RETURN(o.timeout_ms, TunableMs("EPX_TIMEOUT"));
  return o;
}

StatusOr<std::unique_ptr<RdmaDomain>> CreateRdmaDomain(Context& ctx, const RdmaOptions& in) {
  RdmaOptions opts = in;
  const Placement& p = ctx.placement();
  if (opts.peers.empty())
    for (int r = 0; r < p.world_size; ++r)
      if (r / p.local_size != p.node) opts.peers.push_back(r);
  for (int r : opts.peers)
    if (r < 0 || r >= p.world_size || r == p.rank)
      return EPX_ERROR(kInvalidArgument, "rdma domain: peer {} is not another rank of 0..{}", r, p.world_size - 1);
  if (opts.channels < 1) return EPX_ERROR(kInvalidArgument, "rdma domain: {} channels (need >= 1)", opts.channels);
  if (opts.counter_off % 8 != 0 || opts.counter_bytes % 8 != 0 ||
      opts.counter_off + opts.counter_bytes > ctx.heap().size())
    return EPX_ERROR(kInvalidArgument, "rdma domain: counter area [{}, +{}) must be 8-byte aligned and inside the heap",
                     opts.counter_off, opts.counter_bytes);

  std::string kind = opts.kind;
  // All ranks must agree, so "auto" is decided by rank 0 and broadcast.
  if (kind == "auto") {
    uint8_t verbs = ctx.rank() == 0 ? VerbsDeviceAvailable() : 0;
    EPX_ASSIGN_OR_RETURN(auto b, ctx.bootstrap().Broadcast("rdma-kind", 0, {&verbs, 1}));
    kind = b.at(0) ? "verbs" : "shm";
  }
  if (kind == "shm") return CreateShmRdmaDomain(ctx, opts);
  if (kind == "verbs") return CreateVerbsDomain(ctx, opts);
  return EPX_ERROR(kInvalidArgument, "EPX_RDMA='{}': expected auto, verbs or shm", kind);
}

}  // namespace epx
