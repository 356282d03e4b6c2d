// kernels/ll_state.h: internals of LlBuffer shared by its files: the per-rank state, heap offsets of
// the D buffers, the pending table of two-phase calls, and the counter helpers that hide whether a
// peer is node-local (shared memory) or remote (RDMA domain).
//
// Files: ll.cc (API, validation, setup, bookkeeping), ll_dispatch.cc, ll_combine.cc (data path).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "core/fault.h"  // EPX_FAULT_POINT hooks of ll*.cc
#include "core/wait.h"
#include "kernels/ll.h"
#include "kernels/worker_pool.h"
#include "transport/rdma.h"

namespace epx {

// What a node-local expert rank leaves for a source in a combine (its Kind entry, kernels/ll.h "Combine").
inline constexpr int32_t kLlLeftRows = 0;      // rows in its send[b], found through the table
inline constexpr int32_t kLlLeftPartials = 1;  // one FP32 partial per token in its recv[b] (Partial)

// Mode byte of the dispatch header's shape word (kernels/ll.h "Header word").
inline uint32_t LlShapeWord(int hidden, bool fp8, const Fp8Options& o) {
  const uint32_t mode = !fp8 ? 0u : o.ue8m0 ? 3u : o.round_scale ? 2u : 1u;
  return static_cast<uint32_t>(hidden) | mode << 24;
}

// A call whose receive phase has not run yet (two-phase) or is running.
struct LlPending {
  enum Kind { kNone, kDispatch, kCombine } kind = kNone;
  uint64_t call = 0;
  // Dispatch.
  LlDispatchOutput* dout = nullptr;
  LlHandle* handle = nullptr;
  uint32_t shape = 0;  // expected header shape word
  LlDispatchOptions dopt;
  // Combine.
  const LlHandle* chandle = nullptr;
  LlCombineOutput* cout = nullptr;
  std::vector<float> weights;    // [N, K] copied at send: the caller's span need not outlive the send phase
  const bf16* self_y = nullptr;  // one-phase default-mode combine: the caller's y (own rows read in place)
  uint64_t done_target = 0;      // done[b][d] value that means "d's rows of this call are here"
};

struct LlState {
  Context& ctx;
  LowLatencyConfig cfg;
  LlLayout lay;
  uint64_t id = 0;
  size_t base = 0;  // heap offset of the LL block
  int R = 1, L = 1, rank = 0, node = 0, El = 1, C = 1;
  int64_t timeout_ms = 60000;
  BackoffPolicy wait_policy;  // node-local waits: fewer spins when ranks share cpus (BackoffPolicy::ForCpus)
  std::unique_ptr<RdmaDomain> rdma;  // several logical nodes only
  std::unique_ptr<WorkerPool> pool;  // C > 1 only; with one channel the caller's thread runs it
  uint64_t next_call = 0;
  std::vector<LlPending> pending;              // [D]
  std::vector<uint64_t> combine_uses;          // [D] combine calls made on each buffer
  std::vector<uint64_t> prev_cnt;              // [D, El, R] last consumed value of each dispatch counter
  std::vector<std::vector<int>> ord;           // [C][E] per-channel slot counters of the call being sent
  std::vector<std::vector<uint64_t>> wait_ns;  // [C][R] per-channel wait time per source
  std::vector<std::vector<float>> acc;         // [C][2 * hidden] combine reduction scratch
  std::vector<std::vector<int32_t>> tk_rows;   // [C][T_max * K] combine pre-reduction: y row of (t, k)
  std::vector<int32_t> kind_of;                // [R] combine receive: what node-local rank d left (kLl*)
  std::vector<std::vector<int>> begin, fill;   // [C][El] dispatch receive: first row / rows placed per expert
  std::vector<uint64_t> recv_tokens;           // [El]
  uint64_t dispatches = 0, combines = 0;
  bool broken = false;  // a call failed midway: peers may hold a part of it
  // Masking (kernels/ll.h "Masking"): masked[r] != 0 -> calls neither send to r nor wait for r.
  // Read and written with atomics: a channel thread may mask a peer while others read the mask.
  std::vector<uint8_t> masked;          // [R]
  std::atomic<uint64_t> mask_epoch{0};  // bumped by every change: a receive phase sees it changed midway
  std::vector<uint64_t> masked_at;      // [R] next_call when r was masked (UnmaskRank's check)
  std::vector<uint64_t> prev_snapshot;  // [El, R] dispatch receive: prev_cnt of its buffer, to redo it

  bool Masked(int r) const { return __atomic_load_n(&masked[static_cast<size_t>(r)], __ATOMIC_ACQUIRE) != 0; }
  // The RDMA domain learns the mask too: its Quiet stops waiting for the rank's QPs and the rank's
  // failure stops failing waits for the others (transport/rdma.h "Masking").
  void SetMasked(int r, bool on) {
    __atomic_store_n(&masked[static_cast<size_t>(r)], static_cast<uint8_t>(on), __ATOMIC_RELEASE);
    if (rdma) rdma->MaskPeer(r, on);
    mask_epoch.fetch_add(1, std::memory_order_acq_rel);
  }
  // A failed wait on `peer` (-1: no single peer, e.g. a Quiet): with cfg.mask_on_failure and a
  // peer-level failure, masks the failed peers and returns Ok (the caller goes on without them);
  // otherwise returns `why`.
  Status MaskOnFailure(int peer, Status why);

  explicit LlState(Context& c) : ctx(c) {}
  uint8_t* heap() const { return ctx.heap().base(); }
  bool Local(int peer) const { return peer / L == node; }
  int D() const { return cfg.depth; }
  int Owner(int64_t expert) const { return static_cast<int>(expert / El); }

  // Heap offsets (identical on every rank).
  size_t Send(int b) const { return base + static_cast<size_t>(b) * (lay.send_bytes + lay.recv_bytes); }
  size_t Recv(int b) const { return Send(b) + lay.send_bytes; }
  size_t CounterBlock() const { return base + static_cast<size_t>(D()) * (lay.send_bytes + lay.recv_bytes); }
  // Combine table of buffer b (kernels/ll_config.h): read by node-local peers.
  size_t TableBase(int b) const { return CounterBlock() + lay.counters_total + b * lay.table_bytes; }
  size_t WeightsReady(int b) const { return TableBase(b); }  // u64: combine calls on b whose weights are out
  size_t Table(int b, int e, int s) const { return TableBase(b) + 8 + 4 * (static_cast<size_t>(e) * R + s); }
  size_t Kind(int b, int s) const { return TableBase(b) + 8 + 4 * (static_cast<size_t>(El) * R + s); }
  size_t Weights(int b) const { return TableBase(b) + 8 + 4 * (static_cast<size_t>(El) * R + R); }
  // FP32 partial of source s's token t, computed by this rank (recv[b]'s partial area).
  size_t Partial(int b, int s, int t) const {
    return Recv(b) + lay.partial_off + (static_cast<size_t>(s) * cfg.max_tokens + t) * lay.partial_bytes;
  }
  size_t Cnt(int b, int e, int s) const {
    return CounterBlock() + b * lay.counter_bytes + 8 * (static_cast<size_t>(e) * R + s);
  }
  size_t Done(int b, int d) const {
    return CounterBlock() + b * lay.counter_bytes + 8 * (static_cast<size_t>(El) * R + d);
  }
  size_t Released(int b, int p) const {
    return CounterBlock() + b * lay.counter_bytes + 8 * (static_cast<size_t>(El) * R + R + p);
  }
  // Dispatch slot i of (local expert e, source s) in recv[b]; combine row (t, k) in recv[b].
  size_t DispatchSlot(int b, int e, int s, int i) const {
    return Recv(b) + ((static_cast<size_t>(e) * R + s) * cfg.max_tokens + i) * lay.dispatch_msg;
  }
  size_t CombineSlot(int b, int t, int k) const {
    return Recv(b) + (static_cast<size_t>(t) * cfg.topk + k) * lay.combine_msg;
  }
  size_t CombineStage(int b, int e, int row) const {
    return Send(b) + (static_cast<size_t>(e) * cfg.rows_per_expert() + row) * lay.combine_msg;
  }

  // One-sided primitives over the right transport for `peer`. Each counter has one writer, which is
  // either node-local (CPU atomics) or remote (RDMA): the two never mix on one word (transport/rdma.h).
  Status Put(int ch, int peer, size_t local_off, size_t remote_off, size_t len) {
    if (Local(peer)) return ctx.node().Put(peer, remote_off, heap() + local_off, len);
    return rdma->Write(ch, peer, local_off, remote_off, len);
  }
  // Put from private memory: node-local peers only (RDMA needs the source in the registered heap).
  Status PutPrivate(int peer, const void* src, size_t remote_off, size_t len) {
    return ctx.node().Put(peer, remote_off, src, len);
  }
  Status Add(int ch, int peer, size_t remote_off, uint64_t v) {
    if (Local(peer)) {
      ctx.node().AtomicAdd(peer, remote_off, v);  // release: orders this thread's earlier Puts before it
      return Status::Ok();
    }
    return rdma->FetchAdd(ch, peer, remote_off, v);  // same QP as the data: RC executes it after the data
  }
  // `in_writer_heap`: the word is in the (node-local) writer's own heap, not in this rank's.
  StatusOr<uint64_t> Read(int writer, size_t off, bool in_writer_heap = false) {
    if (Local(writer))  // acquire: the writer's Puts are visible
      return ctx.node().AtomicLoad(in_writer_heap ? writer : rank, off);
    return rdma->ReadCounter(off);
  }
  // Waits until the counter at `off` (written by `writer`) is >= target, adding the time waited to
  // *waited_ns. Ends early (unlogged kFailedPrecondition) once `writer` is masked by another thread. diag()
  // names what was awaited; it is only evaluated when the first read falls short. Remote counters wait in the
  // RDMA domain, which also probes peers and names a dead one early.
  template <typename Diag>
  StatusOr<uint64_t> WaitGE(int writer, size_t off, uint64_t target, uint64_t* waited_ns, Diag&& diag,
                            bool in_writer_heap = false) {
    const int holder = in_writer_heap ? writer : rank;
    EPX_ASSIGN_OR_RETURN(uint64_t v, Read(writer, off, in_writer_heap));
    if (v >= target) return v;
    const auto t0 = Clock::now();
    if (Local(writer)) {
      const Deadline deadline = Deadline::After(std::chrono::milliseconds(timeout_ms));
      Backoff backoff(wait_policy);
      for (uint32_t i = 0;; ++i) {
        v = ctx.node().AtomicLoad(holder, off);
        if (v >= target) break;
        // Another channel masked the writer (mask_on_failure): this wait is moot (kernels/ll.h "Masking").
        if ((i & 63) == 63 && Masked(writer)) [[unlikely]]
          return Status(Code::kFailedPrecondition, "masked");
        if ((i & 63) == 63 && deadline.Expired())
          return EPX_ERROR(kTimeout, "low-latency: rank {} waited {} ms for rank {}: {} (counter {} < {})",
                           rank, timeout_ms, writer, diag(), v, target);
        // Slow path (the back-off sleeps): a dead peer is named now rather than at the deadline.
        if ((i & 63) == 63 && backoff.sleeping() && ctx.liveness().PeerDead()) [[unlikely]] {
          if ((v = ctx.node().AtomicLoad(holder, off)) >= target) break;  // it published, then exited
          const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
          return ctx.liveness().PeerFailure(
              "a low-latency call", fmt::format("rank {} waited {} ms for rank {}: {} (counter {} < {})",
                                                rank, ms, writer, diag(), v, target));
        }
        backoff.Pause();
      }
    } else {
      EPX_RETURN_IF_ERROR(rdma->WaitCounter(
          off, target, fmt::format("low-latency: rank {} waiting for rank {}: {}", rank, writer, diag()),
          &masked[static_cast<size_t>(writer)], writer));
      EPX_ASSIGN_OR_RETURN(v, rdma->ReadCounter(off));
    }
    *waited_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
    return v;
  }
  Status FlushAll() {
    if (!rdma) return Status::Ok();
    for (int c = 0; c < C; ++c) EPX_RETURN_IF_ERROR(rdma->Flush(c));
    return Status::Ok();
  }
  // With mask_on_failure, a peer that failed under the Quiet (its QP broke) is masked and the Quiet is
  // repeated without it: the data posted to the other peers must still be known to be placed.
  Status QuietAll() {
    if (!rdma) return Status::Ok();
    for (int c = 0; c < C; ++c) {
      for (;;) {
        Status s = rdma->Quiet(c);
        if (s.ok()) break;
        const uint64_t epoch = mask_epoch.load(std::memory_order_acquire);
        EPX_RETURN_IF_ERROR(MaskOnFailure(-1, s));                          // a copy: `s` is returned below
        if (mask_epoch.load(std::memory_order_acquire) == epoch) return s;  // nobody new masked: give up
      }
    }
    return Status::Ok();
  }

  // Runs fn(c) for every channel: on the pool, or inline with one channel (no thread hand-off on the
  // latency path). Returns the lowest channel's error.
  template <typename F>
  Status RunChannels(F&& fn) {
    if (C == 1) return fn(0);
    return pool->Run(fn);
  }
};

// Data path (ll_dispatch.cc, ll_combine.cc). The send phases assume validated inputs, a free buffer
// b = call % D and released peers; the receive phases consume pending[b].
Status LlDispatchSend(LlState& st, const LlDispatchInput& in, int b, int32_t* send_slot);
Status LlDispatchRecv(LlState& st, int b);
// `self_y`: this rank's rows for its own tokens are not staged; the receive phase reads them from there (a
// one-phase call, where y outlives the receive phase).
// `target`: the value of weights-ready / done of this combine on b (the number of combines on b so far,
// this one included).
Status LlCombineSend(LlState& st, const LlHandle& h, const LlCombineInput& in, int b, const bf16* self_y,
                     uint64_t target);
Status LlCombineRecv(LlState& st, int b);

}  // namespace epx
