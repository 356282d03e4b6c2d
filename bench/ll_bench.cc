// epx-bench low-latency: low-latency (decode) dispatch and combine, DeepEP's test_low_latency benchmark
// for rank processes.
//
// Every rank dispatches --tokens tokens (= T_max, the LlBuffer's max_tokens) of --hidden
// BF16 columns to --topk of --experts experts chosen uniformly (deterministic from --seed), FP8 on the
// wire by default (--no-fp8: BF16), then combines BF16 expert outputs back. The expert output of a row
// is a hashed BF16 row of (source rank, source token, global expert), written once into y before
// timing (not zero-copy: the combine copies it into its send buffer, as DeepEP's combine does when the
// expert did not write into the buffer). Each iteration starts with a bootstrap barrier, and another
// one separates dispatch from combine; an iteration's time is the slowest rank's (max over ranks), and
// the table shows its median and p99.
//
// --two-phase posts each call with a hook (the send phase) and receives it later (the receive phase),
// with a bootstrap barrier in between standing for the overlapped compute; the phases are timed
// separately (slowest rank each) and dispatch/combine is the slowest rank's send + receive.
//
// Bandwidth is algorithmic, per rank, averaged over ranks, as DeepEP counts it: bytes = (token, expert)
// pairs this rank sends x bytes per pair, divided by the median time; dispatch pair = H (FP8) + scale
// row (4 B per 128 columns, or per 512 with --ue8m0) + 16 B header, or 2H + 16 (BF16); combine pair =
// 2H. With several nodes, rdma = the pairs whose expert is on another node.
//
// --check builds the serial reference (kernels/ll_reference.h) for this rank once and compares every
// iteration bitwise: the valid rows of x and scales, count, src_info, layout_range and the combine
// output; any mismatch makes the run FAIL and exit 1.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_problem.h"
#include "bench/commands.h"
#include "bench/exchange_run.h"
#include "bench/mpi_compare.h"
#include "kernels/fp8.h"
#include "kernels/isa.h"
#include "kernels/ll.h"
#include "kernels/problem_gen.h"

namespace epx::bench {
namespace {

struct LlOptions : ExchangeFlags {
  bool fp8 = true;
  bool round_scale = false;
  bool ue8m0 = false;
  bool two_phase = false;
  int depth = 3;
  int channels = 0;
  LlOptions() {
    tokens = 128;
    iters = 200;
    warmup = 20;
  }
};

// Salt of the expert outputs y (kept apart from the token rows, which use the seed itself).
constexpr uint64_t kYSalt = 0x4c4c2d79ull;

class LowLatencyCommand final : public Command {
 public:
  void AddFlags(CLI::App& app) override {
    AddExchangeFlags(app, o_, "tokens per rank (also the buffer's T_max)",
                     "the experts write their outputs straight into NextCombineBuffer() (untimed, it stands for "
                     "the expert's output store) and combine sends from there");
    app.add_flag("--fp8,!--no-fp8", o_.fp8, "dispatch FP8 e4m3 + per-128-column scales (default) or BF16");
    app.add_flag("--round-scale", o_.round_scale, "FP8 scales rounded up to powers of two");
    app.add_flag("--ue8m0", o_.ue8m0, "FP8 scales as UE8M0 exponent bytes (implies --round-scale)");
    app.add_flag("--two-phase", o_.two_phase, "time the send and receive phases separately (hooks)");
    app.add_option("--depth", o_.depth, "LL buffers in rotation D")->check(CLI::Range(2, kLlMaxDepth));
    app.add_option("--channels", o_.channels, "channel threads (0 = EPX_LL_CHANNELS)")
        ->check(CLI::Range(0, 64));
  }
  int Run(Context& ctx) override;

 private:
  Status Bench(Context& ctx, nlohmann::json* result);
  LlOptions o_;
};

size_t MiBUp(size_t bytes) {
  return (bytes + (1u << 20) - 1) >> 20;
}

// Where every rank's received rows come from: (rank, local expert, row) -> (source rank, source token),
// read off the reference dispatch of each rank at H = 1 (cheap), so the expert outputs y, a function of
// (source rank, token, expert), can be rebuilt by any rank without communication.
class RowSources {
 public:
  static StatusOr<RowSources> Make(const LlRefProblem& p) {
    LlRefProblem q = p;
    static const bf16 kZero{0};
    q.hidden = 1;
    q.x_row = [](int, int) { return &kZero; };
    RowSources m;
    m.R_ = p.num_ranks;
    m.rows_ = p.rows_per_expert();
    for (int r = 0; r < p.num_ranks; ++r) {
      EPX_ASSIGN_OR_RETURN(LlRefDispatch d, LlReferenceDispatch(q, r, LlDispatchOptions{}));
      m.src_info_.push_back(std::move(d.src_info));
      m.layout_.push_back(std::move(d.layout_range));
      m.count_.push_back(std::move(d.count));
    }
    return m;
  }
  int count(int rank, int e) const { return count_[rank][e]; }
  // (source rank, source token) of row i < count of local expert e on `rank`.
  std::pair<int, int> Source(int rank, int e, int i) const {
    int s = 0;
    for (; s < R_ - 1; ++s) {
      const int64_t r = layout_[rank][static_cast<size_t>(e) * R_ + s];
      if (i < LlRangeBegin(r) + LlRangeCount(r)) break;
    }
    return {s, src_info_[rank][static_cast<size_t>(e) * rows_ + i]};
  }

 private:
  int R_ = 1, rows_ = 0;
  std::vector<std::vector<int32_t>> src_info_;  // [R][E_local * rows]
  std::vector<std::vector<int64_t>> layout_;    // [R][E_local * R]
  std::vector<std::vector<int32_t>> count_;     // [R][E_local]
};

// Expert output of row i of local expert e on `rank`: a hash of (source rank, token, global expert).
void YRow(const RowSources& src, uint64_t seed, int el, int rank, int e, int i, int hidden, bf16* out) {
  const auto [s, t] = src.Source(rank, e, i);
  GeneratedProblem::HashRow(seed ^ kYSalt, s, t, rank * el + e, hidden, out);
}

// The expected outputs of this rank, built once.
struct Expected {
  LlRefDispatch dispatch;
  std::vector<bf16> combine;
};

// Compares one iteration with the reference: returns the number of differing tensors; the first
// difference is described in *what (empty when equal).
size_t Mismatches(const LlDispatchOutput& d, const LlCombineOutput& c, const Expected& x, std::string* what) {
  const LlRefDispatch& w = x.dispatch;
  size_t bad = 0;
  auto note = [&](std::string s) {
    ++bad;
    if (what->empty()) *what = std::move(s);
  };
  if (d.count != w.count) note("count");
  if (d.layout_range != w.layout_range) note("layout_range");
  if (d.src_info != w.src_info) note("src_info (incl. -1 past count)");
  if (d.row_bytes != w.row_bytes || d.scale_row_bytes != w.scale_row_bytes || d.x.size() < w.x.size() ||
      d.scales.size() < w.scales.size()) {
    note(fmt::format("x/scales shape: row_bytes {} scale_row_bytes {} x {} scales {}, want {} {} {} {}",
                     d.row_bytes, d.scale_row_bytes, d.x.size(), d.scales.size(), w.row_bytes,
                     w.scale_row_bytes, w.x.size(), w.scales.size()));
  } else {
    bool x_bad = false, s_bad = false;
    for (int e = 0; e < w.local_experts; ++e)
      for (int i = 0; i < w.count[e]; ++i) {
        const size_t row = static_cast<size_t>(e) * w.rows + i;
        if (!x_bad && std::memcmp(&d.x[row * w.row_bytes], &w.x[row * w.row_bytes], w.row_bytes) != 0) {
          x_bad = true;
          note(fmt::format("x: local expert {} row {}", e, i));
        }
        if (!s_bad && w.scale_row_bytes > 0 &&
            std::memcmp(&d.scales[row * w.scale_row_bytes], &w.scales[row * w.scale_row_bytes],
                        w.scale_row_bytes) != 0) {
          s_bad = true;
          note(fmt::format("scales: local expert {} row {}", e, i));
        }
      }
  }
  const std::span<const bf16> got = c.out.empty() ? std::span<const bf16>(c.x) : std::span<const bf16>(c.out);
  if (got.size() != x.combine.size()) {
    note(fmt::format("combine: {} elements, want {}", got.size(), x.combine.size()));
  } else {
    for (size_t j = 0; j < got.size(); ++j)
      if (got[j].bits != x.combine[j].bits) {
        note(fmt::format("combine: element {} (token {}, column {}) is {:#06x}, want {:#06x}", j,
                         j / std::max(1, w.hidden), j % std::max(1, w.hidden), got[j].bits,
                         x.combine[j].bits));
        break;
      }
  }
  return bad;
}

Status LowLatencyCommand::Bench(Context& ctx, nlohmann::json* result) {
  const LlOptions& o = o_;
  const Placement& pl = ctx.placement();
  const int R = pl.world_size, me = pl.rank, H = o.hidden, K = o.topk;
  // Inputs: the same routing, weights and BF16 rows as epx-bench normal, every value a function of
  // (seed, rank, token, column).
  EPX_ASSIGN_OR_RETURN(const ProblemSpec spec, ExchangeSpec(o, pl, TokenDtype::kBf16));
  if (!o.fp8 && (o.round_scale || o.ue8m0))
    return EPX_ERROR(kInvalidArgument, "--round-scale / --ue8m0 apply to FP8 dispatch only (drop --no-fp8)");
  const int El = o.experts / R;
  Fp8Options f8;
  f8.round_scale = o.fp8 && (o.round_scale || o.ue8m0);
  f8.ue8m0 = o.fp8 && o.ue8m0;

  GeneratedProblem g(spec, me);
  const RefProblem& p = g.problem();
  const LlRefProblem lp = LlProblemOf(p, o.tokens);
  EPX_ASSIGN_OR_RETURN(const RowSources sources, RowSources::Make(lp));

  LowLatencyConfig cfg;
  cfg.max_tokens = o.tokens;
  cfg.hidden = H;
  cfg.topk = K;
  cfg.num_experts = o.experts;
  cfg.num_ranks = R;
  cfg.depth = o.depth;
  cfg.use_fp8 = o.fp8;
  cfg.fp8 = f8;
  EPX_ASSIGN_OR_RETURN(const size_t heap_need, LlHeapBytes(cfg));
  // The LL block comes after what is already allocated (the control block): the heap must hold both.
  const size_t heap_min = ((ctx.allocator().used() + 4095) & ~size_t{4095}) + heap_need;
  if (me == 0)
    std::printf("low-latency buffer: LlHeapBytes = %zu MiB (EPX_HEAP_SIZE is %zu MiB, needs >= %zu MiB)\n",
                MiBUp(heap_need), ctx.heap().size() >> 20, MiBUp(heap_min));
  auto buf_or = LlBuffer::Create(ctx, cfg, o.channels);
  if (!buf_or.ok()) {
    Status s = std::move(buf_or).status();
    if (s.code() == Code::kResource && heap_min > ctx.heap().size())
      return Status(s.code(), fmt::format("{} -- the heap is too small: run with EPX_HEAP_SIZE={}M or more",
                                          s.message(), MiBUp(heap_min)));
    return s;
  }
  std::unique_ptr<LlBuffer> buf = std::move(buf_or).value();

  const size_t N = static_cast<size_t>(o.tokens);
  const std::span<const bf16> x(reinterpret_cast<const bf16*>(g.x(me).data()), N * H);
  const LlDispatchInput in{.num_tokens = o.tokens,
                           .hidden = H,
                           .x = x,
                           .topk = K,
                           .topk_idx = p.topk_idx[me],
                           .use_fp8 = o.fp8,
                           .fp8 = f8};

  // Expert outputs, written once: the routing is the same every iteration.
  const size_t rows = static_cast<size_t>(lp.rows_per_expert());
  std::vector<bf16> y(static_cast<size_t>(El) * rows * H);
  for (int e = 0; e < El; ++e)
    for (int i = 0; i < sources.count(me, e); ++i)
      YRow(sources, o.seed, El, me, e, i, H, &y[(static_cast<size_t>(e) * rows + i) * H]);
  LlCombineInput cin;
  cin.y = y;
  cin.zero_copy = o.zero_copy;
  if (o.zero_copy) cin.y = {};
  // Zero-copy: the expert "computes" its rows into the send buffer of the next call (untimed).
  auto write_outputs = [&]() -> Status {
    if (!o.zero_copy) return Status::Ok();
    EPX_ASSIGN_OR_RETURN(std::span<bf16> zc, buf->NextCombineBuffer());
    const size_t stride = buf->combine_row_stride();
    for (int e = 0; e < El; ++e)
      for (int i = 0; i < sources.count(me, e); ++i) {
        const size_t r = static_cast<size_t>(e) * rows + i;
        std::memcpy(&zc[r * stride], &y[r * H], 2 * static_cast<size_t>(H));
      }
    return Status::Ok();
  };
  cin.topk_weights = p.topk_weights[me];

  Expected expected;
  if (o.check) {
    LlDispatchOptions dopt;
    dopt.use_fp8 = o.fp8;
    dopt.fp8 = f8;
    EPX_ASSIGN_OR_RETURN(expected.dispatch, LlReferenceDispatch(lp, me, dopt));
    std::vector<bf16> row(H);
    EPX_ASSIGN_OR_RETURN(expected.combine, LlReferenceCombine(lp, me, [&](int r, int e, int i) {
                           YRow(sources, o.seed, El, r, e, i, H, row.data());
                           return static_cast<const bf16*>(row.data());
                         }));
  }

  LlDispatchOutput out;
  LlHandle h;
  LlCombineOutput back;
  LlHook hook;                                 // two-phase: the call in flight
  std::vector<double> t_ds, t_dr, t_cs, t_cr;  // two-phase: send and receive phase times
  // Two-phase: the send phase (`send`), a barrier standing for the overlapped compute, the receive phase;
  // the call's time is the sum of the two phases.
  auto time_phases = [&](bool timed, auto&& send, const char* recv_barrier, std::vector<double>* t_send,
                         std::vector<double>* t_recv, CallTime* t) -> Status {
    CallTime ts, tr;
    EPX_RETURN_IF_ERROR(TimeCall(send, &ts));
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(recv_barrier));
    EPX_RETURN_IF_ERROR(TimeCall([&] { return buf->Receive(&hook); }, &tr));
    if (timed) {
      t_send->push_back(ts.wall_us);
      t_recv->push_back(tr.wall_us);
    }
    *t = {ts.wall_us + tr.wall_us, ts.cpu_us + tr.cpu_us};
    return Status::Ok();
  };
  auto dispatch = [&](bool timed, CallTime* t) -> Status {
    if (o.two_phase) {
      hook = LlHook{};
      EPX_RETURN_IF_ERROR(time_phases(
          timed, [&] { return buf->Dispatch(in, &out, &h, &hook); }, "ll-bench-dispatch-recv", &t_ds, &t_dr,
          t));
    } else {
      EPX_RETURN_IF_ERROR(TimeCall([&] { return buf->Dispatch(in, &out, &h); }, t));
    }
    return write_outputs();  // before the combine's barrier, untimed
  };
  auto combine = [&](bool timed, CallTime* t) -> Status {
    if (!o.two_phase) return TimeCall([&] { return buf->Combine(h, cin, &back); }, t);
    return time_phases(
        timed, [&] { return buf->Combine(h, cin, &back, &hook); }, "ll-bench-combine-recv", &t_cs, &t_cr, t);
  };
  std::string first_bad;
  auto check = [&](int it) {
    std::string what;
    const size_t n = Mismatches(out, back, expected, &what);
    if (n != 0 && first_bad.empty()) {
      first_bad = fmt::format("iteration {}: {}", it, what);
      std::fprintf(stderr, "epx-bench low-latency: rank %d: FAIL at %s (%zu tensors differ)\n", me,
                   first_bad.c_str(), n);
    }
    return n;
  };
  // The MPI baseline, same processes, same inputs (bench/mpi_compare.h), in turns with epx (--rounds).
  auto mpi_case = [&](int iters, int warmup) {
    MpiLlCase mc{.num_tokens = o.tokens,
                 .hidden = H,
                 .topk = K,
                 .num_experts = o.experts,
                 .max_tokens = o.tokens,
                 .opt = LlDispatchOptions{o.fp8, f8},
                 .x = x,
                 .topk_idx = in.topk_idx,
                 .topk_weights = cin.topk_weights,
                 .y = y};
    if (o.check) {
      mc.expected_dispatch = &expected.dispatch;
      mc.expected_combine = &expected.combine;
    }
    return MpiRunLl(ctx, mc, iters, warmup);
  };
  EPX_ASSIGN_OR_RETURN(const ExchangeRuns runs, RunRounds(ctx, o, "ll-bench", dispatch, combine, check, mpi_case));
  const ExchangeSamples& samples = runs.epx;
  const MpiRun& mpi = runs.mpi;

  // Per-rank byte counts: (token, expert) pairs sent, those to other nodes, and received rows.
  int64_t pairs = 0, rdma_pairs = 0;
  for (int64_t e : p.topk_idx[me])
    if (e >= 0) {
      ++pairs;
      rdma_pairs += static_cast<int>(e / El) / pl.local_size != pl.node;
    }
  int64_t recv_rows = 0;
  for (int32_t c : out.count) recv_rows += c;
  const size_t scale_bytes = LlScaleRowBytes(H, LlDispatchOptions{o.fp8, f8});
  const double d_pair = (o.fp8 ? static_cast<double>(H) + scale_bytes : 2.0 * H) + 16, c_pair = 2.0 * H;
  // The copy limit moves the same bytes: this rank's pairs x bytes per pair.
  EPX_ASSIGN_OR_RETURN(const ExchangeSummary sum,
                       SummarizeExchange(ctx, o, "ll-bench", samples,
                                         {.recv_rows = recv_rows,
                                          .mean = {pairs, rdma_pairs},  // avg_pairs, avg_rdma_pairs below
                                          .dispatch_bytes = static_cast<size_t>(pairs * d_pair),
                                          .dispatch_row = static_cast<size_t>(d_pair),
                                          .combine_bytes = static_cast<size_t>(pairs * c_pair),
                                          .combine_row = static_cast<size_t>(c_pair),
                                          .reduce_tokens = o.tokens,
                                          .reduce_topk = K,
                                          .reduce_hidden = H,
                                          .cast_x = x,
                                          .cast_hidden = o.fp8 ? H : 0,
                                          .cast_fp8 = f8,
                                          // Private expert outputs on one node: the floor's premises.
                                          .combine_traffic = pl.num_nodes == 1 && !o.zero_copy
                                                                 ? CombineTrafficOf(p.topk_idx, K, El, me, H)
                                                                 : CombineTrafficJob{}}));
  const double avg_pairs = sum.mean[0], avg_rdma_pairs = sum.mean[1];
  const LlStats stats = buf->stats();
  nlohmann::json& j = *result;
  j = ExchangeJson("low-latency", o.fp8 ? "fp8" : "bf16", pl, o, sum,
                   {.dispatch = avg_pairs * d_pair,
                    .combine = avg_pairs * c_pair,
                    .rdma_dispatch = avg_rdma_pairs * d_pair,
                    .rdma_combine = avg_rdma_pairs * c_pair},
                   mpi);
  j["combine_dtype"] = "bf16";
  j["round_scale"] = f8.round_scale;
  j["ue8m0"] = f8.ue8m0;
  j["two_phase"] = o.two_phase;
  j["sent_pairs_per_rank"] = avg_pairs;
  j["dispatch_bytes_per_pair"] = d_pair;
  j["combine_bytes_per_pair"] = c_pair;
  j["config"] = {{"channels", buf->num_channels()},
                 {"depth", buf->config().depth},
                 {"heap_bytes", heap_need},
                 {"rdma", buf->rdma_kind()}};
  if (o.two_phase) {
    struct Phase {
      const char* key;
      const std::vector<double>* mine;
    };
    for (const Phase& ph : {Phase{"dispatch_send", &t_ds}, Phase{"dispatch_recv", &t_dr},
                            Phase{"combine_send", &t_cs}, Phase{"combine_recv", &t_cr}}) {
      const std::string k = ph.key;
      EPX_ASSIGN_OR_RETURN(auto step, StepTimes(ctx.bootstrap(), *ph.mine, ("ll-bench-times-" + k).c_str()));
      const Stats s = Summarize(step);
      j[k + "_us_p50"] = s.median_us;
      j[k + "_us_p99"] = s.p99_us;
    }
  }
  if (pl.num_nodes > 1) j["rdma_pairs_per_rank"] = avg_rdma_pairs;
  // This rank's LlStats (rank 0's go to the table).
  const double calls = static_cast<double>(std::max<uint64_t>(1, stats.dispatches + stats.combines));
  std::vector<double> wait_us;
  for (uint64_t w : stats.wait_ns_per_source) wait_us.push_back(static_cast<double>(w) / 1e3 / calls);
  std::vector<double> per_expert;
  for (uint64_t n : stats.recv_tokens_per_expert)
    per_expert.push_back(static_cast<double>(n) /
                         static_cast<double>(std::max<uint64_t>(1, stats.dispatches)));
  j["stats"] = {{"dispatches", stats.dispatches},
                {"combines", stats.combines},
                {"wait_us_per_call_by_source", wait_us},
                {"recv_pairs_per_dispatch_by_local_expert", per_expert}};
  if (mpi.mismatches != 0)
    return EPX_ERROR(kInternal, "--check: the MPI baseline's outputs differ from the reference ({} tensors)",
                     mpi.mismatches);
  if (sum.bad != 0)
    return EPX_ERROR(kInternal, "--check: {} output tensors differ from the reference (summed over ranks){}",
                     sum.bad, first_bad.empty() ? "" : "; here: " + first_bad);
  return Status::Ok();
}

int LowLatencyCommand::Run(Context& ctx) {
  nlohmann::json j;
  const Status st = Bench(ctx, &j);
  const Placement& pl = ctx.placement();
  auto header = [&] {
    std::string fp8 = "BF16";
    if (o_.fp8)
      fp8 = j["ue8m0"].get<bool>()         ? "FP8 (UE8M0)"
            : j["round_scale"].get<bool>() ? "FP8 (round_scale)"
                                           : "FP8";
    return fmt::format(
        "epx-bench low-latency: {} ranks ({} node(s) x {}), {} tokens/rank, H={}, K={}, E={}, dispatch {}, "
        "combine BF16, depth {}, rdma {}, channels {}, kernels {},{} {} iters (+{} warm-up){}, check {}",
        pl.world_size, pl.num_nodes, pl.local_size, o_.tokens, o_.hidden, o_.topk, o_.experts, fp8,
        j["config"]["depth"].get<int>(), pl.num_nodes > 1 ? j["config"]["rdma"].get<std::string>() : "-",
        j["config"]["channels"].get<int>(), IsaName(KernelIsa()),
        o_.two_phase ? (o_.zero_copy ? " two-phase, zero-copy," : " two-phase,")
                     : (o_.zero_copy ? " zero-copy," : ""),
        o_.iters, o_.warmup, RoundsNote(o_), j["check"].get<std::string>());
  };
  auto phases = [&](const std::string& op) {
    if (!o_.two_phase) return;
    for (const char* phase : {"send", "recv"}) {
      const std::string kp = op + "_" + phase;
      std::printf("%-14s %12.1f %12.1f %10s %12s %12s\n", ("  " + op + "." + phase).c_str(),
                  j[kp + "_us_p50"].get<double>(), j[kp + "_us_p99"].get<double>(), "-", "-", "-");
    }
  };
  auto rest = [&] {
    std::printf(
        "\ntime = slowest rank per iteration%s; GB/s = (token, expert) pairs sent per rank x bytes per pair "
        "(dispatch %.0f B, combine %.0f B) / median time; rdma = pairs to other nodes; cpu = CPU time of a "
        "rank (all threads) per call; copy = memcpy of the same bytes by every rank at once (the copy limit), "
        "of_copy = copy time / epx time\n",
        o_.two_phase ? " (dispatch/combine = send + recv of one rank, phases split by a barrier)" : "",
        j["dispatch_bytes_per_pair"].get<double>(), j["combine_bytes_per_pair"].get<double>());
    PrintBaselines(j);
    // LlStats of rank 0, briefly.
    const auto& s = j["stats"];
    const auto per_expert = s["recv_pairs_per_dispatch_by_local_expert"].get<std::vector<double>>();
    const auto wait = s["wait_us_per_call_by_source"].get<std::vector<double>>();
    double lo = 0, hi = 0, mean = 0;
    if (!per_expert.empty()) {
      lo = *std::min_element(per_expert.begin(), per_expert.end());
      hi = *std::max_element(per_expert.begin(), per_expert.end());
      for (double v : per_expert) mean += v / static_cast<double>(per_expert.size());
    }
    std::string waits;
    for (size_t r = 0; r < wait.size(); ++r) waits += fmt::format("{}r{} {:.1f}", r ? ", " : "", r, wait[r]);
    std::printf(
        "rank 0 LlStats: %llu dispatches, %llu combines; pairs per local expert per dispatch min %.1f mean %.1f "
        "max %.1f; receive wait per call by source (us): %s\n",
        static_cast<unsigned long long>(s["dispatches"].get<uint64_t>()),
        static_cast<unsigned long long>(s["combines"].get<uint64_t>()), lo, mean, hi, waits.c_str());
  };
  return ReportExchange(ctx, "low-latency", st, j, o_, 14, header, phases, rest);
}

}  // namespace

std::unique_ptr<Command> MakeLowLatencyCommand() {
  return std::make_unique<LowLatencyCommand>();
}

}  // namespace epx::bench
