// include/epx/low_latency.h: low-latency (decode) dispatch and combine: DeepEP's low-latency kernels
// for CPU rank processes. Types and calls are declared in kernels/ll.h (included here, with the wire
// protocol); this header states the contract users rely on.
//
//   auto ctx = epx::Context::Create();
//   epx::LowLatencyConfig cfg{.max_tokens = 128, .hidden = 7168, .topk = 8, .num_experts = 64};
//   auto bytes = epx::LlHeapBytes(cfg);                        // size hint: EPX_HEAP_SIZE must cover it
//   auto buf = epx::LlBuffer::Create(**ctx, cfg);              // collective, config checked on all ranks
//   epx::LlDispatchOutput recv;  epx::LlHandle handle;  epx::LlHook hook;
//   buf->Dispatch({.num_tokens = N, .hidden = H, .x = x, .topk = K, .topk_idx = idx}, &recv, &handle, &hook);
//   ... overlap: compute something else while the sends are in flight ...
//   buf->Receive(&hook);                                       // recv.x [E_local, R*T_max, H] FP8 + scales
//   ... experts compute y [E_local, R*T_max, H] BF16 (or write it into buf->NextCombineBuffer()) ...
//   epx::LlCombineOutput back;
//   buf->Combine(handle, {.y = y, .topk_weights = w}, &back);  // back.x [N, H] = sum_k w * y (order below)
//
// Semantics
//   * No count exchange before the data: each (token, expert) pair is written straight into the
//     expert's receive slots, followed by one count signal per (expert, source rank) on the same QP
//     (RC order) or after the same thread's shared-memory stores (release order).
//   * Output order inside an expert is deterministic: by source rank, then source token (DeepEP's
//     depends on timing). layout_range gives each source's (begin, count); src_info the token.
//   * FP8: per 128-column block amax (floor 1e-4), e4m3 with saturation, scale = amax/448 (f32);
//     round_scale gives power-of-two scales, UE8M0 keeps the exponent byte (4 per int32).
//   * Combine: out[t] = bf16(sum over idx >= 0 of fp32(w[t,k] * y)) in FP32, grouped by expert rank: each
//     rank's terms in top-k order from +0, then those partial sums in rank order from +0 (so a rank may
//     send one FP32 partial per token instead of its rows). Bitwise reproducible and equal to the serial
//     reference (kernels/ll_reference.h); with all experts on one rank, the plain top-k-order sum.
//   * A one-phase combine waits, before it sends to a node-local source, for that source to enter the
//     same combine (its weights); two-phase and zero-copy sends wait for no peer.
//   * Two-phase: pass an LlHook and the call returns once its sends are posted; Receive(hook) later.
//     `depth` buffers rotate (default 3), so depth - 1 calls may be pending; no clean call is needed
//     between calls or after normal-mode calls (the LL buffers are their own heap block).
//   * N > T_max, bad shapes or expert ids: kInvalidArgument before anything is posted. Every wait has
//     the EPX_TIMEOUT deadline and names the peer, the buffer and the counter.
//   * All ranks make the same sequence of LL calls with the same H and FP8 options per call (a
//     disagreement on H/FP8 is reported by the receiver, naming the source).
//   * A rank that dies: with mask_on_failure the survivors skip it and their results equal the reference
//     without it (kernels/ll.h "Masking"). To take the rank back once its process was restarted (e.g.
//     `epx-run --respawn`), every rank destroys its buffers and Context and creates new ones, the restarted
//     process included (transport/context.h "Re-admission"); results equal the full reference again.
#pragma once

#include "core/status.h"
#include "kernels/ll.h"
#include "transport/context.h"
