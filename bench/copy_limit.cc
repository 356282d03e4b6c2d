#include "bench/copy_limit.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "bench/commands.h"

namespace epx::bench {

StatusOr<CopyLimitResult> MeasureCopyLimit(Context& ctx, size_t bytes, size_t row_bytes, int iters, int warmup,
                                           const char* phase) {
  row_bytes = std::max<size_t>(row_bytes, 1);
  // First-touch by this (pinned) rank puts the pages on its NUMA node, like the symmetric heap.
  std::vector<uint8_t> src(bytes, 1), dst(bytes, 0);
  std::vector<double> t;
  for (int it = 0; it < warmup + iters; ++it) {
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(phase));
    const double t0 = NowUs();
    for (size_t off = 0; off < bytes; off += row_bytes)
      std::memcpy(dst.data() + off, src.data() + off, std::min(row_bytes, bytes - off));
    const double t1 = NowUs();
    if (it >= warmup) t.push_back(t1 - t0);
  }
  // A volatile read of the destination keeps the copies observable, so the compiler cannot drop them.
  volatile uint8_t sink = bytes ? dst[bytes / 2] : 0;
  (void)sink;
  EPX_ASSIGN_OR_RETURN(auto step, StepTimes(ctx.bootstrap(), t, phase));
  struct Mine {
    double bytes;
  } mine{static_cast<double>(bytes)};
  EPX_ASSIGN_OR_RETURN(auto all, ctx.bootstrap().AllGatherPod(phase, mine));
  CopyLimitResult r;
  for (const Mine& m : all) r.bytes_per_rank += m.bytes / static_cast<double>(all.size());
  r.step = Summarize(step);
  r.gbps = Gbps(r.bytes_per_rank, r.step.median_us);
  return r;
}

}  // namespace epx::bench
