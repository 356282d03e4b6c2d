// kernels/normal.h: the normal (high-throughput) dispatch and combine API. The contract (output order,
// reduction order, determinism, memory) is documented in include/epx/normal.h, the public header that
// includes this one; this file documents each type and call.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/status.h"
#include "kernels/dtypes.h"
#include "kernels/normal_config.h"
#include "transport/context.h"

namespace epx {

// One rank's tokens for Dispatch. Shapes are given explicitly and every span is checked against them.
struct DispatchInput {
  int num_tokens = 0;  // N (may be 0 and may differ between ranks)
  int hidden = 0;      // H (any value <= the buffer's max_hidden; FP8 scales cover ceil(H/128) blocks)
  TokenDtype dtype = TokenDtype::kBf16;
  std::span<const uint8_t> x;           // [N, H] BF16 bit patterns (2 bytes each) or e4m3 bytes
  std::span<const float> x_scales;      // [N, ceil(H/128)] for FP8; empty for BF16
  int num_experts = 0;                  // E, E % R == 0; expert e lives on rank e / (E/R)
  int topk = 0;                         // K
  std::span<const int64_t> topk_idx;    // [N, K] global expert ids, -1 = none. Empty in cached dispatch.
  std::span<const float> topk_weights;  // [N, K] (required with topk_idx). Empty in cached dispatch.
  int expert_alignment = 1;             // tokens_per_expert are rounded up to a multiple of this
  int num_worst_tokens = 0;  // > 0: outputs have exactly this many rows (must be >= M); rows >= M unused
  // x is the start of NormalBuffer::DispatchInputBuffer(): node peers copy the rows from there (one
  // copy per received row instead of two). All ranks must agree per call (checked).
  bool zero_copy = false;
};

// What one rank receives. Rows are ordered by source rank, then source token index.
struct DispatchOutput {
  int num_recv_tokens = 0;  // M: rows that hold tokens
  int num_rows = 0;         // rows allocated: M, or num_worst_tokens
  int hidden = 0;
  TokenDtype dtype = TokenDtype::kBf16;
  std::vector<uint8_t> x;              // [rows, H] elements (BF16 or e4m3)
  std::vector<float> x_scales;         // [rows, ceil(H/128)] (FP8)
  std::vector<int64_t> topk_idx;       // [rows, K] LOCAL expert ids (e - rank*E/R), -1 if not on this rank
  std::vector<float> topk_weights;     // [rows, K] 0 where topk_idx is -1 (empty after cached dispatch)
  std::vector<int32_t> src_idx;        // [rows] source token index (-1 in unused rows)
  std::vector<int> tokens_per_expert;  // [E/R] (row, local expert) pairs, rounded up to expert_alignment
  const bf16* x_bf16() const { return reinterpret_cast<const bf16*>(x.data()); }
  // Unused rows (>= M, worst-case mode): x and scales 0, topk_idx -1, weights 0, src_idx -1.
  // Passing the same object to later calls reuses its memory.
};

// Routing of one Dispatch, needed by Combine and by cached Dispatch. Produced by Dispatch; valid only
// with the buffer that made it. Fields are for the kernels and tests; users treat it as opaque.
struct NormalHandle {
  uint64_t buffer_id = 0;
  int num_ranks = 0, local_size = 0, num_channels = 0, num_experts = 0;
  // Source side (this rank's tokens).
  int num_tokens = 0;
  std::vector<uint8_t> is_token_in_rank;  // [N, R]
  std::vector<int> send_prefix;           // [C, R]: tokens of channels < c bound for rank r
  // Receive side.
  int num_recv_tokens = 0;
  std::vector<int> rank_prefix;          // [R + 1]: first row of each source rank
  std::vector<int> recv_channel_prefix;  // [R, C + 1]: rows of source s before its channel c
  std::vector<int32_t> recv_src_idx;     // [M]
  std::vector<int> tokens_per_expert;    // [E/R], not rounded
  // Forwarder side (several nodes): local masks of the tokens this rank forwarded, per (channel c,
  // source node a) in the source's token order, at [fwd_prefix[c*(NN+1)+a], fwd_prefix[c*(NN+1)+a+1]).
  std::vector<int> fwd_prefix;
  std::vector<uint32_t> fwd_masks;
  // Relay side (several nodes with masked ranks, see MaskRank): tokens of channel c that node peer l
  // relays through this rank, at relay[c * L + l]; empty when it relays for nobody.
  std::vector<int> relay;
  uint64_t mask_epoch = 0;  // the buffer's rank mask this routing was made with
  bool InRank(int t, int r) const { return is_token_in_rank[static_cast<size_t>(t) * num_ranks + r] != 0; }
};

// Expert outputs going back. Row i of y answers row i of the dispatch output that made the handle.
struct CombineInput {
  int hidden = 0;
  std::span<const bf16> y;              // [M, H] (or [num_rows, H]: rows >= M are ignored)
  int topk = 0;                         // K of topk_weights; 0: combine no weights. Same on all ranks.
  std::span<const float> topk_weights;  // [M, K] (a rank with M = 0 passes an empty span and K)
  std::span<const bf16> bias0, bias1;   // [N, H] each, or empty
  // y is the start of NormalBuffer::CombineInputBuffer(): sources reduce straight from the expert rank's
  // heap, nothing is copied into rings. All ranks must agree per call (checked).
  bool zero_copy = false;
};

struct CombineOutput {
  std::vector<bf16> x;              // [N, H]
  std::vector<float> topk_weights;  // [N, K] (empty without input weights)
};

struct NormalState;  // kernels/normal_state.h

// A rank's normal-mode exchange engine (DeepEP's Buffer): heap regions, rings, RDMA domain and
// channel threads, created once. Every call is collective: all ranks of the context make the same
// sequence of calls on their buffers. Calls of one buffer must not overlap.
class NormalBuffer {
 public:
  // Collective; all ranks must pass the same cfg and lim (checked). Resolves cfg.num_channels = 0
  // (auto, see NormalConfig), allocates NormalHeapBytes(cfg, lim, R, L) from ctx.allocator()
  // (deterministic, so the same offsets on every rank), creates the RDMA domain when there are
  // several nodes (kind from EPX_RDMA, one channel per worker thread, peers = same-local-index ranks)
  // and the threads. config() returns the resolved config.
  static StatusOr<std::unique_ptr<NormalBuffer>> Create(Context& ctx, const NormalConfig& cfg,
                                                        const NormalLimits& lim);
  ~NormalBuffer();

  // Exchanges counts, then moves every token to each rank that holds one of its experts. Fills `out`
  // and `handle` (both reused if they hold memory from earlier calls).
  Status Dispatch(const DispatchInput& in, DispatchOutput* out, NormalHandle* handle);
  // Cached dispatch: the routing of `handle` again, for new x (in.topk_idx/weights must be empty,
  // in.num_tokens must equal the handle's). No count exchange; outputs carry no top-k.
  Status Dispatch(const NormalHandle& handle, const DispatchInput& in, DispatchOutput* out);
  // Sends y back along the handle's routes and reduces (order: include/epx/normal.h).
  Status Combine(const NormalHandle& handle, const CombineInput& in, CombineOutput* out);

  // Rank masking: the masked rank takes no part in later calls: tokens routed to its experts
  // are dropped (they reach the other ranks of their top-k as usual), it sends nothing, nobody waits for
  // it; results equal the reference of the problem without it (its tokens gone, its experts' top-k slots
  // -1). Every other rank must mask it before the same call, and the masked rank must make no more calls
  // on this buffer; its death (if it died) no longer fails this process's waits. Between calls only. A handle
  // made before a mask change is refused afterwards. UnmaskRank: only before a call skipped it (re-admission:
  // a new buffer on every rank). Several nodes: RDMA flows between same-index ranks, so a live rank whose
  // same-index rank on node n is masked is RELAYED by a node peer g (the first index after its own with live
  // ranks on both nodes): its tokens for n, their counts and their partials go through g's RDMA ring, after
  // g's own. A mask that leaves a live rank without such a g (e.g. L = 2 with (a, 1) and (n, 0) masked), or
  // that needs one g to relay one rank into two nodes, fails the next call with kUnsupported naming it.
  Status MaskRank(int rank);
  Status UnmaskRank(int rank);
  std::vector<int> MaskedRanks() const;
  Status ClearMask();  // UnmaskRank of every masked rank

  // Zero-copy inputs (one node; limits().max_zero_copy_tokens = Z > 0): write the call's x rows
  // ([N <= Z, H], dense) at the start of DispatchInputBuffer() and set in.zero_copy; write expert outputs
  // y ([M, H] BF16, dense) at the start of CombineInputBuffer() and set in.zero_copy. Such a call returns
  // once every node peer has read the rows (a node barrier), so the buffers may be rewritten right after.
  // Empty spans when Z = 0.
  std::span<uint8_t> DispatchInputBuffer();
  std::span<bf16> CombineInputBuffer();

  const NormalConfig& config() const;
  const NormalLimits& limits() const;
  int num_nodes() const;
  std::string rdma_kind() const;  // "" with one node, else "shm" or "verbs"

 private:
  explicit NormalBuffer(std::unique_ptr<NormalState> s);
  std::unique_ptr<NormalState> s_;
};

}  // namespace epx
