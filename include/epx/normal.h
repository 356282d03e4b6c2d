// include/epx/normal.h: normal (high-throughput, prefill/training) dispatch and combine: DeepEP's
// normal kernels for CPU rank processes. Types and calls are declared in kernels/normal.h (included
// here); this header states the contract users rely on.
//
//   auto ctx = epx::Context::Create();                       // one per rank process
//   auto cfg = epx::NormalConfig::FromEnv();                  // EPX_NORMAL_*; channels auto
//   auto buf = epx::NormalBuffer::Create(**ctx, *cfg, epx::NormalLimits{.max_hidden = 7168, .max_topk = 8,
//                                                                      .max_local_experts = 32});
//   epx::DispatchInput in{.num_tokens = N, .hidden = H, .x = bytes_of_x, .num_experts = E,
//                         .topk = K, .topk_idx = idx, .topk_weights = w};
//   epx::DispatchOutput recv;  epx::NormalHandle handle;
//   EPX_RETURN_IF_ERROR((*buf)->Dispatch(in, &recv, &handle));    // collective
//   ... experts turn recv.x into y [M, H] BF16 (pre-multiplied by gate weights if wanted) ...
//   epx::CombineOutput back;
//   EPX_RETURN_IF_ERROR((*buf)->Combine(handle, {.hidden = H, .y = y}, &back));  // back.x: [N, H]
//
// Every call is collective over all ranks of the context, returns epx::Status and never throws.
//
// Semantics
//   * Experts are block-partitioned: E % R == 0 and expert e lives on rank e / (E/R). Ranks form
//     NN = R/L logical nodes of L local ranks (rank = node*L + local).
//   * Dispatch delivers each token to every rank holding at least one of its top-k experts, exactly
//     once per rank. Received rows are ordered by source rank, then source token index, whatever the
//     timing: row = (first row of the source) + (index of the token among the source's tokens for
//     this rank). recv topk_idx is remapped to local expert ids (-1 where not on this rank, weight 0
//     there); tokens_per_expert counts (row, local expert slot) pairs, rounded up to
//     expert_alignment. FP8 payload and scales are moved bitwise; BF16 H need not be a multiple of 128.
//   * num_worst_tokens > 0: outputs have exactly that many rows; the first M are identical to exact
//     mode; the rest have topk_idx -1, weight 0, src_idx -1, zero x/scales. A rank that receives more
//     than num_worst_tokens fails the call (and the buffer).
//   * Cached dispatch (Dispatch(handle, in, out)): the same routing, no count exchange, no top-k.
//   * Combine returns, for every source token, the plain sum of the y rows of every rank it went to
//     (plus optional bias0, bias1 [N, H]), rounded to BF16. Order, all in FP32:
//       one node:      acc = 0; acc += bias0; acc += bias1; acc += y[r] for ranks r ascending;
//                      out = bf16(acc)
//       several nodes: for each node n holding the token: part_n = bf16(0 + y[l] for local ranks l
//                      of n ascending)  -- every node's partial is rounded, the source's own too;
//                      acc = 0; acc += bias0; acc += bias1; acc += part_n for nodes n ascending;
//                      out = bf16(acc)
//     (bias terms are skipped when absent). Combined topk_weights follow the same order without
//     rounding. Results are bitwise reproducible; kernels/reference.cc implements the same order.
//   * Zero-copy inputs (one node; NormalLimits::max_zero_copy_tokens > 0): x written into
//     DispatchInputBuffer() and y into CombineInputBuffer() (with zero_copy set in the input) are read by
//     the node peers straight from this rank's heap: ring messages carry only headers / row indices, so
//     each received byte is copied once (dispatch) or read once by the reduction (combine). Same results
//     bitwise; the call ends with a node barrier so the buffers may be rewritten after it returns.
//   * Internode: a token crosses RDMA once per destination node, to the rank with the same local
//     index there, which forwards it over shared memory; combine reduces inside the node first and
//     sends one RDMA message per (token, node) back. RDMA flows only between same-local-index ranks.
//     The RDMA domain kind comes from EPX_RDMA (verbs, or shm emulation).
//
// Resources: NormalHeapBytes(cfg, limits, R, L) bytes of the symmetric heap (formula in
// kernels/normal_config.h), allocated once at Create and kept for the context's lifetime; num_channels
// worker threads; bounded rings, so any N streams through. Tunables: EPX_NORMAL_* (FromEnv).
// Errors name the shape, index, rank and phase; a timeout (EPX_TIMEOUT without progress) names the
// ring and counters that stopped. A failed call leaves the buffer unusable (rings in unknown state).
// A rank that died between calls: the survivors MaskRank it (any rank, also across nodes: its same-index
// peers are relayed by a node peer, NormalBuffer::MaskRank) and their results equal the reference without it.
#pragma once

#include <epx/epx.h>  // IWYU pragma: export

#include "kernels/normal.h"         // IWYU pragma: export
#include "kernels/normal_config.h"  // IWYU pragma: export
