#include "kernels/ll_config.h"

#include <algorithm>

#include "kernels/normal_config.h"  // AlignUp

namespace epx {

Status LowLatencyConfig::Validate() const {
  if (num_ranks < 1 || num_experts < 1 || num_experts % num_ranks != 0)
    return EPX_ERROR(kInvalidArgument,
                     "low-latency config: num_experts={} must be a positive multiple of num_ranks={}",
                     num_experts, num_ranks);
  if (max_tokens < 1 || max_tokens > kLlMaxTokens)
    return EPX_ERROR(
        kInvalidArgument,
        "low-latency config: max_tokens={} not in 1..{} (counts travel as 16-bit-safe fetch-adds)",
        max_tokens, kLlMaxTokens);
  if (topk < 1 || topk > kLlMaxTopk)
    return EPX_ERROR(kInvalidArgument, "low-latency config: topk={} not in 1..{}", topk, kLlMaxTopk);
  if (hidden < 1 || hidden > (1 << 24))
    return EPX_ERROR(kInvalidArgument, "low-latency config: hidden={} not in 1..2^24", hidden);
  if (depth < 2 || depth > kLlMaxDepth)
    return EPX_ERROR(kInvalidArgument,
                     "low-latency config: depth={} not in 2..{} (one buffer would be overwritten while a "
                     "slow peer still reads it)",
                     depth, kLlMaxDepth);
  if (fp8.ue8m0 && !fp8.round_scale)
    return EPX_ERROR(kInvalidArgument, "low-latency config: ue8m0 needs round_scale");
  if (timeout_ms < 0)
    return EPX_ERROR(kInvalidArgument, "low-latency config: timeout_ms={} < 0 (0 = EPX_TIMEOUT)", timeout_ms);
  if (static_cast<int64_t>(local_experts()) * rows_per_expert() >= (int64_t{1} << 31))
    return EPX_ERROR(kInvalidArgument,
                     "low-latency config: E_local * R * T_max = {} rows does not fit int32 indices",
                     static_cast<int64_t>(local_experts()) * rows_per_expert());
  return Status::Ok();
}

StatusOr<LlLayout> LlLayout::Make(const LowLatencyConfig& cfg) {
  EPX_RETURN_IF_ERROR(cfg.Validate());
  LlLayout l;
  const size_t h = static_cast<size_t>(cfg.hidden), t = static_cast<size_t>(cfg.max_tokens);
  const size_t el = static_cast<size_t>(cfg.local_experts()), r = static_cast<size_t>(cfg.num_ranks);
  const size_t rows = r * t;
  l.header_bytes = AlignUp(8 + 4 * static_cast<size_t>(cfg.topk), 16);
  l.dispatch_msg = AlignUp(
      l.header_bytes + std::max(2 * h, AlignUp(h, 16) + 4 * static_cast<size_t>(Fp8NumBlocks(cfg.hidden))),
      64);
  l.combine_msg = AlignUp(2 * h, 64);
  l.send_bytes = AlignUp(std::max(t * l.dispatch_msg, el * rows * l.combine_msg), 4096);
  l.partial_bytes = AlignUp(4 * h, 64);
  l.partial_off = t * cfg.topk * l.combine_msg;
  l.recv_bytes = AlignUp(std::max(el * rows * l.dispatch_msg, l.partial_off + r * t * l.partial_bytes), 4096);
  l.counter_bytes = AlignUp(8 * (el * r + 2 * r), 64);
  l.counters_total = AlignUp(cfg.depth * l.counter_bytes, 4096);
  l.table_bytes = AlignUp(8 + 4 * el * r + 4 * r + 4 * t * cfg.topk, 64);
  l.tables_total = AlignUp(cfg.depth * l.table_bytes, 4096);
  l.heap_bytes = cfg.depth * (l.send_bytes + l.recv_bytes) + l.counters_total + l.tables_total;
  return l;
}

StatusOr<size_t> LlHeapBytes(const LowLatencyConfig& cfg) {
  EPX_ASSIGN_OR_RETURN(LlLayout l, LlLayout::Make(cfg));
  return l.heap_bytes;
}

}  // namespace epx
