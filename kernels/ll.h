// kernels/ll.h: low-latency (decode) dispatch and combine (issue 5): DESIGN ONLY, nothing here is
// implemented yet. The oracle is kernels/ll_reference.h, the sizes and message layouts are
// kernels/ll_config.h; this comment is the protocol the data path is to follow.
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
//   * own send[b]: Quiet the channels of call n before staging call n + D into send[b].
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
// (token, expert): Write(send[b][t] -> dest(e).recv[b][e_local][me][slot]) on the RDMA domain, or a
// Put for a node-local dest. After the last token, for every expert e (count may be 0: the receiver
// must still hear "0"): FetchAdd(cnt[b][e_local][me], ord[e] + 1) on the SAME channel/QP as that
// expert's data, so RC ordering makes the data visible no later than the count (for shm: release
// AtomicAdd after the Puts). Channels: worker thread w handles experts e with e % C == w, so each
// (channel, peer) QP carries one expert's data then its count, and posting takes no lock.
// Return here in two-phase mode (handle.recv() runs the receive phase later); otherwise continue.
//
// ---- Dispatch (receive phase): deterministic placement ---------------------------------------------
// For each local expert e: wait for cnt[b][e][s] of every source s (accumulating per-source wait time
// for the stats), then begin(e, s) = sum of counts of sources < s, and copy recv[b][e][s][i] to
// packed_recv_x[e][begin + i] (payload + scales), src_info = header token, layout_range[e][s] =
// (begin << 32) | count, packed_recv_count[e] = total. Since slots were assigned in token order and
// blocks are placed in source order, the result is exactly ll_reference.h's order. The header's expert
// list gives k (the slot where idx == global e), kept in a private [e][row] table for combine.
//
// ---- Combine ----------------------------------------------------------------------------------------
// Send: row (e, r) of y goes to its source s = the layout_range block containing r, at
// s.recv[b'][t][k] (t = src_info, k from the table above), one Write per row, then per destination
// source s one FetchAdd(done[b'][me], 1) on the same QP after its rows. Zero-copy: the caller wrote y
// into send[b'] (NextCombineBuffer()), so only the posts remain. Receive on the source: wait done[d]
// of every destination d it sent tokens to, then out[t] = bf16(sum over k in top-k order,
// idx >= 0, of w[t][k] * recv[b'][t][k]) in FP32 (product rounded first: no FMA), exactly
// LlReferenceCombine; `out=` writes into the caller's buffer.
//
// ---- Atomics fallback, stats, limits ---------------------------------------------------------------
// caps().native_atomics == false needs no special path: the domain emulates FetchAdd with
// write-with-immediate, in order after the data on the same QP. N > T_max: kInvalidArgument before
// anything is posted. Stats: cumulative per-local-expert received pairs, per-source wait ns.
#pragma once

#include "kernels/ll_config.h"
#include "kernels/ll_reference.h"
