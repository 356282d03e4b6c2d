#include "kernels/layout.h"

namespace epx {

Status ExpertPlacement::Validate() const {
  if (num_ranks < 1 || local_size < 1 || num_ranks % local_size != 0)
    return EPX_ERROR(kInvalidArgument, "placement: {} ranks are not a whole number of nodes of {}", num_ranks,
                     local_size);
  if (num_experts < num_ranks || num_experts % num_ranks != 0)
    return EPX_ERROR(kInvalidArgument, "placement: {} experts do not divide evenly over {} ranks (E % R must be 0)",
                     num_experts, num_ranks);
  return Status::Ok();
}

StatusOr<DispatchLayout> ComputeLayout(std::span<const int64_t> topk_idx, int num_tokens, int topk,
                                       const ExpertPlacement& ep) {
  EPX_RETURN_IF_ERROR(ep.Validate());
  if (num_tokens < 0 || topk < 1)
    return EPX_ERROR(kInvalidArgument, "layout: shape [{}, {}] of topk_idx is invalid (need N >= 0, K >= 1)",
                     num_tokens, topk);
  if (topk_idx.size() != static_cast<size_t>(num_tokens) * topk)
    return EPX_ERROR(kInvalidArgument, "layout: topk_idx has {} elements, expected [{}, {}] = {}", topk_idx.size(),
                     num_tokens, topk, static_cast<size_t>(num_tokens) * topk);
  const int R = ep.num_ranks, nodes = ep.num_nodes();
  DispatchLayout l;
  l.num_tokens = num_tokens;
  l.tokens_per_rank.assign(R, 0);
  l.tokens_per_node.assign(nodes, 0);
  l.tokens_per_expert.assign(ep.num_experts, 0);
  l.is_token_in_rank.assign(static_cast<size_t>(num_tokens) * R, 0);
  std::vector<uint8_t> in_node(nodes);
  for (int t = 0; t < num_tokens; ++t) {
    uint8_t* row = &l.is_token_in_rank[static_cast<size_t>(t) * R];
    std::fill(in_node.begin(), in_node.end(), 0);
    for (int k = 0; k < topk; ++k) {
      const int64_t e = topk_idx[static_cast<size_t>(t) * topk + k];
      if (e == -1) continue;
      if (e < 0 || e >= ep.num_experts)
        return EPX_ERROR(kInvalidArgument, "layout: topk_idx[{}][{}] = {} is not an expert id in [-1, {})", t, k, e,
                         ep.num_experts);
      l.tokens_per_expert[e]++;
      const int r = ep.RankOf(e);
      if (!row[r]) {
        row[r] = 1;
        l.tokens_per_rank[r]++;
      }
      const int n = r / ep.local_size;
      if (!in_node[n]) {
        in_node[n] = 1;
        l.tokens_per_node[n]++;
      }
    }
  }
  return l;
}

}  // namespace epx
