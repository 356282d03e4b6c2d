// epx-bench: the main job's multi-rank tables. Run under a launcher, one process per rank:
//   epx-run -n 4 -- epx-bench                    normal dispatch/combine (the default table)
//   epx-run -n 4 --nodes 2 -- epx-bench normal --tokens 4096 --hidden 7168 --topk 8 --experts 64
//   epx-run -n 4 -- epx-bench low-latency        low-latency (decode) dispatch/combine, 128 tokens/rank
//   epx-run -n 4 -- epx-bench shm                shared-memory all-to-all vs the copy limit
// `epx-bench <command> --help` lists each table's flags.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>
#include <string>

#include "bench/commands.h"
#include "bench/mpi_compare.h"
#include "core/tunables.h"
#include "transport/context.h"

namespace epx::bench {

StatusOr<std::vector<double>> StepTimes(Bootstrap& boot, const std::vector<double>& mine, const char* phase) {
  std::span<const uint8_t> raw(reinterpret_cast<const uint8_t*>(mine.data()), mine.size() * sizeof(double));
  EPX_ASSIGN_OR_RETURN(auto all, boot.AllGather(phase, raw));
  std::vector<double> out(mine.size(), 0.0);
  const double* v = reinterpret_cast<const double*>(all.data());
  for (int r = 0; r < boot.world_size(); ++r)
    for (size_t i = 0; i < mine.size(); ++i) out[i] = std::max(out[i], v[r * mine.size() + i]);
  return out;
}

namespace {

int Main(int argc, char** argv) {
  CLI::App app{"epx-bench: multi-rank benchmark tables (run under epx-run); default table: normal"};
  bool print_config = false;
  app.add_flag("--print-config", print_config, "print the EPX_* tunables in effect");
  auto normal = MakeNormalCommand();
  auto ll = MakeLowLatencyCommand();
  auto shm = MakeShmCommand();
  CLI::App* normal_app = app.add_subcommand("normal", "normal (high-throughput) dispatch and combine");
  CLI::App* ll_app = app.add_subcommand("low-latency", "low-latency (decode) dispatch and combine");
  CLI::App* shm_app = app.add_subcommand("shm", "shared-memory all-to-all against the copy limit");
  normal->AddFlags(*normal_app);
  ll->AddFlags(*ll_app);
  shm->AddFlags(*shm_app);
  app.require_subcommand(0, 1);
  CLI11_PARSE(app, argc, argv);
  Command& cmd = shm_app->parsed() ? *shm : ll_app->parsed() ? *ll : *normal;

  auto ctx_or = Context::Create();
  if (!ctx_or.ok()) {
    std::fprintf(stderr, "epx-bench: setup failed: %s\n", ctx_or.status().ToString().c_str());
    return 1;
  }
  Context& ctx = **ctx_or;
  if (ctx.rank() == 0 && print_config) std::printf("%s\n", FormatTunables().c_str());
  const int rc = cmd.Run(ctx);
  // No rank unmaps its heap while peers may still read it.
  auto st = ctx.bootstrap().Barrier("bench-end");
  MpiFinalize();
  return rc != 0 ? rc : st.ok() ? 0 : 1;
}

}  // namespace
}  // namespace epx::bench

int main(int argc, char** argv) {
  return epx::bench::Main(argc, argv);
}
