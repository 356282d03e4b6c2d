// bench/copy_limit.h: the copy limit of a benchmark shape: every rank memcpy's exactly the bytes it must
// move (its received rows), in rows of the same size, all ranks at the same time on their pinned cores,
// in the same run as the measured kernel. No exchange can move those bytes into place faster than one
// copy of them, so time(copy) / time(kernel) is the fraction of the limit reached.
#pragma once

#include <cstddef>
#include <vector>

#include "bench/bench_stats.h"
#include "core/status.h"
#include "transport/context.h"

namespace epx::bench {

struct CopyLimitResult {
  Stats step;            // slowest rank per iteration
  double gbps = 0;       // bytes (mean over ranks) / median step
  double bytes_per_rank = 0;
};

// Times `iters` (+ `warmup`) copies of `bytes` (this rank's) in rows of `row_bytes` between two private
// NUMA-local buffers, each iteration after a bootstrap barrier. Collective.
StatusOr<CopyLimitResult> MeasureCopyLimit(Context& ctx, size_t bytes, size_t row_bytes, int iters, int warmup,
                                           const char* phase);

// The reduce limit of the low-latency combine: every rank sums, as its combine's last step must, `tokens`
// output rows of `hidden` BF16 from `topk` weighted rows each with the library's WeightedSumBf16Rows
// (kernels/bf16_math.h: the kernel LlCombineRecv and the MPI baseline call), the rows read from one private
// NUMA-local buffer reused every iteration (as warm as the copy limit's), all ranks at once after a barrier.
// No combine that returns these sums can take less than its reduce, so copy limit + reduce limit bounds a
// combine whose inputs must move once (tools/compare, bench/results/README.md). `bytes_per_rank` = rows read.
StatusOr<CopyLimitResult> MeasureReduceLimit(Context& ctx, int tokens, int topk, int hidden, int iters, int warmup,
                                             const char* phase);

}  // namespace epx::bench
