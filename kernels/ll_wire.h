// kernels/ll_wire.h: what a low-latency receiver reads that a PEER wrote (protocol: kernels/ll.h), apart
// from the data path, so that every such decoder is a pure function (fuzz target:
// tests/fuzz/ll_wire_fuzz.cc; regressions: tests/kernels/ll_wire_test.cc):
//   dispatch header  [token i32][shape u32][K_buf x expert id i32] at the start of every dispatch message,
//                    read from the recv slot (remote source) or from the source's send[b] (node-local);
//   dispatch count   cnt[b][e][s] after source s added count + 1 (the receiver keeps the previous value);
//   combine table    table[b][e][me] in node-local peer d's heap: the first row of this rank's block in
//                    d's local expert e, from where this rank pulls its combine rows.
// K_buf is the buffer's top-k, so that a header means the same thing to every receiver whatever K the
// source's call used: ids past the call's K are -1 (LlEncodeHeader), never stale ids of an earlier call.
//
// A peer's value is used only after it is checked here: a token index >= T_max would address a combine
// slot past the source's recv region, a count > T_max dispatch slots past the source's block, a table
// row outside [0, R*T_max) memory past the peer's send region. Errors name the field, the value, the
// allowed range and the source rank. Codes: kInvalidArgument when the ranks disagree on a call's shape
// (a usage error, as in kernels/ll.h "Header word"); kInternal for a value no epx rank writes.
// The checks are inline (a few compares per message, no allocation); only building an error is out of
// line. Errors are returned, not logged: the kernel logs them once (internal::MakeError at its site).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "core/status.h"

namespace epx {

// The shape word: H | mode << 24 (kernels/ll.h "Header word").
inline constexpr uint32_t kLlMaxMode = 3;  // 0 BF16, 1 FP8, 2 FP8 round_scale, 3 FP8 UE8M0
inline uint32_t LlShapeHidden(uint32_t shape) {
  return shape & 0xffffff;
}
inline uint32_t LlShapeMode(uint32_t shape) {
  return shape >> 24;
}

// Fixed part of a dispatch header; K_buf int32 expert ids follow.
struct LlWireHeader {
  int32_t token;
  uint32_t shape;
};
static_assert(sizeof(LlWireHeader) == 8);
inline size_t LlHeaderIdsBytes(int header_k) {
  return sizeof(LlWireHeader) + 4 * static_cast<size_t>(header_k);
}

// Expert id k of the header at m (unaligned-safe; m holds at least LlHeaderIdsBytes(k + 1) bytes).
inline int32_t LlHeaderId(const uint8_t* m, int k) {
  int32_t id;
  std::memcpy(&id, m + sizeof(LlWireHeader) + 4 * static_cast<size_t>(k), sizeof(id));
  return id;
}

// Writes a header: token, shape, the call's `ids` (K <= header_k) and -1 for the other header_k - K.
void LlEncodeHeader(uint8_t* m, int32_t token, uint32_t shape, std::span<const int64_t> ids, int header_k);

// What a receiver expects of every dispatch header that one source wrote for one call.
struct LlHeaderExpect {
  int rank = 0;         // this rank (the receiver)
  int source = 0;       // the rank that wrote the message
  int max_tokens = 1;   // T_max: token indices are in [0, T_max)
  int max_hidden = 1;   // the buffer's H: a shape's H is in [1, max_hidden]
  int header_k = 1;     // K_buf: expert ids in a header
  int num_experts = 1;  // E: ids are in [-1, E)
  uint32_t shape = 0;   // this rank's shape word of the call
};

struct LlHeader {
  int32_t token = 0;  // in [0, T_max) (== the staging index for a node-local source)
  int slot = 0;       // the top-k slot k whose id is the expected expert, in [0, K_buf)
};

namespace ll_wire_internal {
// Out of line: builds the error of a header that failed LlDecodeHeader's checks.
Status HeaderError(std::span<const uint8_t> m, const LlHeaderExpect& x, int64_t expert, int32_t staged);
}  // namespace ll_wire_internal

// The header of message `m`, which must select global expert `expert`. `staged` >= 0: the message is
// token `staged` of a node-local source's send[b], whose header must carry that token index.
inline StatusOr<LlHeader> LlDecodeHeader(std::span<const uint8_t> m, const LlHeaderExpect& x, int64_t expert,
                                         int32_t staged = -1) {
  if (x.header_k < 1 || m.size() < LlHeaderIdsBytes(x.header_k)) [[unlikely]]
    return ll_wire_internal::HeaderError(m, x, expert, staged);
  LlWireHeader h;
  std::memcpy(&h, m.data(), sizeof(h));
  bool ok = h.shape == x.shape && h.token >= 0 && h.token < x.max_tokens && (staged < 0 || h.token == staged);
  int slot = -1;
  for (int k = 0; k < x.header_k; ++k) {
    const int32_t id = LlHeaderId(m.data(), k);
    ok &= id >= -1 && id < x.num_experts;
    if (slot < 0 && id == expert) slot = k;
  }
  if (!ok || slot < 0) [[unlikely]]
    return ll_wire_internal::HeaderError(m, x, expert, staged);
  return LlHeader{h.token, slot};
}

// Rows source `source` announced for local expert `local_expert` of rank `rank`: the counter moved from
// `prev` to `value` by count + 1, and count <= T_max.
Status LlCountError(uint64_t value, uint64_t prev, int max_tokens, int rank, int source, int local_expert);
inline StatusOr<int> LlDecodeCount(uint64_t value, uint64_t prev, int max_tokens, int rank, int source,
                                   int local_expert) {
  if (value <= prev || value - prev - 1 > static_cast<uint64_t>(max_tokens)) [[unlikely]]
    return LlCountError(value, prev, max_tokens, rank, source, local_expert);
  return static_cast<int>(value - prev - 1);
}

// The send row that answers this rank's (t, k) at node-local peer `peer`: `first` is what the peer
// published in table[b][local_expert][rank], `slot` this rank's own slot of (t, k) for that expert
// (0 <= slot < T_max), `rows` = R * T_max rows per expert. The row is first + slot, in [0, rows).
Status LlCombineRowError(int32_t first, int32_t slot, int64_t rows, int rank, int peer, int local_expert);
inline StatusOr<int64_t> LlDecodeCombineRow(int32_t first, int32_t slot, int64_t rows, int rank, int peer,
                                            int local_expert) {
  const int64_t row = static_cast<int64_t>(first) + slot;
  if (first < 0 || slot < 0 || row >= rows) [[unlikely]]
    return LlCombineRowError(first, slot, rows, rank, peer, local_expert);
  return row;
}

}  // namespace epx
