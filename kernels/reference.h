// kernels/reference.h: the serial reference of normal dispatch and combine: all ranks' inputs in one
// process -> what each rank must receive and what each source must get back. Plain loops written from
// the contract in include/epx/normal.h; the tests and `epx-bench normal --check` compare the kernels
// with it bitwise.
//
// Inputs are reached through row accessors so a caller may keep them in any form (vectors in tests,
// rows regenerated from a seed in the benchmark).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/status.h"
#include "kernels/dtypes.h"
#include "kernels/layout.h"
#include "kernels/normal_config.h"

namespace epx {

struct RefProblem {
  int num_ranks = 1;
  int local_size = 1;  // L; nodes = num_ranks / L
  int num_experts = 1;
  int hidden = 0;
  int topk = 1;
  TokenDtype dtype = TokenDtype::kBf16;
  std::vector<int> num_tokens;                   // [R]
  std::vector<std::vector<int64_t>> topk_idx;    // [R][N_r * K]
  bool with_weights = true;                      // dispatch carries topk_weights
  std::vector<std::vector<float>> topk_weights;  // [R][N_r * K] when with_weights
  // Row `token` of rank `rank`'s x: hidden elements (BF16 bits or e4m3 bytes) and, for FP8,
  // ceil(hidden/128) scales.
  std::function<const void*(int rank, int token)> x_row;
  std::function<const float*(int rank, int token)> scale_row;
  int num_nodes() const { return num_ranks / local_size; }
  ExpertPlacement placement() const { return {num_experts, num_ranks, local_size}; }
};

// Routing of every rank, computed once: layouts and where each (source, token) lands.
struct RefRouting {
  std::vector<DispatchLayout> layout;  // [R] per source rank
  // rows[r]: (source rank, source token) of each row rank r receives, in output order.
  std::vector<std::vector<std::pair<int, int>>> rows;
  // row_at[s][t * R + r]: the row of (s, t) at rank r, or -1 when (s, t) does not go to r.
  std::vector<std::vector<int>> row_at;
};
StatusOr<RefRouting> ReferenceRouting(const RefProblem& p);

// The problem as the survivors of a masked rank see it (NormalBuffer::MaskRank): `rank` has no tokens and
// every top-k slot naming one of its experts is -1. Rows are still reached through p.x_row.
RefProblem ReferenceWithoutRank(const RefProblem& p, int rank);

// What rank `rank` must receive.
struct RefDispatch {
  int num_rows = 0;
  std::vector<uint8_t> x;              // [M, H * elt]
  std::vector<float> x_scales;         // [M, ceil(H/128)] (FP8)
  std::vector<int64_t> topk_idx;       // [M, K] local expert ids, -1 where not on this rank
  std::vector<float> topk_weights;     // [M, K] 0 where -1 (empty if the problem has no weights)
  std::vector<int32_t> src_rank;       // [M]
  std::vector<int32_t> src_idx;        // [M]
  std::vector<int> tokens_per_expert;  // [E/R], each rounded up to expert_alignment
};
RefDispatch ReferenceDispatch(const RefProblem& p, const RefRouting& route, int rank,
                              int expert_alignment = 1);

// Combine inputs seen from rank r: its expert output row `row` (BF16, hidden) and its weights (K).
struct RefCombineInputs {
  std::function<const bf16*(int rank, int row)> y_row;
  std::function<const float*(int rank, int row)> w_row;  // empty: combine without weights
  const bf16* bias0 = nullptr;                           // [N_s, H] of the source rank, or null
  const bf16* bias1 = nullptr;
};

// What source rank `src` must get back: x [N, H] BF16 and weights [N, K] (empty without w_row).
// Order (include/epx/normal.h): one node: acc = 0 (+b0) (+b1), += y of each rank ascending,
// round once. Several nodes: each node's partial = bf16(0 + y of its ranks ascending); acc = 0 (+b0)
// (+b1), += partial of each node ascending (the source's own node too), round. Weights: the same
// FP32 sums without rounding.
struct RefCombine {
  std::vector<bf16> x;
  std::vector<float> topk_weights;
};
RefCombine ReferenceCombine(const RefProblem& p, const RefRouting& route, int src,
                            const RefCombineInputs& in);

}  // namespace epx
