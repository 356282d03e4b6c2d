// epx-micro-bench: Google Benchmark microbenchmarks of in-process building blocks (one rank, no
// launcher): shared-memory put into the heap, the FP8 row cast, the dispatch layout, BF16 rounding.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/fp8.h"
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

}  // namespace
}  // namespace epx

BENCHMARK_MAIN();
