#include "kernels/ll_wire.h"

#include <fmt/format.h>

#include <algorithm>

namespace epx {

void LlEncodeHeader(uint8_t* m, int32_t token, uint32_t shape, std::span<const int64_t> ids, int header_k) {
  const LlWireHeader h{token, shape};
  std::memcpy(m, &h, sizeof(h));
  const int k_call =
      static_cast<int>(std::min<size_t>(ids.size(), static_cast<size_t>(std::max(header_k, 0))));
  for (int k = 0; k < header_k; ++k) {
    // Ids past the call's K are -1: a receiver scans all K_buf of them (kernels/ll_wire.h).
    const int32_t id = k < k_call ? static_cast<int32_t>(ids[static_cast<size_t>(k)]) : -1;
    std::memcpy(m + sizeof(LlWireHeader) + 4 * static_cast<size_t>(k), &id, sizeof(id));
  }
}

namespace ll_wire_internal {

Status HeaderError(std::span<const uint8_t> m, const LlHeaderExpect& x, int64_t expert, int32_t staged) {
  const std::string who =
      fmt::format("low-latency dispatch: rank {} read a message of source rank {}", x.rank, x.source);
  if (x.header_k < 1 || m.size() < LlHeaderIdsBytes(x.header_k))
    return Status(Code::kInternal,
                  fmt::format("{}: {} bytes, a header with {} expert ids takes {}", who, m.size(), x.header_k,
                              LlHeaderIdsBytes(std::max(x.header_k, 1))));
  LlWireHeader h;
  std::memcpy(&h, m.data(), sizeof(h));
  const uint32_t hidden = LlShapeHidden(h.shape), mode = LlShapeMode(h.shape);
  if (h.shape != x.shape) {
    if (mode > kLlMaxMode)
      return Status(Code::kInternal,
                    fmt::format("{}: shape word 0x{:08x} has mode {} (allowed 0..{}: 0 BF16, 1 FP8, 2 FP8 "
                                "round_scale, 3 FP8 UE8M0)",
                                who, h.shape, mode, kLlMaxMode));
    if (hidden < 1 || hidden > static_cast<uint32_t>(x.max_hidden))
      return Status(Code::kInternal,
                    fmt::format("{}: shape word 0x{:08x} has H={} (allowed 1..{}, the buffer's "
                                "hidden)",
                                who, h.shape, hidden, x.max_hidden));
    // A shape any rank may send, but not this call's: the ranks called with different arguments.
    return Status(Code::kInvalidArgument,
                  fmt::format("low-latency dispatch: source rank {} sent H={} mode={}, rank {} expects H={} "
                              "mode={} (mode 0 BF16, 1 FP8, 2 FP8 round_scale, 3 UE8M0; all ranks must agree "
                              "per call)",
                              x.source, hidden, mode, x.rank, LlShapeHidden(x.shape), LlShapeMode(x.shape)));
  }
  if (h.token < 0 || h.token >= x.max_tokens)
    return Status(Code::kInternal, fmt::format("{}: token index {} (allowed 0..{}, T_max {})", who, h.token,
                                               x.max_tokens - 1, x.max_tokens));
  if (staged >= 0 && h.token != staged)
    return Status(Code::kInternal,
                  fmt::format("{}: staged token {} carries token index {} (a source stages token t at "
                              "slot t)",
                              who, staged, h.token));
  std::string ids;
  for (int k = 0; k < x.header_k; ++k) {
    const int32_t id = LlHeaderId(m.data(), k);
    if (id < -1 || id >= x.num_experts)
      return Status(Code::kInternal, fmt::format("{}: token {} has expert id {} in top-k slot {} (allowed "
                                                 "-1..{}, E={})",
                                                 who, h.token, id, k, x.num_experts - 1, x.num_experts));
    ids += fmt::format("{}{}", k ? ", " : "", id);
  }
  return Status(Code::kInternal,
                fmt::format("{}: token {} was sent to expert {} but its header does not select it (expert "
                            "ids [{}])",
                            who, h.token, expert, ids));
}

}  // namespace ll_wire_internal

Status LlCountError(uint64_t value, uint64_t prev, int max_tokens, int rank, int source, int local_expert) {
  if (value <= prev)
    return Status(
        Code::kInternal,
        fmt::format("low-latency dispatch: rank {}: the count of local expert {} from source rank {} "
                    "did not move (value {}, previous {}; each call adds count + 1)",
                    rank, local_expert, source, value, prev));
  return Status(Code::kInternal,
                fmt::format("low-latency dispatch: rank {}: source rank {} announced {} tokens for local "
                            "expert {} (allowed 0..{}, T_max; counter {} after {})",
                            rank, source, value - prev - 1, local_expert, max_tokens, value, prev));
}

Status LlCombineRowError(int32_t first, int32_t slot, int64_t rows, int rank, int peer, int local_expert) {
  return Status(
      Code::kInternal,
      fmt::format("low-latency combine: rank {}: node-local rank {} published first row {} for "
                  "its local expert {}; with this rank's slot {} the row {} is outside 0..{} (R*T_max "
                  "rows per expert)",
                  rank, peer, first, local_expert, slot, static_cast<int64_t>(first) + slot, rows - 1));
}

}  // namespace epx
