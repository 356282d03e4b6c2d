// Low-latency combine data path (protocol: kernels/ll.h "Combine"): every expert output row goes back
// to slot [token][k] of a remote source, or stays in send[b] for a node-local source to pull; then one
// "done" add per (destination, source); the source reduces in top-k order in FP32 (products rounded
// first), exactly LlReferenceCombine.
//
// Hot-path rules: no allocation, lock or syscall in the per-row loops (acc is sized at setup).
#include <cstring>

#include "kernels/bf16_math.h"
#include "kernels/ll_state.h"
#include "kernels/ll_wire.h"

namespace epx {

Status LlCombineSend(LlState& st, const LlHandle& h, const LlCombineInput& in, int b, const bf16* self_y) {
  const int El = st.El, R = st.R, rows = static_cast<int>(st.cfg.rows_per_expert()), C = st.C;
  const size_t H = static_cast<size_t>(h.hidden), bytes = 2 * H;
  // Channel c serves sources s % C == c: a source's rows and then its done flag share one QP.
  // Remote source: one Write per row into s.recv[b][t][k]. Node-local source: nothing moves; the rows
  // stay in this rank's send[b] (zero-copy: the caller wrote them there; else staged here) and the
  // source pulls them while it reduces, finding them through table[b][e][s] = first row of s in e.
  auto send = [&](int c) -> Status {
    EPX_FAULT_POINT(kLlCombineSend);
    for (int s = c; s < R; s += C) {
      if (st.Masked(s)) continue;  // no rows and no "done" for a masked source (kernels/ll.h "Masking")
      const bool local = st.Local(s);
      const bool stage = !in.zero_copy && !(s == st.rank && self_y != nullptr);
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
  bf16* dst = out.out.empty() ? nullptr : out.out.data();
  if (!dst) {
    out.x.resize(static_cast<size_t>(N) * H);
    dst = out.x.data();
  }
  auto reduce = [&](int c) -> Status {
    float* acc = st.acc[c].data();
    const bf16* rows[kLlMaxTopk];
    float w[kLlMaxTopk];
    const int per = (N + st.C - 1) / st.C, t0 = std::min(N, per * c), t1 = std::min(N, per * (c + 1));
    for (int t = t0; t < t1; ++t) {
      int n = 0;
      for (int k = 0; k < K; ++k) {  // top-k order: the reduction order of the reference
        const size_t tk = static_cast<size_t>(t) * K + k;
        const int64_t g = h.topk_idx[tk];
        if (g < 0 || h.send_slot[tk] < 0) continue;  // no expert, or its rank was masked at dispatch
        const int d = st.Owner(g), e = static_cast<int>(g % st.El);
        if (st.Masked(d)) continue;
        w[n] = p.weights[tk];
        if (st.Local(d)) {  // pull from d's send[b]: row = (first row of this rank in e) + slot of (t, k)
          int32_t first;
          std::memcpy(&first, st.ctx.node().Address(d, st.Table(b, e, st.rank)), sizeof(first));
          // `first` was written by d: checked before it addresses d's heap (kernels/ll_wire.h).
          StatusOr<int64_t> row =
              LlDecodeCombineRow(first, h.send_slot[tk], st.cfg.rows_per_expert(), st.rank, d, e);
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
      WeightedSumBf16Rows(dst + static_cast<size_t>(t) * H, acc, rows, w, n, H);
    }
    return Status::Ok();
  };
  return st.RunChannels(reduce);
}

}  // namespace epx
