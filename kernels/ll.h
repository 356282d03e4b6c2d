// kernels/ll.h: low-latency (decode) dispatch and combine (issue 5), DeepEP's low-latency kernels for
// rank processes. The oracle is kernels/ll_reference.h, sizes and message layouts are kernels/ll_config.h;
// the protocol is described here and the API below follows it. Implementation: ll.cc (setup, validation,
// two-phase bookkeeping), ll_dispatch.cc and ll_combine.cc (the data path).
//
// ---- Buffers ----------------------------------------------------------------------------------------
// LlBuffer::Create(ctx, cfg) allocates, once, LlLayout::heap_bytes of the symmetric heap (the same
// offsets on every rank; T_max, H, K, E, D are checked equal over the bootstrap so a mismatch is an
// error at setup, never a hang) as D buffers b = 0..D-1, each
//   send[b]      staging: dispatch = [T_max] messages, combine = [E_local][R*T_max] output rows
//   recv[b]      dispatch = [local expert e][source s][slot i] messages (slot < T_max),
//                combine  = [token t][top-k slot k] rows
//   counters[b]  cnt[e][s] (dispatch), done[d] (combine: one per destination rank d),
//                released[p] (one per peer p: p has finished reading what this rank sent into b)
// The counters of all buffers are one block inside the RDMA domain's counter area. The LL block is its
// own allocation, so a normal-mode call on the same group touches none of it (the mode switch needs
// no "clean").
//
// Rotation: every LL call (dispatch or combine) takes buffer b = (call index) mod D; all ranks make
// the same sequence of LL calls (as in DeepEP), so they agree on b without talking. Two hazards:
//   * peers' recv[b]: rank s may write call n + D into p.recv[b] only after p's receive phase of call
//     n is done. An implicit argument ("p posted a later call, so it read call n") only holds for D = 2
//     with one call outstanding, so the release is explicit: at the end of its receive phase of call
//     n, p adds 1 to released[b][p] at EVERY peer (off the critical path: usually long done by the
//     time s wraps). Before posting call n + D, s waits until released[b][p] >= uses of b so far, for
//     every p. That makes D calls in flight safe (D = 2 = DeepEP's double buffering; default 3 lets a
//     dispatch and a combine of two micro-batches overlap).
//   * own send[b]: Quiet the channels of call n before staging call n + D into send[b]. Node-local
//     peers also read send[b] (they pull dispatch rows from it, below); the release wait covers that,
//     since a peer releases b only after its receive phase. NextCombineBuffer() waits the same way.
// A call that would wrap onto a buffer whose receive phase has not run on this rank returns
// kFailedPrecondition (the caller forgot a hook): never waits forever, never overwrites.
//
// ---- Counters without cleaning ----------------------------------------------------------------------
// A counter that peers FetchAdd must not be written by its owner (transport/rdma.h), so counters are
// never reset: they are monotonic, and the receiver remembers the value it last consumed (prev[b][e][s]
// in private memory). Dispatch: the source adds count + 1 (count <= T_max, so the add is < 2^16 as
// emulated atomics require: ll_config.h caps T_max); the receiver waits for value > prev, then
// count = value - prev - 1 and prev = value. Combine: each destination d adds 1 to done[d] after its rows
// (every call, even with 0 rows); the source knows how many rows it expects from d (from its own top-k), so a
// flag is enough. One writer per counter: cnt[e][s] is written only by source s, which is either node-local
// (shm CPU atomic, read with AtomicLoad/WaitGE) or remote (RDMA FetchAdd, read with ReadCounter/WaitCounter:
// with emulated atomics the receiver applies the adds while it reads). A counter never mixes the two,
// which rxe forbids. Waits have EPX_TIMEOUT deadlines and name (buffer, expert, source).
//
// ---- Dispatch (send phase) --------------------------------------------------------------------------
// For each token t in order: cast once into send[b][t] (header = t, K, the token's K expert ids;
// payload BF16 or FP8 + scales, kernels/fp8.h), then for k in top-k order with e = idx[t][k] >= 0:
// slot = ord[e]++ where ord[] is a per-call private counter per global expert, so the slot of t is its
// rank among this source's tokens that select e (deterministic: no atomics decide it). One message per
// (token, expert) to a remote dest: Write(send[b][t] -> dest(e).recv[b][e_local][me][slot]) on the RDMA
// domain. A node-local dest gets no message: it pulls the row from send[b][t] itself (one copy instead
// of a put and a copy). After the last token, for every expert e (count may be 0: the receiver
// must still hear "0"): FetchAdd(cnt[b][e_local][me], ord[e] + 1) on the SAME channel/QP as that
// expert's data, so RC ordering makes the data visible no later than the count (for shm: release
// AtomicAdd after the Puts). Channels: worker thread w handles experts e with e % C == w, so each
// (channel, peer) QP carries one expert's data then its count, and posting takes no lock.
// Return here in two-phase mode (handle.recv() runs the receive phase later); otherwise continue.
//
// ---- Dispatch (receive phase): deterministic placement ---------------------------------------------
// For each source s in rank order: wait for cnt[b][e][s] of the local experts e (accumulating per-source
// wait time for the stats); begin(e, s) = sum of counts of sources < s; copy recv[b][e][s][i] (remote s)
// or the i-th staged token of s that selects e (node-local s: a scan of s.send[b] in token order) to
// packed_recv_x[e][begin + i] (payload + scales), src_info = header token, layout_range[e][s] =
// (begin << 32) | count, packed_recv_count[e] = total. Since slots were assigned in token order and
// blocks are placed in source order, the result is exactly ll_reference.h's order. The header's expert
// list gives k (the slot where idx == global e), kept in a private [e][row] table for combine.
//
// ---- Combine ----------------------------------------------------------------------------------------
// Send: every rank first publishes its own top-k weights of this call in its table (node-local peers
// read them) with a release store of weights-ready[b] = the number of combines on b so far. Then row
// (e, r) of y goes to its source s = the layout_range block containing r. Remote s: one Write per row to
// s.recv[b'][t][k] (t = src_info, k from the table above; y staged in send[b'] first unless zero-copy),
// then one FetchAdd(done[b'][me], 1) on the same QP after its rows. Node-local s, one-phase default-mode
// call (y outlives it): this rank waits for s's weights-ready, folds its rows of each of s's tokens t
// into one FP32 partial P(t) (top-k order, kernels/bf16_math.h WeightedPartialF32) in its recv[b']
// partial area [s][t] -- a token with a single row here gets that row staged instead, as below (P would
// be that one term, in twice the bytes) -- and marks kind[b'][s] = partials. Node-local s otherwise
// (two-phase or zero-copy, or s = me): nothing moves: the rows stay in send[b'] (zero-copy: the caller wrote
// them there via NextCombineBuffer(); else one staging copy, except s = me in a one-phase call: y outlives
// the reduction, which reads those rows from y), table[b'][e][s] = begin(e, s) is published and kind[b'][s] =
// rows. Then a release add of done tells s. Each rank picks its way per call; the kind says which.
// No cycle: the wait for s's weights-ready depends only on s starting the same call's send phase, which
// waits for nothing of this call (only for releases of earlier calls).
// Receive on the source: wait done[d] of every rank d (each adds 1 per combine, 0 rows included), then
// out[t] = LlReferenceCombine's grouped sum: per expert rank d in rank order, its terms w[t][k] * row(t, k)
// in top-k order summed from +0 in FP32 (product rounded first: no FMA) -- or d's partial P(t), which is
// bitwise that group's sum (groups of two or more terms) -- and the groups added from +0 in FP32, rounded
// once. row(t, k) is
// recv[b'][t][k] (remote d) or, pulled from node-local d, d.send[b'][e][d.table[b'][e][me] + slot(t, k)]
// with slot(t, k) the rank of t among this rank's tokens for e (recorded at dispatch). `out=` writes into
// the caller's buffer. Why partials: a source then reads one FP32 row per (token, node-local rank)
// instead of that rank's 2-8 BF16 rows, and the expert rank writes 4H instead of staging 2H per row
// (at R = 2, K = 8 about half the bytes; measured in bench/results/README.md).
//
// ---- Masking ----------------------------------------------------------------------------------------
// A masked rank is skipped by this rank's calls: dispatch sends it nothing (its experts receive nothing;
// send_slot of those (t, k) stays -1) and announces it no count; receive phases neither wait for it nor
// read from it (its blocks are empty, layout_range count 0); combine sends it nothing, waits for no
// "done" from it and sums only the rows of live experts (the reference with every expert of the masked
// rank removed from topk_idx); releases skip it. The survivors' results then equal the reference of
// the problem without the masked rank, provided all of them mask it before the same call.
// Two ways in: MaskRank() between calls (the caller decides, e.g. after a failed call), or
// cfg.mask_on_failure: a wait that fails with kPeerFailure/kTimeout masks that peer and the call goes
// on. A dispatch receive phase whose mask changed midway runs again from the counters it consumed
// (prev_cnt is restored; the data stays in recv[b] / the peers' send[b]), so a source that died after
// announcing some experts' counts contributes to none of them. A masked rank's counters here stop
// matching ours as soon as a call skips it, so UnmaskRank() accepts only a rank no call has skipped yet;
// re-admission after that is a new LlBuffer on every rank (collective Create resets all counters).
//
// ---- Atomics fallback, stats, limits ---------------------------------------------------------------
// caps().native_atomics == false needs no special path: the domain emulates FetchAdd with
// write-with-immediate, in order after the data on the same QP. N > T_max: kInvalidArgument before
// anything is posted. Stats: cumulative per-local-expert received pairs, per-source wait ns.
//
// ---- Header word --------------------------------------------------------------------------------------
// The second int32 of a dispatch header is the call's shape: H | mode << 24 (mode 0 BF16, 1 FP8,
// 2 FP8 round_scale, 3 FP8 UE8M0). A receiver whose own call disagrees reports the source rank and
// both shapes instead of decoding garbage (ranks must agree on H and the FP8 options of each call).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "kernels/dtypes.h"
#include "kernels/ll_config.h"
#include "kernels/ll_reference.h"
#include "transport/context.h"

namespace epx {

// One rank's tokens for a low-latency dispatch.
struct LlDispatchInput {
  int num_tokens = 0;                 // N <= T_max (may differ between ranks, may be 0)
  int hidden = 0;                     // H <= the buffer's hidden; equal on all ranks for a call
  std::span<const bf16> x;            // [N, H]
  int topk = 0;                       // K <= the buffer's topk
  std::span<const int64_t> topk_idx;  // [N, K] global expert ids in [-1, E), no expert twice per token
  bool use_fp8 = true;                // FP8 e4m3 payload + scales (kernels/fp8.h), else BF16
  Fp8Options fp8;                     // round_scale / ue8m0 (FP8 only); equal on all ranks
};

// What one rank receives: exactly LlRefDispatch's layout (kernels/ll_reference.h): x [E_local, rows,
// row_bytes], scales [E_local, rows, scale_row_bytes], count [E_local], src_info [E_local, rows]
// (-1 past count), layout_range [E_local, R] = (begin << 32) | count. Rows of x/scales past count[e]
// are unspecified: they are not cleared per call (that would cost more than the transfer). The
// object's memory is reused by later calls.
using LlDispatchOutput = LlRefDispatch;

// The routing of one dispatch, needed by its combine: this rank's top-k (where rows come back to) and,
// per received row, the top-k slot of that row on its source. Valid only with the buffer that made it;
// complete once the dispatch's receive phase ran.
struct LlHandle {
  uint64_t buffer_id = 0;
  int num_tokens = 0, hidden = 0, topk = 0;
  std::vector<int64_t> topk_idx;   // [N, K] copy of this rank's routing
  std::vector<int32_t> send_slot;  // [N, K] row of (t, k) among this rank's rows for that expert (-1: none)
  std::vector<int32_t> count;      // [E_local] received rows per local expert
  std::vector<int64_t> layout_range;  // [E_local, R]
  std::vector<int32_t> src_info;      // [E_local, rows] source token of each row (-1 past count)
  std::vector<uint8_t> src_slot;      // [E_local, rows] top-k slot k of each row on its source
};

// Expert outputs going back: row i of local expert e answers row i of that expert in the dispatch.
struct LlCombineInput {
  std::span<const bf16> y;  // [E_local, R*T_max, H] (rows past count are not read); empty with zero_copy
  bool zero_copy = false;   // the rows were written into NextCombineBuffer() instead
  std::span<const float> topk_weights;  // [N, K] of this rank's tokens (the handle's N and K)
};

struct LlCombineOutput {
  std::vector<bf16> x;  // [N, H] result, unless `out` is set
  std::span<bf16> out;  // `out=`: caller memory of exactly [N, H] elements; empty = use x
};

// A call posted in two-phase mode; Receive(hook) runs its receive phase. The caller keeps that call's
// output object and handle alive and untouched until then.
struct LlHook {
  uint64_t buffer_id = 0;
  uint64_t call = 0;
  bool pending = false;
};

// Cumulative statistics of one LlBuffer.
struct LlStats {
  std::vector<uint64_t> recv_tokens_per_expert;  // [E_local] (token, expert) pairs received
  std::vector<uint64_t> wait_ns_per_source;      // [R] time receive phases spent waiting for each source
  uint64_t dispatches = 0, combines = 0;
};

struct LlState;  // kernels/ll_state.h

// A rank's low-latency engine (DeepEP's Buffer in low-latency mode): D rotating buffers in the
// symmetric heap, an RDMA domain to the ranks of other logical nodes, channel threads. Every call is
// collective: all ranks make the same sequence of LL calls (Dispatch/Combine; that is how they agree
// on each call's buffer without talking). Not thread-safe. At most D - 1 calls may be pending
// (posted, not received) when a call is made, else it fails with kFailedPrecondition.
class LlBuffer {
 public:
  // Collective. cfg.num_ranks is taken from ctx. Every rank must pass the same config (checked at
  // setup: a mismatch fails on every rank naming the field). Allocates LlHeapBytes(cfg) from ctx's
  // heap allocator. channels: worker threads / RDMA posting contexts (0 = EPX_LL_CHANNELS).
  static StatusOr<std::unique_ptr<LlBuffer>> Create(Context& ctx, LowLatencyConfig cfg, int channels = 0);
  ~LlBuffer();

  // Sends every (token, expert) pair to its expert's rank, then receives (fills out and handle).
  // With `hook`, returns once the sends are posted; Receive(hook) does the rest.
  Status Dispatch(const LlDispatchInput& in, LlDispatchOutput* out, LlHandle* handle, LlHook* hook = nullptr);
  // Sends expert outputs back along the handle's routes; this rank reduces what comes back for its
  // tokens (order of kernels/ll_reference.h) into out->out or out->x. With `hook`: two-phase.
  Status Combine(const LlHandle& handle, const LlCombineInput& in, LlCombineOutput* out,
                 LlHook* hook = nullptr);
  // Receive phase of a two-phase call (any order among pending calls). Clears hook->pending.
  Status Receive(LlHook* hook);

  // Rank masking (protocol: "Masking" above). MaskRank: this rank's later calls skip `rank` (not while a
  // call is pending; not itself), and its death (if it died) no longer fails this process's waits.
  // UnmaskRank: only before a call has skipped it, else kFailedPrecondition (re-create the buffer on every
  // rank to re-admit). MaskedRanks: the current mask, ascending.
  Status MaskRank(int rank);
  Status UnmaskRank(int rank);
  std::vector<int> MaskedRanks() const;
  Status ClearMask();  // UnmaskRank of every masked rank

  // Zero-copy combine: the send rows the NEXT LL call (which must be a Combine with zero_copy) reads:
  // [E_local][R*T_max] rows, row i of local expert e at element (e * R*T_max + i) * combine_row_stride().
  // Waits until this buffer's previous use completed locally.
  StatusOr<std::span<bf16>> NextCombineBuffer();
  size_t combine_row_stride() const;

  const LowLatencyConfig& config() const;
  int num_channels() const;
  std::string rdma_kind() const;  // "" with one node, else "shm" or "verbs"
  LlStats stats() const;

 private:
  explicit LlBuffer(std::unique_ptr<LlState> s);
  std::unique_ptr<LlState> s_;
};

}  // namespace epx
