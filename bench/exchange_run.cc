// bench/exchange_run.cc: the measured part that epx-bench normal and low-latency share
// (bench/exchange_run.h).
#include "bench/exchange_run.h"

#include "kernels/isa.h"

namespace epx::bench {

StatusOr<ProblemSpec> ExchangeSpec(const ExchangeFlags& o, const Placement& pl, TokenDtype dtype) {
  const int R = pl.world_size;
  if (o.experts % R != 0 || o.topk > o.experts)
    return EPX_ERROR(kInvalidArgument, "--experts {} must be divisible by the {} ranks and >= --topk {}",
                     o.experts, R, o.topk);
  return ProblemSpec{.num_ranks = R,
                     .local_size = pl.local_size,
                     .num_experts = o.experts,
                     .hidden = o.hidden,
                     .topk = o.topk,
                     .dtype = dtype,
                     .num_tokens = std::vector<int>(R, o.tokens),
                     .seed = o.seed};
}

ExchangeFlags RoundFlags(const ExchangeFlags& o, int r) {
  ExchangeFlags f = o;
  f.iters = o.iters / o.rounds + (r < o.iters % o.rounds ? 1 : 0);
  f.warmup = r == 0 ? o.warmup : std::min(o.warmup, 3);
  return f;
}

void AppendSamples(ExchangeSamples* s, const ExchangeSamples& more) {
  auto append = [](std::vector<double>& a, const std::vector<double>& b) {
    a.insert(a.end(), b.begin(), b.end());
  };
  append(s->dispatch_us, more.dispatch_us);
  append(s->combine_us, more.combine_us);
  append(s->cpu_dispatch_us, more.cpu_dispatch_us);
  append(s->cpu_combine_us, more.cpu_combine_us);
  s->bad += more.bad;
}

Status CheckRounds(const ExchangeFlags& o) {
  if (o.rounds < 1 || o.rounds > o.iters)
    return EPX_ERROR(kInvalidArgument, "--rounds {} must be in 1..--iters ({})", o.rounds, o.iters);
  return Status::Ok();
}

std::string RoundsNote(const ExchangeFlags& o) {
  return o.rounds > 1 ? fmt::format(", in {} rounds with the MPI baseline", o.rounds) : "";
}

StatusOr<ExchangeSummary> SummarizeExchange(Context& ctx, const ExchangeFlags& o, const std::string& tag,
                                            const ExchangeSamples& s, const ExchangeCounts& mine) {
  // One gather for every per-rank figure; the CPU times travel as this rank's medians.
  struct Mine {
    int64_t recv_rows, bad;
    int64_t mean[2];
    double cpu_dispatch_us, cpu_combine_us;
  } m{mine.recv_rows,
      static_cast<int64_t>(s.bad),
      {mine.mean[0], mine.mean[1]},
      Summarize(s.cpu_dispatch_us).median_us,
      Summarize(s.cpu_combine_us).median_us};
  EPX_ASSIGN_OR_RETURN(auto all, ctx.bootstrap().AllGatherPod(tag + "-counts", m));
  EPX_ASSIGN_OR_RETURN(auto step_d, StepTimes(ctx.bootstrap(), s.dispatch_us, (tag + "-times-d").c_str()));
  EPX_ASSIGN_OR_RETURN(auto step_c, StepTimes(ctx.bootstrap(), s.combine_us, (tag + "-times-c").c_str()));
  ExchangeSummary sum;
  sum.dispatch = Summarize(step_d);
  sum.combine = Summarize(step_c);
  const int R = static_cast<int>(all.size());
  for (const Mine& r : all) {
    for (int i = 0; i < 2; ++i) sum.mean[i] += static_cast<double>(r.mean[i]) / R;
    sum.bad += r.bad;
    sum.cpu_dispatch_us += r.cpu_dispatch_us / R;
    sum.cpu_combine_us += r.cpu_combine_us / R;
    sum.recv_rows.push_back(r.recv_rows);
  }
  // The copy limit of the same bytes, same cores, same run (bench/copy_limit.h).
  EPX_ASSIGN_OR_RETURN(sum.copy_dispatch, MeasureCopyLimit(ctx, mine.dispatch_bytes, mine.dispatch_row,
                                                           o.iters, o.warmup, (tag + "-copy-d").c_str()));
  EPX_ASSIGN_OR_RETURN(sum.copy_combine, MeasureCopyLimit(ctx, mine.combine_bytes, mine.combine_row, o.iters,
                                                          o.warmup, (tag + "-copy-c").c_str()));
  sum.has_reduce = mine.reduce_tokens > 0;
  if (sum.has_reduce) {
    EPX_ASSIGN_OR_RETURN(sum.reduce_combine,
                         MeasureReduceLimit(ctx, mine.reduce_tokens, mine.reduce_topk, mine.reduce_hidden,
                                            o.iters, o.warmup, (tag + "-reduce").c_str()));
    EPX_ASSIGN_OR_RETURN(sum.stream_dispatch,
                         MeasureCopyLimit(ctx, mine.dispatch_bytes, mine.dispatch_row, o.iters, o.warmup,
                                          (tag + "-stream-d").c_str(), /*stream=*/true));
    EPX_ASSIGN_OR_RETURN(
        sum.cold_reduce_combine,
        MeasureReduceLimit(ctx, mine.reduce_tokens, mine.reduce_topk, mine.reduce_hidden, o.iters, o.warmup,
                           (tag + "-reduce-cold").c_str(), /*cold=*/true));
    sum.has_cast = mine.cast_hidden > 0;
    if (sum.has_cast) {
      EPX_ASSIGN_OR_RETURN(sum.cast_dispatch,
                           MeasureCastLimit(ctx, mine.cast_x, mine.cast_hidden, mine.cast_fp8, o.iters,
                                            o.warmup, (tag + "-cast").c_str()));
    }
  }
  sum.has_traffic = mine.combine_traffic.hidden > 0;
  if (sum.has_traffic) {
    EPX_ASSIGN_OR_RETURN(sum.traffic_combine, MeasureCombineTraffic(ctx, mine.combine_traffic, o.iters,
                                                                    o.warmup, (tag + "-traffic-c").c_str()));
  }
  return sum;
}

nlohmann::json ExchangeJson(const char* mode, const char* dtype, const Placement& pl, const ExchangeFlags& o,
                            const ExchangeSummary& s, const ExchangeBytes& bytes, const MpiRun& mpi) {
  nlohmann::json j = {{"mode", mode},
                      {"ranks", pl.world_size},
                      {"nodes", pl.num_nodes},
                      {"local_ranks", pl.local_size},
                      {"tokens", o.tokens},
                      {"hidden", o.hidden},
                      {"topk", o.topk},
                      {"experts", o.experts},
                      {"dtype", dtype},
                      {"zero_copy", o.zero_copy},
                      {"check", !o.check     ? "off"
                                : s.bad == 0 ? "PASS"
                                             : "FAIL"},
                      {"iters", o.iters},
                      {"rounds", o.rounds},
                      {"warmup", o.warmup},
                      {"seed", o.seed},
                      {"kernel_isa", IsaName(KernelIsa())},  // the row kernels' family (kernels/isa.h)
                      {"recv_tokens_per_rank", s.recv_rows}};
  // The same keys per op, "<op>_..." and "copy_<op>_..." (ReportExchange and PrintBaselines read them so).
  struct Op {
    const char* name;
    const Stats* step;
    const CopyLimitResult* copy;
    double bytes, rdma_bytes, cpu_us;
  };
  for (const Op& op :
       {Op{"dispatch", &s.dispatch, &s.copy_dispatch, bytes.dispatch, bytes.rdma_dispatch, s.cpu_dispatch_us},
        Op{"combine", &s.combine, &s.copy_combine, bytes.combine, bytes.rdma_combine, s.cpu_combine_us}}) {
    const std::string k = op.name, c = "copy_" + k;
    const double median = op.step->median_us;
    j[k + "_us_p50"] = median;
    j[k + "_us_p99"] = op.step->p99_us;
    j[k + "_GBps"] = Gbps(op.bytes, median);
    j[c + "_us_p50"] = op.copy->step.median_us;
    j[c + "_us_p99"] = op.copy->step.p99_us;
    j[c + "_GBps"] = op.copy->gbps;
    j[k + "_vs_copy"] = median > 0 ? op.copy->step.median_us / median : 0.0;
    j[k + "_cpu_us_per_rank"] = op.cpu_us;
    if (pl.num_nodes > 1) j[k + "_rdma_GBps"] = Gbps(op.rdma_bytes, median);
  }
  if (s.has_reduce) {
    // Floors (medians added: each part is a lower bound of its own step). A combine whose expert outputs
    // sit in private memory must move them once and reduce them: copy(dispatch) + copy(combine) + reduce.
    // A zero-copy combine reads them in place: copy(dispatch) + reduce.
    const double cd = s.copy_dispatch.step.median_us, cc = s.copy_combine.step.median_us;
    const double rd = s.reduce_combine.step.median_us;
    j["reduce_combine_us_p50"] = rd;
    j["reduce_combine_us_p99"] = s.reduce_combine.step.p99_us;
    j["reduce_combine_GBps"] = s.reduce_combine.gbps;
    j["floor_us"] = cd + cc + rd;
    j["floor_zero_copy_us"] = cd + rd;
    // The DRAM floor: the dispatch output streamed to memory, the expert outputs reduced from DRAM (the
    // caches cannot hold them here: bench/results/README.md). Lower than any combine that moves rows.
    const double sd = s.stream_dispatch.step.median_us, rc = s.cold_reduce_combine.step.median_us;
    j["stream_dispatch_us_p50"] = sd;
    j["stream_dispatch_us_p99"] = s.stream_dispatch.step.p99_us;
    j["stream_dispatch_GBps"] = s.stream_dispatch.gbps;
    j["reduce_cold_combine_us_p50"] = rc;
    j["reduce_cold_combine_us_p99"] = s.cold_reduce_combine.step.p99_us;
    j["reduce_cold_combine_GBps"] = s.cold_reduce_combine.gbps;
    j["floor_dram_us"] = sd + rc;
    if (s.has_cast) {
      // The serial floor: cast, then the DRAM floor (bench/copy_limit.h MeasureCastLimit).
      const double ca = s.cast_dispatch.step.median_us;
      j["cast_dispatch_us_p50"] = ca;
      j["cast_dispatch_us_p99"] = s.cast_dispatch.step.p99_us;
      j["floor_serial_us"] = ca + sd + rc;
    }
  }
  if (s.has_traffic) {
    // The least traffic of an exact combine with private expert outputs (bench/copy_limit.h
    // MeasureCombineTraffic), in CPU time with the ranks that share a core added up.
    const double tc = s.traffic_combine.step.median_us;
    j["traffic_combine_us_p50"] = tc;
    j["traffic_combine_us_p99"] = s.traffic_combine.step.p99_us;
    j["traffic_combine_MB_per_rank"] = s.traffic_combine.bytes_per_rank / 1e6;
    j["traffic_combine_GBps"] = s.traffic_combine.gbps;
    j["combine_vs_traffic"] = s.combine.median_us > 0 ? tc / s.combine.median_us : 0.0;
  }
  AddMpiJson(mpi, bytes.dispatch, bytes.combine, &j);
  return j;
}

}  // namespace epx::bench
