// bench/exchange_report.cc: the flags and the table frame that epx-bench normal and low-latency share
// (bench/commands.h).
#include <fmt/format.h>

#include <cstdio>
#include <fstream>

#include "bench/commands.h"

namespace epx::bench {

void AddExchangeFlags(CLI::App& app, ExchangeFlags& f, const char* tokens_doc, const char* zero_copy_doc) {
  app.add_option("--tokens", f.tokens, tokens_doc)->check(CLI::NonNegativeNumber);
  app.add_option("--hidden", f.hidden, "hidden size H")->check(CLI::PositiveNumber);
  app.add_option("--topk", f.topk, "experts per token K")->check(CLI::PositiveNumber);
  app.add_option("--experts", f.experts, "experts E (divisible by the number of ranks)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--zero-copy", f.zero_copy, zero_copy_doc);
  app.add_option("--iters", f.iters, "timed iterations")->check(CLI::PositiveNumber);
  app.add_option("--warmup", f.warmup, "untimed iterations first")->check(CLI::NonNegativeNumber);
  app.add_flag("--check", f.check, "compare every iteration with the serial reference; exit 1 on mismatch");
  app.add_option("--seed", f.seed, "routing and data seed");
  app.add_option("--json", f.json, "also write the results as JSON to this file (rank 0)");
  app.add_option("--mpi", f.mpi,
                 "MPI baseline on the same inputs: auto = when launched by mpirun (tools/compare), on, off")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  app.add_option("--rounds", f.rounds,
                 "epx and the MPI baseline take turns in this many blocks of about iters/rounds timed "
                 "iterations (later blocks after min(warmup, 3) warm-ups), their samples pooled: a drift of "
                 "the host's speed during the run hits both sides alike")
      ->check(CLI::PositiveNumber);
}

int ReportExchange(Context& ctx, const char* command, const Status& st, const nlohmann::json& j,
                   const ExchangeFlags& f, int label_width, const std::function<std::string()>& header,
                   const std::function<void(const std::string& op)>& after_op,
                   const std::function<void()>& rest) {
  if (!st.ok() && j.empty()) {
    std::fprintf(stderr, "epx-bench %s: %s\n", command, st.ToString().c_str());
    return st.code() == Code::kInvalidArgument ? 2 : 1;
  }
  if (ctx.rank() == 0) {
    const bool multi = ctx.placement().num_nodes > 1;
    std::printf("%s\n", header().c_str());
    std::printf("\n%-*s %12s %12s %10s %12s %12s %10s %9s\n", label_width, "op", "median_us", "p99_us",
                "GB/s", "rdma_GB/s", "cpu_us", "copy_GB/s", "of_copy");
    for (const std::string op : {"dispatch", "combine"}) {
      std::printf("%-*s %12.1f %12.1f %10.2f %12s %12.1f %10.2f %8.0f%%\n", label_width, op.c_str(),
                  j[op + "_us_p50"].get<double>(), j[op + "_us_p99"].get<double>(),
                  j[op + "_GBps"].get<double>(),
                  multi ? fmt::format("{:.2f}", j[op + "_rdma_GBps"].get<double>()).c_str() : "-",
                  j[op + "_cpu_us_per_rank"].get<double>(), j["copy_" + op + "_GBps"].get<double>(),
                  100.0 * j[op + "_vs_copy"].get<double>());
      after_op(op);
    }
    rest();
    if (!f.json.empty()) {
      std::ofstream out(f.json);
      out << j.dump(2) << "\n";
    }
  }
  if (!st.ok())
    std::fprintf(stderr, "epx-bench %s: rank %d: %s\n", command, ctx.rank(), st.ToString().c_str());
  return st.ok() ? 0 : 1;
}

}  // namespace epx::bench
