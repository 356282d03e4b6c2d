// Low-latency combine data path (protocol: kernels/ll.h "Combine"): every expert output row goes back
// to slot [token][k] of a remote source, or stays in send[b] for a node-local source to pull, or -- in a
// one-phase call -- is folded with this rank's other rows of the same token into one FP32 partial that
// the node-local source pulls instead; then one "done" add per (destination, source). The source
// reduces grouped by expert rank in FP32 (products rounded first), exactly LlReferenceCombine.
//
// Hot-path rules: no allocation, lock or syscall in the per-row loops (acc, tk_rows and kind_of are sized
// at setup); the one wait of the send phase (a source's weights) backs off and has a deadline.
#include <cstring>

#include "kernels/bf16_math.h"
#include "kernels/ll_state.h"
#include "kernels/ll_wire.h"
#include "kernels/stream_copy.h"

namespace epx {
namespace {

// Pre-reduction for node-local source s (channel c): waits for s's weights of this call, then, for every
// token t of s with rows here: two or more rows -> partial(t) = WeightedPartialF32(Stream) of them in top-k
// order; one row -> that row staged as in rows mode (a one-term partial is that term, and the BF16 row is
// half the bytes). Publishes the table for s. Returns kFailedPrecondition "masked" (unlogged) when s was
// masked meanwhile.
Status PreReduce(LlState& st, const LlHandle& h, const LlCombineInput& in, int b, int c, int s,
                 uint64_t target) {
  const int El = st.El, R = st.R, T = st.cfg.max_tokens, K = st.cfg.topk;
  const int rows = static_cast<int>(st.cfg.rows_per_expert());
  const size_t H = static_cast<size_t>(h.hidden);
  // s publishes its weights at the start of its send phase, which waits for nothing of this call: no
  // cycle (kernels/ll.h "Combine").
  for (;;) {
    Status got =
        st.WaitGE(
              s, st.WeightsReady(b), target, &st.wait_ns[c][s],
              [&] { return fmt::format("combine weights of node-local source rank {} (buffer {})", s, b); },
              /*in_writer_heap=*/true)
            .status();
    if (got.ok()) break;
    if (!st.Masked(s)) EPX_RETURN_IF_ERROR(st.MaskOnFailure(s, std::move(got)));
    if (st.Masked(s)) return Status(Code::kFailedPrecondition, "masked");  // not logged: s is skipped
    // Another rank died and is masked now: wait for s again.
  }
  const auto* w_all = reinterpret_cast<const float*>(st.ctx.node().Address(s, st.Weights(b)));
  int32_t* tk = st.tk_rows[c].data();  // y row (e * rows + row) of (t, k), -1: none
  std::fill(tk, tk + static_cast<size_t>(T) * K, -1);
  for (int e = 0; e < El; ++e) {
    const int64_t range = h.layout_range[static_cast<size_t>(e) * R + s];
    const int begin = LlRangeBegin(range), end = begin + LlRangeCount(range);
    std::memcpy(st.heap() + st.Table(b, e, s), &begin, sizeof(begin));
    for (int row = begin; row < end; ++row) {
      const int32_t r = e * rows + row;
      // src_info / src_slot were checked when the dispatch placed the row (LlDecodeHeader).
      tk[static_cast<size_t>(h.src_info[r]) * K + h.src_slot[r]] = r;
    }
  }
  const bf16* terms[kLlMaxTopk];
  float w[kLlMaxTopk];
  for (int t = 0; t < T; ++t) {
    int n = 0, last = -1;
    for (int k = 0; k < K; ++k) {
      const size_t tk_i = static_cast<size_t>(t) * K + k;
      if (tk[tk_i] < 0) continue;
      last = tk[tk_i];
      terms[n] = in.y.data() + static_cast<size_t>(last) * H;
      w[n++] = w_all[tk_i];
    }
    if (n == 1)
      std::memcpy(st.heap() + st.CombineStage(b, last / rows, last % rows), terms[0], 2 * H);
    else if (n > 1)
      WeightedPartialF32Stream(reinterpret_cast<float*>(st.heap() + st.Partial(b, s, t)), terms, w, n,
                               static_cast<int>(H));
  }
  // The partials' streaming stores are weakly ordered, also against the release add that publishes them
  // (LlCombineSend): fence them first (kernels/stream_copy.h).
  StreamFence();
  return Status::Ok();
}

}  // namespace

Status LlCombineSend(LlState& st, const LlHandle& h, const LlCombineInput& in, int b, const bf16* self_y,
                     uint64_t target) {
  const int El = st.El, R = st.R, rows = static_cast<int>(st.cfg.rows_per_expert()), C = st.C;
  const size_t H = static_cast<size_t>(h.hidden), bytes = 2 * H;
  // This call's weights, for node-local ranks that pre-reduce this rank's tokens (each rank decides per
  // call, so they go out every call): [T_max][K_buf], then the release store that publishes them.
  if (st.L > 1) {
    auto* w = reinterpret_cast<float*>(st.heap() + st.Weights(b));
    for (int t = 0; t < h.num_tokens; ++t)
      std::memcpy(w + static_cast<size_t>(t) * st.cfg.topk,
                  in.topk_weights.data() + static_cast<size_t>(t) * h.topk, sizeof(float) * h.topk);
    st.ctx.node().AtomicStore(st.rank, st.WeightsReady(b), target);
  }
  // A one-phase default-mode call pre-reduces for node-local sources: y outlives the call, and the
  // sources' weights arrive at the start of their send phase. Two-phase and zero-copy calls leave rows.
  const bool partials = self_y != nullptr;
  // Channel c serves sources s % C == c: a source's rows and then its done flag share one QP.
  // Remote source: one Write per row into s.recv[b][t][k]. Node-local source: rows stay in this rank's
  // send[b] (zero-copy: the caller wrote them there; else staged here) and the source pulls them while
  // it reduces, finding them through table[b][e][s] = first row of s in e; or partials (above).
  auto send = [&](int c) -> Status {
    EPX_FAULT_POINT(kLlCombineSend);
    for (int s = c; s < R; s += C) {
      if (st.Masked(s)) continue;  // no rows and no "done" for a masked source (kernels/ll.h "Masking")
      const bool local = st.Local(s);
      if (local && s != st.rank && partials) {
        Status pre = PreReduce(st, h, in, b, c, s, target);
        if (!pre.ok() && st.Masked(s)) continue;  // s died and is masked (mask_on_failure): skip it
        EPX_RETURN_IF_ERROR(pre);
        std::memcpy(st.heap() + st.Kind(b, s), &kLlLeftPartials, sizeof(int32_t));
        EPX_RETURN_IF_ERROR(st.Add(c, s, st.Done(b, st.rank), 1));  // release: the partials and the kind
        continue;
      }
      const bool stage = !in.zero_copy && !(s == st.rank && self_y != nullptr);
      if (local) std::memcpy(st.heap() + st.Kind(b, s), &kLlLeftRows, sizeof(int32_t));
      for (int e = 0; e < El; ++e) {
        const int64_t range = h.layout_range[static_cast<size_t>(e) * R + s];
        const int begin = LlRangeBegin(range), end = begin + LlRangeCount(range);
        if (local) std::memcpy(st.heap() + st.Table(b, e, s), &begin, sizeof(begin));
        for (int row = begin; row < end; ++row) {
          const size_t r = static_cast<size_t>(e) * rows + row;
          if (stage) std::memcpy(st.heap() + st.CombineStage(b, e, row), in.y.data() + r * H, bytes);
          if (!local)
            EPX_RETURN_IF_ERROR(st.Put(c, s, st.CombineStage(b, e, row),
                                       st.CombineSlot(b, h.src_info[r], h.src_slot[r]), bytes));
        }
      }
      // Remote: after the rows on the same QP. Local: a release add, so the source that acquires it sees
      // the table and the staged rows.
      EPX_RETURN_IF_ERROR(st.Add(c, s, st.Done(b, st.rank), 1));
    }
    if (st.rdma) EPX_RETURN_IF_ERROR(st.rdma->Flush(c));
    return Status::Ok();
  };
  return st.RunChannels(send);
}

Status LlCombineRecv(LlState& st, int b) {
  EPX_FAULT_POINT(kLlCombineRecv);
  LlPending& p = st.pending[b];
  const LlHandle& h = *p.chandle;
  LlCombineOutput& out = *p.cout;
  const int N = h.num_tokens, K = h.topk, H = h.hidden;
  // Every destination adds 1 to done[b][d] per combine on b (0 rows included), after its rows.
  // A masked destination is not awaited; one that fails here is masked (mask_on_failure) before any
  // row is summed, so the reduction below sees one consistent mask.
  for (int d = 0; d < st.R; ++d) {
    if (st.Masked(d)) continue;
    Status s = st.WaitGE(d, st.Done(b, d), p.done_target, &st.wait_ns[0][d], [&] {
                   return fmt::format("combine rows from rank {} (buffer {}, call {})", d, b, p.call);
                 }).status();
    if (s.ok() || st.Masked(d)) continue;  // masked meanwhile: not awaited any more
    EPX_RETURN_IF_ERROR(st.MaskOnFailure(d, std::move(s)));
    if (!st.Masked(d)) --d;  // another rank died and is masked now: wait for d again
  }
  // What each node-local peer left for this rank: written by d before its done add (acquired above).
  for (int d = 0; d < st.R; ++d) {
    st.kind_of[d] = kLlLeftRows;
    if (d == st.rank || !st.Local(d) || st.Masked(d)) continue;
    int32_t kind;
    std::memcpy(&kind, st.ctx.node().Address(d, st.Kind(b, st.rank)), sizeof(kind));
    if (kind != kLlLeftRows && kind != kLlLeftPartials) [[unlikely]]
      return EPX_ERROR(kInternal,
                       "low-latency combine: rank {}: node-local rank {} left kind {} (buffer {}, call {})",
                       st.rank, d, kind, b, p.call);
    st.kind_of[d] = kind;
  }
  bf16* dst = out.out.empty() ? nullptr : out.out.data();
  if (!dst) {
    out.x.resize(static_cast<size_t>(N) * H);
    dst = out.x.data();
  }
  auto reduce = [&](int c) -> Status {
    float* acc = st.acc[c].data();
    const bf16* rows[kLlMaxTopk];
    float w[kLlMaxTopk];
    SumGroup groups[kLlMaxTopk];
    int owner[kLlMaxTopk], slot[kLlMaxTopk];
    const int per = (N + st.C - 1) / st.C, t0 = std::min(N, per * c), t1 = std::min(N, per * (c + 1));
    for (int t = t0; t < t1; ++t) {
      // The token's live (k, owner) in top-k order, then stably by owner: the reference's groups.
      int m = 0;
      for (int k = 0; k < K; ++k) {
        const size_t tk = static_cast<size_t>(t) * K + k;
        const int64_t g = h.topk_idx[tk];
        if (g < 0 || h.send_slot[tk] < 0) continue;  // no expert, or its rank was masked at dispatch
        const int d = st.Owner(g);
        if (st.Masked(d)) continue;
        int i = m++;
        for (; i > 0 && owner[i - 1] > d; --i) owner[i] = owner[i - 1], slot[i] = slot[i - 1];
        owner[i] = d;
        slot[i] = k;
      }
      int n = 0, ng = 0;
      for (int i = 0; i < m;) {
        const int d = owner[i];
        int size = 0;
        while (i + size < m && owner[i + size] == d) ++size;
        if (st.kind_of[d] == kLlLeftPartials && size > 1) {  // one FP32 row for all of d's experts of t
          groups[ng++] = SumGroup{
              0, 0, reinterpret_cast<const float*>(st.ctx.node().Address(d, st.Partial(b, st.rank, t)))};
          while (i < m && owner[i] == d) ++i;
          continue;
        }
        const int first = n;
        for (; i < m && owner[i] == d; ++i) {
          const int k = slot[i];
          const size_t tk = static_cast<size_t>(t) * K + k;
          const int e = static_cast<int>(h.topk_idx[tk] % st.El);
          w[n] = p.weights[tk];
          if (st.Local(d)) {  // pull from d's send[b]: row = (first row of this rank in e) + slot of (t, k)
            int32_t first_row;
            std::memcpy(&first_row, st.ctx.node().Address(d, st.Table(b, e, st.rank)), sizeof(first_row));
            // `first_row` was written by d: checked before it addresses d's heap (kernels/ll_wire.h).
            StatusOr<int64_t> row =
                LlDecodeCombineRow(first_row, h.send_slot[tk], st.cfg.rows_per_expert(), st.rank, d, e);
            if (!row.ok()) [[unlikely]]
              return internal::MakeError(row.status().code(), __FILE__, __LINE__, row.status().message());
            if (d == st.rank && p.self_y != nullptr)  // our own rows, not staged: y row (e, row)
              rows[n++] = p.self_y + (static_cast<size_t>(e) * st.cfg.rows_per_expert() + *row) * H;
            else
              rows[n++] = reinterpret_cast<const bf16*>(
                  st.ctx.node().Address(d, st.CombineStage(b, e, static_cast<int>(*row))));
          } else {
            rows[n++] = reinterpret_cast<const bf16*>(st.heap() + st.CombineSlot(b, t, k));
          }
        }
        groups[ng++] = SumGroup{first, n - first, nullptr};
      }
      GroupedWeightedSumBf16(dst + static_cast<size_t>(t) * H, acc, rows, w, groups, ng, H);
    }
    return Status::Ok();
  };
  return st.RunChannels(reduce);
}

}  // namespace epx
