#include "bench/copy_limit.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "bench/commands.h"
#include "kernels/bf16_math.h"
#include "kernels/stream_copy.h"

namespace epx::bench {

namespace {

// The slowest rank per timed iteration, and the mean bytes over ranks per median step.
StatusOr<CopyLimitResult> Finish(Context& ctx, const std::vector<double>& t, double bytes,
                                 const char* phase) {
  EPX_ASSIGN_OR_RETURN(auto step, StepTimes(ctx.bootstrap(), t, phase));
  struct Mine {
    double bytes;
  } mine{bytes};
  EPX_ASSIGN_OR_RETURN(auto all, ctx.bootstrap().AllGatherPod(phase, mine));
  CopyLimitResult r;
  for (const Mine& m : all) r.bytes_per_rank += m.bytes / static_cast<double>(all.size());
  r.step = Summarize(step);
  r.gbps = Gbps(r.bytes_per_rank, r.step.median_us);
  return r;
}

}  // namespace

StatusOr<CopyLimitResult> MeasureCopyLimit(Context& ctx, size_t bytes, size_t row_bytes, int iters,
                                           int warmup, const char* phase, bool stream) {
  row_bytes = std::max<size_t>(row_bytes, 1);
  // First-touch by this (pinned) rank puts the pages on its NUMA node, like the symmetric heap.
  std::vector<uint8_t> src(bytes, 1), dst(bytes, 0);
  std::vector<double> t;
  for (int it = 0; it < warmup + iters; ++it) {
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(phase));
    const double t0 = NowUs();
    if (stream) {
      for (size_t off = 0; off < bytes; off += row_bytes)
        StreamCopy(dst.data() + off, src.data() + off, std::min(row_bytes, bytes - off));
      StreamFence();
    } else {
      for (size_t off = 0; off < bytes; off += row_bytes)
        std::memcpy(dst.data() + off, src.data() + off, std::min(row_bytes, bytes - off));
    }
    const double t1 = NowUs();
    if (it >= warmup) t.push_back(t1 - t0);
  }
  // A volatile read of the destination keeps the copies observable, so the compiler cannot drop them.
  volatile uint8_t sink = bytes ? dst[bytes / 2] : 0;
  (void)sink;
  return Finish(ctx, t, static_cast<double>(bytes), phase);
}

StatusOr<CopyLimitResult> MeasureReduceLimit(Context& ctx, int tokens, int topk, int hidden, int iters,
                                             int warmup, const char* phase, bool cold) {
  const size_t H = static_cast<size_t>(hidden), N = static_cast<size_t>(tokens),
               K = static_cast<size_t>(topk);
  // Values do not change the kernel's speed (no data-dependent branches); weights as a router's softmax.
  std::vector<bf16> rows_mem(N * K * H, FloatToBf16(0.5f)), out(N * H);
  std::vector<const bf16*> rows(N * K);
  for (size_t i = 0; i < N * K; ++i) rows[i] = rows_mem.data() + i * H;
  std::vector<float> w(K, 1.0f / static_cast<float>(std::max<size_t>(K, 1))), acc(H);
  std::vector<uint8_t> evict(cold ? kColdEvictBytes : 0, 1);
  uint64_t evict_sum = 0;
  std::vector<double> t;
  for (int it = 0; it < warmup + iters; ++it) {
    // One read per line of a buffer three times the L3: the rows (and everything else) leave the caches.
    for (size_t i = 0; i < evict.size(); i += 64) evict_sum += evict[i];
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(phase));
    const double t0 = NowUs();
    for (size_t n = 0; n < N; ++n)
      WeightedSumBf16Rows(out.data() + n * H, acc.data(), rows.data() + n * K, w.data(), topk, hidden);
    const double t1 = NowUs();
    if (it >= warmup) t.push_back(t1 - t0);
  }
  volatile uint64_t sink = (N ? out[N * H / 2].bits : 0) + evict_sum;  // keeps the sums and reads observable
  (void)sink;
  return Finish(ctx, t, static_cast<double>(N * K * H * 2), phase);
}

StatusOr<CopyLimitResult> MeasureCastLimit(Context& ctx, std::span<const bf16> x, int hidden,
                                           const Fp8Options& opt, int iters, int warmup, const char* phase) {
  const size_t H = static_cast<size_t>(std::max(hidden, 1)), rows = x.size() / H;
  // Codes and scales of a row side by side, as the dispatch stages them (4 bytes of scale per block covers
  // both scale formats).
  const size_t scale_bytes = 4 * static_cast<size_t>(Fp8NumBlocks(static_cast<int>(H)));
  const size_t stride = (H + scale_bytes + 63) / 64 * 64;
  std::vector<uint8_t> out(rows * stride, 0);
  std::vector<double> t;
  for (int it = 0; it < warmup + iters; ++it) {
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(phase));
    const double t0 = NowUs();
    for (size_t r = 0; r < rows; ++r)
      CastRowToFp8(x.data() + r * H, static_cast<int>(H), opt, out.data() + r * stride,
                   out.data() + r * stride + H);
    const double t1 = NowUs();
    if (it >= warmup) t.push_back(t1 - t0);
  }
  volatile uint8_t sink = rows ? out[rows * stride / 2] : 0;  // keeps the casts observable
  (void)sink;
  return Finish(ctx, t, static_cast<double>(rows * H * 2), phase);
}

}  // namespace epx::bench
