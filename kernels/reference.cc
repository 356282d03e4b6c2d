#include "kernels/reference.h"

#include <cstring>

#include "kernels/fp8.h"

namespace epx {

StatusOr<RefRouting> ReferenceRouting(const RefProblem& p) {
  const int R = p.num_ranks;
  if (static_cast<int>(p.num_tokens.size()) != R || static_cast<int>(p.topk_idx.size()) != R)
    return EPX_ERROR(kInvalidArgument, "reference: num_tokens/topk_idx must have one entry per rank ({})", R);
  RefRouting out;
  out.layout.resize(R);
  out.rows.resize(R);
  out.row_at.resize(R);
  for (int s = 0; s < R; ++s) {
    EPX_ASSIGN_OR_RETURN(out.layout[s], ComputeLayout(p.topk_idx[s], p.num_tokens[s], p.topk, p.placement()));
    out.row_at[s].assign(static_cast<size_t>(p.num_tokens[s]) * R, -1);
  }
  // Output order: by source rank, then source token.
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < R; ++s)
      for (int t = 0; t < p.num_tokens[s]; ++t)
        if (out.layout[s].InRank(t, r)) {
          out.row_at[s][static_cast<size_t>(t) * R + r] = static_cast<int>(out.rows[r].size());
          out.rows[r].emplace_back(s, t);
        }
  return out;
}

RefDispatch ReferenceDispatch(const RefProblem& p, const RefRouting& route, int rank, int expert_alignment) {
  const int H = p.hidden, K = p.topk, nb = Fp8NumBlocks(H);
  const int epr = p.num_experts / p.num_ranks;
  const size_t row_bytes = static_cast<size_t>(H) * DtypeBytes(p.dtype);
  const bool fp8 = p.dtype == TokenDtype::kFp8;
  const auto& rows = route.rows[rank];
  RefDispatch d;
  d.num_rows = static_cast<int>(rows.size());
  d.x.resize(rows.size() * row_bytes);
  if (fp8) d.x_scales.resize(rows.size() * nb);
  d.topk_idx.resize(rows.size() * K);
  const bool weights = p.with_weights;
  if (weights) d.topk_weights.resize(rows.size() * K);
  d.tokens_per_expert.assign(epr, 0);
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto [s, t] = rows[i];
    d.src_rank.push_back(s);
    d.src_idx.push_back(t);
    std::memcpy(&d.x[i * row_bytes], p.x_row(s, t), row_bytes);
    if (fp8) std::memcpy(&d.x_scales[i * nb], p.scale_row(s, t), 4 * static_cast<size_t>(nb));
    for (int k = 0; k < K; ++k) {
      const int64_t e = p.topk_idx[s][static_cast<size_t>(t) * K + k];
      const bool mine = e >= 0 && e / epr == rank;
      d.topk_idx[i * K + k] = mine ? e - static_cast<int64_t>(rank) * epr : -1;
      if (mine) d.tokens_per_expert[e - static_cast<int64_t>(rank) * epr]++;
      if (weights)
        d.topk_weights[i * K + k] = mine ? p.topk_weights[s][static_cast<size_t>(t) * K + k] : 0.0f;
    }
  }
  for (int& c : d.tokens_per_expert) c = (c + expert_alignment - 1) / expert_alignment * expert_alignment;
  return d;
}

RefCombine ReferenceCombine(const RefProblem& p, const RefRouting& route, int src,
                            const RefCombineInputs& in) {
  const int H = p.hidden, K = p.topk, R = p.num_ranks, L = p.local_size, NN = p.num_nodes();
  const int N = p.num_tokens[src];
  const bool weights = static_cast<bool>(in.w_row);
  RefCombine c;
  c.x.resize(static_cast<size_t>(N) * H);
  if (weights) c.topk_weights.resize(static_cast<size_t>(N) * K);
  std::vector<float> acc(H), part(H);
  std::vector<float> wacc(K), wpart(K);
  for (int t = 0; t < N; ++t) {
    const int* row_at = &route.row_at[src][static_cast<size_t>(t) * R];
    std::fill(acc.begin(), acc.end(), 0.0f);
    std::fill(wacc.begin(), wacc.end(), 0.0f);
    for (int j = 0; j < H; ++j) {
      if (in.bias0) acc[j] += Bf16ToFloat(in.bias0[static_cast<size_t>(t) * H + j]);
      if (in.bias1) acc[j] += Bf16ToFloat(in.bias1[static_cast<size_t>(t) * H + j]);
    }
    for (int b = 0; b < NN; ++b) {
      bool any = false;
      std::fill(part.begin(), part.end(), 0.0f);
      std::fill(wpart.begin(), wpart.end(), 0.0f);
      for (int l = 0; l < L; ++l) {
        const int r = b * L + l;
        if (row_at[r] < 0) continue;
        any = true;
        // One node: contributions go straight into acc; several: into the node's partial.
        float* dst = NN == 1 ? acc.data() : part.data();
        float* wdst = NN == 1 ? wacc.data() : wpart.data();
        const bf16* y = in.y_row(r, row_at[r]);
        for (int j = 0; j < H; ++j) dst[j] += Bf16ToFloat(y[j]);
        if (weights) {
          const float* w = in.w_row(r, row_at[r]);
          for (int k = 0; k < K; ++k) wdst[k] += w[k];
        }
      }
      if (NN > 1 && any) {
        for (int j = 0; j < H; ++j) acc[j] += Bf16ToFloat(FloatToBf16(part[j]));
        for (int k = 0; k < K; ++k) wacc[k] += wpart[k];
      }
    }
    for (int j = 0; j < H; ++j) c.x[static_cast<size_t>(t) * H + j] = FloatToBf16(acc[j]);
    if (weights)
      for (int k = 0; k < K; ++k) c.topk_weights[static_cast<size_t>(t) * K + k] = wacc[k];
  }
  return c;
}

RefProblem ReferenceWithoutRank(const RefProblem& p, int rank) {
  RefProblem q = p;
  const int epr = p.num_experts / p.num_ranks;
  q.num_tokens[rank] = 0;
  q.topk_idx[rank].clear();
  if (q.with_weights) q.topk_weights[rank].clear();
  for (auto& idx : q.topk_idx)
    for (int64_t& e : idx)
      if (e >= 0 && e / epr == rank) e = -1;
  return q;
}

}  // namespace epx
