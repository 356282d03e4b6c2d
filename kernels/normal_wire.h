// kernels/normal_wire.h: what a normal-mode rank reads that a PEER wrote, apart from the channel loops, so
// that every such decoder is a pure function (fuzz target: tests/fuzz/normal_wire_fuzz.cc; regressions:
// tests/kernels/ll_wire_test.cc):
//   count row       [stamp u64][total i32][shape u32][chan i32 x C][expert i32 x E/R]: what source s sends
//                   this rank in the count exchange (kernels/normal_notify.cc), one per source;
//   node row        the same layout after the L rows of an RDMA inbox block: per channel, the tokens of the
//                   same-index rank of node a that this rank forwards (only chan[] is used);
//   message header  MsgHeader + ordinal[L] of a dispatch message (kernels/normal_config.h), read by a
//                   forwarder from its RDMA ring and by a receiver from its node rings.
// Counts size the outputs and the expected message counts of every ring, so a negative count, a channel
// split that does not add up or a sum past INT32_MAX is rejected before anything is sized by it; a
// message's source and ordinal pick its output row. Errors name the field, the value, the allowed range and
// the source rank. Codes: kInvalidArgument when the ranks called with different shapes (the buffer stays
// usable, kernels/normal.cc relies on it); kInternal for anything no epx rank writes. Errors are returned,
// not logged: the kernel logs them once (internal::MakeError at its site).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "core/status.h"
#include "kernels/normal.h"
#include "kernels/normal_config.h"

namespace epx {

// A count row in the heap (aligned, as laid out by NormalPlan): the writer's view and the stamp word.
struct CountRowRef {
  uint8_t* p;
  int C;
  std::atomic<uint64_t>& stamp() const { return *reinterpret_cast<std::atomic<uint64_t>*>(p); }
  int32_t& total() const { return *reinterpret_cast<int32_t*>(p + 8); }
  uint32_t& shape() const { return *reinterpret_cast<uint32_t*>(p + 12); }
  int32_t* chan() const { return reinterpret_cast<int32_t*>(p + 16); }
  int32_t* expert() const { return reinterpret_cast<int32_t*>(p + 16 + 4 * static_cast<size_t>(C)); }
};
// Bytes of a row's fields (NormalPlan::count_row is this, 64-aligned, for the buffer's max E/R).
inline size_t CountRowBytes(int C, int local_experts) {
  return 16 + 4 * (static_cast<size_t>(C) + static_cast<size_t>(local_experts));
}

// What this rank expects of the count rows of one exchange.
struct CountRowsExpect {
  int rank = 0;           // this rank
  int num_ranks = 1;      // R rows; row s comes from source s
  int channels = 1;       // C
  int local_experts = 1;  // E/R expert counts per row (this call's)
  int max_topk = 1;       // a token adds at most this much to one expert's count
  uint32_t shape = 0;     // this rank's ShapeSignature of the call
};

// Decodes the R rows of `table` (row s at s * stride) into h's receive side: rank_prefix [R + 1],
// recv_channel_prefix [R, C + 1], tokens_per_expert [E/R], num_recv_tokens.
Status DecodeCountRows(std::span<const uint8_t> table, size_t stride, const CountRowsExpect& x,
                       NormalHandle* h);

// What a forwarder expects of the node rows of one exchange.
struct NodeRowsExpect {
  int rank = 0;        // this rank (b, g)
  int node = 0;        // b: its own node's block is not used
  int nodes = 1;       // NN blocks
  int local_size = 1;  // L rows precede the node row of a block
  int channels = 1;    // C
  int blocks = 1;      // K blocks per node: one per source local index (relayed sources, NormalState::via)
};

// Decodes the node rows of `inbox` (block (a, k) at (a * K + k) * (L + 1) * stride: from source (a, k),
// sent by node a's rank with this rank's local index; blocks of sources that send none read zero) into
// h->fwd_prefix [C, NN + 1], summing a node's K blocks. A node row counts tokens with an expert anywhere in
// this node, so per channel it lies between the largest and the sum of the block's L rank rows: a peer
// cannot announce more forwarding than its rows account for.
Status DecodeNodeRows(std::span<const uint8_t> inbox, size_t stride, const NodeRowsExpect& x,
                      NormalHandle* h);

// What a rank expects of the dispatch messages of one ring.
struct DispatchMsgExpect {
  int rank = 0, channel = 0;  // this rank and channel (for errors)
  int num_ranks = 1;          // R
  int local_size = 1;         // L
  int local = 0;              // this rank's local index
  // Exactly one of: the RDMA ring from node `from_node` (the sender is (from_node, local) itself), or the
  // node ring of forwarder `from_local` (sources (a, from_local) of any node a; the mask includes us).
  int from_node = -1;
  int from_local = -1;
  std::span<const int> rank_prefix;  // [R + 1]: rows of each source at this rank (ordinal bound)
  // [R] or empty: the local index of the forwarder on this node of each source (NormalState::via, -1
  // for a masked source). Empty: every source's own local index (no masked ranks).
  std::span<const int8_t> via;
};

// Whether source s may send on the ring the expectation describes (see DispatchMsgExpect).
inline bool FromNodeOk(int s, const DispatchMsgExpect& x) {
  if (s / x.local_size != x.from_node) return false;
  return x.via.empty() ? s % x.local_size == x.local
                       : static_cast<size_t>(s) < x.via.size() && x.via[static_cast<size_t>(s)] == x.local;
}
inline bool FromLocalOk(int s, const DispatchMsgExpect& x) {
  return x.via.empty()
             ? s % x.local_size == x.from_local
             : static_cast<size_t>(s) < x.via.size() && x.via[static_cast<size_t>(s)] == x.from_local;
}

struct DispatchMsgInfo {
  int src_rank = 0;
  int src_token = 0;     // >= 0
  uint32_t mask = 0;     // non-zero, below 1 << L
  int32_t ordinal = -1;  // row among src_rank's rows at this rank; -1 when the mask does not include us
};

namespace normal_wire_internal {
Status DispatchMsgError(std::span<const uint8_t> m, const DispatchMsgExpect& x);
}  // namespace normal_wire_internal

// The header of dispatch message `m` (the slot's bytes: at least sizeof(MsgHeader) + 4L).
inline StatusOr<DispatchMsgInfo> DecodeDispatchMsg(std::span<const uint8_t> m, const DispatchMsgExpect& x) {
  const int L = x.local_size;
  if (L < 1 || L > kMaxLocalRanks || x.local < 0 || x.local >= L ||
      m.size() < sizeof(MsgHeader) + 4 * static_cast<size_t>(L) ||
      x.rank_prefix.size() < static_cast<size_t>(x.num_ranks) + 1) [[unlikely]]
    return normal_wire_internal::DispatchMsgError(m, x);
  MsgHeader h;
  std::memcpy(&h, m.data(), sizeof(h));
  DispatchMsgInfo r{h.src_rank, h.src_token, h.local_mask, -1};
  bool ok = h.local_mask != 0 && (L == 32 || h.local_mask >> L == 0) && h.src_rank >= 0 &&
            h.src_rank < x.num_ranks && h.src_token >= 0;
  if (ok && x.from_node >= 0) ok = FromNodeOk(h.src_rank, x);
  if (ok && x.from_local >= 0) ok = FromLocalOk(h.src_rank, x) && (h.local_mask >> x.local & 1);
  if (ok && (h.local_mask >> x.local & 1)) {
    std::memcpy(&r.ordinal, m.data() + sizeof(MsgHeader) + 4 * static_cast<size_t>(x.local),
                sizeof(r.ordinal));
    const size_t s = static_cast<size_t>(h.src_rank);
    ok = r.ordinal >= 0 && r.ordinal < x.rank_prefix[s + 1] - x.rank_prefix[s];
  }
  if (!ok) [[unlikely]]
    return normal_wire_internal::DispatchMsgError(m, x);
  return r;
}

}  // namespace epx
