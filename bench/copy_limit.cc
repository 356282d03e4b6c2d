#include "bench/copy_limit.h"

#include <sched.h>
#include <sys/mman.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "bench/commands.h"
#include "core/sys.h"
#include "kernels/bf16_math.h"
#include "kernels/stream_copy.h"

namespace epx::bench {

namespace {

// Summarizes `step` (per timed iteration, the same on every rank), with the mean bytes over ranks per
// median step.
StatusOr<CopyLimitResult> FinishSteps(Context& ctx, const std::vector<double>& step, double bytes,
                                      const char* phase) {
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

// The slowest rank per timed iteration (`t`: this rank's times).
StatusOr<CopyLimitResult> Finish(Context& ctx, const std::vector<double>& t, double bytes,
                                 const char* phase) {
  EPX_ASSIGN_OR_RETURN(auto step, StepTimes(ctx.bootstrap(), t, phase));
  return FinishSteps(ctx, step, bytes, phase);
}

// The copy limit's source and destination: one anonymous private mapping (see MeasureCopyLimit), source
// filled with 1, destination with 0, unmapped on destruction.
class CopyBuffers {
 public:
  static StatusOr<CopyBuffers> Map(size_t bytes) {
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t half = (std::max<size_t>(bytes, 1) + kHuge - 1) / kHuge * kHuge;
    void* p = ::mmap(nullptr, 2 * half, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      return SysError("mmap", errno, fmt::format("copy limit buffers of 2 x {} bytes", half));
    (void)::madvise(p, 2 * half, MADV_HUGEPAGE);  // advice: without THP the copy just runs on 4 KiB pages
    CopyBuffers b;
    b.base_ = static_cast<uint8_t*>(p);
    b.half_ = half;
    std::memset(b.src(), 1, bytes);
    std::memset(b.dst(), 0, bytes);
    return b;
  }
  CopyBuffers(CopyBuffers&& o) noexcept : base_(std::exchange(o.base_, nullptr)), half_(o.half_) {}
  CopyBuffers& operator=(CopyBuffers&&) = delete;
  ~CopyBuffers() {
    if (base_) ::munmap(base_, 2 * half_);
  }
  uint8_t* src() const { return base_; }
  uint8_t* dst() const { return base_ + half_; }

 private:
  CopyBuffers() = default;
  uint8_t* base_ = nullptr;
  size_t half_ = 0;
};

// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID: only while it runs, so a rank that waits for
// its core counts nothing).
double ThreadCpuUs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) * 1e-3;
}

}  // namespace

StatusOr<CopyLimitResult> MeasureCopyLimit(Context& ctx, size_t bytes, size_t row_bytes, int iters,
                                           int warmup, const char* phase, bool stream) {
  row_bytes = std::max<size_t>(row_bytes, 1);
  // Both buffers in one private mapping of our own, not from malloc: where malloc puts large blocks depends
  // on what ran before (after the MPI baseline the same copy measured 4-7x slower on the AVX2 host of session
  // 14: bench/results/README.md). Page-aligned, the destination a whole number of 2 MiB past the source (no
  // 4 KiB aliasing between them), transparent huge pages asked for as the heap's are (EPX_HUGEPAGES=auto).
  // First-touch by this (pinned) rank puts the pages on its NUMA node, like the symmetric heap.
  EPX_ASSIGN_OR_RETURN(CopyBuffers buf, CopyBuffers::Map(bytes));
  uint8_t* const src = buf.src();
  uint8_t* const dst = buf.dst();
  std::vector<double> t;
  for (int it = 0; it < warmup + iters; ++it) {
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(phase));
    const double t0 = NowUs();
    if (stream) {
      for (size_t off = 0; off < bytes; off += row_bytes)
        StreamCopy(dst + off, src + off, std::min(row_bytes, bytes - off));
      StreamFence();
    } else {
      for (size_t off = 0; off < bytes; off += row_bytes)
        std::memcpy(dst + off, src + off, std::min(row_bytes, bytes - off));
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
                   out.data() + r * stride + H, r + 1 < rows ? x.data() + (r + 1) * H : nullptr);
    const double t1 = NowUs();
    if (it >= warmup) t.push_back(t1 - t0);
  }
  volatile uint8_t sink = rows ? out[rows * stride / 2] : 0;  // keeps the casts observable
  (void)sink;
  return Finish(ctx, t, static_cast<double>(rows * H * 2), phase);
}

StatusOr<CopyLimitResult> MeasureCombineTraffic(Context& ctx, const CombineTrafficJob& job, int iters,
                                                int warmup, const char* phase) {
  const size_t H = static_cast<size_t>(job.hidden), row = 2 * H;
  size_t pre_rows = 0, n_f32 = 0, n_bf16 = 0, own_rows = 0, max_terms = 1;
  for (uint8_t n : job.pre) {
    pre_rows += n;
    ++(n >= 2 ? n_f32 : n_bf16);
    max_terms = std::max<size_t>(max_terms, n);
  }
  double bytes = static_cast<double>(pre_rows * row + n_f32 * 2 * row + n_bf16 * row);  // expert side
  for (size_t t = 0, p = 0; t < job.own.size(); ++t) {
    own_rows += job.own[t];
    size_t terms = job.own[t];
    bytes += static_cast<double>(job.own[t] * row + row);  // own rows in, the output out
    for (; p < static_cast<size_t>(job.peer_end[t]); ++p) {
      terms += job.peer[p];
      bytes += static_cast<double>(job.peer[p] >= 2 ? 2 * row : row);
    }
    max_terms = std::max(max_terms, terms);
  }
  // y: the rows pre-reduced for other ranks' tokens, then this rank's own rows. Values do not change the
  // kernels' speed; first touch by this pinned rank puts the pages on its node.
  std::vector<bf16> y((pre_rows + own_rows) * H, FloatToBf16(0.5f)), out(job.own.size() * H);
  std::vector<float> f32(std::max<size_t>(n_f32, 1) * H, 0.0f), acc(2 * H);
  std::vector<bf16> b16(std::max<size_t>(n_bf16, 1) * H, FloatToBf16(0.0f));
  std::vector<const bf16*> rows(max_terms);
  std::vector<float> w(max_terms, 0.125f);
  std::vector<SumGroup> groups(max_terms);
  std::vector<double> cpu;
  for (int it = 0; it < warmup + iters; ++it) {
    EPX_RETURN_IF_ERROR(ctx.bootstrap().Barrier(phase));
    const double t0 = ThreadCpuUs();
    // (1) The expert side: one part per (token of another rank, this rank).
    const bf16* yr = y.data();
    size_t i32 = 0, i16 = 0;
    for (uint8_t n : job.pre) {
      if (n >= 2) {
        for (int r = 0; r < n; ++r) rows[r] = yr + r * H;
        WeightedPartialF32(f32.data() + i32++ * H, rows.data(), w.data(), n, job.hidden);
      } else {
        std::memcpy(b16.data() + i16++ * H, yr, row);
      }
      yr += n * H;
    }
    // (2) The source side: own rows, then the parts (the peers' stand-ins, round robin over (1)'s).
    size_t p = 0;
    i32 = i16 = 0;
    for (size_t t = 0; t < job.own.size(); ++t) {
      int nr = 0, ng = 0;
      for (int r = 0; r < job.own[t]; ++r) rows[nr++] = yr + r * H;
      yr += job.own[t] * H;
      if (nr > 0) groups[ng++] = SumGroup{0, nr, nullptr};
      for (; p < static_cast<size_t>(job.peer_end[t]); ++p) {
        if (job.peer[p] >= 2) {
          groups[ng++] = SumGroup{0, 0, f32.data() + (i32++ % std::max<size_t>(n_f32, 1)) * H};
        } else {
          rows[nr] = b16.data() + (i16++ % std::max<size_t>(n_bf16, 1)) * H;
          groups[ng++] = SumGroup{nr++, 1, nullptr};
        }
      }
      GroupedWeightedSumBf16(out.data() + t * H, acc.data(), rows.data(), w.data(), groups.data(), ng,
                             job.hidden);
    }
    const double t1 = ThreadCpuUs();
    if (it >= warmup) cpu.push_back(t1 - t0);
  }
  volatile uint64_t sink = out.empty() ? 0 : out[out.size() / 2].bits;  // keeps the work observable
  (void)sink;
  // Per iteration: max(the busiest rank, all ranks' work / the CPUs they may run on).
  cpu_set_t mask;
  CPU_ZERO(&mask);
  EPX_SYS(rc, ::sched_getaffinity(0, sizeof(mask), &mask), "CPUs of the combine traffic floor");
  std::vector<uint8_t> mine(sizeof(mask) + cpu.size() * sizeof(double));
  std::memcpy(mine.data(), &mask, sizeof(mask));
  std::memcpy(mine.data() + sizeof(mask), cpu.data(), cpu.size() * sizeof(double));
  EPX_ASSIGN_OR_RETURN(auto all, ctx.bootstrap().AllGather((std::string(phase) + "-cpu").c_str(), mine));
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  std::vector<double> ends(cpu.size(), 0.0), sum(cpu.size(), 0.0);
  for (int r = 0; r < ctx.bootstrap().world_size(); ++r) {
    const uint8_t* m = all.data() + static_cast<size_t>(r) * mine.size();
    cpu_set_t theirs;
    std::memcpy(&theirs, m, sizeof(theirs));
    CPU_OR(&cpus, &cpus, &theirs);
    for (size_t i = 0; i < cpu.size(); ++i) {
      double c;
      std::memcpy(&c, m + sizeof(mask) + i * sizeof(double), sizeof(c));
      ends[i] = std::max(ends[i], c);
      sum[i] += c;
    }
  }
  const double P = std::max(CPU_COUNT(&cpus), 1);
  for (size_t i = 0; i < ends.size(); ++i) ends[i] = std::max(ends[i], sum[i] / P);
  return FinishSteps(ctx, ends, bytes, phase);
}

}  // namespace epx::bench
