// LlBuffer: setup (heap block, RDMA domain, threads), input validation before anything is posted, the
// buffer rotation and its two hazards (kernels/ll.h "Rotation"), and the two-phase bookkeeping.
#include "kernels/ll.h"

#include <sched.h>

#include <algorithm>
#include <cstring>

#include "core/log.h"
#include "core/tunables.h"
#include "kernels/ll_state.h"

namespace epx {
namespace {

std::atomic<uint64_t> g_next_ll_id{1};
constexpr int kAutoMaxLlChannels = 4;

// Every rank must lay out the same buffers: gathers the config and names the first field that differs.
// Also resolves channels = 0 to min over ranks of the CPUs a rank may run on (capped).
StatusOr<int> AgreeOnConfig(Context& ctx, const LowLatencyConfig& cfg, int channels) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  constexpr int kFields = 10;  // compared fields; the last slot is the CPU count (min over ranks)
  struct Mine {
    int v[kFields + 1];
  } mine{{cfg.max_tokens, cfg.hidden, cfg.topk, cfg.num_experts, cfg.depth, cfg.use_fp8, cfg.fp8.round_scale,
          cfg.fp8.ue8m0, channels, cfg.mask_on_failure, std::clamp(cpus, 1, kAutoMaxLlChannels)}};
  static constexpr const char* kNames[kFields] = {
      "max_tokens",      "hidden",    "topk",
      "num_experts",     "depth",     "use_fp8",
      "fp8.round_scale", "fp8.ue8m0", "channels (EPX_LL_CHANNELS)",
      "mask_on_failure"};
  EPX_ASSIGN_OR_RETURN(auto all, ctx.bootstrap().AllGatherPod("ll-buffer-config", mine));
  int min_cpus = mine.v[kFields];
  for (size_t r = 0; r < all.size(); ++r) {
    for (int f = 0; f < kFields; ++f)
      if (all[r].v[f] != mine.v[f])
        return EPX_ERROR(
            kInvalidArgument,
            "low-latency buffer: config mismatch: rank {} has {} = {}, rank {} has {} (all ranks "
            "must create the buffer with the same config)",
            r, kNames[f], all[r].v[f], ctx.rank(), mine.v[f]);
    min_cpus = std::min(min_cpus, all[r].v[kFields]);
  }
  return channels > 0 ? channels : min_cpus;
}

Status CheckDispatch(const LlState& st, const LlDispatchInput& in) {
  const LowLatencyConfig& c = st.cfg;
  if (in.num_tokens < 0 || in.num_tokens > c.max_tokens)
    return EPX_ERROR(kInvalidArgument,
                     "low-latency dispatch: rank {} has num_tokens={}, the buffer's T_max (max_tokens) is {}",
                     st.rank, in.num_tokens, c.max_tokens);
  if (in.hidden < 1 || in.hidden > c.hidden)
    return EPX_ERROR(kInvalidArgument, "low-latency dispatch: hidden={} not in 1..{} (the buffer's hidden)",
                     in.hidden, c.hidden);
  if (in.topk < 1 || in.topk > c.topk)
    return EPX_ERROR(kInvalidArgument, "low-latency dispatch: topk={} not in 1..{} (the buffer's topk)",
                     in.topk, c.topk);
  const size_t n = static_cast<size_t>(in.num_tokens);
  if (in.x.size() != n * in.hidden)
    return EPX_ERROR(kInvalidArgument, "low-latency dispatch: x has {} elements, expected [N={}, H={}] = {}",
                     in.x.size(), in.num_tokens, in.hidden, n * in.hidden);
  if (in.topk_idx.size() != n * in.topk)
    return EPX_ERROR(kInvalidArgument,
                     "low-latency dispatch: topk_idx has {} elements, expected [N={}, K={}] = {}",
                     in.topk_idx.size(), in.num_tokens, in.topk, n * in.topk);
  if (in.use_fp8 && in.fp8.ue8m0 && !in.fp8.round_scale)
    return EPX_ERROR(kInvalidArgument, "low-latency dispatch: fp8.ue8m0 needs fp8.round_scale");
  for (size_t t = 0; t < n; ++t)
    for (int k = 0; k < in.topk; ++k) {
      const int64_t e = in.topk_idx[t * in.topk + k];
      if (e < -1 || e >= c.num_experts)
        return EPX_ERROR(kInvalidArgument, "low-latency dispatch: topk_idx[{}, {}] = {} not in [-1, {})", t,
                         k, e, c.num_experts);
      for (int j = 0; j < k && e >= 0; ++j)
        if (in.topk_idx[t * in.topk + j] == e)
          return EPX_ERROR(kInvalidArgument,
                           "low-latency dispatch: token {} selects expert {} twice (top-k slots {} and {})",
                           t, e, j, k);
    }
  return Status::Ok();
}

Status CheckCombine(const LlState& st, const LlHandle& h, const LlCombineInput& in,
                    const LlCombineOutput& out) {
  if (h.buffer_id != st.id)
    return EPX_ERROR(kInvalidArgument, "low-latency combine: the handle was not made by this buffer");
  if (h.src_slot.size() != static_cast<size_t>(st.El) * st.cfg.rows_per_expert())
    return EPX_ERROR(
        kFailedPrecondition,
        "low-latency combine: the handle's dispatch has not been received yet (call Receive on its "
        "hook first)");
  const size_t rows = static_cast<size_t>(st.El) * st.cfg.rows_per_expert(), H = h.hidden;
  if (in.zero_copy ? !in.y.empty() : in.y.size() != rows * H)
    return EPX_ERROR(kInvalidArgument,
                     "low-latency combine: y has {} elements, expected [E_local={}, R*T_max={}, H={}] = {}{}",
                     in.y.size(), st.El, st.cfg.rows_per_expert(), H, in.zero_copy ? 0 : rows * H,
                     in.zero_copy ? " (zero_copy: the rows are in NextCombineBuffer())" : "");
  const size_t nk = static_cast<size_t>(h.num_tokens) * h.topk;
  if (in.topk_weights.size() != nk)
    return EPX_ERROR(kInvalidArgument,
                     "low-latency combine: topk_weights has {} elements, expected [N={}, K={}]",
                     in.topk_weights.size(), h.num_tokens, h.topk);
  if (!out.out.empty() && out.out.size() != static_cast<size_t>(h.num_tokens) * H)
    return EPX_ERROR(kInvalidArgument, "low-latency combine: out= has {} elements, expected [N={}, H={}]",
                     out.out.size(), h.num_tokens, H);
  return Status::Ok();
}

// After a receive phase on buffer b: tell every peer that b may be written again (kernels/ll.h
// "Rotation"). released[b][me] at peer p has one writer (this rank), so adds never race.
Status Release(LlState& st, int b) {
  for (int p = 0; p < st.R; ++p) {
    if (p == st.rank || st.Masked(p)) continue;
    EPX_RETURN_IF_ERROR(st.Add(0, p, st.Released(b, st.rank), 1));
  }
  return st.FlushAll();
}

}  // namespace

LlBuffer::LlBuffer(std::unique_ptr<LlState> s) : s_(std::move(s)) {}
LlBuffer::~LlBuffer() {
  if (s_ && s_->rdma) (void)s_->QuietAll();  // local send buffers must not be freed under the NIC
}

const LowLatencyConfig& LlBuffer::config() const {
  return s_->cfg;
}
int LlBuffer::num_channels() const {
  return s_->C;
}
std::string LlBuffer::rdma_kind() const {
  return s_->rdma ? s_->rdma->caps().kind : "";
}
size_t LlBuffer::combine_row_stride() const {
  return s_->lay.combine_msg / sizeof(bf16);
}

LlStats LlBuffer::stats() const {
  LlStats out;
  out.recv_tokens_per_expert = s_->recv_tokens;
  out.wait_ns_per_source.assign(s_->R, 0);
  for (const auto& w : s_->wait_ns)
    for (int r = 0; r < s_->R; ++r) out.wait_ns_per_source[r] += w[r];
  out.dispatches = s_->dispatches;
  out.combines = s_->combines;
  return out;
}

StatusOr<std::unique_ptr<LlBuffer>> LlBuffer::Create(Context& ctx, LowLatencyConfig cfg, int channels) {
  const Placement& pl = ctx.placement();
  cfg.num_ranks = pl.world_size;
  EPX_RETURN_IF_ERROR(cfg.Validate());
  if (channels == 0) {
    EPX_ASSIGN_OR_RETURN(int64_t env, TunableInt("EPX_LL_CHANNELS"));
    channels = static_cast<int>(env);
  }
  if (channels < 0 || channels > 64)
    return EPX_ERROR(kInvalidArgument, "low-latency buffer: channels={} not in 0..64", channels);
  EPX_ASSIGN_OR_RETURN(const int C, AgreeOnConfig(ctx, cfg, channels));
  auto st = std::make_unique<LlState>(ctx);
  st->cfg = cfg;
  EPX_ASSIGN_OR_RETURN(st->lay, LlLayout::Make(cfg));
  st->R = pl.world_size;
  st->L = pl.local_size;
  st->rank = pl.rank;
  st->node = pl.node;
  st->El = cfg.local_experts();
  st->C = C;
  st->timeout_ms = cfg.timeout_ms > 0 ? cfg.timeout_ms : ctx.options().timeout_ms;
  // C channels per rank: do the host's ranks have a cpu per busy thread? Else waits spin less.
  EPX_ASSIGN_OR_RETURN(st->wait_policy, ChannelWaitPolicy(ctx, "ll-buffer-cpus", C));
  auto off_or = ctx.allocator().Allocate(st->lay.heap_bytes, 4096, "low-latency buffers");
  if (!off_or.ok())
    return std::move(off_or).status().With(fmt::format(
        "low-latency buffer: {} buffers for T_max={} H={} K={} E={} R={} need {} MiB (LlHeapBytes); lower "
        "max_tokens/depth or raise EPX_HEAP_SIZE",
        cfg.depth, cfg.max_tokens, cfg.hidden, cfg.topk, cfg.num_experts, cfg.num_ranks,
        (st->lay.heap_bytes + (1 << 20) - 1) >> 20));
  st->base = *off_or;
  // Counters and the tables' weights-ready words start at 0 and are never reset (kernels/ll.h); send/recv
  // need no clearing.
  std::memset(st->heap() + st->CounterBlock(), 0, st->lay.counters_total + st->lay.tables_total);
  if (pl.num_nodes > 1) {
    EPX_ASSIGN_OR_RETURN(RdmaOptions ro, RdmaOptions::FromEnv());
    ro.channels = C;
    ro.counter_off = st->CounterBlock();
    ro.counter_bytes = st->lay.counters_total;
    ro.timeout_ms = st->timeout_ms;
    ro.peers.clear();
    for (int p = 0; p < st->R; ++p)
      if (!st->Local(p)) ro.peers.push_back(p);
    EPX_ASSIGN_OR_RETURN(st->rdma, CreateRdmaDomain(ctx, ro));
  }
  // No peer posts into this rank's counters before they are zeroed.
  EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier("ll-buffer-create"));
  if (C > 1) st->pool = std::make_unique<WorkerPool>(C);
  st->pending.resize(cfg.depth);
  st->combine_uses.assign(cfg.depth, 0);
  st->prev_cnt.assign(static_cast<size_t>(cfg.depth) * st->El * st->R, 0);
  st->ord.assign(C, std::vector<int>(cfg.num_experts, 0));
  st->wait_ns.assign(C, std::vector<uint64_t>(st->R, 0));
  st->acc.assign(C, std::vector<float>(2 * static_cast<size_t>(cfg.hidden), 0.0f));
  st->tk_rows.assign(C, std::vector<int32_t>(static_cast<size_t>(cfg.max_tokens) * cfg.topk, -1));
  st->kind_of.assign(st->R, kLlLeftRows);
  st->begin.assign(C, std::vector<int>(st->El, 0));
  st->fill.assign(C, std::vector<int>(st->El, 0));
  st->recv_tokens.assign(st->El, 0);
  st->masked.assign(st->R, 0);
  st->masked_at.assign(st->R, 0);
  st->prev_snapshot.assign(static_cast<size_t>(st->El) * st->R, 0);
  st->id = g_next_ll_id.fetch_add(1) ^ (static_cast<uint64_t>(st->base) << 16);
  if (pl.rank == 0)
    EPX_INFO(
        "low-latency buffer: T_max={} H={} K={} E={} depth {}, {} channel(s), rdma {}, {} MiB of heap, waits "
        "spin {} times before yielding",
        cfg.max_tokens, cfg.hidden, cfg.topk, cfg.num_experts, cfg.depth, C,
        st->rdma ? st->rdma->caps().kind : "none", st->lay.heap_bytes >> 20, st->wait_policy.spin_iters);
  return std::unique_ptr<LlBuffer>(new LlBuffer(std::move(st)));
}

Status LlState::MaskOnFailure(int peer, Status why) {
  // Only failures that are the peer's: a dead peer or one that stopped answering. A bad argument or a
  // transport bug must not silently drop a rank.
  if (!cfg.mask_on_failure || (why.code() != Code::kPeerFailure && why.code() != Code::kTimeout)) return why;
  // A dead-peer failure names whichever watched rank died (transport/liveness.h), not necessarily the one
  // awaited, which may be alive and merely held up: mask the dead ranks. The awaited peer itself only
  // when nothing else explains the failure (a timeout, or a verbs QP error naming it). The caller waits
  // again for a peer that is still unmasked.
  // Ranks of other hosts are known dead to the RDMA domain only (QP errors, probes).
  std::vector<int> dead;
  if (why.code() == Code::kPeerFailure) {
    for (int r : ctx.liveness().dead_ranks())
      if (r != rank) dead.push_back(r);
    if (rdma)
      for (int r : rdma->FailedPeers())
        if (std::find(dead.begin(), dead.end(), r) == dead.end()) dead.push_back(r);
  }
  if (dead.empty() && peer >= 0) dead.push_back(peer);
  if (dead.empty()) return why;
  for (int r : dead) {
    ctx.liveness().Acknowledge(r);      // its death no longer fails this rank's waits
    if (rdma) rdma->MaskPeer(r, true);  // nor the RDMA domain's
    uint8_t expected = 0;
    if (__atomic_compare_exchange_n(&masked[static_cast<size_t>(r)], &expected, uint8_t{1}, false,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      masked_at[static_cast<size_t>(r)] = next_call;
      mask_epoch.fetch_add(1, std::memory_order_acq_rel);
      EPX_WARN("low-latency: rank {} masks rank {} (mask_on_failure) and goes on without it; cause: {}", rank,
               r, why.ToString());
    }
  }
  return Status::Ok();
}

namespace {

// Takes the next call's buffer: it must not hold a pending call, its previous local sends must be
// complete, and every peer must have released it (finished reading the call D before this one).
StatusOr<int> BeginCall(LlState& st, const char* what) {
  if (st.broken)
    return EPX_ERROR(kFailedPrecondition, "{}: an earlier call on this buffer failed midway", what);
  const uint64_t n = st.next_call;
  const int b = static_cast<int>(n % st.D());
  if (st.pending[b].kind != LlPending::kNone)
    return EPX_ERROR(
        kFailedPrecondition,
        "{}: call {} would reuse buffer {} whose call {} was not received yet (at most depth-1 = {} "
        "calls may be pending; call Receive on its hook first)",
        what, n, b, st.pending[b].call, st.D() - 1);
  return b;
}

// Hazards of reusing buffer b for call n (kernels/ll.h "Rotation"); after this the call is committed.
Status ClaimBuffer(LlState& st, int b) {
  const uint64_t n = st.next_call;
  EPX_RETURN_IF_ERROR(st.QuietAll());  // own send[b]: the call D earlier may still be read by the NIC
  const uint64_t target = n / st.D();  // earlier calls on b, each released once by every peer
  if (target == 0) return Status::Ok();
  uint64_t ignored = 0;
  for (int p = 0; p < st.R; ++p) {
    if (p == st.rank || st.Masked(p)) continue;
    Status s =
        st.WaitGE(p, st.Released(b, p), target, &ignored, [&] {
            return fmt::format("release of buffer {} before call {} (rank {} has not received call {} yet)",
                               b, n, p, n - st.D());
          }).status();
    if (s.ok() || st.Masked(p)) continue;  // masked meanwhile: not awaited any more
    EPX_RETURN_IF_ERROR(st.MaskOnFailure(p, std::move(s)));
    if (!st.Masked(p)) --p;  // another rank died and is masked now: wait for p again
  }
  return Status::Ok();
}

}  // namespace

Status LlBuffer::Dispatch(const LlDispatchInput& in, LlDispatchOutput* out, LlHandle* handle, LlHook* hook) {
  LlState& st = *s_;
  EPX_ASSIGN_OR_RETURN(const int b, BeginCall(st, "low-latency dispatch"));
  EPX_RETURN_IF_ERROR(CheckDispatch(st, in));
  Status s = ClaimBuffer(st, b);
  handle->send_slot.assign(static_cast<size_t>(in.num_tokens) * in.topk, -1);
  if (s.ok()) s = LlDispatchSend(st, in, b, handle->send_slot.data());
  if (!s.ok()) {
    st.broken = true;
    return s;
  }
  LlPending& p = st.pending[b];
  p.kind = LlPending::kDispatch;
  p.call = st.next_call++;
  p.dout = out;
  p.handle = handle;
  p.shape = LlShapeWord(in.hidden, in.use_fp8, in.fp8);
  p.dopt.use_fp8 = in.use_fp8;
  p.dopt.fp8 = in.use_fp8 ? in.fp8 : Fp8Options{};
  handle->buffer_id = st.id;
  handle->num_tokens = in.num_tokens;
  handle->hidden = in.hidden;
  handle->topk = in.topk;
  handle->topk_idx.assign(in.topk_idx.begin(), in.topk_idx.end());
  handle->src_slot.clear();  // marks "not received yet" for CheckCombine
  ++st.dispatches;
  LlHook h{st.id, p.call, true};
  if (hook) {
    *hook = h;
    return Status::Ok();
  }
  return Receive(&h);
}

Status LlBuffer::Combine(const LlHandle& handle, const LlCombineInput& in, LlCombineOutput* out,
                         LlHook* hook) {
  LlState& st = *s_;
  EPX_ASSIGN_OR_RETURN(const int b, BeginCall(st, "low-latency combine"));
  EPX_RETURN_IF_ERROR(CheckCombine(st, handle, in, *out));
  // With zero-copy, NextCombineBuffer() already claimed b: the waits below return at once.
  Status s = ClaimBuffer(st, b);
  // One phase, rows in y: y outlives the receive phase, so this rank's rows for its own tokens are reduced
  // from y in place instead of being staged (a copy of 1/L of the rows, on one node).
  const bf16* self_y = hook == nullptr && !in.zero_copy ? in.y.data() : nullptr;
  if (s.ok()) s = LlCombineSend(st, handle, in, b, self_y, st.combine_uses[b] + 1);
  if (!s.ok()) {
    st.broken = true;
    return s;
  }
  LlPending& p = st.pending[b];  // fields are overwritten, not reset: `weights` keeps its capacity
  p.kind = LlPending::kCombine;
  p.call = st.next_call++;
  p.chandle = &handle;
  p.cout = out;
  p.weights.assign(in.topk_weights.begin(), in.topk_weights.end());
  p.self_y = self_y;
  p.done_target = ++st.combine_uses[b];
  ++st.combines;
  LlHook h{st.id, p.call, true};
  if (hook) {
    *hook = h;
    return Status::Ok();
  }
  return Receive(&h);
}

Status LlBuffer::Receive(LlHook* hook) {
  LlState& st = *s_;
  if (hook->buffer_id != st.id || !hook->pending)
    return EPX_ERROR(kInvalidArgument, "low-latency receive: the hook is not a pending call of this buffer");
  const int b = static_cast<int>(hook->call % st.D());
  LlPending& p = st.pending[b];
  if (p.kind == LlPending::kNone || p.call != hook->call)
    return EPX_ERROR(kInvalidArgument, "low-latency receive: call {} is not pending (already received?)",
                     hook->call);
  if (st.broken) return EPX_ERROR(kFailedPrecondition, "low-latency receive: an earlier call failed midway");
  Status s = p.kind == LlPending::kDispatch ? LlDispatchRecv(st, b) : LlCombineRecv(st, b);
  if (s.ok()) s = Release(st, b);
  if (!s.ok()) {
    st.broken = true;
    return s;
  }
  p.kind = LlPending::kNone;
  hook->pending = false;
  return Status::Ok();
}

Status LlBuffer::MaskRank(int rank) {
  LlState& st = *s_;
  if (rank < 0 || rank >= st.R)
    return EPX_ERROR(kInvalidArgument, "low-latency mask: rank {} not in 0..{}", rank, st.R - 1);
  if (rank == st.rank)
    return EPX_ERROR(kInvalidArgument, "low-latency mask: rank {} cannot mask itself", rank);
  for (const LlPending& p : st.pending)
    if (p.kind != LlPending::kNone)
      return EPX_ERROR(
          kFailedPrecondition,
          "low-latency mask: call {} is pending (posted, not received): change the mask between calls",
          p.call);
  if (!st.Masked(rank)) {
    st.masked_at[static_cast<size_t>(rank)] = st.next_call;
    st.SetMasked(rank, true);
    st.ctx.liveness().Acknowledge(rank);  // as in MaskOnFailure: its death no longer fails our waits
  }
  return Status::Ok();
}

Status LlBuffer::UnmaskRank(int rank) {
  LlState& st = *s_;
  if (rank < 0 || rank >= st.R)
    return EPX_ERROR(kInvalidArgument, "low-latency unmask: rank {} not in 0..{}", rank, st.R - 1);
  if (!st.Masked(rank)) return Status::Ok();
  // The counters a peer writes here only line up with ours if it made every call we made (kernels/ll.h
  // "Masking"): a rank that was skipped by a call is out of step for good on this buffer.
  const uint64_t skipped = st.next_call - st.masked_at[static_cast<size_t>(rank)];
  if (skipped > 0)
    return EPX_ERROR(
        kFailedPrecondition,
        "low-latency unmask: rank {} was skipped by {} call(s) of this buffer, so its counters are out "
        "of step: re-admit it by creating the LlBuffer again on every rank (collective)",
        rank, skipped);
  st.SetMasked(rank, false);
  return Status::Ok();
}

std::vector<int> LlBuffer::MaskedRanks() const {
  std::vector<int> out;
  for (int r = 0; r < s_->R; ++r)
    if (s_->Masked(r)) out.push_back(r);
  return out;
}

Status LlBuffer::ClearMask() {
  for (int r : MaskedRanks()) EPX_RETURN_IF_ERROR(UnmaskRank(r));
  return Status::Ok();
}

StatusOr<std::span<bf16>> LlBuffer::NextCombineBuffer() {
  LlState& st = *s_;
  EPX_ASSIGN_OR_RETURN(const int b, BeginCall(st, "low-latency NextCombineBuffer"));
  // The caller writes send[b] next: the NIC must be done with it (Quiet) and node-local peers must have
  // pulled the call D earlier out of it (their release), exactly what the Combine itself would wait for.
  if (Status s = ClaimBuffer(st, b); !s.ok()) {
    st.broken = true;
    return s;
  }
  auto* rows = reinterpret_cast<bf16*>(st.heap() + st.Send(b));
  return std::span<bf16>(rows, static_cast<size_t>(st.El) * st.cfg.rows_per_expert() * combine_row_stride());
}

}  // namespace epx
