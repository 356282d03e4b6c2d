#include "kernels/normal_config.h"

#include <algorithm>

#include "core/tunables.h"
#include "kernels/fp8.h"
#include "kernels/normal_plan.h"

namespace epx {

StatusOr<NormalConfig> NormalConfig::FromEnv() {
  NormalConfig c;
  EPX_ASSIGN_OR_RETURN(int64_t ch, TunableInt("EPX_NORMAL_CHANNELS"));
  EPX_ASSIGN_OR_RETURN(int64_t ns, TunableInt("EPX_NORMAL_NODE_SLOTS"));
  EPX_ASSIGN_OR_RETURN(int64_t nc, TunableInt("EPX_NORMAL_NODE_CHUNK"));
  EPX_ASSIGN_OR_RETURN(int64_t rs, TunableInt("EPX_NORMAL_RDMA_SLOTS"));
  EPX_ASSIGN_OR_RETURN(int64_t rc, TunableInt("EPX_NORMAL_RDMA_CHUNK"));
  EPX_ASSIGN_OR_RETURN(int64_t iy, TunableInt("EPX_NORMAL_YIELD_ITERS"));
  c.num_channels = static_cast<int>(ch);
  c.node_slots = static_cast<int>(ns);
  c.node_chunk = static_cast<int>(nc);
  c.rdma_slots = static_cast<int>(rs);
  c.rdma_chunk = static_cast<int>(rc);
  c.idle_yields = static_cast<int>(iy);
  return c;
}

Status NormalConfig::Validate(int num_ranks, int local_size) const {
  if (num_channels < 1 || num_channels > kMaxChannels)
    return EPX_ERROR(kInvalidArgument, "normal config: num_channels={} not in 1..{}{}", num_channels,
                     kMaxChannels,
                     num_channels == 0 ? " (0 = auto is resolved by NormalBuffer::Create)" : "");
  if (node_slots < 2 || rdma_slots < 2)
    return EPX_ERROR(kInvalidArgument,
                     "normal config: node_slots={} rdma_slots={}: every ring needs at least 2 slots",
                     node_slots, rdma_slots);
  if (rdma_slots >= (1 << 16))
    return EPX_ERROR(
        kInvalidArgument,
        "normal config: rdma_slots={} must be < 65536 (credits are fetch-adds, 16-bit when emulated)",
        rdma_slots);
  if (node_chunk < 1 || node_chunk > node_slots)
    return EPX_ERROR(kInvalidArgument, "normal config: node_chunk={} not in 1..node_slots ({})", node_chunk,
                     node_slots);
  if (rdma_chunk < 1 || rdma_chunk > rdma_slots)
    return EPX_ERROR(kInvalidArgument, "normal config: rdma_chunk={} not in 1..rdma_slots ({})", rdma_chunk,
                     rdma_slots);
  if (idle_yields < 0)
    return EPX_ERROR(kInvalidArgument, "normal config: idle_yields={} must be >= 0", idle_yields);
  if (local_size < 1 || num_ranks < 1 || num_ranks % local_size != 0)
    return EPX_ERROR(kInvalidArgument, "normal config: {} ranks are not whole nodes of {} local ranks",
                     num_ranks, local_size);
  if (local_size > kMaxLocalRanks)
    return EPX_ERROR(kInvalidArgument,
                     "normal config: {} local ranks per node (at most {}: 32-bit local mask)", local_size,
                     kMaxLocalRanks);
  if (num_ranks / local_size > kMaxNodes)
    return EPX_ERROR(kInvalidArgument, "normal config: {} nodes (at most {})", num_ranks / local_size,
                     kMaxNodes);
  return Status::Ok();
}

Status NormalLimits::Validate() const {
  if (max_hidden < 1 || max_topk < 1 || max_local_experts < 1)
    return EPX_ERROR(kInvalidArgument,
                     "normal limits: max_hidden={} max_topk={} max_local_experts={} must be >= 1", max_hidden,
                     max_topk, max_local_experts);
  if (max_zero_copy_tokens < 0 || max_zero_copy_tokens > (1 << 24))
    return EPX_ERROR(kInvalidArgument, "normal limits: max_zero_copy_tokens={} not in 0..2^24", max_zero_copy_tokens);
  if (max_hidden > (1 << 24) || max_topk > 1024 || max_local_experts > (1 << 16))
    return EPX_ERROR(
        kInvalidArgument,
        "normal limits: max_hidden={} (<= 2^24), max_topk={} (<= 1024), max_local_experts={} (<= 65536)",
        max_hidden, max_topk, max_local_experts);
  return Status::Ok();
}

DispatchMsgLayout DispatchMsgLayout::Make(int hidden, int topk, TokenDtype dtype, int local_size, bool pull) {
  DispatchMsgLayout m;
  m.pull = pull;
  m.topk = topk;
  size_t off = AlignUp(sizeof(MsgHeader) + 4 * static_cast<size_t>(local_size), 64);
  m.payload_off = static_cast<uint32_t>(off);
  m.payload_bytes = static_cast<uint32_t>(static_cast<size_t>(hidden) * DtypeBytes(dtype));
  if (!pull) off = AlignUp(off + m.payload_bytes, 16);
  m.scales_off = static_cast<uint32_t>(off);
  m.scales_bytes = dtype == TokenDtype::kFp8 ? static_cast<uint32_t>(4 * Fp8NumBlocks(hidden)) : 0;
  off = AlignUp(off + m.scales_bytes, 16);
  m.topk_off = static_cast<uint32_t>(off);
  off = AlignUp(off + 8 * static_cast<size_t>(topk), 16);
  m.weights_off = static_cast<uint32_t>(off);
  off += 4 * static_cast<size_t>(topk);
  m.bytes = static_cast<uint32_t>(off);
  return m;
}

CombineMsgLayout CombineMsgLayout::Make(int hidden, int topk, bool pull) {
  CombineMsgLayout m;
  m.pull = pull;
  m.topk = topk;
  m.weights_off = static_cast<uint32_t>(pull ? 16 : AlignUp(2 * static_cast<size_t>(hidden), 16));
  m.mode_off = m.weights_off + 4 * static_cast<uint32_t>(topk);
  m.bytes = m.mode_off + 4;
  return m;
}

size_t NormalSlotBytes(const NormalLimits& lim, int local_size) {
  // BF16 is the largest dispatch payload: 2H >= H + 4*ceil(H/128) (the FP8 payload with scales).
  const auto d = DispatchMsgLayout::Make(lim.max_hidden, lim.max_topk, TokenDtype::kBf16, local_size);
  const auto f = DispatchMsgLayout::Make(lim.max_hidden, lim.max_topk, TokenDtype::kFp8, local_size);
  const auto c = CombineMsgLayout::Make(lim.max_hidden, lim.max_topk);
  return AlignUp(std::max<size_t>({d.bytes, f.bytes, c.bytes}), 64);
}

StatusOr<size_t> NormalHeapBytes(const NormalConfig& cfg, const NormalLimits& lim, int num_ranks,
                                 int local_size) {
  EPX_ASSIGN_OR_RETURN(NormalPlan p, NormalPlan::Make(cfg, lim, num_ranks, local_size, 0));
  return p.end - p.begin + 4096;  // + what HeapAllocator may spend aligning the block
}

StatusOr<NormalPlan> NormalPlan::Make(const NormalConfig& cfg, const NormalLimits& lim, int num_ranks,
                                      int local_size, size_t base) {
  EPX_RETURN_IF_ERROR(cfg.Validate(num_ranks, local_size));
  EPX_RETURN_IF_ERROR(lim.Validate());
  NormalPlan p;
  p.cfg = cfg;
  p.lim = lim;
  p.R = num_ranks;
  p.L = local_size;
  p.NN = num_ranks / local_size;
  p.C = cfg.num_channels;
  p.slot = NormalSlotBytes(lim, local_size);
  p.count_row =
      AlignUp(16 + 4 * static_cast<size_t>(p.C) + 4 * static_cast<size_t>(lim.max_local_experts), 64);
  const size_t C = p.C, L = p.L, NN = p.NN, R = p.R;
  size_t off = AlignUp(base, 64);
  p.begin = off;
  p.words_ = off;
  off += 64 * (2 * C * L + 2 * C * L * NN);
  p.counts_ = off;
  off += p.count_row * 2 * R;
  p.inbox_ = off;
  off += p.count_row * (L + 1) * 2 * NN * L;
  p.outbox_ = off;
  off += p.count_row * (L + 1) * 2 * NN;
  p.relay_ = off;
  off += (64 + p.count_row * (L + 1)) * 2 * L;
  p.counters_ = off;
  off += p.counters_bytes();
  off = AlignUp(off, 4096);
  p.nd_ = off;
  off += p.slot * cfg.node_slots * C * L;
  p.nc_ = off;
  off += p.slot * cfg.node_slots * C * L * NN;
  const size_t rdma_ring = NN > 1 ? p.slot * cfg.rdma_slots * C * NN : 0;
  p.rd_recv_ = off;
  off += rdma_ring;
  p.rd_stage_ = off;
  off += rdma_ring;
  p.rc_recv_ = off;
  off += rdma_ring;
  p.rc_stage_ = off;
  off += rdma_ring;
  off = AlignUp(off, 4096);
  p.zc_x_ = off;
  p.zc_x_bytes_ = AlignUp(static_cast<size_t>(lim.max_zero_copy_tokens) * 2 * lim.max_hidden, 4096);
  off += p.zc_x_bytes_;
  p.zc_y_ = off;
  p.zc_y_bytes_ = AlignUp(R * lim.max_zero_copy_tokens * 2 * static_cast<size_t>(lim.max_hidden), 4096);
  off += p.zc_y_bytes_;
  p.end = off;
  return p;
}

}  // namespace epx
