// kernels/avx2.h: what the hand-written AVX2 kernels share (kernels/bf16_math.cc, kernels/fp8.cc,
// kernels/stream_copy.cc): the function attribute, BF16 loads widened to FP32, the FP32 -> BF16 rounding
// on 8 lanes, and whether they run (kernels/isa.h). They are the AVX-512 kernels (kernels/avx512.h) on
// 256-bit registers: the same IEEE operations in the same order, so bitwise the same results. The target
// is "avx2" alone, never "fma": GCC would otherwise be free to contract a multiply and an add.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#include "kernels/isa.h"

// A kernel (not inlined into callers compiled for the baseline ISA) and its inlined helpers.
#define EPX_AVX2_KERNEL __attribute__((target("avx2")))
#define EPX_AVX2_INLINE __attribute__((target("avx2"), always_inline)) inline

namespace epx::avx2 {

// 8 BF16 -> 8 FP32 (exact: the BF16 bits are the float's top half).
EPX_AVX2_INLINE __m256 LoadBf16(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// ToBf16Bits (kernels/dtypes.h) on 8 lanes, as 32-bit lanes holding the 16-bit result: round to nearest
// even, NaN kept quiet (| 0x40 on the top half).
EPX_AVX2_INLINE __m256i ToBf16Bits32(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i hi = _mm256_srli_epi32(u, 16);
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                                                             _mm256_and_si256(hi, _mm256_set1_epi32(1))),
                                            16);
  const __m256i nan = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
  // |u| > inf as signed compare: |u| <= 0x7fffffff, so both sides are non-negative.
  const __m256i is_nan =
      _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
  return _mm256_blendv_epi8(rounded, nan, is_nan);
}
// 16 BF16 results (two groups of 8, in order) as 32 bytes: packus works per 128-bit lane (the values fit
// 16 bits, so nothing saturates) and leaves a0-3 b0-3 a4-7 b4-7; the permute puts the quarters in order.
EPX_AVX2_INLINE __m256i PackBf16(__m256i a, __m256i b) {
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xd8);
}

// The AVX2 kernels run (kernels/isa.h: the CPU has AVX2, no AVX-512 kernels are chosen instead, and
// EPX_KERNEL_ISA allows it).
inline bool Usable() {
  return KernelIsa() == Isa::kAvx2;
}

}  // namespace epx::avx2
#endif
