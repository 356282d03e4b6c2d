// mpi_baseline_timing: how long the MPI baseline (mpi_baseline.h) takes at DeepEP's shapes, measured the
// way epx-bench measures epx so that the two can be put side by side:
//   normal:      every rank dispatches --tokens tokens of --hidden columns (BF16, or FP8 with --fp8) to
//                --topk of --experts experts, then combines BF16 expert outputs (with the received weights)
//   low-latency: every rank dispatches --ll-tokens tokens (also T_max) as (token, expert) pairs, FP8 unless
//                --ll-bf16, then combines BF16 expert outputs with its top-k weights
// Each call is timed after an MPI_Barrier; an iteration's time is the slowest rank's; the table shows
// median and p99 over --iters (--ll-iters) iterations after --warmup untimed ones. GB/s is algorithmic per
// rank (averaged over ranks), with epx-bench's byte counts: normal = received rows x row bytes (H x element
// size + 4 B per 128 columns for FP8; combine 2H); low-latency = (token, expert) pairs sent x (H + scales +
// 16 B for FP8, 2H + 16 for BF16; combine 2H). --check compares the last iteration with the references.
//
//   mpirun --allow-run-as-root --oversubscribe -n 2 --mca pml ob1 --mca btl self,vader
//       build/release/bench/mpi/mpi_baseline_timing   (one command line)
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench_problem.h"
#include "bench/bench_stats.h"
#include "bench/mpi/mpi_baseline.h"
#include "kernels/fp8.h"
#include "kernels/problem_gen.h"

namespace epx {
namespace {

struct Options {
  int tokens = 4096, ll_tokens = 128, hidden = 7168, topk = 8, experts = 64;
  int iters = 20, ll_iters = 200, warmup = 3;
  bool fp8 = false, ll_bf16 = false, check = false;
  std::string mode = "both";
};

struct Times {
  std::vector<double> dispatch, combine;
};

// Slowest rank per iteration.
std::vector<double> Slowest(const std::vector<double>& mine) {
  std::vector<double> all(mine.size());
  MPI_Allreduce(mine.data(), all.data(), static_cast<int>(mine.size()), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return all;
}

double AvgOverRanks(double v) {
  int R = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &R);
  double sum = 0;
  MPI_Allreduce(&v, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return sum / R;
}

int64_t SumOverRanks(int64_t v) {
  int64_t sum = 0;
  MPI_Allreduce(&v, &sum, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  return sum;
}

void Print(const char* what, const Times& t, double d_bytes, double c_bytes, int rank) {
  const auto sd = bench::Summarize(Slowest(t.dispatch)), sc = bench::Summarize(Slowest(t.combine));
  if (rank != 0) return;
  std::printf("%-22s %12.1f %12.1f %10.2f\n", (std::string(what) + " dispatch").c_str(), sd.median_us,
              sd.p99_us, bench::Gbps(d_bytes, sd.median_us));
  std::printf("%-22s %12.1f %12.1f %10.2f\n", (std::string(what) + " combine").c_str(), sc.median_us,
              sc.p99_us, bench::Gbps(c_bytes, sc.median_us));
}

// The timed loop of both modes: --warmup + `iters` dispatch/combine pairs, each call after an MPI_Barrier;
// prepare() runs once, untimed, after the first dispatch (the expert outputs need its row counts). A call
// that fails is printed ("<what>dispatch: ...") and ends the loop with 1.
template <typename Dispatch, typename Prepare, typename Combine>
int TimeCalls(int warmup, int iters, const char* what, Dispatch&& dispatch, Prepare&& prepare,
              Combine&& combine, Times* t) {
  for (int i = 0; i < warmup + iters; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = bench::NowUs();
    Status st = dispatch();
    const double t1 = bench::NowUs();
    if (!st.ok()) return std::fprintf(stderr, "%sdispatch: %s\n", what, st.ToString().c_str()), 1;
    if (i == 0) prepare();
    MPI_Barrier(MPI_COMM_WORLD);
    const double t2 = bench::NowUs();
    st = combine();
    const double t3 = bench::NowUs();
    if (!st.ok()) return std::fprintf(stderr, "%scombine: %s\n", what, st.ToString().c_str()), 1;
    if (i >= warmup) {
      t->dispatch.push_back(t1 - t0);
      t->combine.push_back(t3 - t2);
    }
  }
  return 0;
}

int Normal(MpiWorkspace& ws, const Options& o) {
  const int R = ws.size(), me = ws.rank(), H = o.hidden, K = o.topk;
  const ProblemSpec spec{.num_ranks = R,
                         .local_size = R,
                         .num_experts = o.experts,
                         .hidden = H,
                         .topk = K,
                         .dtype = o.fp8 ? TokenDtype::kFp8 : TokenDtype::kBf16,
                         .num_tokens = std::vector<int>(R, o.tokens)};
  GeneratedProblem gen(spec, me);
  const RefProblem& p = gen.problem();
  const MpiNormalInput in = NormalInputOf<MpiNormalInput>(gen, me);
  RefDispatch out;
  RefCombine back;
  std::vector<bf16> y;
  std::vector<float> w;
  Times t;
  if (TimeCalls(
          o.warmup, o.iters, "", [&] { return MpiNormalDispatch(ws, in, &out); },
          [&] {  // expert outputs: hashed BF16 rows (what --check regenerates)
            y.resize(static_cast<size_t>(out.num_rows) * H);
            for (int r = 0; r < out.num_rows; ++r)
              GeneratedProblem::HashRow(99, me, r, 0, H, &y[static_cast<size_t>(r) * H]);
            w = out.topk_weights;
          },
          [&] { return MpiNormalCombine(ws, {.hidden = H, .y = y, .topk = K, .topk_weights = w}, &back); },
          &t) != 0)
    return 1;
  const size_t row_bytes =
      static_cast<size_t>(H) * DtypeBytes(spec.dtype) + (o.fp8 ? 4 * Fp8NumBlocks(H) : 0);
  const double rows = AvgOverRanks(out.num_rows);
  Print(o.fp8 ? "normal FP8" : "normal BF16", t, rows * row_bytes, rows * 2.0 * H, me);
  int bad = 0;
  if (o.check) {
    auto route = ReferenceRouting(p);
    if (!route.ok()) return 1;
    std::vector<RefDispatch> want;
    for (int r = 0; r < R; ++r) want.push_back(ReferenceDispatch(p, *route, r));
    const RefDispatch& d = want[me];
    bad += out.x != d.x || out.x_scales != d.x_scales || out.topk_idx != d.topk_idx ||
           out.topk_weights != d.topk_weights || out.src_idx != d.src_idx || out.src_rank != d.src_rank ||
           out.tokens_per_expert != d.tokens_per_expert;
    std::vector<bf16> row(H);
    RefCombineInputs rin;
    rin.y_row = [&](int r, int i) -> const bf16* {
      GeneratedProblem::HashRow(99, r, i, 0, H, row.data());
      return row.data();
    };
    rin.w_row = [&](int r, int i) { return &want[r].topk_weights[static_cast<size_t>(i) * K]; };
    const RefCombine c = ReferenceCombine(p, *route, me, rin);
    bad += std::memcmp(c.x.data(), back.x.data(), 2 * c.x.size()) != 0 || c.topk_weights != back.topk_weights;
  }
  return bad;
}

int LowLatency(MpiWorkspace& ws, const Options& o) {
  const int R = ws.size(), me = ws.rank(), H = o.hidden, K = o.topk, El = o.experts / R;
  const ProblemSpec spec{.num_ranks = R,
                         .local_size = R,
                         .num_experts = o.experts,
                         .hidden = H,
                         .topk = K,
                         .num_tokens = std::vector<int>(R, o.ll_tokens),
                         .seed = 5};
  GeneratedProblem gen(spec, -1);
  const LlRefProblem p = LlProblemOf(gen.problem(), o.ll_tokens);
  const LlDispatchOptions opt{.use_fp8 = !o.ll_bf16, .fp8 = {}};
  MpiLlInput in{.num_tokens = o.ll_tokens,
                .hidden = H,
                .x = std::span<const bf16>(reinterpret_cast<const bf16*>(gen.x(me).data()),
                                           static_cast<size_t>(o.ll_tokens) * H),
                .num_experts = o.experts,
                .topk = K,
                .topk_idx = p.topk_idx[me],
                .max_tokens = o.ll_tokens,
                .opt = opt};
  LlRefDispatch out;
  std::vector<bf16> back, y;
  Times t;
  if (TimeCalls(
          o.warmup, o.ll_iters, "ll ", [&] { return MpiLlDispatch(ws, in, &out); },
          [&] {  // expert outputs [E_local, R*T_max, H], valid rows hashed
            y.assign(static_cast<size_t>(El) * out.rows * H, bf16{0});
            for (int e = 0; e < El; ++e)
              for (int r = 0; r < out.count[e]; ++r)
                GeneratedProblem::HashRow(98, me, e, r, H, &y[(static_cast<size_t>(e) * out.rows + r) * H]);
          },
          [&] { return MpiLlCombine(ws, {.y = y, .topk_weights = p.topk_weights[me]}, &back); }, &t) != 0)
    return 1;
  int64_t pairs = 0;
  for (int64_t e : p.topk_idx[me]) pairs += e >= 0;
  const double avg_pairs = static_cast<double>(SumOverRanks(pairs)) / R;
  const double pair_bytes = o.ll_bf16 ? 2.0 * H + 16 : H + static_cast<double>(LlScaleRowBytes(H, opt)) + 16;
  Print(o.ll_bf16 ? "low-latency BF16" : "low-latency FP8", t, avg_pairs * pair_bytes, avg_pairs * 2.0 * H,
        me);
  int bad = 0;
  if (o.check) {
    auto d = LlReferenceDispatch(p, me, opt);
    if (!d.ok()) return 1;
    bad += out.count != d->count || out.src_info != d->src_info || out.layout_range != d->layout_range;
    for (int e = 0; e < El; ++e)
      for (int r = 0; r < d->count[e]; ++r) {
        const size_t row = static_cast<size_t>(e) * d->rows + r;
        bad += std::memcmp(out.x.data() + row * d->row_bytes, d->x.data() + row * d->row_bytes,
                           d->row_bytes) != 0;
        bad += std::memcmp(out.scales.data() + row * d->scale_row_bytes,
                           d->scales.data() + row * d->scale_row_bytes, d->scale_row_bytes) != 0;
      }
    std::vector<bf16> row(H);
    auto c = LlReferenceCombine(p, me, [&](int r, int e, int i) -> const bf16* {
      GeneratedProblem::HashRow(98, r, e, i, H, row.data());
      return row.data();
    });
    if (!c.ok()) return 1;
    bad += std::memcmp(c->data(), back.data(), 2 * c->size()) != 0;
  }
  return bad;
}

}  // namespace
}  // namespace epx

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  epx::Options o;
  CLI::App app{"MPI baseline dispatch/combine timing (run under mpirun)"};
  app.add_option("--mode", o.mode, "normal, low-latency or both")
      ->check(CLI::IsMember({"normal", "low-latency", "both"}));
  app.add_option("--tokens", o.tokens, "normal: tokens per rank");
  app.add_option("--ll-tokens", o.ll_tokens, "low-latency: tokens per rank (= T_max)");
  app.add_option("--hidden", o.hidden, "H");
  app.add_option("--topk", o.topk, "K");
  app.add_option("--experts", o.experts, "E");
  app.add_option("--iters", o.iters, "normal: timed iterations");
  app.add_option("--ll-iters", o.ll_iters, "low-latency: timed iterations");
  app.add_option("--warmup", o.warmup, "untimed iterations first");
  app.add_flag("--fp8", o.fp8, "normal: FP8 payload + scales");
  app.add_flag("--ll-bf16", o.ll_bf16, "low-latency: BF16 payload instead of FP8");
  app.add_flag("--check", o.check, "compare the last iteration with the serial references");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    MPI_Finalize();
    return rc;
  }
  int rank = 0, size = 1, bad = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  {
    auto ws = epx::MpiWorkspace::Create(MPI_COMM_WORLD);
    if (!ws.ok()) MPI_Abort(MPI_COMM_WORLD, 2);
    if (rank == 0)
      std::printf(
          "MPI baseline: %d ranks, H=%d K=%d E=%d; normal %d tokens/rank, low-latency %d\n%-22s %12s %12s "
          "%10s\n",
          size, o.hidden, o.topk, o.experts, o.tokens, o.ll_tokens, "op", "median_us", "p99_us", "GB/s");
    if (o.mode != "low-latency") bad += epx::Normal(**ws, o);
    if (o.mode != "normal") bad += epx::LowLatency(**ws, o);
    const size_t bytes = (*ws)->bytes();
    if (rank == 0) std::printf("workspace: %.1f MiB on rank 0\n", static_cast<double>(bytes) / (1 << 20));
  }
  int total = 0;
  MPI_Allreduce(&bad, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0 && o.check) std::printf("check: %s\n", total ? "FAIL" : "ok");
  MPI_Finalize();
  return total ? 1 : 0;
}
