#include "bench/bench_stats.h"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace epx::bench {

Stats Summarize(std::vector<double> s) {
  Stats st;
  st.n = s.size();
  if (s.empty()) return st;
  std::sort(s.begin(), s.end());
  auto pct = [&](double p) {
    size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(s.size())));
    return s[std::min(s.size() - 1, rank == 0 ? 0 : rank - 1)];
  };
  st.median_us = pct(50);
  st.p99_us = pct(99);
  st.p999_us = pct(99.9);
  st.min_us = s.front();
  st.max_us = s.back();
  return st;
}

double NowUs() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace epx::bench

namespace epx::bench {

double CpuUs() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1e6 + u.ru_utime.tv_usec + u.ru_stime.tv_usec;
}

}  // namespace epx::bench
