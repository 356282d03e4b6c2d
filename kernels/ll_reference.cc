#include "kernels/ll_reference.h"

#include <cstring>

namespace epx {
namespace {

// pairs[s][e]: how many tokens of source s select global expert e.
std::vector<std::vector<int>> PairCounts(const LlRefProblem& p) {
  std::vector<std::vector<int>> c(p.num_ranks, std::vector<int>(p.num_experts, 0));
  for (int s = 0; s < p.num_ranks; ++s)
    for (int64_t e : p.topk_idx[s])
      if (e >= 0) ++c[s][e];
  return c;
}

// begin[e]: first row of source `src` in global expert e (sources before it come first).
std::vector<int> SourceBegins(const LlRefProblem& p, const std::vector<std::vector<int>>& pairs, int src) {
  std::vector<int> begin(p.num_experts, 0);
  for (int s = 0; s < src; ++s)
    for (int e = 0; e < p.num_experts; ++e) begin[e] += pairs[s][e];
  return begin;
}

}  // namespace

Status LlRefProblem::Validate() const {
  if (num_ranks < 1 || num_experts < 1 || num_experts % num_ranks != 0)
    return EPX_ERROR(kInvalidArgument, "ll reference: E={} is not a positive multiple of R={}", num_experts,
                     num_ranks);
  if (hidden < 1 || topk < 1 || max_tokens < 0)
    return EPX_ERROR(kInvalidArgument, "ll reference: H={} K={} T_max={}", hidden, topk, max_tokens);
  if (static_cast<int>(num_tokens.size()) != num_ranks || static_cast<int>(topk_idx.size()) != num_ranks)
    return EPX_ERROR(kInvalidArgument, "ll reference: num_tokens/topk_idx need one entry per rank");
  for (int s = 0; s < num_ranks; ++s) {
    const int n = num_tokens[s];
    if (n < 0 || n > max_tokens)
      return EPX_ERROR(kInvalidArgument, "ll reference: rank {} has {} tokens, T_max is {}", s, n,
                       max_tokens);
    if (topk_idx[s].size() != static_cast<size_t>(n) * topk)
      return EPX_ERROR(kInvalidArgument, "ll reference: rank {} topk_idx has {} entries, want {}", s,
                       topk_idx[s].size(), static_cast<size_t>(n) * topk);
    for (int t = 0; t < n; ++t)
      for (int k = 0; k < topk; ++k) {
        const int64_t e = topk_idx[s][static_cast<size_t>(t) * topk + k];
        if (e < -1 || e >= num_experts)
          return EPX_ERROR(kInvalidArgument,
                           "ll reference: rank {} token {} slot {}: expert {} not in [-1, {})", s, t, k, e,
                           num_experts);
        for (int j = 0; j < k && e >= 0; ++j)
          if (topk_idx[s][static_cast<size_t>(t) * topk + j] == e)
            return EPX_ERROR(kInvalidArgument, "ll reference: rank {} token {} selects expert {} twice", s, t,
                             e);
      }
  }
  return Status::Ok();
}

size_t LlScaleRowBytes(int hidden, const LlDispatchOptions& opt) {
  if (!opt.use_fp8) return 0;
  return 4 * static_cast<size_t>(opt.fp8.ue8m0 ? Ue8m0Words(hidden) : Fp8NumBlocks(hidden));
}

StatusOr<LlRefDispatch> LlReferenceDispatch(const LlRefProblem& p, int rank, const LlDispatchOptions& opt) {
  EPX_RETURN_IF_ERROR(p.Validate());
  if (rank < 0 || rank >= p.num_ranks)
    return EPX_ERROR(kInvalidArgument, "ll reference: rank {} not in [0, {})", rank, p.num_ranks);
  if (opt.use_fp8 && opt.fp8.ue8m0 && !opt.fp8.round_scale)
    return EPX_ERROR(kInvalidArgument, "ll reference: ue8m0 needs round_scale");
  LlRefDispatch d;
  const int el = p.local_experts();
  d.local_experts = el;
  d.rows = p.rows_per_expert();
  d.hidden = p.hidden;
  d.row_bytes = static_cast<size_t>(p.hidden) * (opt.use_fp8 ? 1 : 2);
  d.scale_row_bytes = LlScaleRowBytes(p.hidden, opt);
  const size_t total_rows = static_cast<size_t>(el) * d.rows;
  d.x.assign(total_rows * d.row_bytes, 0);
  d.scales.assign(total_rows * d.scale_row_bytes, 0);
  d.count.assign(el, 0);
  d.src_info.assign(total_rows, -1);
  d.layout_range.assign(static_cast<size_t>(el) * p.num_ranks, 0);
  // Walking sources in rank order and each source's tokens in order is exactly the deterministic
  // order of the contract: rows are appended, so no index arithmetic can get it wrong.
  for (int s = 0; s < p.num_ranks; ++s) {
    for (int e = 0; e < el; ++e) d.layout_range[static_cast<size_t>(e) * p.num_ranks + s] = d.count[e];
    for (int t = 0; t < p.num_tokens[s]; ++t) {
      for (int k = 0; k < p.topk; ++k) {
        const int64_t g = p.topk_idx[s][static_cast<size_t>(t) * p.topk + k];
        if (g < 0 || g / el != rank) continue;
        const int e = static_cast<int>(g % el);
        const size_t row = static_cast<size_t>(e) * d.rows + d.count[e]++;
        const bf16* in = p.x_row(s, t);
        uint8_t* out = d.x.data() + row * d.row_bytes;
        if (opt.use_fp8)
          CastRowToFp8(in, p.hidden, opt.fp8, out, d.scales.data() + row * d.scale_row_bytes);
        else
          std::memcpy(out, in, d.row_bytes);
        d.src_info[row] = t;
      }
    }
    for (int e = 0; e < el; ++e) {
      int64_t& r = d.layout_range[static_cast<size_t>(e) * p.num_ranks + s];
      const int32_t begin = static_cast<int32_t>(r);
      r = LlPackRange(begin, d.count[e] - begin);
    }
  }
  return d;
}

int LlRowOf(const LlRefProblem& p, int src, int token, int64_t expert) {
  const auto pairs = PairCounts(p);
  int row = SourceBegins(p, pairs, src)[expert];
  for (int t = 0; t < p.num_tokens[src]; ++t)
    for (int k = 0; k < p.topk; ++k) {
      if (p.topk_idx[src][static_cast<size_t>(t) * p.topk + k] != expert) continue;
      if (t == token) return row;
      ++row;
    }
  return -1;
}

StatusOr<std::vector<bf16>> LlReferenceCombine(const LlRefProblem& p, int src, const LlExpertOutput& y) {
  EPX_RETURN_IF_ERROR(p.Validate());
  if (src < 0 || src >= p.num_ranks)
    return EPX_ERROR(kInvalidArgument, "ll reference: source {} not in [0, {})", src, p.num_ranks);
  const int n = p.num_tokens[src], k_max = p.topk, h = p.hidden, el = p.local_experts();
  if (p.topk_weights.size() != static_cast<size_t>(p.num_ranks) ||
      p.topk_weights[src].size() != static_cast<size_t>(n) * k_max)
    return EPX_ERROR(kInvalidArgument, "ll reference: combine needs topk_weights [N, K] of rank {}", src);
  // next[e]: the row the next token of src selecting e has in expert e (tokens are visited in order).
  std::vector<int> next = SourceBegins(p, PairCounts(p), src);
  std::vector<bf16> out(static_cast<size_t>(n) * h);
  std::vector<float> acc(h), part(h);
  for (int t = 0; t < n; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int d = 0; d < p.num_ranks; ++d) {  // groups in rank order
      bool any = false;
      for (int k = 0; k < k_max; ++k) {  // terms of a group in top-k order
        const int64_t g = p.topk_idx[src][static_cast<size_t>(t) * k_max + k];
        if (g < 0 || g / el != d) continue;
        if (!any) std::fill(part.begin(), part.end(), 0.0f);
        any = true;
        const float w = p.topk_weights[src][static_cast<size_t>(t) * k_max + k];
        const bf16* row = y(d, static_cast<int>(g % el), next[g]++);
        for (int j = 0; j < h; ++j) {
          const float prod = w * Bf16ToFloat(row[j]);  // rounded to FP32 before the add: no FMA
          part[j] = part[j] + prod;
        }
      }
      if (any)
        for (int j = 0; j < h; ++j) acc[j] = acc[j] + part[j];
    }
    for (int j = 0; j < h; ++j) out[static_cast<size_t>(t) * h + j] = FloatToBf16(acc[j]);
  }
  return out;
}

LlRefProblem LlReferenceWithoutRank(const LlRefProblem& p, int rank) {
  LlRefProblem q = p;
  const int El = p.num_experts / p.num_ranks;
  q.num_tokens[rank] = 0;
  q.topk_idx[rank].clear();
  q.topk_weights[rank].clear();
  for (auto& idx : q.topk_idx)
    for (int64_t& e : idx)
      if (e >= 0 && e / El == rank) e = -1;
  return q;
}

}  // namespace epx
