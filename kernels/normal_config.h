// kernels/normal_config.h: configuration of the normal (high-throughput) dispatch/combine kernels, the
// byte layout of their messages, and how much symmetric heap they need.
//
// Terms: R ranks on NN = R/L logical nodes of L local ranks; C channels (one worker thread each).
// Every ring is a bounded credit ring (kernels/ring.h) of fixed-size slots in the RECEIVER's heap:
//   node dispatch ring   (channel c, forwarder local g -> local h)            S_n slots, in h's heap
//   node combine ring    (channel c, local h -> forwarder local g, src node a) S_n slots, in g's heap
//   RDMA dispatch ring   (channel c, (a,g) -> (b,g)), + a staging copy in the sender's heap   S_r slots
//   RDMA combine ring    (channel c, (b,g) -> (a,g)), + a staging copy in the sender's heap   S_r slots
// The node combine ring is split per source node so that forwarders reduce each source node's tokens
// independently (a shared ring would let one slow source node block the others: see normal_combine.cc).
//
// Memory per rank (NormalHeapBytes computes exactly this, plus <= 8 KiB of alignment):
//   slot   = align64(max(dispatch message, combine message)) at (max_hidden, max_topk, BF16), where
//            dispatch message = align64(16 + 4L) + align16(2H) + align16(8K) + 4K   (layouts below)
//            combine message  = align16(2H) + 4K
//   rings  = C * L * S_n * slot                       node dispatch
//          + C * L * NN * S_n * slot                  node combine
//          + [NN > 1] 4 * C * NN * S_r * slot         RDMA dispatch/combine, receive + staging
//   words  = 64 * 2 * C * L * (1 + NN)                shm head/tail words, one cache line each
//          + [NN > 1] 64 * (4 * C * NN + 1)           RDMA counters
//   counts = row * (2 * R + 2 * NN * (L + 1) * (L + 1)) + 2 * L * (64 + row * (L + 1)),
//            row = align64(16 + 4C + 4 * max_local_experts)
//            (count tables, RDMA inboxes (one per source) and outboxes, relay blocks; two parities each)
//   zero-copy inputs (max_zero_copy_tokens = Z > 0): align4096(Z * 2H) dispatch x
//          + align4096(R * Z * 2H) combine y (a rank receives at most R * Z rows)
// e.g. H=7168, K=8, L=4, C=2, S_n=S_r=32, 256 local experts: slot = 14528 B; 1 node: 7.1 MiB;
// 2 nodes: 17.8 MiB.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/status.h"

namespace epx {

inline constexpr int kMaxLocalRanks = 32;  // the local-rank mask of a message is 32 bits
inline constexpr int kMaxNodes = 64;
inline constexpr int kMaxChannels = 64;
inline constexpr int kAutoMaxChannels = 8;

// Tunables of the kernels (EPX_NORMAL_*; see core/tunables.cc).
struct NormalConfig {
  // C: worker threads per rank, each with its own rings to every peer. 0 = auto, resolved by
  // NormalBuffer::Create: the CPUs in the rank's affinity mask (at most kAutoMaxChannels), the minimum
  // over ranks (every rank must lay out the same rings). More channels than cores only adds switching.
  int num_channels = 0;
  int node_slots = 64;  // S_n: slots per node ring
  int node_chunk = 4;   // a node-ring sender publishes its tail at least every this many slots
  int rdma_slots = 64;  // S_r: slots per RDMA ring
  int rdma_chunk = 8;   // an RDMA sender signals at least every this many slots
  // sched_yield polls of an idle channel thread before it starts sleeping (EPX_MAX_SLEEP cap). During
  // a call data arrives within microseconds, and a sleeping receiver stalls the whole ring, so this
  // is much longer than the generic waits' EPX_YIELD_ITERS.
  int idle_yields = 16384;
  static StatusOr<NormalConfig> FromEnv();
  // Invariants (each error names the field and why):
  //  * 1 <= C <= kMaxChannels: channels are threads and RDMA posting contexts (one QP per peer each);
  //    0 (auto) must be resolved first (NormalBuffer::Create does; size hints need a concrete C).
  //  * 2 <= S_n, S_r: a ring needs room for one message in flight while the previous one is read.
  //  * 1 <= chunk <= slots: a sender never waits for more credits than the ring can ever give.
  //  * S_r < 2^16: credits travel as RDMA fetch-adds, which emulated atomics limit to 16-bit adds.
  //  * L <= kMaxLocalRanks (32-bit local mask), NN <= kMaxNodes.
  Status Validate(int num_ranks, int local_size) const;
};

// The largest shapes a buffer is laid out for (DeepEP's hidden_bytes): calls may use smaller ones.
struct NormalLimits {
  int max_hidden = 7168;
  int max_topk = 8;
  int max_local_experts = 256;  // E/R
  // Z: tokens per rank of the zero-copy input buffers (NormalBuffer::DispatchInputBuffer /
  // CombineInputBuffer); 0 = no such buffers. One node only (peers read the rows over shared memory).
  int max_zero_copy_tokens = 0;
  Status Validate() const;
};

enum class TokenDtype : uint8_t { kBf16, kFp8 };  // FP8 = e4m3 bytes + f32 scale per 128 columns
inline size_t DtypeBytes(TokenDtype d) {
  return d == TokenDtype::kBf16 ? 2 : 1;
}

inline constexpr size_t AlignUp(size_t v, size_t a) {
  return (v + a - 1) / a * a;
}

// Byte layout of one dispatch message (a token on its way to its expert ranks):
//   [0, 16)           header: src_rank, src_token, local_mask (bit l: local rank l of the node
//                     wants it), reserved
//   [16, 16 + 4L)     ordinal[l]: the row of this token among src_rank's tokens for local rank l
//   payload_off       H elements (BF16 or FP8 bytes), 64-aligned
//   scales_off        ceil(H/128) f32 (FP8 only)
//   topk_off          K int64 global expert ids (omitted for cached dispatch)
//   weights_off       K f32
// Zero-copy (`pull`): the payload stays in the source's heap (its DispatchInputBuffer) and the message
// carries everything else; the receiver copies the row from the source's heap at the token's index.
struct DispatchMsgLayout {
  bool pull = false;
  uint32_t payload_off = 0, payload_bytes = 0;  // pull: payload_off is unused, payload_bytes is the row
  uint32_t scales_off = 0, scales_bytes = 0;
  uint32_t topk_off = 0, weights_off = 0;
  uint32_t bytes = 0;  // whole message
  int topk = 0;        // 0 when the message carries no top-k
  static DispatchMsgLayout Make(int hidden, int topk, TokenDtype dtype, int local_size, bool pull = false);
};

struct MsgHeader {
  int32_t src_rank;
  int32_t src_token;
  uint32_t local_mask;
  int32_t reserved;  // 0, or kDispatchPull: the payload is in the source's DispatchInputBuffer
};
inline constexpr int32_t kDispatchPull = 0x70756c6c;
static_assert(sizeof(MsgHeader) == 16);
inline int32_t* MsgOrdinals(uint8_t* msg) {
  return reinterpret_cast<int32_t*>(msg + sizeof(MsgHeader));
}
inline const int32_t* MsgOrdinals(const uint8_t* msg) {
  return reinterpret_cast<const int32_t*>(msg + sizeof(MsgHeader));
}

// Byte layout of one combine message (an expert output row, or a node's partial sum, going back):
//   [0, 2H) BF16 row; weights_off: K f32 (omitted when combine has no top-k weights).
// [row: 2H bytes, or with `pull` a u32 row index into the sender's CombineInputBuffer][weights 4K][mode u32]
// The mode word (kCombineRows / kCombineRowRefs) lets a receiver tell a peer that disagrees on zero-copy.
inline constexpr uint32_t kCombineRows = 0x726f7773, kCombineRowRefs = 0x72656673;
struct CombineMsgLayout {
  bool pull = false;
  uint32_t weights_off = 0, mode_off = 0;
  uint32_t bytes = 0;
  int topk = 0;
  static CombineMsgLayout Make(int hidden, int topk, bool pull = false);
};

// Slot size of every ring for these limits.
size_t NormalSlotBytes(const NormalLimits& lim, int local_size);

// Heap bytes a NormalBuffer takes (the formula above), including the allocator's alignment.
StatusOr<size_t> NormalHeapBytes(const NormalConfig& cfg, const NormalLimits& lim, int num_ranks,
                                 int local_size);

}  // namespace epx
