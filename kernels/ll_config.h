// kernels/ll_config.h: configuration of the low-latency (decode) dispatch/combine (issue 5), the byte
// layout of its messages, and how much symmetric heap it needs (the size hint).
//
// Terms: R ranks, E experts (E_local = E/R per rank), T_max tokens per rank at most (the same on every
// rank), H hidden, K top-k, D = depth: the number of buffers the calls rotate through. Every call,
// dispatch or combine, takes the next buffer (b = call index mod D, the same on all ranks because all
// ranks make the same sequence of LL calls), so up to D - 1 earlier calls may still be in flight
// (DeepEP has D = 2; see kernels/ll.h for the protocol).
//
// Messages:
//   header     = align16(8 + 4K)     src token (int32), shape word (H | mode << 24), the buffer's K global
//                                    expert ids (int32, -1 = none): the receiver finds the top-k slot k of
//                                    its expert, so combine rows land at [token][k] on the source
//   dispatch   = align64(header + max(2H, align16(H) + 4 * ceil(H/128)))   sized for BF16 or FP8+scales
//   combine    = align64(2H)         one BF16 expert output row
// Memory per rank (LlHeapBytes computes exactly this):
//   rows       = R * T_max                                    (per local expert)
//   send       = max(T_max * dispatch, E_local * rows * combine)
//                dispatch: one staged copy per token, reused for its K targets; combine: the expert
//                outputs, [E_local][rows] (the zero-copy target)
//   partial    = align64(4H)         one FP32 partial sum (combine, kernels/ll.h)
//   recv       = max(E_local * rows * dispatch, T_max * K * combine + R * T_max * partial)
//                dispatch: [local expert][source rank][slot]; combine: [token][top-k slot], then the
//                partials this rank computed for its node-local sources, [source rank][token]
//   counters   = align64(8 * (E_local * R + 2R))              dispatch count per (local expert, source);
//                                                             combine "done" per destination rank;
//                                                             "released" per peer (kernels/ll.h)
//   table      = align64(8 + 4 * E_local * R + 4 * R + 4 * T_max * K)
//                combine, read by node-local peers: "weights ready" (u64, written by this rank), first row
//                of each (local expert, source) in send, what this rank left for each source (rows or
//                partials), this rank's top-k weights [T_max][K] (FP32)
//   heap       = D * (align4096(send) + align4096(recv)) + align4096(D * counters) + align4096(D * table)
// The counters of all buffers are one block so the caller can put it in the RDMA counter area. Size
// does not depend on R for a fixed E (E_local * R = E), as in DeepEP.
// e.g. H=7168, K=8, T_max=128, E=256, D=3: dispatch = 14400 B, combine = 14336 B, send = 448 MiB,
// recv = 450 MiB, heap = 2.63 GiB (DeepEP's two buffers: 1.78 GiB). Scales linearly in T_max and D.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/status.h"
#include "kernels/fp8.h"

namespace epx {

inline constexpr int kLlMaxTopk = 64;
inline constexpr int kLlMaxDepth = 16;
// The dispatch count travels as a fetch-add of (count + 1) (kernels/ll.h), and emulated atomics limit
// adds to < 2^16.
inline constexpr int kLlMaxTokens = (1 << 16) - 2;

struct LowLatencyConfig {
  int max_tokens = 128;   // T_max: agreed by all ranks at setup (a mismatch is an error there)
  int hidden = 7168;      // H: the largest hidden a call may use
  int topk = 8;           // K: the largest top-k a call may use
  int num_experts = 256;  // E
  int num_ranks = 1;      // R
  int depth = 3;          // D: buffers in rotation
  bool use_fp8 = true;    // dispatch payload FP8 by default (a call may override)
  Fp8Options fp8;         // round_scale / ue8m0 defaults of FP8 dispatch
  // A wait on a peer that fails (dead peer, or no progress within EPX_TIMEOUT) masks that peer and the
  // call goes on without it, instead of failing (kernels/ll.h "Masking"). Off: the call fails.
  bool mask_on_failure = false;
  int64_t timeout_ms = 0;  // deadline of each wait of this buffer's calls; 0 = EPX_TIMEOUT (the context's)
  // Invariants (each error names the field and why):
  //  * R >= 1 and E a positive multiple of R: experts are split evenly (expert e on rank e / E_local).
  //  * 1 <= T_max <= kLlMaxTokens: the count signal is a 16-bit-safe fetch-add of count + 1.
  //  * 1 <= K <= kLlMaxTopk: the header carries the token's K expert ids.
  //  * 1 <= H <= 2^24: message offsets are 32-bit.
  //  * 2 <= D <= kLlMaxDepth: with one buffer a call could overwrite slots a slow peer still reads.
  //  * ue8m0 needs round_scale (only the exponent of a power-of-two scale can be kept).
  //  * E_local * R * T_max < 2^31 rows: indices are int32 like DeepEP's src_info.
  Status Validate() const;
  int local_experts() const { return num_experts / num_ranks; }
  int64_t rows_per_expert() const { return static_cast<int64_t>(num_ranks) * max_tokens; }
};

// Message sizes and per-buffer region sizes of a valid config (the formula above).
struct LlLayout {
  size_t header_bytes = 0;    // dispatch header
  size_t dispatch_msg = 0;    // one dispatch slot
  size_t combine_msg = 0;     // one combine slot
  size_t partial_bytes = 0;   // one FP32 partial row (stride of the partial area)
  size_t partial_off = 0;     // the partial area in recv
  size_t send_bytes = 0;      // per buffer, page aligned
  size_t recv_bytes = 0;      // per buffer, page aligned
  size_t counter_bytes = 0;   // per buffer (64-aligned); all D of them form one block
  size_t counters_total = 0;  // align4096(D * counter_bytes)
  size_t table_bytes = 0;     // per buffer: combine table (above; 64-aligned)
  size_t tables_total = 0;    // align4096(D * table_bytes)
  size_t heap_bytes = 0;      // everything
  static StatusOr<LlLayout> Make(const LowLatencyConfig& cfg);
};

// Size hint: heap bytes the LL buffers take for this config (LlLayout::heap_bytes).
StatusOr<size_t> LlHeapBytes(const LowLatencyConfig& cfg);

}  // namespace epx
