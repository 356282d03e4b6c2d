// kernels/bf16_math.h: the row arithmetic of combine, vectorised. Each function has an AVX-512, an AVX2
// and a portable body, and KernelIsa() (kernels/isa.h) picks one per process, so one binary runs
// everywhere. Results are bitwise identical on every path: only IEEE FP32 adds (no contraction, no
// reassociation) and the exact BF16 conversions of kernels/dtypes.h are used, element by element, in the
// same order.
#pragma once

#include "kernels/dtypes.h"

namespace epx {

// out[j] = bf16(((0 + rows[0][j]) + rows[1][j]) + ... + rows[n-1][j]), summed in FP32 in the order
// given; n == 0 gives +0. `acc` ([n] floats) is scratch. The first term initialises acc and the last
// one is fused with the rounding store, so acc is touched n - 1 times instead of n + 2.
void SumBf16Rows(bf16* out, float* acc, const bf16* const* rows, int num_rows, int n);
// The same sum, written with non-temporal stores where the ISA and out's alignment (16 bytes) allow: for an
// output far larger than the cache that this call does not read again (the normal combine's [N, H]); it
// skips each line's read-for-ownership. StreamFence() (kernels/stream_copy.h) before another thread may
// read out.
void SumBf16RowsStream(bf16* out, float* acc, const bf16* const* rows, int num_rows, int n);

// out[j] = bf16(((0 + fp32(w[0] * rows[0][j])) + fp32(w[1] * rows[1][j])) + ...): the low-latency combine
// (kernels/ll_reference.h order). Each product is rounded to FP32 before its add (no FMA); n == 0 rows
// gives +0. `acc` ([n] floats) is scratch.
void WeightedSumBf16Rows(bf16* out, float* acc, const bf16* const* rows, const float* w, int num_rows, int n);

// The low-latency combine's grouped order (kernels/ll_reference.h): the terms of one expert rank form a
// group whose partial sum P = ((0 + fp32(w[0] * rows[0][j])) + fp32(w[1] * rows[1][j])) + ... is FP32, and
// the output adds the groups' partials in group order: out[j] = bf16(((0 + P_0[j]) + P_1[j]) + ...).
// A group is either terms [first, first + count) of rows/w, or a partial another rank already computed
// (partial != nullptr: n FP32 values, exactly WeightedPartialF32 of that rank's terms). With one group of
// terms this is WeightedSumBf16Rows bitwise (0 + P == P: P is never -0). No groups give +0. `acc` ([2n]
// floats) is scratch.
struct SumGroup {
  int first = 0;
  int count = 0;
  const float* partial = nullptr;
};
void GroupedWeightedSumBf16(bf16* out, float* acc, const bf16* const* rows, const float* w,
                            const SumGroup* groups, int num_groups, int n);

// out[j] = P[j] of one group of num_rows >= 1 terms (above), in FP32: what an expert rank sends instead of
// its rows when it pre-reduces a token for a node-local source.
void WeightedPartialF32(float* out, const bf16* const* rows, const float* w, int num_rows, int n);
// The same partial, written with non-temporal stores where the AVX2 kernels run and out is 32-byte aligned
// (else WeightedPartialF32): for partials that another core reads next, written to lines this core does not
// hold -- it skips each line's read-for-ownership from memory. Measured on the AVX2 host of session 14 (low-
// latency 1x2 combine ~10 % faster, bench/results/README.md); the AVX-512 kernels keep plain stores (streamed
// partials gained nothing on the AVX-512 host in sessions 10 and 12). StreamFence() (kernels/stream_copy.h)
// before another thread may read out.
void WeightedPartialF32Stream(float* out, const bf16* const* rows, const float* w, int num_rows, int n);

}  // namespace epx
