// NormalBuffer: setup (heap block, RDMA domain, ring ends, threads), input validation, output
// allocation, and the hand-off of each call to the channel threads.
#include "kernels/normal.h"

#include <sched.h>

#include <algorithm>
#include <cstring>

#include "core/log.h"
#include "kernels/fp8.h"
#include "kernels/layout.h"
#include "kernels/normal_state.h"

namespace epx {
namespace {

std::atomic<uint64_t> g_next_buffer_id{1};

// Ring ends of channel c on rank (b, h); the spec comments in kernels/normal_plan.h say where each
// word lives.
Status BuildRings(NormalState& st, int c, ChannelRings& cr) {
  const NormalPlan& P = st.plan;
  const int L = P.L, NN = P.NN, b = st.node, me = st.rank, h = st.local;
  ShmTransport& shm = st.ctx.node();
  const auto S_n = static_cast<uint32_t>(P.cfg.node_slots), S_r = static_cast<uint32_t>(P.cfg.rdma_slots);
  const auto slot = static_cast<uint32_t>(P.slot);
  cr.nd_send.resize(L);
  cr.nd_recv.resize(L);
  cr.nc_send.resize(L * NN);
  cr.nc_recv.resize(L * NN);
  for (int l = 0; l < L; ++l) {
    const int peer = st.RankOf(b, l);
    cr.nd_send[l].InitShm(shm, {me, peer, P.NdSlots(c, h), S_n, slot, P.NdTail(c, h), P.NdCredit(c, l), 0});
    cr.nd_recv[l].InitShm(shm, {peer, me, P.NdSlots(c, l), S_n, slot, P.NdTail(c, l), P.NdCredit(c, h), 0});
    for (int a = 0; a < NN; ++a) {
      cr.nc_send[l * NN + a].InitShm(
          shm, {me, peer, P.NcSlots(c, h, a), S_n, slot, P.NcTail(c, h, a), P.NcCredit(c, l, a), 0});
      cr.nc_recv[l * NN + a].InitShm(
          shm, {peer, me, P.NcSlots(c, l, a), S_n, slot, P.NcTail(c, l, a), P.NcCredit(c, h, a), 0});
    }
  }
  cr.acc.assign(P.lim.max_hidden, 0.0f);
  cr.own_partial.assign(P.lim.max_hidden, bf16{0});
  if (NN == 1) return Status::Ok();
  cr.rd_send.resize(NN);
  cr.rd_recv.resize(NN);
  cr.rc_send.resize(NN);
  cr.rc_recv.resize(NN);
  RdmaDomain& d = *st.rdma;
  // Counter bases: read by the owner before the creation barrier, i.e. before any peer posts.
  auto base = [&](size_t off) { return d.ReadCounter(off); };
  for (int n = 0; n < NN; ++n) {
    if (n == b) continue;
    const int peer = st.RankOf(n, h);
    EPX_ASSIGN_OR_RETURN(uint64_t rd_credit, base(P.RdCredit(c, n)));
    EPX_ASSIGN_OR_RETURN(uint64_t rd_tail, base(P.RdTail(c, n)));
    EPX_ASSIGN_OR_RETURN(uint64_t rc_credit, base(P.RcCredit(c, n)));
    EPX_ASSIGN_OR_RETURN(uint64_t rc_tail, base(P.RcTail(c, n)));
    cr.rd_send[n].InitRdma(
        d, c, st.heap(),
        {me, peer, P.RdRecv(c, b), S_r, slot, P.RdTail(c, b), P.RdCredit(c, n), P.RdStage(c, n)}, rd_credit);
    cr.rd_recv[n].InitRdma(
        d, c, st.heap(), {peer, me, P.RdRecv(c, n), S_r, slot, P.RdTail(c, n), P.RdCredit(c, b), 0}, rd_tail);
    cr.rc_send[n].InitRdma(
        d, c, st.heap(),
        {me, peer, P.RcRecv(c, b), S_r, slot, P.RcTail(c, b), P.RcCredit(c, n), P.RcStage(c, n)}, rc_credit);
    cr.rc_recv[n].InitRdma(
        d, c, st.heap(), {peer, me, P.RcRecv(c, n), S_r, slot, P.RcTail(c, n), P.RcCredit(c, b), 0}, rc_tail);
  }
  return Status::Ok();
}

Status CheckSize(const char* what, size_t got, size_t want, const char* shape) {
  if (got != want)
    return EPX_ERROR(kInvalidArgument, "{}: {} has {} elements, expected {} = {}", what, shape, got, shape,
                     want);
  return Status::Ok();
}

// Checks x (and scales) of a dispatch input against its shape.
Status CheckTokens(const DispatchInput& in, const NormalLimits& lim, const char* what) {
  if (in.num_tokens < 0) return EPX_ERROR(kInvalidArgument, "{}: num_tokens {} < 0", what, in.num_tokens);
  if (in.hidden < 1 || in.hidden > lim.max_hidden)
    return EPX_ERROR(kInvalidArgument, "{}: hidden {} not in 1..{} (the buffer's max_hidden)", what,
                     in.hidden, lim.max_hidden);
  const size_t n = static_cast<size_t>(in.num_tokens),
               hb = static_cast<size_t>(in.hidden) * DtypeBytes(in.dtype);
  if (in.x.size() != n * hb)
    return EPX_ERROR(kInvalidArgument, "{}: x has {} bytes, expected [N={}, H={}] x {} bytes = {}", what,
                     in.x.size(), in.num_tokens, in.hidden, DtypeBytes(in.dtype), n * hb);
  const size_t want_scales = in.dtype == TokenDtype::kFp8 ? n * Fp8NumBlocks(in.hidden) : 0;
  if (in.x_scales.size() != want_scales)
    return EPX_ERROR(kInvalidArgument, "{}: x_scales has {} floats, expected {} ({})", what,
                     in.x_scales.size(), want_scales,
                     in.dtype == TokenDtype::kFp8 ? "[N, ceil(H/128)] for FP8" : "none for BF16");
  if (in.expert_alignment < 1 || in.num_worst_tokens < 0)
    return EPX_ERROR(kInvalidArgument, "{}: expert_alignment {} must be >= 1 and num_worst_tokens {} >= 0",
                     what, in.expert_alignment, in.num_worst_tokens);
  return Status::Ok();
}

// Sizes the outputs for `rows` rows and marks rows >= M unused.
void PrepareOutput(const DispatchInput& in, int M, int K, bool weights, DispatchOutput* out) {
  const int rows = in.num_worst_tokens > 0 ? in.num_worst_tokens : M;
  const size_t hb = static_cast<size_t>(in.hidden) * DtypeBytes(in.dtype);
  const size_t nb = in.dtype == TokenDtype::kFp8 ? Fp8NumBlocks(in.hidden) : 0;
  out->num_recv_tokens = M;
  out->num_rows = rows;
  out->hidden = in.hidden;
  out->dtype = in.dtype;
  out->x.resize(rows * hb);
  out->x_scales.resize(rows * nb);
  out->topk_idx.resize(static_cast<size_t>(rows) * K);
  out->topk_weights.resize(weights ? static_cast<size_t>(rows) * K : 0);
  out->src_idx.resize(rows);
  std::fill(out->x.begin() + M * hb, out->x.end(), 0);
  std::fill(out->x_scales.begin() + M * nb, out->x_scales.end(), 0.0f);
  std::fill(out->topk_idx.begin() + static_cast<size_t>(M) * K, out->topk_idx.end(), -1);
  if (weights)
    std::fill(out->topk_weights.begin() + static_cast<size_t>(M) * K, out->topk_weights.end(), 0.0f);
  std::fill(out->src_idx.begin() + M, out->src_idx.end(), -1);
}

// Every rank must lay out the same rings: checks that all ranks asked for the same config and
// limits, and resolves num_channels = 0 (auto) to the CPUs this rank may run on, capped at
// kAutoMaxChannels, minimum over ranks. Collective.
StatusOr<NormalConfig> AgreeOnConfig(Context& ctx, const NormalConfig& cfg, const NormalLimits& lim) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  struct Mine {
    int cfg[6], lim[4], cpus;
  } mine{{cfg.num_channels, cfg.node_slots, cfg.node_chunk, cfg.rdma_slots, cfg.rdma_chunk, cfg.idle_yields},
         {lim.max_hidden, lim.max_topk, lim.max_local_experts, lim.max_zero_copy_tokens},
         std::clamp(cpus, 1, kAutoMaxChannels)};
  EPX_ASSIGN_OR_RETURN(auto all, ctx.bootstrap().AllGatherPod("normal-buffer-config", mine));
  NormalConfig out = cfg;
  int min_cpus = mine.cpus;
  for (size_t r = 0; r < all.size(); ++r) {
    if (std::memcmp(all[r].cfg, mine.cfg, sizeof(mine.cfg)) != 0 ||
        std::memcmp(all[r].lim, mine.lim, sizeof(mine.lim)))
      return EPX_ERROR(
          kInvalidArgument,
          "normal buffer: rank {} asked for a different config or limits than rank {} (EPX_NORMAL_* "
          "and NormalLimits must be equal on all ranks)",
          r, ctx.rank());
    min_cpus = std::min(min_cpus, all[r].cpus);
  }
  if (out.num_channels == 0) out.num_channels = min_cpus;
  return out;
}

// A zero-copy call: one node, a buffer with zero-copy inputs, and the rows at the start of the right one.
Status CheckZeroCopy(const NormalState& st, const void* data, size_t bytes, size_t region_off,
                     size_t region_bytes, const char* what, const char* buffer_name) {
  const NormalPlan& P = st.plan;
  if (P.NN > 1)
    return EPX_ERROR(
        kUnsupported,
        "{}: zero_copy needs all ranks on one node (node peers read the rows over shared memory); "
        "this buffer spans {} nodes",
        what, P.NN);
  if (std::find(st.masked.begin(), st.masked.end(), 1) != st.masked.end())
    return EPX_ERROR(kUnsupported, "{}: zero_copy with a masked rank (the call ends with a node barrier)",
                     what);
  if (P.lim.max_zero_copy_tokens == 0)
    return EPX_ERROR(kInvalidArgument,
                     "{}: zero_copy, but the buffer has no zero-copy inputs "
                     "(NormalLimits::max_zero_copy_tokens = 0)",
                     what);
  if (data != st.heap() + region_off && bytes > 0)
    return EPX_ERROR(kInvalidArgument, "{}: zero_copy, but the rows do not start at {}()", what, buffer_name);
  if (bytes > region_bytes)
    return EPX_ERROR(kInvalidArgument,
                     "{}: zero_copy rows take {} bytes, {}() holds {} (max_zero_copy_tokens = {})", what,
                     bytes, buffer_name, region_bytes, P.lim.max_zero_copy_tokens);
  return Status::Ok();
}

// A call may run: the buffer is intact and the handle (if any) is one of its own.
Status CheckUsable(const NormalState& st, const NormalHandle* h, const char* what) {
  if (st.broken) return EPX_ERROR(kFailedPrecondition, "{}: an earlier call on this buffer failed", what);
  if (h && h->buffer_id != st.id)
    return EPX_ERROR(kInvalidArgument, "{}: the handle was not made by this buffer", what);
  if (!st.route_error.empty()) return EPX_ERROR(kUnsupported, "{}: {}", what, st.route_error);
  if (h && h->mask_epoch != st.mask_epoch)
    return EPX_ERROR(
        kFailedPrecondition,
        "{}: the rank mask changed since the handle's dispatch (its routing includes or skips other "
        "ranks): dispatch again",
        what);
  return Status::Ok();
}

Status NodeBarrier(NormalState& st, const char* what) {
  Status s = st.ctx.node().Barrier(what);
  if (!s.ok()) st.broken = true;
  return s;
}

// Runs one call on every channel thread. A failing channel stops the others (job.abort); a failed
// call leaves the buffer unusable, since its rings hold an unknown part of the call.
template <typename Job>
Status RunChannels(NormalState& st, Job& job, Status (*channel)(NormalState&, Job&, int)) {
  ++st.calls;  // a masked rank misses this call (UnmaskRank)
  auto run = [&](int c) {
    Status s = channel(st, job, c);
    if (!s.ok()) job.abort.store(true, std::memory_order_relaxed);
    return s;
  };
  Status s = st.pool->Run(run);
  if (!s.ok()) st.broken = true;
  return s;
}

// The data phase of both dispatch flavours: outputs for the handle's M rows, then the channel threads.
// `record`: the handle to record forwarded masks in (non-cached dispatch, which also carries top-k).
Status RunDispatch(NormalState& st, const DispatchInput& in, const NormalHandle& h, NormalHandle* record,
                   DispatchOutput* out) {
  const int M = h.num_recv_tokens, K = record ? in.topk : 0;
  if (in.num_worst_tokens > 0 && in.num_worst_tokens < M) {
    st.broken = true;  // peers may already be sending: this rank cannot take part any more
    return EPX_ERROR(kInvalidArgument, "normal dispatch: rank {} receives {} tokens > num_worst_tokens {}",
                     st.rank, M, in.num_worst_tokens);
  }
  PrepareOutput(in, M, K, /*weights=*/K > 0, out);
  out->tokens_per_expert = h.tokens_per_expert;
  for (int& c : out->tokens_per_expert)
    c = (c + in.expert_alignment - 1) / in.expert_alignment * in.expert_alignment;
  DispatchJob job;
  job.in = &in;
  job.out = out;
  job.handle = &h;
  job.record = record;
  job.msg = DispatchMsgLayout::Make(in.hidden, K, in.dtype, st.plan.L, in.zero_copy);
  EPX_RETURN_IF_ERROR(RunChannels(st, job, RunDispatchChannel));
  // Zero-copy: peers read this rank's input rows until they are done; the caller may rewrite them only
  // after every node peer has finished receiving.
  if (in.zero_copy) return NodeBarrier(st, "normal zero-copy dispatch");
  return Status::Ok();
}

}  // namespace

void NormalState::UpdateRoutes() {
  const int R = plan.R, L = plan.L, NN = plan.NN;
  via.assign(static_cast<size_t>(R) * NN, -1);
  route_error.clear();
  for (int s = 0; s < R; ++s) {
    if (masked[s]) continue;
    const int a = s / L, l = s % L;
    for (int n = 0; n < NN; ++n) {
      int8_t& v = via[static_cast<size_t>(s) * NN + n];
      // A wholly masked node gets nothing: the direct route is never used.
      if (n == a || NodeMasked(n) || !masked[RankOf(n, l)]) {
        v = static_cast<int8_t>(l);
        continue;
      }
      for (int i = 1; i < L && v < 0; ++i) {
        const int g = (l + i) % L;
        if (!masked[RankOf(a, g)] && !masked[RankOf(n, g)]) v = static_cast<int8_t>(g);
      }
      if (v < 0 && route_error.empty())
        route_error = fmt::format(
            "rank {} (node {}, local {}) has no route into node {}: its same-index rank {} is masked and no "
            "other local index has a live rank on both nodes to relay through (RDMA flows between "
            "same-index ranks only); mask fewer ranks, or whole nodes",
            s, a, l, n, RankOf(n, l));
      // The relay hands the partials back over one ring (node dispatch ring g -> l): one node per relay.
      for (int m = 0; m < n && v >= 0 && v != l && route_error.empty(); ++m)
        if (via[static_cast<size_t>(s) * NN + m] == v)
          route_error = fmt::format(
              "rank {} (node {}, local {}) would be relayed by local rank {} into both node {} and node {} "
              "(their ranks of local index {} are masked): a relay serves one node per rank; mask fewer "
              "ranks, or whole nodes",
              s, a, l, v, m, n, l);
    }
  }
  via_here.assign(R, -1);
  for (int s = 0; s < R; ++s) via_here[s] = via[static_cast<size_t>(s) * NN + node];
}

NormalBuffer::NormalBuffer(std::unique_ptr<NormalState> s) : s_(std::move(s)) {}
NormalBuffer::~NormalBuffer() = default;

Status NormalBuffer::MaskRank(int rank) {
  NormalState& st = *s_;
  const NormalPlan& P = st.plan;
  if (rank < 0 || rank >= P.R)
    return EPX_ERROR(kInvalidArgument, "normal mask: rank {} not in 0..{}", rank, P.R - 1);
  if (rank == st.rank) return EPX_ERROR(kInvalidArgument, "normal mask: rank {} cannot mask itself", rank);
  if (!st.masked[rank]) {
    st.masked[rank] = 1;
    st.masked_at[rank] = st.calls;
    ++st.mask_epoch;
    // The RDMA domain: no wait, flush or probe is for it any more if it is our peer (same index on another
    // node), and its death notice (any rank: transport/verbs death notices) fails nothing (transport/rdma.h).
    if (st.rdma) st.rdma->MaskPeer(rank, true);
    st.UpdateRoutes();
    // Its death (if it died) no longer fails this process's waits: masking a dead rank is the point. The
    // Context's liveness watch is shared: an UnmaskRank does not undo this (a later death of the rank is
    // then found by the deadline, with the usual diagnostic, instead of the process scan).
    st.ctx.liveness().Acknowledge(rank);
  }
  return Status::Ok();
}

Status NormalBuffer::UnmaskRank(int rank) {
  NormalState& st = *s_;
  if (rank < 0 || rank >= st.plan.R)
    return EPX_ERROR(kInvalidArgument, "normal unmask: rank {} not in 0..{}", rank, st.plan.R - 1);
  if (!st.masked[rank]) return Status::Ok();
  if (st.calls != st.masked_at[rank])
    return EPX_ERROR(
        kFailedPrecondition,
        "normal unmask: rank {} was skipped by {} call(s) of this buffer, so its rings and count "
        "tables are out of step: re-admit it by creating the NormalBuffer again on every rank",
        rank, st.calls - st.masked_at[rank]);
  st.masked[rank] = 0;
  ++st.mask_epoch;
  if (st.rdma) st.rdma->MaskPeer(rank, false);
  st.UpdateRoutes();
  return Status::Ok();
}

Status NormalBuffer::ClearMask() {
  for (int r : MaskedRanks()) EPX_RETURN_IF_ERROR(UnmaskRank(r));
  return Status::Ok();
}

std::vector<int> NormalBuffer::MaskedRanks() const {
  std::vector<int> out;
  for (int r = 0; r < s_->plan.R; ++r)
    if (s_->masked[r]) out.push_back(r);
  return out;
}

std::span<uint8_t> NormalBuffer::DispatchInputBuffer() {
  return {s_->heap() + s_->plan.ZcX(), s_->plan.ZcXBytes()};
}
std::span<bf16> NormalBuffer::CombineInputBuffer() {
  return {reinterpret_cast<bf16*>(s_->heap() + s_->plan.ZcY()), s_->plan.ZcYBytes() / sizeof(bf16)};
}

const NormalConfig& NormalBuffer::config() const {
  return s_->plan.cfg;
}
const NormalLimits& NormalBuffer::limits() const {
  return s_->plan.lim;
}
int NormalBuffer::num_nodes() const {
  return s_->plan.NN;
}
std::string NormalBuffer::rdma_kind() const {
  return s_->rdma ? s_->rdma->caps().kind : "";
}

StatusOr<std::unique_ptr<NormalBuffer>> NormalBuffer::Create(Context& ctx, const NormalConfig& requested,
                                                             const NormalLimits& lim) {
  EPX_ASSIGN_OR_RETURN(const NormalConfig cfg, AgreeOnConfig(ctx, requested, lim));
  const Placement& pl = ctx.placement();
  auto st = std::make_unique<NormalState>(ctx);
  st->rank = pl.rank;
  st->node = pl.node;
  st->local = pl.local_rank;
  st->timeout_ms = ctx.options().timeout_ms;
  EPX_ASSIGN_OR_RETURN(size_t bytes, NormalHeapBytes(cfg, lim, pl.world_size, pl.local_size));
  auto off_or = ctx.allocator().Allocate(bytes, 4096, "normal dispatch/combine buffer");
  if (!off_or.ok())  // the allocator logged it; add what the buffer is made of and which knobs shrink it
    return std::move(off_or).status().With(fmt::format(
        "normal buffer: {} channels, {}-slot node rings of {} B, {} local ranks, {} nodes (lower "
        "EPX_NORMAL_CHANNELS / EPX_NORMAL_NODE_SLOTS / EPX_NORMAL_RDMA_SLOTS or raise EPX_HEAP_SIZE)",
        cfg.num_channels, cfg.node_slots, NormalSlotBytes(lim, pl.local_size), pl.local_size, pl.num_nodes));
  const size_t off = *off_or;
  EPX_ASSIGN_OR_RETURN(st->plan, NormalPlan::Make(cfg, lim, pl.world_size, pl.local_size, off));
  const NormalPlan& P = st->plan;
  std::memset(st->heap() + P.zero_begin(), 0, P.zero_end() - P.zero_begin());
  if (P.NN > 1) {
    EPX_ASSIGN_OR_RETURN(RdmaOptions ro, RdmaOptions::FromEnv());
    ro.channels = P.C;
    ro.counter_off = P.counters_begin();
    ro.counter_bytes = P.counters_bytes();
    ro.timeout_ms = st->timeout_ms;
    ro.peers.clear();
    for (int n = 0; n < P.NN; ++n)
      if (n != st->node) ro.peers.push_back(st->RankOf(n, st->local));
    EPX_ASSIGN_OR_RETURN(st->rdma, CreateRdmaDomain(ctx, ro));
    EPX_ASSIGN_OR_RETURN(st->notify_target, st->rdma->ReadCounter(P.NotifyCounter()));
  }
  st->channels.resize(P.C);
  for (int c = 0; c < P.C; ++c) EPX_RETURN_IF_ERROR(BuildRings(*st, c, st->channels[c]));
  // Nobody touches a peer's words or counters before every rank has zeroed its own / read its bases.
  EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier("normal-buffer-create"));
  st->pool = std::make_unique<WorkerPool>(P.C);
  st->masked.assign(P.R, 0);
  st->masked_at.assign(P.R, 0);
  st->UpdateRoutes();
  // P.C channel threads per rank: do the host's ranks have a cpu per busy thread? Else waits spin less.
  EPX_ASSIGN_OR_RETURN(st->wait, ChannelWaitPolicy(ctx, "normal-buffer-cpus", P.C));
  st->idle = st->wait;
  st->idle.yield_iters = static_cast<uint32_t>(cfg.idle_yields);
  st->id = g_next_buffer_id.fetch_add(1) ^ (static_cast<uint64_t>(P.begin) << 20);
  if (pl.rank == 0)
    EPX_INFO(
        "normal buffer: {} channels, node ring {} x {} B slots, rdma ring {} slots ({}), {} MiB of heap, "
        "waits spin {} times before yielding",
        P.C, P.cfg.node_slots, P.slot, P.cfg.rdma_slots, st->rdma ? st->rdma->caps().kind : "none",
        bytes >> 20, st->wait.spin_iters);
  return std::unique_ptr<NormalBuffer>(new NormalBuffer(std::move(st)));
}

Status NormalBuffer::Dispatch(const DispatchInput& in, DispatchOutput* out, NormalHandle* handle) {
  NormalState& st = *s_;
  const NormalPlan& P = st.plan;
  EPX_RETURN_IF_ERROR(CheckUsable(st, nullptr, "normal dispatch"));
  EPX_RETURN_IF_ERROR(CheckTokens(in, P.lim, "normal dispatch"));
  if (in.topk < 1 || in.topk > P.lim.max_topk)
    return EPX_ERROR(kInvalidArgument, "normal dispatch: topk {} not in 1..{} (the buffer's max_topk)",
                     in.topk, P.lim.max_topk);
  if (in.num_experts % P.R != 0 || in.num_experts / P.R < 1 || in.num_experts / P.R > P.lim.max_local_experts)
    return EPX_ERROR(
        kInvalidArgument,
        "normal dispatch: {} experts over {} ranks: need E % R == 0 and 1 <= E/R <= {} (max_local_experts)",
        in.num_experts, P.R, P.lim.max_local_experts);
  const size_t nk = static_cast<size_t>(in.num_tokens) * in.topk;
  EPX_RETURN_IF_ERROR(CheckSize("normal dispatch", in.topk_idx.size(), nk, "topk_idx [N, K]"));
  EPX_RETURN_IF_ERROR(CheckSize("normal dispatch", in.topk_weights.size(), nk, "topk_weights [N, K]"));
  if (in.zero_copy)
    EPX_RETURN_IF_ERROR(CheckZeroCopy(st, in.x.data(), in.x.size(), P.ZcX(), P.ZcXBytes(), "normal dispatch",
                                      "DispatchInputBuffer"));
  EPX_ASSIGN_OR_RETURN(DispatchLayout layout, ComputeLayout(in.topk_idx, in.num_tokens, in.topk,
                                                            ExpertPlacement{in.num_experts, P.R, P.L}));
  // Masked ranks get nothing: as if no top-k slot named their experts (the routing, the counts and with
  // them every ring and wait of the call leave them out).
  for (int r = 0; r < P.R; ++r) {
    if (!st.masked[r]) continue;
    for (int t = 0; t < in.num_tokens; ++t) layout.is_token_in_rank[static_cast<size_t>(t) * P.R + r] = 0;
    const int epr = in.num_experts / P.R;
    std::fill_n(layout.tokens_per_expert.begin() + static_cast<ptrdiff_t>(r) * epr, epr, 0);
  }
  NormalHandle& h = *handle;
  h.buffer_id = st.id;
  h.num_ranks = P.R;
  h.local_size = P.L;
  h.num_channels = P.C;
  h.num_experts = in.num_experts;
  h.num_tokens = in.num_tokens;
  h.is_token_in_rank = std::move(layout.is_token_in_rank);
  h.mask_epoch = st.mask_epoch;
  Status s = ExchangeCounts(
      st, layout.tokens_per_expert,
      ShapeSignature(in.hidden, in.dtype, in.topk, in.num_experts) ^ (in.zero_copy ? 0x5a000000u : 0u), &h);
  if (!s.ok()) {
    // A shape mismatch is found by every rank after a complete exchange, before any ring moved: the
    // buffer stays usable. Anything else (a timeout) leaves peers mid-exchange.
    if (s.code() != Code::kInvalidArgument) st.broken = true;
    return s;
  }
  EPX_RETURN_IF_ERROR(RunDispatch(st, in, h, &h, out));
  h.recv_src_idx.assign(out->src_idx.begin(), out->src_idx.begin() + h.num_recv_tokens);
  return Status::Ok();
}

Status NormalBuffer::Dispatch(const NormalHandle& h, const DispatchInput& in, DispatchOutput* out) {
  NormalState& st = *s_;
  const NormalPlan& P = st.plan;
  EPX_RETURN_IF_ERROR(CheckUsable(st, &h, "cached dispatch"));
  EPX_RETURN_IF_ERROR(CheckTokens(in, P.lim, "cached dispatch"));
  if (!in.topk_idx.empty() || !in.topk_weights.empty())
    return EPX_ERROR(kInvalidArgument,
                     "cached dispatch: topk_idx/topk_weights must be empty (routing is the handle's)");
  if (in.num_tokens != h.num_tokens)
    return EPX_ERROR(kInvalidArgument, "cached dispatch: {} tokens, the handle routes {}", in.num_tokens,
                     h.num_tokens);
  if (in.zero_copy)
    EPX_RETURN_IF_ERROR(CheckZeroCopy(st, in.x.data(), in.x.size(), P.ZcX(), P.ZcXBytes(), "cached dispatch",
                                      "DispatchInputBuffer"));
  return RunDispatch(st, in, h, nullptr, out);
}

Status NormalBuffer::Combine(const NormalHandle& h, const CombineInput& in, CombineOutput* out) {
  NormalState& st = *s_;
  const NormalPlan& P = st.plan;
  EPX_RETURN_IF_ERROR(CheckUsable(st, &h, "normal combine"));
  if (in.hidden < 1 || in.hidden > P.lim.max_hidden)
    return EPX_ERROR(kInvalidArgument, "normal combine: hidden {} not in 1..{}", in.hidden, P.lim.max_hidden);
  const size_t M = h.num_recv_tokens, N = h.num_tokens, H = in.hidden;
  if (in.y.size() % H != 0 || in.y.size() / H < M)
    return EPX_ERROR(kInvalidArgument,
                     "normal combine: y has {} elements, expected [M={} (or more rows), H={}]", in.y.size(),
                     M, H);
  // K comes from in.topk, not from the span: a rank that received nothing passes an empty span but
  // must still agree with its peers on the message layout.
  if (in.topk < 0 || in.topk > P.lim.max_topk ||
      (in.topk > 0 && (in.topk_weights.size() % in.topk != 0 || in.topk_weights.size() / in.topk < M)) ||
      (in.topk == 0 && !in.topk_weights.empty()))
    return EPX_ERROR(kInvalidArgument,
                     "normal combine: topk_weights has {} elements, expected [M={} (or more rows), K={}] (K "
                     "= 0: none; K <= {})",
                     in.topk_weights.size(), M, in.topk, P.lim.max_topk);
  if (!in.bias0.empty())
    EPX_RETURN_IF_ERROR(CheckSize("normal combine", in.bias0.size(), N * H, "bias0 [N, H]"));
  if (!in.bias1.empty())
    EPX_RETURN_IF_ERROR(CheckSize("normal combine", in.bias1.size(), N * H, "bias1 [N, H]"));
  if (in.zero_copy)
    EPX_RETURN_IF_ERROR(CheckZeroCopy(st, in.y.data(), M * H * sizeof(bf16), P.ZcY(), P.ZcYBytes(),
                                      "normal combine", "CombineInputBuffer"));
  const int K = in.topk;
  out->x.resize(N * H);
  out->topk_weights.resize(N * K);
  CombineJob job;
  job.in = &in;
  job.out = out;
  job.handle = &h;
  job.msg = CombineMsgLayout::Make(in.hidden, K, in.zero_copy);
  EPX_RETURN_IF_ERROR(RunChannels(st, job, RunCombineChannel));
  // Zero-copy: sources reduce straight from this rank's y until they are done (see dispatch).
  if (in.zero_copy) return NodeBarrier(st, "normal zero-copy combine");
  return Status::Ok();
}

}  // namespace epx
