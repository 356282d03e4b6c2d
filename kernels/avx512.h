// kernels/avx512.h: what the hand-written AVX-512 kernels share (kernels/bf16_math.cc, kernels/fp8.cc,
// kernels/stream_copy.cc): the function attribute, BF16 loads widened to FP32, and whether they run
// (kernels/isa.h). Every AVX-512 kernel has an AVX2 twin (kernels/avx2.h) and a portable one that give
// bitwise the same results.
//
// Wrap the kernels in EPX_AVX512_BEGIN / EPX_AVX512_END: GCC 12 warns "'__Y' may be used uninitialized"
// inside its own avx512fintrin.h (the _mm512_undefined_* placeholders of unmasked intrinsics, GCC bug
// 105593), in whatever function inlines them; the pair silences exactly that warning there.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#include "kernels/isa.h"

#if defined(__GNUC__) && !defined(__clang__)
#define EPX_AVX512_BEGIN \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define EPX_AVX512_END _Pragma("GCC diagnostic pop")
#else
#define EPX_AVX512_BEGIN
#define EPX_AVX512_END
#endif

// A kernel (not inlined into callers compiled for the baseline ISA) and its inlined helpers.
#define EPX_AVX512_KERNEL __attribute__((target("avx512f,avx512bw,avx512vl")))
#define EPX_AVX512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline

namespace epx::avx512 {

EPX_AVX512_BEGIN
// 16 BF16 -> 16 FP32 (exact: the BF16 bits are the float's top half).
EPX_AVX512_INLINE __m512 Bf16ToFloat(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
EPX_AVX512_INLINE __m512 LoadBf16(const uint16_t* p) {
  return Bf16ToFloat(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
// Lanes outside m read as 0 and touch no memory (a row's last partial group).
EPX_AVX512_INLINE __m512 LoadBf16Masked(const uint16_t* p, __mmask16 m) {
  return Bf16ToFloat(_mm256_maskz_loadu_epi16(m, p));
}
EPX_AVX512_END

// The AVX-512 kernels run (kernels/isa.h: the CPU has AVX-512 F + BW + VL and EPX_KERNEL_ISA allows it).
inline bool Usable() {
  return KernelIsa() == Isa::kAvx512;
}

}  // namespace epx::avx512
#endif
