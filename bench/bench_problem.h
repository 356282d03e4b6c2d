// bench/bench_problem.h: a generated problem (kernels/problem_gen.h) as the inputs of the benchmarks and of
// the MPI baseline's timing program and test (bench/mpi): one rank's normal-mode inputs, and the low-latency
// view of the whole problem, so that all of them run the inputs of epx-bench normal.
#pragma once

#include "kernels/dtypes.h"
#include "kernels/ll_reference.h"
#include "kernels/problem_gen.h"
#include "kernels/reference.h"

namespace epx {

// The inputs of `rank` in a struct of the normal-mode contract: DispatchInput (kernels/normal.h) or
// MpiNormalInput (bench/mpi/mpi_baseline.h), which name these fields alike. The spans point into `g`.
template <typename Input>
Input NormalInputOf(const GeneratedProblem& g, int rank) {
  const RefProblem& p = g.problem();
  return Input{.num_tokens = p.num_tokens[rank],
               .hidden = p.hidden,
               .dtype = p.dtype,
               .x = g.x(rank),
               .x_scales = g.scales(rank),
               .num_experts = p.num_experts,
               .topk = p.topk,
               .topk_idx = p.topk_idx[rank],
               .topk_weights = p.topk_weights[rank]};
}

// The same ranks, experts, shape, routing, weights and BF16 rows as `g` (a GeneratedProblem's problem(),
// kernels/problem_gen.h) with T_max = max_tokens. Rows are read through `g`, which must outlive the result.
inline LlRefProblem LlProblemOf(const RefProblem& g, int max_tokens) {
  return {.num_ranks = g.num_ranks,
          .num_experts = g.num_experts,
          .hidden = g.hidden,
          .topk = g.topk,
          .max_tokens = max_tokens,
          .num_tokens = g.num_tokens,
          .topk_idx = g.topk_idx,
          .topk_weights = g.topk_weights,
          .x_row = [&g](int r, int t) { return static_cast<const bf16*>(g.x_row(r, t)); }};
}

}  // namespace epx
