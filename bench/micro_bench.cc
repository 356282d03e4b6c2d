// epx-micro-bench: Google Benchmark microbenchmarks of in-process building blocks (one rank, no
// launcher): shared-memory put into the heap, the FP8 row cast, the dispatch layout, BF16 rounding,
// the row memcpy every exchange is bounded by, the low-latency combine's weighted row reduction, and
// the round trip of a flag between two threads (the signalling cost under every wait).
//
// CI runs every benchmark once as a smoke test (ctest micro_bench_smoke, bench/CMakeLists.txt); the
// figures mean something only from a Release build run on its own.
#include <benchmark/benchmark.h>
#include <numa.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "kernels/bf16_math.h"
#include "kernels/fp8.h"
#include "kernels/isa.h"
#include "kernels/layout.h"
#include "transport/context.h"

namespace epx {
namespace {

Context& SingleRank() {
  static std::unique_ptr<Context> ctx = [] {
    setenv("EPX_HEAP_SIZE", "64M", 0);
    auto c = Context::Create();
    if (!c.ok()) {
      std::fprintf(stderr, "epx-micro-bench: %s\n", c.status().ToString().c_str());
      std::exit(1);
    }
    return std::move(*c);
  }();
  return *ctx;
}

void BM_ShmPut(benchmark::State& state) {
  Context& c = SingleRank();
  const size_t n = static_cast<size_t>(state.range(0));
  std::vector<uint8_t> src(n, 7);
  for (auto _ : state) {
    benchmark::DoNotOptimize(c.node().Put(0, kHeapControlBytes, src.data(), n));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(n));
}
BENCHMARK(BM_ShmPut)->Arg(8)->Arg(4096)->Arg(64 << 10)->Arg(1 << 20);

void BM_Fp8CastRow(benchmark::State& state) {
  const int h = static_cast<int>(state.range(0));
  std::mt19937 rng(1);
  std::normal_distribution<float> d;
  std::vector<bf16> row(h);
  for (auto& v : row) v = FloatToBf16(d(rng));
  std::vector<uint8_t> q(h);
  std::vector<float> s(Fp8NumBlocks(h));
  for (auto _ : state) {
    CastRowToFp8(row.data(), h, {}, q.data(), s.data());
    benchmark::DoNotOptimize(q.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * h * 2);
}
BENCHMARK(BM_Fp8CastRow)->Arg(7168);

void BM_ComputeLayout(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), k = 8;
  ExpertPlacement ep{64, 8, 4};
  std::mt19937 rng(2);
  std::vector<int64_t> idx(static_cast<size_t>(n) * k);
  for (auto& x : idx) x = rng() % 64;
  for (auto _ : state) {
    auto l = ComputeLayout(idx, n, k, ep);
    benchmark::DoNotOptimize(l);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * n);
}
BENCHMARK(BM_ComputeLayout)->Arg(4096);

void BM_FloatToBf16(benchmark::State& state) {
  std::vector<float> in(4096);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i) * 0.37f;
  std::vector<bf16> out(in.size());
  for (auto _ : state) {
    for (size_t i = 0; i < in.size(); ++i) out[i] = FloatToBf16(in[i]);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * 4096);
}
BENCHMARK(BM_FloatToBf16);

// ---- Row copy -------------------------------------------------------------------------------------

// A buffer on the NUMA node of the calling thread (numa_alloc_local; plain heap memory when the kernel
// has no NUMA support), written once so its pages exist before timing.
class LocalBuffer {
 public:
  explicit LocalBuffer(size_t bytes) : bytes_(bytes) {
    numa_ = numa_available() >= 0;
    p_ = static_cast<uint8_t*>(numa_ ? numa_alloc_local(bytes) : std::aligned_alloc(4096, RoundUp(bytes)));
    if (!p_) {
      std::fprintf(stderr, "epx-micro-bench: cannot allocate %zu bytes\n", bytes);
      std::exit(1);
    }
    std::memset(p_, 1, bytes);
  }
  ~LocalBuffer() { numa_ ? numa_free(p_, bytes_) : std::free(p_); }
  LocalBuffer(const LocalBuffer&) = delete;
  LocalBuffer& operator=(const LocalBuffer&) = delete;
  uint8_t* data() const { return p_; }

 private:
  static size_t RoundUp(size_t n) { return (n + 4095) / 4096 * 4096; }
  size_t bytes_;
  bool numa_ = false;
  uint8_t* p_ = nullptr;
};

// memcpy of one token row, as the dispatch/combine data paths copy it (into a staging slot or a peer's
// receive slot). Args: row bytes, working set per buffer. Working set 0 copies the same row over and over
// (both rows stay in L1: the instruction-bound best case); otherwise consecutive iterations walk rows
// (64-byte aligned stride) through two working-set-sized buffers, so each copy reads and writes lines
// that are no longer in L1/L2 (32 MiB > L2; it may still hit a large L3).
void BM_RowCopy(benchmark::State& state) {
  const size_t row = static_cast<size_t>(state.range(0)), ws = static_cast<size_t>(state.range(1));
  const size_t stride = (row + 63) / 64 * 64, rows = ws ? ws / stride : 1;
  LocalBuffer src(rows * stride), dst(rows * stride);
  size_t i = 0;
  for (auto _ : state) {
    const size_t off = i * stride;
    std::memcpy(dst.data() + off, src.data() + off, row);
    benchmark::ClobberMemory();
    if (++i == rows) i = 0;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(row));
}
// BF16 row: 2H bytes. FP8 row: H E4M3 codes + one float scale per 128 columns (the dispatch payload
// without its 16-byte header).
constexpr int64_t kH = 7168;
constexpr int64_t kBf16Row = 2 * kH, kFp8Row = kH + 4 * ((kH + kFp8Block - 1) / kFp8Block);
BENCHMARK(BM_RowCopy)
    ->ArgNames({"row_bytes", "ws"})
    ->Args({kBf16Row, 0})
    ->Args({kFp8Row, 0})
    ->Args({kBf16Row, 32 << 20})
    ->Args({kFp8Row, 32 << 20});

// ---- Weighted combine of one token ------------------------------------------------------------------

// The low-latency combine's per-token reduction: the library's WeightedSumBf16Rows (kernels/bf16_math.h,
// what LlCombineRecv calls), K=8 received rows of H=7168 BF16 each, contiguous as the slots [token][k] of
// the receive buffer; and the normal combine's SumBf16Rows over the same rows. Bytes = the K rows read.
void BM_WeightedCombineRow(benchmark::State& state) {
  const int H = static_cast<int>(state.range(0)), K = static_cast<int>(state.range(1));
  const bool weighted = state.range(2) != 0;
  std::mt19937 rng(3);
  std::normal_distribution<float> d;
  std::vector<bf16> y(static_cast<size_t>(K) * H), out(H);
  for (auto& v : y) v = FloatToBf16(d(rng));
  std::vector<float> weights(K), acc(H);
  std::vector<const bf16*> rows(K);
  for (int k = 0; k < K; ++k) rows[k] = y.data() + static_cast<size_t>(k) * H;
  for (auto& w : weights) w = std::abs(d(rng)) / static_cast<float>(K);
  for (auto _ : state) {
    if (weighted)
      WeightedSumBf16Rows(out.data(), acc.data(), rows.data(), weights.data(), K, H);
    else
      SumBf16Rows(out.data(), acc.data(), rows.data(), K, H);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * K * H * 2);
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()) * K * H);  // (multiply-)adds
}
BENCHMARK(BM_WeightedCombineRow)->ArgNames({"H", "K", "weighted"})->Args({kH, 8, 1})->Args({kH, 8, 0});

// The one-phase low-latency combine at R = 2, K = 8 (kernels/ll.h "Combine"): the expert rank folds its
// half of a token's rows into one FP32 partial (WeightedPartialF32, K/2 rows), the source adds its own K/2
// rows and that partial (GroupedWeightedSumBf16). Bytes = the rows and the partial read by both steps.
void BM_GroupedCombineRow(benchmark::State& state) {
  const int H = static_cast<int>(state.range(0)), K = static_cast<int>(state.range(1)), half = K / 2;
  std::mt19937 rng(4);
  std::normal_distribution<float> d;
  std::vector<bf16> y(static_cast<size_t>(K) * H), out(H);
  for (auto& v : y) v = FloatToBf16(d(rng));
  std::vector<float> weights(K), acc(2 * static_cast<size_t>(H)), partial(H);
  std::vector<const bf16*> rows(K);
  for (int k = 0; k < K; ++k) rows[k] = y.data() + static_cast<size_t>(k) * H;
  for (auto& w : weights) w = std::abs(d(rng)) / static_cast<float>(K);
  const SumGroup groups[2] = {{0, half, nullptr}, {0, 0, partial.data()}};
  for (auto _ : state) {
    WeightedPartialF32(partial.data(), rows.data() + half, weights.data() + half, K - half, H);
    GroupedWeightedSumBf16(out.data(), acc.data(), rows.data(), weights.data(), groups, 2, H);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * (K * H * 2 + H * 4));
}
BENCHMARK(BM_GroupedCombineRow)->ArgNames({"H", "K"})->Args({kH, 8});

// ---- Flag round trip --------------------------------------------------------------------------------

// Where the ping-pong flag lives in the symmetric heap: its own cache line, past the largest BM_ShmPut.
constexpr size_t kFlagOffset = kHeapControlBytes + (1 << 20);
static_assert(kFlagOffset % 64 == 0);

// Spins until `flag` (acquire) satisfies `done`: pause first, then sched_yield, so two threads that end
// up on one core (ctest runs tests in parallel on 2 cores) still make progress. False after `limit`.
template <typename Done>
bool SpinUntil(std::atomic_ref<uint64_t> flag, Done done, std::chrono::steady_clock::time_point limit) {
  for (uint32_t n = 0;; ++n) {
    if (done(flag.load(std::memory_order_acquire))) return true;
    if (n < 4096) {
      __builtin_ia32_pause();
    } else {
      sched_yield();
      if ((n & 255) == 0 && std::chrono::steady_clock::now() > limit) return false;
    }
  }
}

// Round-trip latency of a signal between two threads through one 64-bit word of the shared heap, the
// way ranks signal each other (release store; the waiter polls with acquire loads). The timed thread
// stores an odd sequence number s and waits for s + 1; the responder waits for s and stores s + 1. One
// iteration = one round trip = two cache-line transfers between the cores. The threads are not pinned
// (the scheduler spreads them over idle cores); with both on one core a round trip costs a yield each.
// Bounded: the responder stops on kStop, and a wait that lasts longer than 10 s ends the benchmark with
// an error instead of hanging.
void BM_ShmSignalRoundTrip(benchmark::State& state) {
  constexpr uint64_t kStop = ~uint64_t{0};
  const auto kMaxWait = std::chrono::seconds(10);
  std::atomic_ref<uint64_t> flag(*reinterpret_cast<uint64_t*>(SingleRank().heap().base() + kFlagOffset));
  flag.store(0, std::memory_order_relaxed);
  std::atomic<bool> responder_failed{false};
  std::thread responder([&] {
    for (uint64_t want = 1;; want += 2) {
      uint64_t seen = 0;
      const bool ok = SpinUntil(
          flag, [&](uint64_t v) { return (seen = v) == want || v == kStop; },
          std::chrono::steady_clock::now() + kMaxWait);
      if (!ok) responder_failed.store(true);
      if (!ok || seen == kStop) return;
      flag.store(want + 1, std::memory_order_release);
    }
  });
  uint64_t s = 1;
  for (auto _ : state) {
    flag.store(s, std::memory_order_release);
    if (!SpinUntil(
            flag, [&](uint64_t v) { return v == s + 1; }, std::chrono::steady_clock::now() + kMaxWait)) {
      state.SkipWithError("no answer from the responder thread within 10 s");
      break;
    }
    s += 2;
  }
  flag.store(kStop, std::memory_order_release);
  responder.join();
  if (responder_failed.load()) state.SkipWithError("the responder thread saw no ping within 10 s");
}
BENCHMARK(BM_ShmSignalRoundTrip)->UseRealTime();

}  // namespace
}  // namespace epx

// BENCHMARK_MAIN, plus which family of row kernels ran (kernels/isa.h; EPX_KERNEL_ISA caps it) in the
// context block of the output, so that runs under different caps can be told apart.
int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("kernel_isa", epx::IsaName(epx::KernelIsa()));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
