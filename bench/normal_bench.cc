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
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "bench/bench_problem.h"
#include "bench/commands.h"
#include "bench/exchange_run.h"
#include "bench/mpi_compare.h"
#include "kernels/fp8.h"
#include "kernels/isa.h"
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
  EPX_ASSIGN_OR_RETURN(const ProblemSpec spec,
                       ExchangeSpec(o, pl, o.fp8 ? TokenDtype::kFp8 : TokenDtype::kBf16));
  GeneratedProblem g(spec, me);

  EPX_ASSIGN_OR_RETURN(NormalConfig cfg, NormalConfig::FromEnv());
  const NormalLimits lim{.max_hidden = H,
                         .max_topk = K,
                         .max_local_experts = o.experts / R,
                         .max_zero_copy_tokens = o.zero_copy ? o.tokens : 0};
  EPX_ASSIGN_OR_RETURN(auto buf, NormalBuffer::Create(ctx, cfg, lim));

  DispatchInput in = NormalInputOf<DispatchInput>(g, me);
  if (o.zero_copy) {  // the model would produce x right there; the copy is not part of the timed call
    std::span<uint8_t> zx = buf->DispatchInputBuffer();
    std::copy(in.x.begin(), in.x.end(), zx.begin());
    in.x = zx.first(in.x.size());
    in.zero_copy = true;
  }
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

  // The MPI baseline, same processes, same inputs (bench/mpi_compare.h), in turns with epx (--rounds). Its
  // combine is checked only on one node: it always reduces in the one-node order.
  auto mpi_case = [&](int iters, int warmup) {
    MpiNormalCase mc{.in = &in, .y = y, .recv_weights = weights};
    if (o.check) {
      mc.expected_dispatch = &expected.dispatch;
      if (pl.num_nodes == 1) mc.expected_combine = &expected.combine;
    }
    return MpiRunNormal(ctx, mc, iters, warmup);
  };
  EPX_ASSIGN_OR_RETURN(
      const ExchangeRuns runs,
      RunRounds(
          ctx, o, "normal-bench",
          [&](bool, CallTime* t) { return TimeCall([&] { return buf->Dispatch(in, &out, &h); }, t); },
          [&](bool, CallTime* t) { return TimeCall([&] { return buf->Combine(h, cin, &back); }, t); },
          [&](int) { return Mismatches(out, back, expected); }, mpi_case));
  const ExchangeSamples& samples = runs.epx;
  const MpiRun& mpi = runs.mpi;

  // Per-rank byte counts: received rows, and (token, node) pairs for the RDMA columns.
  const size_t row_bytes = static_cast<size_t>(H) * DtypeBytes(spec.dtype) +
                           (o.fp8 ? 4 * static_cast<size_t>(Fp8NumBlocks(H)) : 0);
  int64_t node_pairs = 0;
  for (int t = 0; t < o.tokens; ++t)
    for (int n = 0; n < pl.num_nodes; ++n) {
      bool any = false;
      for (int l = 0; l < pl.local_size; ++l) any |= h.InRank(t, n * pl.local_size + l);
      node_pairs += any;
    }
  EPX_ASSIGN_OR_RETURN(const ExchangeSummary sum,
                       SummarizeExchange(ctx, o, "normal-bench", samples,
                                         {.recv_rows = M,
                                          .mean = {M, node_pairs},  // rows and pairs below
                                          .dispatch_bytes = static_cast<size_t>(M) * row_bytes,
                                          .dispatch_row = row_bytes,
                                          .combine_bytes = static_cast<size_t>(M) * 2 * H,
                                          .combine_row = 2 * static_cast<size_t>(H)}));
  const double rows = sum.mean[0], pairs = sum.mean[1];
  nlohmann::json& j = *result;
  j = ExchangeJson("normal", o.fp8 ? "fp8" : "bf16", pl, o, sum,
                   {.dispatch = rows * row_bytes,
                    .combine = rows * 2.0 * H,
                    .rdma_dispatch = pairs * row_bytes,
                    .rdma_combine = pairs * 2.0 * H},
                   mpi);
  const NormalConfig& bc = buf->config();
  j["config"] = {{"channels", bc.num_channels}, {"node_slots", bc.node_slots}, {"node_chunk", bc.node_chunk},
                 {"rdma_slots", bc.rdma_slots}, {"rdma_chunk", bc.rdma_chunk}, {"rdma", buf->rdma_kind()}};
  if (pl.num_nodes > 1) j["rdma_node_pairs_per_rank"] = pairs;
  if (sum.bad != 0)
    return EPX_ERROR(kInternal, "--check: {} output tensors differ from the reference (summed over ranks)",
                     sum.bad);
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
            "channels {}, kernels {}, {} iters (+{} warm-up){}, check {}",
            pl.world_size, pl.num_nodes, pl.local_size, o_.tokens, o_.hidden, o_.topk, o_.experts,
            o_.fp8 ? "FP8" : "BF16", o_.zero_copy ? ", zero-copy inputs" : "",
            pl.num_nodes > 1 ? j["config"]["rdma"].get<std::string>() : "-",
            j["config"]["channels"].get<int>(), IsaName(KernelIsa()), o_.iters, o_.warmup, RoundsNote(o_),
            j["check"].get<std::string>());
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
