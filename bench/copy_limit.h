// bench/copy_limit.h: the copy limit of a benchmark shape: every rank memcpy's exactly the bytes it must
// move (its received rows), in rows of the same size, all ranks at the same time on their pinned cores,
// in the same run as the measured kernel. No exchange can move those bytes into place faster than one
// copy of them, so time(copy) / time(kernel) is the fraction of the limit reached.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "bench/bench_stats.h"
#include "core/status.h"
#include "kernels/dtypes.h"
#include "kernels/fp8.h"
#include "transport/context.h"

namespace epx::bench {

struct CopyLimitResult {
  Stats step;       // slowest rank per iteration
  double gbps = 0;  // bytes (mean over ranks) / median step
  double bytes_per_rank = 0;
};

// Times `iters` (+ `warmup`) copies of `bytes` (this rank's) in rows of `row_bytes` between two private
// NUMA-local buffers (one mapping of its own, page-aligned, 2 MiB apart, THP advised: not wherever malloc
// puts them), each iteration after a bootstrap barrier. Collective. `stream`: with StreamCopy
// (kernels/stream_copy.h: non-temporal stores, as the low-latency dispatch writes its output), so every
// destination byte goes to DRAM: the write half of the DRAM floor (below).
StatusOr<CopyLimitResult> MeasureCopyLimit(Context& ctx, size_t bytes, size_t row_bytes, int iters,
                                           int warmup, const char* phase, bool stream = false);

// The reduce limit of the low-latency combine: every rank sums, as its combine's last step must, `tokens`
// output rows of `hidden` BF16 from `topk` weighted rows each with the library's WeightedSumBf16Rows
// (kernels/bf16_math.h: the kernel LlCombineRecv and the MPI baseline call), the rows read from one private
// NUMA-local buffer reused every iteration (as warm as the copy limit's), all ranks at once after a barrier.
// No combine that returns these sums can take less than its reduce, so copy limit + reduce limit bounds a
// combine whose inputs must move once (tools/compare, bench/results/README.md). `bytes_per_rank` = rows read.
// `cold`: before every iteration (untimed) each rank reads through an eviction buffer of kColdEvictBytes,
// so the rows come from DRAM, as the expert outputs of a low-latency combine do on this machine (y is
// written once; a call's other traffic evicts it before the next combine). With the streamed dispatch
// copy this is the DRAM floor: no exchange that writes its dispatch output to memory and reads cold
// expert outputs can take less, however it overlaps the rest.
StatusOr<CopyLimitResult> MeasureReduceLimit(Context& ctx, int tokens, int topk, int hidden, int iters,
                                             int warmup, const char* phase, bool cold = false);
// The FP8 cast of the low-latency dispatch alone: every rank casts its rows x [tokens, hidden] with
// CastRowToFp8 (the dispatch's own kernel) into a private buffer of codes + scales, all ranks at once after a
// barrier, x as warm as the bench leaves it. A dispatch must cast every row before its bytes exist, so
// cast + the DRAM floor is the floor of a dispatch that casts and then places (the "serial floor"). It is
// not a bound for a design that overlaps the two; on this machine the overlap was tried and lost (a fused
// dispatch that places rows between casts: the cast took ~2x longer next to the streaming stores,
// bench/results/README.md). `bytes_per_rank` = BF16 bytes read.
StatusOr<CopyLimitResult> MeasureCastLimit(Context& ctx, std::span<const bf16> x, int hidden,
                                           const Fp8Options& opt, int iters, int warmup, const char* phase);

// The traffic floor of the low-latency combine: the least memory traffic of a combine that returns the
// reference's sums exactly (FP32 per expert rank, in rank order: kernels/ll.h "Combine") when the expert
// outputs y sit in each rank's private memory (the default mode), moved with no synchronisation at all.
// Only the rank holding a row can read it, and what it hands to the token's source must carry the FP32
// sum of its rows of that token: at least min(one FP32 row, its BF16 rows) written by it and read by the
// source (summing two ranks' parts first moves the same bytes again). So per (token, expert rank) with n
// rows: the expert rank reads n BF16 rows of y and writes one FP32 partial (n >= 2) or the row (n == 1);
// the source reads that back, reads its own rows and writes the BF16 output. With R ranks a token has
// fewer rows per rank, so a partial folds fewer rows: at 1x4 about 1.4x the bytes per rank of 1x2.
struct CombineTrafficJob {
  int hidden = 0;             // 0: not measured
  std::vector<uint8_t> pre;   // as an expert rank: rows here (>= 1) per token of another rank
  std::vector<uint8_t> own;   // as a source: per own token, its rows on this rank
  std::vector<uint8_t> peer;  // as a source: per own token, per other rank with rows of it, their count
  std::vector<int> peer_end;  // per own token: end of its entries in `peer`
};
// The job of rank `me` from every rank's routing (topk_idx[r]: [N_r, topk] global expert ids, -1: none).
CombineTrafficJob CombineTrafficOf(const std::vector<std::vector<int64_t>>& topk_idx, int topk,
                                   int experts_per_rank, int me, int hidden);
// Times the job, all ranks after a barrier each iteration: (1) WeightedPartialF32 / a row copy per `pre`
// entry into a private stage buffer, (2) per own token GroupedWeightedSumBf16 of its own rows and, standing
// in for the peers' parts, parts of the same sizes from (1)'s buffer, just written. Nothing else runs in
// between, so every byte is as warm as the caches let it be: a lower bound of the same traffic inside an
// exchange. Step = max(the busiest rank, the ranks' summed work / the CPUs they may run on), the work
// counted in thread CPU time: no schedule of the ranks on their cores can finish sooner, and a rank that
// waits for its core counts nothing (ranks sharing a core add up, as in an exchange, where every rank must
// finish; start skew and sleeps do not). `bytes_per_rank` = the bytes read and written.
StatusOr<CopyLimitResult> MeasureCombineTraffic(Context& ctx, const CombineTrafficJob& job, int iters,
                                                int warmup, const char* phase);
inline constexpr size_t kColdEvictBytes = size_t{96} << 20;  // 3x the 32 MiB L3 of one CCD here

}  // namespace epx::bench
