// bench/exchange_run.h: what epx-bench normal and low-latency share between their setup and their table
// (bench/commands.h has their flags and the table frame): the generated problem, the timed loop, the figures
// gathered over ranks (step times, CPU times, check results, the copy limit), the MPI baseline switch and
// the JSON keys both tables write. Each command keeps what is its own: its buffer and inputs, its reference
// check and its byte counts.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_stats.h"
#include "bench/commands.h"
#include "bench/copy_limit.h"
#include "bench/mpi_compare.h"
#include "core/status.h"
#include "kernels/problem_gen.h"
#include "transport/context.h"

namespace epx::bench {

// The problem both tables run: --tokens tokens on every rank, each routed to --topk of --experts experts
// chosen uniformly, every value a function of (--seed, rank, token, column). kInvalidArgument when the
// experts do not split evenly over the ranks or are fewer than --topk.
StatusOr<ProblemSpec> ExchangeSpec(const ExchangeFlags& o, const Placement& pl, TokenDtype dtype);

// Wall-clock and CPU time of one call, in microseconds.
struct CallTime {
  double wall_us = 0, cpu_us = 0;
};

// Runs `call` (returning Status) and times it. The CPU clock (a syscall) is read outside the wall-clock
// interval, so it does not add to the call's time.
template <typename Call>
Status TimeCall(Call&& call, CallTime* t) {
  const double c0 = CpuUs(), t0 = NowUs();
  EPX_RETURN_IF_ERROR(call());
  const double t1 = NowUs(), c1 = CpuUs();
  *t = {t1 - t0, c1 - c0};
  return Status::Ok();
}

// This rank's samples of the timed iterations.
struct ExchangeSamples {
  std::vector<double> dispatch_us, combine_us;          // wall-clock time per call
  std::vector<double> cpu_dispatch_us, cpu_combine_us;  // CPU time of the process per call
  size_t bad = 0;  // --check: output tensors that differed from the reference, over all iterations
};

// The loop of both tables: --warmup untimed, then --iters timed iterations of a bootstrap barrier
// ("<tag>-dispatch"), dispatch(timed, &time), a barrier ("<tag>-combine"), combine(timed, &time) and, with
// --check, check(iteration) -> differing tensors. Each call times its own part (TimeCall), so what it does
// outside (a two-phase call's barrier between its phases, untimed preparation) is not counted.
template <typename Dispatch, typename Combine, typename Check>
StatusOr<ExchangeSamples> RunExchangeLoop(Context& ctx, const ExchangeFlags& o, const std::string& tag,
                                          Dispatch&& dispatch, Combine&& combine, Check&& check) {
  ExchangeSamples s;
  const std::string dispatch_phase = tag + "-dispatch", combine_phase = tag + "-combine";
  for (int it = 0; it < o.warmup + o.iters; ++it) {
    const bool timed = it >= o.warmup;
    CallTime d, c;
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(dispatch_phase));
    EPX_RETURN_IF_ERROR(dispatch(timed, &d));
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(combine_phase));
    EPX_RETURN_IF_ERROR(combine(timed, &c));
    if (timed) {
      s.dispatch_us.push_back(d.wall_us);
      s.combine_us.push_back(c.wall_us);
      s.cpu_dispatch_us.push_back(d.cpu_us);
      s.cpu_combine_us.push_back(c.cpu_us);
    }
    if (o.check) s.bad += check(it);
  }
  return s;
}

// Block r of --rounds: o with iters split as evenly as possible (the first blocks get the remainder) and
// warmup kept in block 0, min(warmup, 3) later (the other side's block has evicted the caches meanwhile).
ExchangeFlags RoundFlags(const ExchangeFlags& o, int r);
// Appends `more`'s samples to *s (the blocks of --rounds).
void AppendSamples(ExchangeSamples* s, const ExchangeSamples& more);
// Checks --rounds against --iters (every block needs a timed iteration).
Status CheckRounds(const ExchangeFlags& o);
// ", in N rounds with the MPI baseline" for a table header, or "" with one round.
std::string RoundsNote(const ExchangeFlags& o);

// What a rank adds to the summary besides its samples.
struct ExchangeCounts {
  int64_t recv_rows = 0;          // rows this rank received in the last dispatch
  std::array<int64_t, 2> mean{};  // the command's own counts, averaged over ranks (ExchangeSummary::mean)
  // The copy limit's job (bench/copy_limit.h): this rank's bytes of each op, in rows of that op's size.
  size_t dispatch_bytes = 0, dispatch_row = 0, combine_bytes = 0, combine_row = 0;
  // The reduce limit's job (MeasureReduceLimit), low-latency only (0 tokens: not measured): this rank's
  // tokens, each summed from `reduce_topk` weighted rows of `reduce_hidden`.
  int reduce_tokens = 0, reduce_topk = 0, reduce_hidden = 0;
  // The cast limit's job (MeasureCastLimit), low-latency FP8 only (cast_hidden 0: not measured; the same
  // on every rank): this rank's rows x, cast with `cast_fp8`.
  std::span<const bf16> cast_x{};
  int cast_hidden = 0;
  Fp8Options cast_fp8{};
  // The combine traffic floor's job (MeasureCombineTraffic), low-latency on one node in the default mode
  // only (hidden 0: not measured; the same on every rank).
  CombineTrafficJob combine_traffic{};
};

// The figures of a table, the same on every rank.
struct ExchangeSummary {
  Stats dispatch, combine;                         // step time: the slowest rank per iteration
  double cpu_dispatch_us = 0, cpu_combine_us = 0;  // median CPU time per call, mean over ranks
  int64_t bad = 0;                                 // summed over ranks
  std::vector<int64_t> recv_rows;                  // per rank
  std::array<double, 2> mean{};                    // ExchangeCounts::mean, mean over ranks
  CopyLimitResult copy_dispatch, copy_combine;
  bool has_reduce = false;  // ExchangeCounts::reduce_tokens > 0 on this rank (the same on all in the bench)
  CopyLimitResult reduce_combine;
  // With has_reduce: the DRAM floor's parts (bench/copy_limit.h): the dispatch copy with streaming stores,
  // and the reduce from cold caches.
  CopyLimitResult stream_dispatch, cold_reduce_combine;
  // With has_reduce and ExchangeCounts::cast_hidden > 0: the FP8 cast of the dispatch rows alone.
  bool has_cast = false;
  CopyLimitResult cast_dispatch;
  // With ExchangeCounts::combine_traffic.hidden > 0: the least traffic of an exact combine, all ranks.
  bool has_traffic = false;
  CopyLimitResult traffic_combine;
};

// Collective: gathers the counts ("<tag>-counts") and the step times ("<tag>-times-d", "-c"), then measures
// the copy limit ("<tag>-copy-d", "-c") and, when asked, the reduce limit ("<tag>-reduce") and the DRAM
// floor ("<tag>-stream-d", "<tag>-reduce-cold"), the cast limit ("<tag>-cast") and the combine traffic
// floor ("<tag>-traffic-c") over --iters (+ --warmup)
// iterations.
StatusOr<ExchangeSummary> SummarizeExchange(Context& ctx, const ExchangeFlags& o, const std::string& tag,
                                            const ExchangeSamples& s, const ExchangeCounts& mine);

// The MPI baseline of a table unless --mpi off: `run` returns its StatusOr<MpiRun> (bench/mpi_compare.h).
// With --mpi on, a baseline that cannot run is an error instead of a note under the table.
template <typename Run>
StatusOr<MpiRun> RunMpiBaseline(const ExchangeFlags& o, Run&& run) {
  MpiRun mpi;
  mpi.why_not = "--mpi off";
  if (o.mpi == "off") return mpi;
  EPX_ASSIGN_OR_RETURN(mpi, run());
  if (!mpi.ran && o.mpi == "on") return EPX_ERROR(kInvalidArgument, "--mpi on: {}", mpi.why_not);
  return mpi;
}

// The timed part of a table: --rounds blocks, each RunExchangeLoop (epx) and then the MPI baseline
// (RunMpiBaseline of mpi_case(iters, warmup) -> StatusOr<MpiRun>) over the block's RoundFlags; the samples
// of both pooled over the blocks.
struct ExchangeRuns {
  ExchangeSamples epx;
  MpiRun mpi;
};
template <typename Dispatch, typename Combine, typename Check, typename MpiCase>
StatusOr<ExchangeRuns> RunRounds(Context& ctx, const ExchangeFlags& o, const std::string& tag,
                                 Dispatch&& dispatch, Combine&& combine, Check&& check, MpiCase&& mpi_case) {
  EPX_RETURN_IF_ERROR(CheckRounds(o));
  ExchangeRuns runs;
  for (int r = 0; r < o.rounds; ++r) {
    const ExchangeFlags ro = RoundFlags(o, r);
    EPX_ASSIGN_OR_RETURN(const ExchangeSamples block,
                         RunExchangeLoop(ctx, ro, tag, dispatch, combine, check));
    AppendSamples(&runs.epx, block);
    EPX_ASSIGN_OR_RETURN(const MpiRun mpi_block,
                         RunMpiBaseline(ro, [&] { return mpi_case(ro.iters, ro.warmup); }));
    MergeMpiRuns(&runs.mpi, mpi_block);
  }
  return runs;
}

// Bytes per rank (mean over ranks) that each op moves: the numerators of the GB/s columns.
struct ExchangeBytes {
  double dispatch = 0, combine = 0;
  double rdma_dispatch = 0, rdma_combine = 0;  // to other nodes (reported with several nodes only)
};

// The JSON keys both tables write (the command adds its own, e.g. "config"): the shape and options,
// `dtype` of the dispatch payload, the check verdict, step times, GB/s, the copy limit, CPU times, the
// received rows, the reduce limit and floors (has_reduce) and the MPI baseline's keys (AddMpiJson).
nlohmann::json ExchangeJson(const char* mode, const char* dtype, const Placement& pl, const ExchangeFlags& o,
                            const ExchangeSummary& s, const ExchangeBytes& bytes, const MpiRun& mpi);

}  // namespace epx::bench
