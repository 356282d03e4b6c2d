// epx-bench normal: normal (high-throughput) dispatch and combine, DeepEP's test_intranode/internode
// benchmark for rank processes.
//
// Every rank dispatches --tokens tokens of --hidden columns (BF16, or FP8 with --fp8) to --topk of
// --experts experts chosen uniformly (deterministic from --seed), then combines the received rows back
// (y = the BF16 rows that were dispatched, weights = the received weights). Each iteration starts
// with a bootstrap barrier; an iteration's time is the slowest rank's (max over ranks), and the table
// shows its median and p99. Dispatch time includes the layout and the count exchange (DeepEP's
// notify + dispatch); combine needs neither.
//
// Bandwidth is algorithmic, per rank, averaged over ranks: bytes = received rows x row bytes (row =
// H x element size, + 4 B per 128 columns of scales for FP8; combine rows are BF16), divided by the
// median time. With several nodes, RDMA bytes = (token, node) pairs with an expert on that node,
// own node included (DeepEP's count) x row bytes.
//
// --check builds the serial reference (kernels/reference.h) once and compares every iteration's
// outputs with it bitwise; any mismatch makes the run FAIL and exit 1.
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_stats.h"
#include "bench/commands.h"
#include "bench/copy_limit.h"
#include "bench/mpi_compare.h"
#include "kernels/fp8.h"
#include "kernels/normal.h"
#include "kernels/problem_gen.h"

namespace epx::bench {
namespace {

struct NormalOptions : ExchangeFlags {
  bool fp8 = false;
  NormalOptions() {
    tokens = 4096;
    iters = 20;
    warmup = 3;
  }
};

// The expected outputs of this rank, built once.
struct Expected {
  RefDispatch dispatch;
  RefCombine combine;
};

class NormalCommand final : public Command {
 public:
  void AddFlags(CLI::App& app) override {
    AddExchangeFlags(app, o_, "tokens per rank",
                     "x and y live in the buffer's zero-copy inputs (one node): peers read them from the heap");
    app.add_flag("--fp8", o_.fp8, "dispatch FP8 e4m3 + per-128-column scales instead of BF16");
  }
  int Run(Context& ctx) override;

 private:
  Status Bench(Context& ctx, nlohmann::json* result);
  NormalOptions o_;
};

// Counts outputs that differ from the reference (0 = bitwise equal).
size_t Mismatches(const DispatchOutput& d, const CombineOutput& c, const Expected& e) {
  size_t bad = d.num_recv_tokens != e.dispatch.num_rows;
  auto cmp = [&](const auto& got, const auto& want) {
    if (got.size() != want.size() || std::memcmp(got.data(), want.data(), want.size() * sizeof(want[0])) != 0)
      ++bad;
  };
  cmp(d.x, e.dispatch.x);
  cmp(d.x_scales, e.dispatch.x_scales);
  cmp(d.topk_idx, e.dispatch.topk_idx);
  cmp(d.topk_weights, e.dispatch.topk_weights);
  cmp(d.src_idx, e.dispatch.src_idx);
  cmp(d.tokens_per_expert, e.dispatch.tokens_per_expert);
  cmp(c.x, e.combine.x);
  cmp(c.topk_weights, e.combine.topk_weights);
  return bad;
}

Expected BuildExpected(const GeneratedProblem& g, int me) {
  const RefProblem& p = g.problem();
  const ProblemSpec& spec = g.spec();
  auto route = ReferenceRouting(p);  // inputs were validated by the dispatch that ran before
  Expected e;
  e.dispatch = ReferenceDispatch(p, *route, me);
  // Rank r's row i answers (s, t) = route.rows[r][i]: y is the BF16 row of (s, t), the weights are
  // those of (s, t)'s experts on r.
  std::vector<bf16> y(p.hidden);
  std::vector<float> w(p.topk);
  const int epr = p.num_experts / p.num_ranks;
  RefCombineInputs in;
  in.y_row = [&](int r, int i) {
    const auto [s, t] = route->rows[r][i];
    GeneratedProblem::Bf16Row(spec, s, t, y.data());
    return y.data();
  };
  in.w_row = [&](int r, int i) {
    const auto [s, t] = route->rows[r][i];
    for (int k = 0; k < p.topk; ++k) {
      const int64_t x = p.topk_idx[s][static_cast<size_t>(t) * p.topk + k];
      w[k] = x >= 0 && x / epr == r ? p.topk_weights[s][static_cast<size_t>(t) * p.topk + k] : 0.0f;
    }
    return w.data();
  };
  e.combine = ReferenceCombine(p, *route, me, in);
  return e;
}

Status NormalCommand::Bench(Context& ctx, nlohmann::json* result) {
  const NormalOptions& o = o_;
  const Placement& pl = ctx.placement();
  const int R = pl.world_size, me = pl.rank, H = o.hidden, K = o.topk;
  if (o.experts % R != 0 || o.topk > o.experts)
    return EPX_ERROR(kInvalidArgument, "--experts {} must be divisible by the {} ranks and >= --topk {}",
                     o.experts, R, o.topk);
  ProblemSpec spec;
  spec.num_ranks = R;
  spec.local_size = pl.local_size;
  spec.num_experts = o.experts;
  spec.hidden = H;
  spec.topk = K;
  spec.dtype = o.fp8 ? TokenDtype::kFp8 : TokenDtype::kBf16;
  spec.num_tokens.assign(R, o.tokens);
  spec.seed = o.seed;
  GeneratedProblem g(spec, me);
  const RefProblem& p = g.problem();

  EPX_ASSIGN_OR_RETURN(NormalConfig cfg, NormalConfig::FromEnv());
  const NormalLimits lim{.max_hidden = H,
                         .max_topk = K,
                         .max_local_experts = o.experts / R,
                         .max_zero_copy_tokens = o.zero_copy ? o.tokens : 0};
  EPX_ASSIGN_OR_RETURN(auto buf, NormalBuffer::Create(ctx, cfg, lim));

  DispatchInput in;
  in.num_tokens = o.tokens;
  in.hidden = H;
  in.dtype = spec.dtype;
  in.x = {g.x(me).data(), g.x(me).size()};
  if (o.zero_copy) {  // the model would produce x right there; the copy is not part of the timed call
    std::span<uint8_t> zx = buf->DispatchInputBuffer();
    std::copy(in.x.begin(), in.x.end(), zx.begin());
    in.x = zx.first(in.x.size());
    in.zero_copy = true;
  }
  in.x_scales = g.scales(me);
  in.num_experts = o.experts;
  in.topk = K;
  in.topk_idx = p.topk_idx[me];
  in.topk_weights = p.topk_weights[me];
  DispatchOutput out;
  NormalHandle h;
  EPX_RETURN_IF_ERROR(buf->Dispatch(in, &out, &h));  // routing is the same every iteration: y is fixed
  const int M = out.num_recv_tokens;
  std::vector<bf16> y(static_cast<size_t>(M) * H);
  for (int s = 0; s < R; ++s)
    for (int i = h.rank_prefix[s]; i < h.rank_prefix[s + 1]; ++i)
      GeneratedProblem::Bf16Row(spec, s, out.src_idx[i], &y[static_cast<size_t>(i) * H]);
  const std::vector<float> weights = out.topk_weights;
  CombineInput cin;
  cin.hidden = H;
  cin.y = y;
  if (o.zero_copy) {  // likewise: the experts would write their outputs there
    std::span<bf16> zy = buf->CombineInputBuffer();
    std::copy(y.begin(), y.end(), zy.begin());
    cin.y = zy.first(y.size());
    cin.zero_copy = true;
  }
  cin.topk = K;
  cin.topk_weights = weights;
  CombineOutput back;
  Expected expected;
  if (o.check) expected = BuildExpected(g, me);

  std::vector<double> t_dispatch, t_combine, cpu_dispatch, cpu_combine;
  size_t bad = 0;
  for (int it = 0; it < o.warmup + o.iters; ++it) {
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier("normal-bench-dispatch"));
    const double c0 = CpuUs(), t0 = NowUs();
    EPX_RETURN_IF_ERROR(buf->Dispatch(in, &out, &h));
    const double t1 = NowUs(), c1 = CpuUs();
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier("normal-bench-combine"));
    const double c2 = CpuUs(), t2 = NowUs();
    EPX_RETURN_IF_ERROR(buf->Combine(h, cin, &back));
    const double t3 = NowUs(), c3 = CpuUs();
    if (it >= o.warmup) {
      t_dispatch.push_back(t1 - t0);
      t_combine.push_back(t3 - t2);
      cpu_dispatch.push_back(c1 - c0);
      cpu_combine.push_back(c3 - c2);
    }
    if (o.check) bad += Mismatches(out, back, expected);
  }

  // Per-rank byte counts, gathered.
  const size_t row_bytes = static_cast<size_t>(H) * DtypeBytes(spec.dtype) +
                           (o.fp8 ? 4 * static_cast<size_t>(Fp8NumBlocks(H)) : 0);
  int64_t node_pairs = 0;
  for (int t = 0; t < o.tokens; ++t)
    for (int n = 0; n < pl.num_nodes; ++n) {
      bool any = false;
      for (int l = 0; l < pl.local_size; ++l) any |= h.InRank(t, n * pl.local_size + l);
      node_pairs += any;
    }
  struct Mine {
    int64_t recv_rows, node_pairs, bad;
    double cpu_dispatch_us, cpu_combine_us;  // medians
  } mine{M, node_pairs, static_cast<int64_t>(bad), Summarize(cpu_dispatch).median_us,
         Summarize(cpu_combine).median_us};
  EPX_ASSIGN_OR_RETURN(auto all, ctx.bootstrap().AllGatherPod("normal-bench-counts", mine));
  EPX_ASSIGN_OR_RETURN(auto step_d, StepTimes(ctx.bootstrap(), t_dispatch, "normal-bench-times-d"));
  EPX_ASSIGN_OR_RETURN(auto step_c, StepTimes(ctx.bootstrap(), t_combine, "normal-bench-times-c"));
  const Stats sd = Summarize(step_d), sc = Summarize(step_c);
  double rows = 0, pairs = 0, cpu_d = 0, cpu_c = 0;
  int64_t total_bad = 0;
  std::vector<int64_t> recv_rows;
  for (const Mine& m : all) {
    rows += static_cast<double>(m.recv_rows) / R;
    pairs += static_cast<double>(m.node_pairs) / R;
    total_bad += m.bad;
    cpu_d += m.cpu_dispatch_us / R;
    cpu_c += m.cpu_combine_us / R;
    recv_rows.push_back(m.recv_rows);
  }
  const double d_bytes = rows * row_bytes, c_bytes = rows * 2.0 * H;
  // The copy limit of the same bytes, same cores, same run (bench/copy_limit.h).
  EPX_ASSIGN_OR_RETURN(CopyLimitResult copy_d, MeasureCopyLimit(ctx, static_cast<size_t>(M) * row_bytes, row_bytes,
                                                                o.iters, o.warmup, "normal-bench-copy-d"));
  EPX_ASSIGN_OR_RETURN(CopyLimitResult copy_c, MeasureCopyLimit(ctx, static_cast<size_t>(M) * 2 * H, 2 * H,
                                                                o.iters, o.warmup, "normal-bench-copy-c"));
  auto gbps = [](double bytes, double us) { return us > 0 ? bytes / (us * 1e3) : 0.0; };
  // The MPI baseline, same processes, same inputs (bench/mpi_compare.h). Its combine is checked only on
  // one node: it always reduces in the one-node order.
  MpiRun mpi;
  mpi.why_not = "--mpi off";
  if (o.mpi != "off") {
    MpiNormalCase mc;
    mc.num_tokens = o.tokens;
    mc.hidden = H;
    mc.topk = K;
    mc.num_experts = o.experts;
    mc.dtype = spec.dtype;
    mc.x = in.x;
    mc.x_scales = in.x_scales;
    mc.topk_idx = in.topk_idx;
    mc.topk_weights = in.topk_weights;
    mc.y = y;
    mc.recv_weights = weights;
    if (o.check) {
      mc.expected_dispatch = &expected.dispatch;
      if (pl.num_nodes == 1) mc.expected_combine = &expected.combine;
    }
    EPX_ASSIGN_OR_RETURN(mpi, MpiRunNormal(ctx, mc, o.iters, o.warmup));
    if (!mpi.ran && o.mpi == "on") return EPX_ERROR(kInvalidArgument, "--mpi on: {}", mpi.why_not);
  }
  nlohmann::json& j = *result;
  j = {{"mode", "normal"},
       {"ranks", R},
       {"nodes", pl.num_nodes},
       {"local_ranks", pl.local_size},
       {"tokens", o.tokens},
       {"hidden", H},
       {"topk", K},
       {"experts", o.experts},
       {"dtype", o.fp8 ? "fp8" : "bf16"},
       {"zero_copy", o.zero_copy},
       {"check", !o.check         ? "off"
                 : total_bad == 0 ? "PASS"
                                  : "FAIL"},
       {"iters", o.iters},
       {"warmup", o.warmup},
       {"seed", o.seed},
       {"dispatch_us_p50", sd.median_us},
       {"dispatch_us_p99", sd.p99_us},
       {"combine_us_p50", sc.median_us},
       {"combine_us_p99", sc.p99_us},
       {"dispatch_GBps", gbps(d_bytes, sd.median_us)},
       {"combine_GBps", gbps(c_bytes, sc.median_us)},
       {"copy_dispatch_us_p50", copy_d.step.median_us},
       {"copy_dispatch_us_p99", copy_d.step.p99_us},
       {"copy_dispatch_GBps", copy_d.gbps},
       {"copy_combine_us_p50", copy_c.step.median_us},
       {"copy_combine_us_p99", copy_c.step.p99_us},
       {"copy_combine_GBps", copy_c.gbps},
       {"dispatch_vs_copy", sd.median_us > 0 ? copy_d.step.median_us / sd.median_us : 0.0},
       {"combine_vs_copy", sc.median_us > 0 ? copy_c.step.median_us / sc.median_us : 0.0},
       {"recv_tokens_per_rank", recv_rows},
       {"dispatch_cpu_us_per_rank", cpu_d},
       {"combine_cpu_us_per_rank", cpu_c},
       {"config",
        {{"channels", buf->config().num_channels},
         {"node_slots", buf->config().node_slots},
         {"node_chunk", buf->config().node_chunk},
         {"rdma_slots", buf->config().rdma_slots},
         {"rdma_chunk", buf->config().rdma_chunk},
         {"rdma", buf->rdma_kind()}}}};
  if (pl.num_nodes > 1) {
    j["rdma_node_pairs_per_rank"] = pairs;
    j["dispatch_rdma_GBps"] = gbps(pairs * row_bytes, sd.median_us);
    j["combine_rdma_GBps"] = gbps(pairs * 2.0 * H, sc.median_us);
  }
  AddMpiJson(mpi, d_bytes, c_bytes, &j);
  if (total_bad != 0)
    return EPX_ERROR(kInternal, "--check: {} output tensors differ from the reference (summed over ranks)",
                     total_bad);
  if (mpi.mismatches != 0)
    return EPX_ERROR(kInternal, "--check: the MPI baseline's outputs differ from the reference ({} tensors)",
                     mpi.mismatches);
  return Status::Ok();
}

int NormalCommand::Run(Context& ctx) {
  nlohmann::json j;
  const Status st = Bench(ctx, &j);
  const Placement& pl = ctx.placement();
  return ReportExchange(
      ctx, "normal", st, j, o_, 9,
      [&] {
        return fmt::format(
            "epx-bench normal: {} ranks ({} node(s) x {}), {} tokens/rank, H={}, K={}, E={}, {}{}, rdma {}, "
            "channels {}, {} iters (+{} warm-up), check {}",
            pl.world_size, pl.num_nodes, pl.local_size, o_.tokens, o_.hidden, o_.topk, o_.experts,
            o_.fp8 ? "FP8" : "BF16", o_.zero_copy ? ", zero-copy inputs" : "",
            pl.num_nodes > 1 ? j["config"]["rdma"].get<std::string>() : "-", j["config"]["channels"].get<int>(),
            o_.iters, o_.warmup, j["check"].get<std::string>());
      },
      [](const std::string&) {},
      [&] {
        std::printf(
            "\ntime = slowest rank per iteration; GB/s = received rows x row bytes per rank / median time; "
            "rdma = (token, node) pairs x row bytes; cpu = CPU time of a rank (all threads) per call; copy = memcpy "
            "of the same received bytes by every rank at once (the copy limit), of_copy = copy time / epx time\n");
        PrintBaselines(j);
      });
}

}  // namespace

std::unique_ptr<Command> MakeNormalCommand() {
  return std::make_unique<NormalCommand>();
}

}  // namespace epx::bench
