// bench/mpi_compare.h: runs the MPI baseline (bench/mpi/mpi_baseline.h) inside an epx-bench table, in
// the same rank processes, on the same inputs and pinned cores as the epx kernels, so the ratios come
// from one run. Available when epx-bench was built with MPI (EPX_WITH_MPI) AND launched by mpirun
// (tools/compare does both); otherwise the calls return ran = false with the reason, and the tables say
// so instead of silently dropping the column.
#pragma once

#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "bench/bench_stats.h"
#include "core/status.h"
#include "kernels/ll_reference.h"
#include "kernels/normal.h"
#include "kernels/reference.h"
#include "transport/context.h"

namespace epx::bench {

struct MpiRun {
  bool ran = false;
  std::string why_not;      // when !ran
  Stats dispatch, combine;  // slowest rank per iteration
  size_t mismatches = 0;    // tensors that differ from the expected ones (--check), summed over ranks
  std::vector<double> dispatch_steps, combine_steps;  // the samples of `dispatch` / `combine`
};
// Pools `more` (a later block of --rounds) into *run: steps appended, stats recomputed, mismatches added.
void MergeMpiRuns(MpiRun* run, const MpiRun& more);

// True when this process can run the MPI baseline (built in and started by mpirun). MPI is initialised
// on first use and finalised by MpiFinalize() (call it once before exit; harmless when unused).
bool MpiUsable(std::string* why_not);
void MpiFinalize();

// Normal mode: this rank's epx inputs (the baseline dispatches the same spans, with the same shape and
// top-k) and the expert outputs y [M, H] in the reference's row order. `expected` (or null) is compared
// every iteration.
struct MpiNormalCase {
  const DispatchInput* in = nullptr;
  std::span<const bf16> y;              // [M, H]
  std::span<const float> recv_weights;  // [M, K]
  const RefDispatch* expected_dispatch = nullptr;
  const RefCombine* expected_combine = nullptr;  // one-node order (null: not checked)
};
StatusOr<MpiRun> MpiRunNormal(Context& ctx, const MpiNormalCase& c, int iters, int warmup);

// Low-latency mode.
struct MpiLlCase {
  int num_tokens = 0, hidden = 0, topk = 0, num_experts = 0, max_tokens = 0;
  LlDispatchOptions opt;
  std::span<const bf16> x;
  std::span<const int64_t> topk_idx;
  std::span<const float> topk_weights;
  std::span<const bf16> y;  // [E_local, R*T_max, H]
  const LlRefDispatch* expected_dispatch = nullptr;
  const std::vector<bf16>* expected_combine = nullptr;
};
StatusOr<MpiRun> MpiRunLl(Context& ctx, const MpiLlCase& c, int iters, int warmup);

}  // namespace epx::bench

namespace epx::bench {

// ---- Reporting shared by the tables ------------------------------------------------------------------

// Adds mpi_* keys (times, GB/s from the same byte counts as epx, and dispatch_vs_mpi/combine_vs_mpi =
// MPI time / epx time: > 1 means epx is faster), or "mpi": "not run: <why>".
void AddMpiJson(const MpiRun& m, double d_bytes, double c_bytes, nlohmann::json* j);
// Prints the baseline block under a table: epx, MPI and the copy limit per op, with the ratios.
void PrintBaselines(const nlohmann::json& j);

}  // namespace epx::bench
