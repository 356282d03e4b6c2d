// kernels/ll_reference.h: the serial reference of low-latency (decode) dispatch and combine (issue 5):
// every rank's inputs in one process -> what each rank must receive and what each source must get back.
// Plain loops written from the contract; the LL kernels and `epx-bench low-latency --check` compare
// with it bitwise (BF16 and FP8 payload/scales) so it must stay simple enough to be obviously right.
//
// Dispatch output of rank r (E_local = E/R local experts, rows = R * T_max rows per expert):
//   x            [E_local, rows, H]   BF16, or FP8 E4M3 bytes (kernels/fp8.h cast of the BF16 row)
//   scales       [E_local, rows, S]   FP8 only: S = ceil(H/128) f32, or ceil(H/512) int32 (UE8M0).
//                                     Row-major here; a kernel may expose a token-contiguous view.
//   count        [E_local]            valid rows of each expert (the first count rows)
//   src_info     [E_local, rows]      source token index of each valid row, -1 elsewhere
//   layout_range [E_local, R]         (begin << 32) | count of the rows that came from each source
// Order inside an expert is deterministic (DeepEP's is not): by source rank, then source token. So the
// rows of source s start at begin(e, s) = sum of counts of sources < s, and the row of (s, t) is
// begin(e, s) + #{t' < t of s selecting e}. Rows past count are zero (x, scales) and -1 (src_info).
//
// Combine on source s, grouped by expert rank: out[t] = bf16(((0 + P_d0) + P_d1) + ...) over the ranks
// d0 < d1 < ... owning at least one of t's experts (idx[t,k] >= 0), where
// P_d = ((0 + w[t,k0] * y_k0) + w[t,k1] * y_k1) + ... over t's top-k slots k0 < k1 < ... whose expert is on
// rank d, y_k = y(expert idx[t,k], row of (s, t)); everything FP32, each product rounded to FP32 before
// its add (no FMA, so any kernel can match bitwise), one rounding at the end. The grouping lets rank d
// send one FP32 partial per token instead of its rows (kernels/ll.h "Combine"); with all experts on one
// rank it is the plain top-k-order sum. A token with no expert gives +0.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/status.h"
#include "kernels/dtypes.h"
#include "kernels/fp8.h"

namespace epx {

struct LlRefProblem {
  int num_ranks = 1;                             // R
  int num_experts = 1;                           // E, a multiple of R; expert e lives on rank e / (E/R)
  int hidden = 0;                                // H
  int topk = 1;                                  // K
  int max_tokens = 0;                            // T_max, the same on every rank
  std::vector<int> num_tokens;                   // [R], each <= T_max
  std::vector<std::vector<int64_t>> topk_idx;    // [R][N_r * K]: global expert ids, -1 = none
  std::vector<std::vector<float>> topk_weights;  // [R][N_r * K] (combine only)
  // BF16 row `token` of rank `rank`'s x (H elements).
  std::function<const bf16*(int rank, int token)> x_row;
  int local_experts() const { return num_experts / num_ranks; }
  int rows_per_expert() const { return num_ranks * max_tokens; }
  // Shapes, T_max, expert ids in [-1, E), and no expert twice in one token's top-k (a duplicate
  // would make "the row of (s, t) in expert e" ambiguous for combine).
  Status Validate() const;
};

struct LlDispatchOptions {
  bool use_fp8 = false;
  Fp8Options fp8;  // round_scale / ue8m0 when use_fp8
};

// Bytes of one row of dispatch scales: 0 (BF16), 4 * ceil(H/128) (f32) or 4 * ceil(H/512) (UE8M0).
size_t LlScaleRowBytes(int hidden, const LlDispatchOptions& opt);

inline int64_t LlPackRange(int32_t begin, int32_t count) {
  return (static_cast<int64_t>(begin) << 32) | static_cast<uint32_t>(count);
}
inline int32_t LlRangeBegin(int64_t r) {
  return static_cast<int32_t>(r >> 32);
}
inline int32_t LlRangeCount(int64_t r) {
  return static_cast<int32_t>(r & 0xffffffff);
}

struct LlRefDispatch {
  int local_experts = 0, rows = 0, hidden = 0;
  size_t row_bytes = 0, scale_row_bytes = 0;
  std::vector<uint8_t> x;             // [E_local, rows, row_bytes]
  std::vector<uint8_t> scales;        // [E_local, rows, scale_row_bytes]
  std::vector<int32_t> count;         // [E_local]
  std::vector<int32_t> src_info;      // [E_local, rows]
  std::vector<int64_t> layout_range;  // [E_local, R]
  const uint8_t* row(int e, int i) const {
    return x.data() + (static_cast<size_t>(e) * rows + i) * row_bytes;
  }
};

// What rank `rank` must receive.
StatusOr<LlRefDispatch> LlReferenceDispatch(const LlRefProblem& p, int rank, const LlDispatchOptions& opt);

// Row of (src, token) in the packed output of global expert `expert` (on rank expert / E_local), or -1
// when the token does not select it. O(R * T_max * K): for tests, not for hot loops.
int LlRowOf(const LlRefProblem& p, int src, int token, int64_t expert);

// The problem as the survivors of a masked rank see it (kernels/ll.h "Masking"): `rank` has no tokens and
// every top-k slot naming one of its experts is -1. Rows are still reached through p.x_row.
LlRefProblem LlReferenceWithoutRank(const LlRefProblem& p, int rank);

// Expert output row `row` of local expert `local_expert` on rank `rank` (BF16, H elements).
using LlExpertOutput = std::function<const bf16*(int rank, int local_expert, int row)>;

// What source rank `src` must get back: [N_src, H] BF16.
StatusOr<std::vector<bf16>> LlReferenceCombine(const LlRefProblem& p, int src, const LlExpertOutput& y);

}  // namespace epx
