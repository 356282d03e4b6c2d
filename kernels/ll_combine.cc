// Low-latency combine data path (protocol: kernels/ll.h "Combine"): every expert output row goes back
// to slot [token][k] of its source, then one "done" add per (destination, source); the source reduces
// in top-k order in FP32 (products rounded first), exactly LlReferenceCombine.
//
// Hot-path rules: no allocation, lock or syscall in the per-row loops (acc is sized at setup).
#include <cstring>

#include "kernels/ll_state.h"

namespace epx {

Status LlCombineSend(LlState& st, const LlHandle& h, const LlCombineInput& in, int b) {
  const int El = st.El, R = st.R, rows = static_cast<int>(st.cfg.rows_per_expert()), C = st.C;
  const size_t H = static_cast<size_t>(h.hidden), bytes = 2 * H;
  // Channel c serves sources s % C == c: a source's rows and then its done flag share one QP.
  auto send = [&](int c) -> Status {
    for (int s = c; s < R; s += C) {
      for (int e = 0; e < El; ++e) {
        const int64_t range = h.layout_range[static_cast<size_t>(e) * R + s];
        const int begin = LlRangeBegin(range), end = begin + LlRangeCount(range);
        for (int row = begin; row < end; ++row) {
          const size_t r = static_cast<size_t>(e) * rows + row;
          const size_t remote = st.CombineSlot(b, h.src_info[r], h.src_slot[r]);
          const size_t stage = st.CombineStage(b, e, row);
          if (in.zero_copy) {
            EPX_RETURN_IF_ERROR(st.Put(c, s, stage, remote, bytes));
          } else if (st.Local(s)) {  // straight from the caller's rows: no staging copy
            EPX_RETURN_IF_ERROR(st.PutPrivate(s, in.y.data() + r * H, remote, bytes));
          } else {  // RDMA reads from the registered heap: stage the row first
            std::memcpy(st.heap() + stage, in.y.data() + r * H, bytes);
            EPX_RETURN_IF_ERROR(st.Put(c, s, stage, remote, bytes));
          }
        }
      }
      EPX_RETURN_IF_ERROR(st.Add(c, s, st.Done(b, st.rank), 1));
    }
    if (st.rdma) EPX_RETURN_IF_ERROR(st.rdma->Flush(c));
    return Status::Ok();
  };
  return st.RunChannels(send);
}

Status LlCombineRecv(LlState& st, int b) {
  LlPending& p = st.pending[b];
  const LlHandle& h = *p.chandle;
  LlCombineOutput& out = *p.cout;
  const int N = h.num_tokens, K = h.topk, H = h.hidden;
  // Every destination adds 1 to done[b][d] per combine on b (0 rows included), after its rows.
  for (int d = 0; d < st.R; ++d) {
    Status s = st.WaitGE(d, st.Done(b, d), p.done_target, &st.wait_ns[0][d], [&] {
      return fmt::format("combine rows from rank {} (buffer {}, call {})", d, b, p.call);
    }).status();
    EPX_RETURN_IF_ERROR(s);
  }
  bf16* dst = out.out.empty() ? nullptr : out.out.data();
  if (!dst) {
    out.x.resize(static_cast<size_t>(N) * H);
    dst = out.x.data();
  }
  auto reduce = [&](int c) -> Status {
    float* acc = st.acc[c].data();
    const int per = (N + st.C - 1) / st.C, t0 = std::min(N, per * c), t1 = std::min(N, per * (c + 1));
    for (int t = t0; t < t1; ++t) {
      std::fill(acc, acc + H, 0.0f);
      for (int k = 0; k < K; ++k) {
        if (h.topk_idx[static_cast<size_t>(t) * K + k] < 0) continue;
        const float w = p.weights[static_cast<size_t>(t) * K + k];
        const auto* y = reinterpret_cast<const bf16*>(st.heap() + st.CombineSlot(b, t, k));
        for (int j = 0; j < H; ++j) {
          const float prod = w * Bf16ToFloat(y[j]);  // rounded to FP32 before the add (ISO C++: no contraction)
          acc[j] += prod;
        }
      }
      bf16* o = dst + static_cast<size_t>(t) * H;
      for (int j = 0; j < H; ++j) o[j] = FloatToBf16(acc[j]);
    }
    return Status::Ok();
  };
  return st.RunChannels(reduce);
}

}  // namespace epx
