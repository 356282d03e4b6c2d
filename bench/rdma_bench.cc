// epx-rdma-bench: perftest-style microbenchmark of the RDMA domain between two ranks on two logical
// nodes (run: epx-run -n 2 --nodes 2 -- epx-rdma-bench). Same shape as ib_write_lat / ib_write_bw so
// the two can be compared on the same device (bench/rxe_rdma_bench.sh runs both in one guest).
//
//   lat:  ping-pong of `--lat-size` bytes (default 8). Rank 0 writes, rank 1 sees the data and writes
//         back; one-way latency = round trip / 2 (as ib_write_lat reports). Two variants:
//         write+poll   a plain write whose last 8 bytes carry the iteration number, polled by the
//                      receiver (exactly what ib_write_lat measures)
//         signal       Signal(): the data write then a fetch-add on a flag counter (the protocol the
//                      kernels use; two operations per message)
//   bw:   rank 0 streams `--bw-size` messages (default 64 KiB) to rank 1, Quiet every `--window`
//         messages; bandwidth = bytes / time (ib_write_bw's "BW average").
// Prints median, p99, p99.9 latency and MB/s, plus JSON with --json.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "bench/bench_stats.h"
#include "transport/context.h"
#include "transport/rdma.h"

namespace epx::bench {
namespace {

struct Opts {
  size_t lat_size = 8;
  size_t bw_size = 64 << 10;
  int lat_iters = 1000;
  int bw_iters = 1000;
  int window = 32;
  std::string json;
};

volatile uint64_t* Word(Context& c, size_t off) { return reinterpret_cast<volatile uint64_t*>(c.heap().base() + off); }

// Waits (with the library's back-off policy, bounded) until the local word reaches `v`.
Status PollWord(Context& c, size_t off, uint64_t v) {
  auto* w = reinterpret_cast<std::atomic<uint64_t>*>(c.heap().base() + off);
  return WaitUntil([&] { return w->load(std::memory_order_acquire) >= v; },
                   Deadline::After(std::chrono::milliseconds(c.options().timeout_ms)),
                   [&] { return fmt::format("lat ping-pong: word at {} stuck at {} < {}", off, w->load(), v); });
}

int Main(int argc, char** argv) {
  Opts o;
  CLI::App app{"epx-rdma-bench: write latency and bandwidth of the RDMA domain between 2 ranks"};
  app.add_option("--lat-size", o.lat_size, "latency message bytes (>= 8)")->check(CLI::Range(8, 1 << 20));
  app.add_option("--bw-size", o.bw_size, "bandwidth message bytes")->check(CLI::Range(1, 8 << 20));
  app.add_option("--lat-iters", o.lat_iters, "ping-pong round trips")->check(CLI::PositiveNumber);
  app.add_option("--bw-iters", o.bw_iters, "messages streamed")->check(CLI::PositiveNumber);
  app.add_option("--window", o.window, "messages between Quiet calls (bandwidth)")->check(CLI::PositiveNumber);
  app.add_option("--json", o.json, "write results as JSON (rank 0)");
  CLI11_PARSE(app, argc, argv);

  auto ctx_or = Context::Create();
  if (!ctx_or.ok()) {
    std::fprintf(stderr, "epx-rdma-bench: setup failed: %s\n", ctx_or.status().ToString().c_str());
    return 1;
  }
  Context& c = **ctx_or;
  if (c.world_size() != 2 || c.placement().num_nodes != 2) {
    std::fprintf(stderr, "epx-rdma-bench: needs exactly 2 ranks on 2 nodes (epx-run -n 2 --nodes 2), got %d on %d\n",
                 c.world_size(), c.placement().num_nodes);
    return 2;
  }
  const int me = c.rank(), peer = 1 - me;
  // Heap layout, same on both ranks: [counters][lat src][lat dst][bw src][bw dst].
  HeapAllocator a(c.heap().size());
  auto counters = a.Allocate(64, 64, "counters");
  auto lsrc = a.Allocate(o.lat_size, 64, "lat src");
  auto ldst = a.Allocate(o.lat_size, 64, "lat dst");
  auto bsrc = a.Allocate(o.bw_size, 4096, "bw src");
  auto bdst = a.Allocate(o.bw_size, 4096, "bw dst");
  for (auto* r : {&counters, &lsrc, &ldst, &bsrc, &bdst})
    if (!r->ok()) {
      std::fprintf(stderr, "epx-rdma-bench: %s\n", r->status().ToString().c_str());
      return 2;
    }
  RdmaOptions ro;
  if (auto env = RdmaOptions::FromEnv(); env.ok()) ro = *env;
  ro.channels = 1;
  ro.counter_off = *counters;
  ro.counter_bytes = 64;
  auto dom_or = CreateRdmaDomain(c, ro);
  if (!dom_or.ok()) {
    std::fprintf(stderr, "epx-rdma-bench: rdma setup failed: %s\n", dom_or.status().ToString().c_str());
    return 1;
  }
  RdmaDomain& d = **dom_or;
  auto fail = [&](const Status& s) {
    std::fprintf(stderr, "epx-rdma-bench: rank %d: %s\n", me, s.ToString().c_str());
    return 1;
  };
#define BENCH_OK(expr)                   \
  do {                                   \
    Status s_ = (expr);                  \
    if (!s_.ok()) return fail(s_);       \
  } while (0)

  const size_t tag_off = o.lat_size - 8;  // last 8 bytes of the message carry the iteration number
  std::vector<double> lat_poll, lat_signal;
  BENCH_OK(c.bootstrap().Barrier("bench-lat"));
  // write+poll ping-pong
  for (int i = 1; i <= o.lat_iters + 10; ++i) {
    const double t0 = NowUs();
    if (me == 0) {
      *Word(c, *lsrc + tag_off) = i;
      BENCH_OK(d.Write(0, peer, *lsrc, *ldst, o.lat_size));
      BENCH_OK(d.Flush(0));
      BENCH_OK(PollWord(c, *ldst + tag_off, i));
    } else {
      BENCH_OK(PollWord(c, *ldst + tag_off, i));
      *Word(c, *lsrc + tag_off) = i;
      BENCH_OK(d.Write(0, peer, *lsrc, *ldst, o.lat_size));
      BENCH_OK(d.Flush(0));
    }
    if (i > 10) lat_poll.push_back((NowUs() - t0) / 2);
    if (i % 128 == 0) BENCH_OK(d.Quiet(0));  // retire completions so the send queue never fills
  }
  BENCH_OK(d.Quiet(0));
  BENCH_OK(c.bootstrap().Barrier("bench-lat-signal"));
  // signal ping-pong: data then flag (fetch-add) on the same QP
  for (int i = 1; i <= o.lat_iters + 10; ++i) {
    const double t0 = NowUs();
    if (me == 0) {
      BENCH_OK(d.Signal(0, peer, *lsrc, *ldst, o.lat_size, *counters, 1));
      BENCH_OK(d.Flush(0));
      BENCH_OK(d.WaitCounter(*counters, i, "lat signal pong"));
    } else {
      BENCH_OK(d.WaitCounter(*counters, i, "lat signal ping"));
      BENCH_OK(d.Signal(0, peer, *lsrc, *ldst, o.lat_size, *counters, 1));
      BENCH_OK(d.Flush(0));
    }
    if (i > 10) lat_signal.push_back((NowUs() - t0) / 2);
    if (i % 128 == 0) BENCH_OK(d.Quiet(0));
  }
  BENCH_OK(d.Quiet(0));
  BENCH_OK(c.bootstrap().Barrier("bench-bw"));
  // bandwidth: rank 0 streams, rank 1 idles in the barrier
  double bw_mbps = 0;
  if (me == 0) {
    for (int i = 0; i < 20; ++i) BENCH_OK(d.Write(0, peer, *bsrc, *bdst, o.bw_size));  // warm-up
    BENCH_OK(d.Quiet(0));
    const double t0 = NowUs();
    for (int i = 1; i <= o.bw_iters; ++i) {
      BENCH_OK(d.Write(0, peer, *bsrc, *bdst, o.bw_size));
      if (i % o.window == 0) BENCH_OK(d.Flush(0));
      if (i % (o.window * 4) == 0) BENCH_OK(d.Quiet(0));
    }
    BENCH_OK(d.Quiet(0));
    bw_mbps = double(o.bw_size) * o.bw_iters / (NowUs() - t0);  // bytes/us == MB/s
  }
  BENCH_OK(c.bootstrap().Barrier("bench-done"));
  if (me == 0) {
    Stats p = Summarize(lat_poll), s = Summarize(lat_signal);
    std::printf("epx-rdma-bench: %s, %s\n", d.caps().kind.c_str(), d.caps().device.c_str());
    std::printf("%-22s %8s %10s %10s %10s %10s\n", "test", "bytes", "median_us", "p99_us", "p99.9_us", "MB/s");
    std::printf("%-22s %8zu %10.2f %10.2f %10.2f %10s\n", "write+poll latency", o.lat_size, p.median_us, p.p99_us,
                p.p999_us, "-");
    std::printf("%-22s %8zu %10.2f %10.2f %10.2f %10s\n", "signal latency", o.lat_size, s.median_us, s.p99_us,
                s.p999_us, "-");
    std::printf("%-22s %8zu %10s %10s %10s %10.2f\n", "write bandwidth", o.bw_size, "-", "-", "-", bw_mbps);
    if (!o.json.empty()) {
      nlohmann::json j = {{"device", d.caps().device},     {"kind", d.caps().kind},
                          {"lat_bytes", o.lat_size},       {"lat_poll_us_p50", p.median_us},
                          {"lat_poll_us_p99", p.p99_us},   {"lat_poll_us_p999", p.p999_us},
                          {"lat_signal_us_p50", s.median_us}, {"lat_signal_us_p99", s.p99_us},
                          {"lat_signal_us_p999", s.p999_us}, {"bw_bytes", o.bw_size},
                          {"bw_MBps", bw_mbps}};
      std::ofstream(o.json) << j.dump(2) << "\n";
    }
  }
  return 0;
}

}  // namespace
}  // namespace epx::bench

int main(int argc, char** argv) { return epx::bench::Main(argc, argv); }
