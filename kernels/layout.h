// kernels/layout.h: the dispatch layout (DeepEP's get_dispatch_layout), computed from top-k routing.
//
// Experts are block-partitioned: E experts over R ranks, E % R == 0, rank(e) = e / (E/R); ranks over
// nodes: node(r) = r / L. A token counts once per rank and once per node however many of its experts
// live there; -1 in topk_idx means "no expert".
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"

namespace epx {

struct ExpertPlacement {
  int num_experts = 0;   // E
  int num_ranks = 1;     // R
  int local_size = 1;    // L (ranks per node)
  int experts_per_rank() const { return num_experts / num_ranks; }
  int num_nodes() const { return num_ranks / local_size; }
  int RankOf(int64_t expert) const { return static_cast<int>(expert / experts_per_rank()); }
  Status Validate() const;
};

struct DispatchLayout {
  std::vector<int> tokens_per_rank;      // [R]
  std::vector<int> tokens_per_node;      // [nodes]
  std::vector<int> tokens_per_expert;    // [E]  (token, expert) pairs
  std::vector<uint8_t> is_token_in_rank; // [N, R] row-major, 0/1
  int num_tokens = 0;
  bool InRank(int t, int r) const { return is_token_in_rank[static_cast<size_t>(t) * tokens_per_rank.size() + r]; }
};

// topk_idx: [num_tokens, topk] row-major. Errors name the token, slot and value of a bad expert id.
StatusOr<DispatchLayout> ComputeLayout(std::span<const int64_t> topk_idx, int num_tokens, int topk,
                                       const ExpertPlacement& ep);

}  // namespace epx
