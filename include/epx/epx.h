// include/epx/epx.h: the public entry point of epx (expert-parallel exchange).
//
// epx moves MoE tokens to their experts and back (dispatch / combine) between rank processes. The
// GPU model it keeps:
//   GPU                 -> a rank process pinned to the cores of one NUMA node
//   HBM                 -> the rank's symmetric heap (NUMA-bound, hugepage-backed where possible,
//                          mapped by same-node peers, registered with the NIC)
//   NVLink / CUDA IPC   -> same-node peers load/store/atomic on each other's heap (shared memory)
//   NIC + IBGDA         -> ibverbs RC QPs: one-sided write, write-with-immediate, fetch-add
//   SM / warp group     -> worker thread ("channel")
//
// Today's public surface is the rank runtime: create it once per process (placement comes from
// epx-run, torchrun, Open MPI or Slurm variables), then use its node transport and bootstrap.
//
//   auto rt = epx::Runtime::Create();
//   if (!rt.ok()) { fprintf(stderr, "%s\n", rt.status().ToString().c_str()); return 1; }
//   epx::Runtime& r = **rt;
//   r.node().Put(peer, offset, data, bytes);   // into a same-node peer's heap
//   r.node().Barrier("step");
//
// Every call returns epx::Status / epx::StatusOr<T>; nothing throws. Dispatch and combine
// (normal and low-latency kernels) are added on top of this runtime.
//
// A runtime whose peer died is not usable any more. When the dead rank's process is started again (e.g.
// `epx-run --respawn`), every rank destroys its runtime and buffers and calls Runtime::Create() again,
// the restarted process included: that re-admits it (transport/context.h "Re-admission";
// generation() counts these re-creations, and a stale process is refused rather than mixed in).
#pragma once

#include "core/status.h"
#include "transport/context.h"

namespace epx {

inline constexpr int kVersionMajor = 0;
inline constexpr int kVersionMinor = 1;

// The per-process runtime ("one GPU"): placement, bootstrap, symmetric heap, node transport.
using Runtime = Context;

}  // namespace epx
