// bench/bench_stats.h: timing statistics shared by the benchmarks (median, p99, p99.9 like perftest).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace epx::bench {

struct Stats {
  double median_us = 0, p99_us = 0, p999_us = 0, min_us = 0, max_us = 0;
  size_t n = 0;
};

// Percentiles by the nearest-rank method over a copy of `samples_us`.
Stats Summarize(std::vector<double> samples_us);

// Seconds since an arbitrary epoch, monotonic, ns resolution.
double NowUs();

// CPU time of this process (all its threads) in microseconds.
double CpuUs();

// Bandwidth in GB/s of `bytes` moved in `us` microseconds (0 when nothing was timed).
inline double Gbps(double bytes, double us) {
  return us > 0 ? bytes / (us * 1e3) : 0.0;
}

}  // namespace epx::bench
