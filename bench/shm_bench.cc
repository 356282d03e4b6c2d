// epx-bench shm: the node's shared-memory transport (the NVLink stand-in) measured with an all-to-all
// of fixed-size blocks, against the copy limit (a local memcpy of exactly the same bytes, on the same
// pinned cores, in the same run).
//
// Per size: every rank puts `size` bytes into each node peer (itself included), then the node
// barrier closes the step. A step's time is the slowest rank's (element-wise max over ranks), so the
// table shows the collective as a user would wait for it. GB/s is algorithmic: bytes each rank sends
// per step / step time.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_stats.h"
#include "bench/commands.h"
#include "core/tunables.h"
#include "transport/context.h"

namespace epx::bench {
namespace {

struct Options {
  std::vector<std::string> sizes = {"4K", "64K", "1M"};
  int iters = 200;
  int warmup = 20;
  std::string json;
};

struct Row {
  size_t bytes_per_peer;
  Stats epx, copy;
};

StatusOr<Row> RunSize(Context& ctx, size_t size, const Options& o) {
  ShmTransport& shm = ctx.node();
  const auto& peers = ctx.node_ranks();
  const int L = static_cast<int>(peers.size());
  const int me = ctx.placement().local_rank;
  HeapAllocator alloc(ctx.heap().size());
  EPX_ASSIGN_OR_RETURN(size_t src, alloc.Allocate(size, 4096, "bench send buffer"));
  EPX_ASSIGN_OR_RETURN(size_t dst, alloc.Allocate(size * L, 4096, "bench receive buffer"));
  EPX_ASSIGN_OR_RETURN(size_t scratch, alloc.Allocate(size * L, 4096, "bench copy-limit buffer"));
  std::memset(ctx.heap().base() + src, me + 1, size);
  const uint8_t* src_ptr = ctx.heap().base() + src;

  std::vector<double> t_epx, t_copy;
  for (int it = 0; it < o.warmup + o.iters; ++it) {
    EPX_RETURN_IF_ERROR(shm.Barrier("bench-start"));
    const double t0 = NowUs();
    // Start at our own index so ranks do not all hammer the same peer at once.
    for (int k = 0; k < L; ++k) {
      const int p = peers[(me + k) % L];
      EPX_RETURN_IF_ERROR(shm.Put(p, dst + size_t(me) * size, src_ptr, size));
    }
    EPX_RETURN_IF_ERROR(shm.Barrier("bench-step"));
    const double t1 = NowUs();
    // Copy limit: the same bytes copied locally (no peer memory) with the same step structure
    // (start barrier, copies, end barrier), so the ratio isolates what writing into peers costs.
    EPX_RETURN_IF_ERROR(shm.Barrier("bench-copy-start"));
    const double t2 = NowUs();
    for (int k = 0; k < L; ++k) std::memcpy(ctx.heap().base() + scratch + size_t(k) * size, src_ptr, size);
    EPX_RETURN_IF_ERROR(shm.Barrier("bench-copy-step"));
    const double t3 = NowUs();
    if (it >= o.warmup) {
      t_epx.push_back(t1 - t0);
      t_copy.push_back(t3 - t2);
    }
  }
  // Verify the last exchange: block from source s holds s+1 everywhere (a benchmark that moves
  // wrong bytes is not a benchmark).
  EPX_RETURN_IF_ERROR(shm.Barrier("bench-verify"));
  const uint8_t* d = ctx.heap().base() + dst;
  for (int s = 0; s < L; ++s)
    for (size_t i = 0; i < size; i += 997)
      if (d[size_t(s) * size + i] != s + 1)
        return EPX_ERROR(kInternal, "bench: rank {} received wrong data from local rank {} at byte {}",
                         ctx.rank(), s, i);
  EPX_ASSIGN_OR_RETURN(auto step_epx, StepTimes(ctx.bootstrap(), t_epx, "bench-times-epx"));
  EPX_ASSIGN_OR_RETURN(auto step_copy, StepTimes(ctx.bootstrap(), t_copy, "bench-times-copy"));
  return Row{size, Summarize(step_epx), Summarize(step_copy)};
}

class ShmCommand final : public Command {
 public:
  void AddFlags(CLI::App& app) override {
    app.add_option("--sizes", o_.sizes, "bytes per peer per step (units K/M)")->delimiter(',');
    app.add_option("--iters", o_.iters, "timed steps per size")->check(CLI::PositiveNumber);
    app.add_option("--warmup", o_.warmup, "untimed steps per size")->check(CLI::NonNegativeNumber);
    app.add_option("--json", o_.json, "also write results as JSON to this file (rank 0)");
  }
  int Run(Context& ctx) override;

 private:
  Options o_;
};

int ShmCommand::Run(Context& ctx) {
  const Options& o = o_;
  std::vector<size_t> sizes;
  for (const auto& s : o.sizes) {
    auto v = ParseSize(s);
    if (!v.ok() || *v == 0) {
      std::fprintf(stderr, "epx-bench shm: --sizes: '%s' is not a positive size\n", s.c_str());
      return 2;
    }
    sizes.push_back(*v);
  }
  const bool lead = ctx.rank() == 0;
  const int L = ctx.placement().local_size;
  if (lead)
    std::printf(
        "epx-bench: shared-memory all-to-all (NVLink stand-in): %d ranks, %d node(s) x %d, heap %zu MiB %s, "
        "%d steps (+%d warm-up)\n",
        ctx.world_size(), ctx.placement().num_nodes, L, ctx.heap().size() >> 20,
        PageKindName(ctx.heap().page_kind()), o.iters, o.warmup);

  nlohmann::json out = nlohmann::json::array();
  std::vector<Row> rows;
  for (size_t size : sizes) {
    if (size * (2 * L + 1) + 3 * 4096 + kHeapControlBytes > ctx.heap().size()) {
      if (lead)
        std::fprintf(stderr,
                     "epx-bench: %zu bytes x %d peers does not fit the %zu-byte heap: raise EPX_HEAP_SIZE\n",
                     size, L, ctx.heap().size());
      return 2;
    }
    auto row = RunSize(ctx, size, o);
    if (!row.ok()) {
      std::fprintf(stderr, "epx-bench: %s\n", row.status().ToString().c_str());
      return 1;
    }
    rows.push_back(*row);
  }
  if (lead) {
    std::printf("\n%12s %10s %10s %10s %10s %10s %9s\n", "bytes/peer", "median_us", "p99_us", "GB/s",
                "copy_us", "copy_GB/s", "vs_copy");
    for (const Row& r : rows) {
      const double bytes = double(r.bytes_per_peer) * L;
      const double gbs = bytes / (r.epx.median_us * 1e3), cgbs = bytes / (r.copy.median_us * 1e3);
      std::printf("%12zu %10.1f %10.1f %10.2f %10.1f %10.2f %8.0f%%\n", r.bytes_per_peer, r.epx.median_us,
                  r.epx.p99_us, gbs, r.copy.median_us, cgbs, 100.0 * r.copy.median_us / r.epx.median_us);
      out.push_back({{"op", "shm_alltoall"},
                     {"ranks", ctx.world_size()},
                     {"bytes_per_peer", r.bytes_per_peer},
                     {"median_us", r.epx.median_us},
                     {"p99_us", r.epx.p99_us},
                     {"p999_us", r.epx.p999_us},
                     {"gbps", gbs},
                     {"copy_median_us", r.copy.median_us},
                     {"copy_gbps", cgbs},
                     {"ratio_vs_copy", r.copy.median_us / r.epx.median_us}});
    }
    std::printf(
        "\nstep = puts to all %d node peers + node barrier; time = slowest rank; copy = local memcpy of the "
        "same bytes with the same barriers; vs_copy = copy time / epx time\n",
        L);
    if (!o.json.empty()) {
      std::ofstream f(o.json);
      f << out.dump(2) << "\n";
    }
  }
  return 0;
}

}  // namespace

std::unique_ptr<Command> MakeShmCommand() {
  return std::make_unique<ShmCommand>();
}

}  // namespace epx::bench
