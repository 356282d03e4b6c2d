// bench/mpi_compare.cc: the MPI baseline inside epx-bench (bench/mpi_compare.h).
#include "bench/mpi_compare.h"

#include <mpi.h>

#include <cstdlib>
#include <cstring>

#include "bench/commands.h"
#include "bench/mpi/mpi_baseline.h"

namespace epx::bench {
namespace {

bool g_initialised_here = false;

template <typename T>
bool Same(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

size_t NormalMismatches(const RefDispatch& got, const RefDispatch& want) {
  return (got.num_rows != want.num_rows) + !Same(got.x, want.x) + !Same(got.x_scales, want.x_scales) +
         !Same(got.topk_idx, want.topk_idx) + !Same(got.topk_weights, want.topk_weights) +
         !Same(got.src_idx, want.src_idx) + !Same(got.tokens_per_expert, want.tokens_per_expert);
}

size_t LlMismatches(const LlRefDispatch& got, const LlRefDispatch& want) {
  size_t bad = !Same(got.count, want.count) + !Same(got.src_info, want.src_info) +
               !Same(got.layout_range, want.layout_range);
  if (bad || got.row_bytes != want.row_bytes || got.scale_row_bytes != want.scale_row_bytes) return bad + 1;
  for (int e = 0; e < want.local_experts; ++e)
    for (int i = 0; i < want.count[e]; ++i) {
      const size_t row = static_cast<size_t>(e) * want.rows + i;
      if (std::memcmp(&got.x[row * want.row_bytes], &want.x[row * want.row_bytes], want.row_bytes) != 0 ||
          (want.scale_row_bytes && std::memcmp(&got.scales[row * want.scale_row_bytes],
                                               &want.scales[row * want.scale_row_bytes], want.scale_row_bytes)))
        return bad + 1;
    }
  return bad;
}

// Times `iters` (+ warm-up) dispatch/combine pairs, each phase after a bootstrap barrier (as the epx
// tables do), and gathers the slowest rank per iteration.
template <typename Dispatch, typename Combine>
StatusOr<MpiRun> Time(Context& ctx, int iters, int warmup, const char* tag, Dispatch&& dispatch, Combine&& combine) {
  MpiRun r;
  std::vector<double> td, tc;
  size_t bad = 0;
  for (int it = 0; it < warmup + iters; ++it) {
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(tag));
    const double t0 = NowUs();
    EPX_ASSIGN_OR_RETURN(size_t bd, dispatch());
    const double t1 = NowUs();
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(tag));
    const double t2 = NowUs();
    EPX_ASSIGN_OR_RETURN(size_t bc, combine());
    const double t3 = NowUs();
    bad += bd + bc;
    if (it >= warmup) {
      td.push_back(t1 - t0);
      tc.push_back(t3 - t2);
    }
  }
  EPX_ASSIGN_OR_RETURN(auto sd, StepTimes(ctx.bootstrap(), td, tag));
  EPX_ASSIGN_OR_RETURN(auto sc, StepTimes(ctx.bootstrap(), tc, tag));
  struct Mine {
    uint64_t bad;
  } mine{bad};
  EPX_ASSIGN_OR_RETURN(auto all, ctx.bootstrap().AllGatherPod(tag, mine));
  for (const Mine& m : all) r.mismatches += m.bad;
  r.ran = true;
  r.dispatch = Summarize(sd);
  r.combine = Summarize(sc);
  r.dispatch_steps = std::move(sd);
  r.combine_steps = std::move(sc);
  return r;
}

}  // namespace

bool MpiUsable(std::string* why_not) {
  if (std::getenv("OMPI_COMM_WORLD_SIZE") == nullptr) {
    *why_not = "not launched by mpirun (tools/compare runs the tables under mpirun)";
    return false;
  }
  int init = 0;
  MPI_Initialized(&init);
  if (!init) {
    if (MPI_Init(nullptr, nullptr) != MPI_SUCCESS) {
      *why_not = "MPI_Init failed";
      return false;
    }
    g_initialised_here = true;
  }
  return true;
}

void MpiFinalize() {
  int fin = 0;
  MPI_Finalized(&fin);
  if (g_initialised_here && !fin) MPI_Finalize();
}

StatusOr<MpiRun> MpiRunNormal(Context& ctx, const MpiNormalCase& c, int iters, int warmup) {
  MpiRun r;
  if (!MpiUsable(&r.why_not)) return r;
  EPX_ASSIGN_OR_RETURN(auto ws, MpiWorkspace::Create(MPI_COMM_WORLD));
  const DispatchInput& e = *c.in;
  const MpiNormalInput in{.num_tokens = e.num_tokens,
                          .hidden = e.hidden,
                          .dtype = e.dtype,
                          .x = e.x,
                          .x_scales = e.x_scales,
                          .num_experts = e.num_experts,
                          .topk = e.topk,
                          .topk_idx = e.topk_idx,
                          .topk_weights = e.topk_weights};
  const MpiNormalCombineInput cin{
      .hidden = e.hidden, .y = c.y, .topk = e.topk, .topk_weights = c.recv_weights};
  RefDispatch out;
  RefCombine back;
  return Time(
      ctx, iters, warmup, "mpi-normal",
      [&]() -> StatusOr<size_t> {
        EPX_RETURN_IF_ERROR(MpiNormalDispatch(*ws, in, &out));
        return c.expected_dispatch ? NormalMismatches(out, *c.expected_dispatch) : 0;
      },
      [&]() -> StatusOr<size_t> {
        EPX_RETURN_IF_ERROR(MpiNormalCombine(*ws, cin, &back));
        if (!c.expected_combine) return size_t{0};
        return static_cast<size_t>(!Same(back.x, c.expected_combine->x) +
                                   !Same(back.topk_weights, c.expected_combine->topk_weights));
      });
}

StatusOr<MpiRun> MpiRunLl(Context& ctx, const MpiLlCase& c, int iters, int warmup) {
  MpiRun r;
  if (!MpiUsable(&r.why_not)) return r;
  EPX_ASSIGN_OR_RETURN(auto ws, MpiWorkspace::Create(MPI_COMM_WORLD));
  MpiLlInput in;
  in.num_tokens = c.num_tokens;
  in.hidden = c.hidden;
  in.x = c.x;
  in.num_experts = c.num_experts;
  in.topk = c.topk;
  in.topk_idx = c.topk_idx;
  in.max_tokens = c.max_tokens;
  in.opt = c.opt;
  MpiLlCombineInput cin;
  cin.y = c.y;
  cin.topk_weights = c.topk_weights;
  LlRefDispatch out;
  std::vector<bf16> back;
  return Time(
      ctx, iters, warmup, "mpi-ll",
      [&]() -> StatusOr<size_t> {
        EPX_RETURN_IF_ERROR(MpiLlDispatch(*ws, in, &out));
        return c.expected_dispatch ? LlMismatches(out, *c.expected_dispatch) : 0;
      },
      [&]() -> StatusOr<size_t> {
        EPX_RETURN_IF_ERROR(MpiLlCombine(*ws, cin, &back));
        return c.expected_combine ? static_cast<size_t>(!Same(back, *c.expected_combine)) : 0;
      });
}

}  // namespace epx::bench
