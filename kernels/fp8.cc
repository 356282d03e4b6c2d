#include "kernels/fp8.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "kernels/avx2.h"
#include "kernels/avx512.h"

namespace epx {
namespace {

// FloatToE4m3 without branches or libm, so that the row loop vectorizes (SSE2 is enough: 32-bit integer
// and/add/shift/compare, one float add). Returns the code in the low byte.
inline uint32_t E4m3Code(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (u >> 24) & 0x80;
  // Selects are written as masks: GCC turns ?: (and std::min) into branches, threads them, and then cannot
  // if-convert the float add below that ends up inside a branch (it may trap): the loop would not vectorize.
  const int32_t abs_bits = static_cast<int32_t>(u & 0x7fffffffu);  // signed: one SSE2 pcmpgtd per compare
  const uint32_t is_nan = -static_cast<uint32_t>(abs_bits > 0x7f800000);
  // Saturate first: mag = min(|f|, 448) on the bits (NaN, above inf, also becomes 448; patched at the end).
  const uint32_t is_big = -static_cast<uint32_t>(abs_bits > 0x43e00000);
  const uint32_t a = (static_cast<uint32_t>(abs_bits) & ~is_big) | (0x43e00000u & is_big);
  const float mag = std::bit_cast<float>(a);
  // mag >= 2^-6 (normal E4M3): keep the top 3 of the 23 mantissa bits. Adding 0x7ffff + (lowest kept bit)
  // carries into bit 20 exactly when the 20 dropped bits exceed half, or equal half and the kept part is
  // odd: round to nearest even. A carry out of the mantissa bumps the exponent, which is the right result
  // (next binade, mantissa 0); 448 itself is 0x7e, so nothing rounds past it. The same add rebiases the
  // exponent from 127 to 7 (minus 120 << 23). Below 2^-6 the result is meaningless (and unused).
  const uint32_t normal = (a + (0x7ffffu - (120u << 23)) + ((a >> 20) & 1u)) >> 20;
  // mag < 2^-6 (subnormal E4M3, step 2^-9): the float ulp of 2^14 is 2^-9, so mag + 2^14 makes the FPU
  // round mag to a multiple of 2^-9, to nearest even (the default mode, which the scalar definition
  // assumed too), and leaves mag / 2^-9 in the mantissa bits: a code 0..8, where 8 is 0x08, the smallest
  // normal, when rounding carries up.
  const uint32_t sub = std::bit_cast<uint32_t>(mag + 16384.0f) - 0x46800000u;
  const uint32_t is_sub = -static_cast<uint32_t>(static_cast<int32_t>(a) < 0x3c800000);  // 2^-6
  const uint32_t code = (sub & is_sub) | (normal & ~is_sub);
  return (code - is_nan) | (sign & ~is_nan);  // NaN of either sign: 0x7e + 1 = 0x7f, unsigned; -0 -> 0x80
}

// The block's scale from its amax bits m (|x| as BF16 magnitude bits, NaN counted as 0): stores
// scale_inv (or its UE8M0 byte) as block b's scale and returns the factor the block is multiplied by.
[[gnu::always_inline]] inline float BlockScale(int16_t m, const Fp8Options& opt, float* fs, uint8_t* ue8m0,
                                               int b) {
  const float amax = std::max(kFp8AmaxFloor, Bf16ToFloat(bf16{static_cast<uint16_t>(m)}));
  float scale_inv = amax / kE4m3Max;
  float scale;
  if (opt.round_scale) {
    // 2^ceil(log2(scale_inv)) on the exponent bits. amax >= 1e-4 keeps scale_inv a normal float, so a zero
    // mantissa means a power of two (kept), else the next power of two is exponent + 1.
    const uint32_t u = std::bit_cast<uint32_t>(scale_inv);
    if (u < 0x7f800000u) {
      scale_inv = std::bit_cast<float>((u & 0x7fffffu) ? (u & 0x7f800000u) + 0x800000u : u);
    } else {  // amax = inf: keep the original frexp/ldexp, whatever libm makes of inf (glibc: 1.0f)
      int e;
      const float mant = std::frexp(scale_inv, &e);
      scale_inv = (mant == 0.5f) ? std::ldexp(1.0f, e - 1) : std::ldexp(1.0f, e);
    }
    scale = 1.0f / scale_inv;  // exact for powers of two in range
  } else {
    scale = kE4m3Max / amax;
  }
  if (opt.ue8m0)
    ue8m0[b] = static_cast<uint8_t>(std::bit_cast<uint32_t>(scale_inv) >> 23);
  else
    fs[b] = scale_inv;
  return scale;
}

// One block of n <= kFp8Block columns (kN = n when known at compile time: full blocks; else 0). Inlined
// into CastRow, so that it is compiled for each of CastRow's targets.
template <int kN>
[[gnu::always_inline]] inline void CastBlock(const bf16* x, int n, const Fp8Options& opt, uint8_t* q,
                                             float* fs, uint8_t* ue8m0, int b) {
  if constexpr (kN != 0) n = kN;
  // amax = max(|x|, floor). Non-negative non-NaN floats order as their bit patterns do, so the reduction
  // runs on the 15 magnitude bits, in int16 (SSE2 pmaxsw). NaN (above 0x7f80 = inf) counts as 0: the
  // definition's std::max(amax, NaN) keeps amax, so NaN never raised amax there either.
  int16_t m = 0;
  for (int i = 0; i < n; ++i) {
    const int16_t v = static_cast<int16_t>(x[i].bits & 0x7fff);
    m = std::max(m, v > 0x7f80 ? int16_t{0} : v);
  }
  const float scale = BlockScale(m, opt, fs, ue8m0, b);
  // Codes go through a 32-bit buffer: cast straight to uint8_t, GCC narrows every step of E4m3Code to
  // bytes and spends more on packing than on the conversion itself. (The buffer also keeps the loops free
  // of aliasing between x, q and the scales.)
  uint32_t code[kFp8Block];
  for (int i = 0; i < n; ++i) code[i] = E4m3Code(Bf16ToFloat(x[i]) * scale);
  for (int i = 0; i < n; ++i) q[i] = static_cast<uint8_t>(code[i]);
}

// After the full blocks: the last, narrower block if any, and the padding bytes of the last UE8M0 word.
[[gnu::always_inline]] inline void CastRowTail(const bf16* in, int hidden, const Fp8Options& opt,
                                               uint8_t* out, void* scales) {
  const int nb = Fp8NumBlocks(hidden), full = hidden / kFp8Block;
  uint8_t* bytes = static_cast<uint8_t*>(scales);
  if (full < nb) {
    const int c0 = full * kFp8Block;
    CastBlock<0>(in + c0, hidden - c0, opt, out + c0, static_cast<float*>(scales), bytes, full);
  }
  if (opt.ue8m0)
    for (int b = nb; b < Ue8m0Words(hidden) * 4; ++b) bytes[b] = 0;  // padding bytes of the last word
}

// On x86-64 the row is compiled twice, for the SSE2 baseline and for AVX2 (twice the lanes), and the
// loader picks one by CPU (ifunc). Same source and no FMA in either, so the same results.
// Not under TSan: the ifunc resolver runs during relocation, before the TSan runtime is up, and crashes.
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define EPX_FP8_TARGETS __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define EPX_FP8_TARGETS
#endif

EPX_FP8_TARGETS void CastRow(const bf16* in, int hidden, const Fp8Options& opt, uint8_t* out, void* scales) {
  const int full = hidden / kFp8Block;
  float* fs = static_cast<float*>(scales);
  uint8_t* bytes = static_cast<uint8_t*>(scales);
  for (int b = 0; b < full; ++b)
    CastBlock<kFp8Block>(in + b * kFp8Block, kFp8Block, opt, out + b * kFp8Block, fs, bytes, b);
  CastRowTail(in, hidden, opt, out, scales);
}

#undef EPX_FP8_TARGETS

#if defined(__x86_64__)
// AVX-512 by hand, for full 128-column blocks: the same operations as CastBlock on 16 lanes (E4m3Code's
// masks become mask registers, the narrowing one vpmovdb). GCC's vectorisation of CastBlock spends about
// twice the instructions on the packing; measured with epx-micro-bench BM_Fp8CastRow (bench/micro_bench.cc).
// Same IEEE operations in the same order (no FMA), so bitwise the same codes and scales.
EPX_AVX512_BEGIN
// E4m3Code's steps in 13 instructions: the saturation is an unsigned min (NaN above inf also clamps
// to 448, as there; patched last), the round-half-even carry a masked +1 where bit 20 (the kept lsb) is
// set, the subnormal merge a masked subtract, and the sign one ternary-logic op (A | (B & C)).
EPX_AVX512_INLINE __m512i E4m3Codes(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f800000));
  const __m512i a = _mm512_min_epu32(abs, _mm512_set1_epi32(0x43e00000));
  const __mmask16 odd = _mm512_test_epi32_mask(a, _mm512_set1_epi32(1 << 20));
  __m512i t = _mm512_add_epi32(a, _mm512_set1_epi32(static_cast<int>(0x7ffffu - (120u << 23))));
  t = _mm512_mask_add_epi32(t, odd, t, _mm512_set1_epi32(1));
  const __m512i normal = _mm512_srli_epi32(t, 20);
  const __mmask16 is_sub = _mm512_cmplt_epi32_mask(a, _mm512_set1_epi32(0x3c800000));
  const __m512i sub = _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(16384.0f)));
  const __m512i code = _mm512_mask_sub_epi32(normal, is_sub, sub, _mm512_set1_epi32(0x46800000));
  // 0xf8 = A | (B & C): the code, or the sign bit (bit 31 shifted to bit 7) where C selects bit 7.
  const __m512i signed_code =
      _mm512_ternarylogic_epi32(code, _mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80), 0xf8);
  return _mm512_mask_mov_epi32(signed_code, is_nan, _mm512_set1_epi32(0x7f));  // NaN of either sign: 0x7f
}

// The low bytes of 4 x 16 codes (each <= 0xff, so the saturating packs keep them) as 64 bytes: the packs
// work within 128-bit lanes, leaving in lane L the dwords 4L + g = codes 4L..4L+3 of c[g]; `order` (output
// dword -> packed dword) puts them where they belong. 4 instructions instead of 4 vpmovdb (2 uops each) and
// 4 stores.
EPX_AVX512_INLINE __m512i PackCodes(const __m512i c[4], __m512i order) {
  const __m512i b = _mm512_packus_epi16(_mm512_packus_epi32(c[0], c[1]), _mm512_packus_epi32(c[2], c[3]));
  return _mm512_permutexvar_epi32(order, b);
}
// c[g] = columns 16g..16g+15: dword 4L + g goes to dword 4g + L.
EPX_AVX512_INLINE __m512i InOrder() {
  return _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
}
// c[] in the unpacks' order (CastRowAvx512): dword 4L + g holds columns 8L..8L+3 (g = 0), 8L+4..8L+7 (1),
// 32+8L.. (2), 32+8L+4.. (3), which belong at dwords 2L, 2L+1, 8+2L, 9+2L.
EPX_AVX512_INLINE __m512i UnpackedOrder() {
  return _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
}

EPX_AVX512_KERNEL void FloatsAvx512(const float* in, size_t n, uint8_t* out) {
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {  // as the row cast stores its codes
    __m512i c[4];
    for (int j = 0; j < 4; ++j) c[j] = E4m3Codes(_mm512_loadu_ps(in + i + 16 * j));
    _mm512_storeu_si512(out + i, PackCodes(c, InOrder()));
  }
  for (; i + 16 <= n; i += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm512_cvtepi32_epi8(E4m3Codes(_mm512_loadu_ps(in + i))));
  for (; i < n; ++i) out[i] = static_cast<uint8_t>(E4m3Code(in[i]));
}

EPX_AVX512_KERNEL void CastRowAvx512(const bf16* in, int hidden, const Fp8Options& opt, uint8_t* out,
                                     void* scales, const bf16* next) {
  const int full = hidden / kFp8Block;
  float* fs = static_cast<float*>(scales);
  uint8_t* bytes = static_cast<uint8_t*>(scales);
  // Three passes over the row's blocks (amax, scales, codes) rather than one block at a time: each
  // block's horizontal max -> division -> broadcast is a chain of ~60 cycles of latency, which one
  // block's 8 conversion steps cannot hide; across the whole row the chains overlap.
  constexpr int kChunk = 64;  // blocks per pass (a 7168-column row has 56)
  float scale[kChunk];
  for (int b0 = 0; b0 < full; b0 += kChunk) {
    const int b1 = std::min(full, b0 + kChunk);
    for (int b = b0; b < b1; ++b) {
      const auto* x = reinterpret_cast<const uint16_t*>(in + b * kFp8Block);
      // amax bits: max over |x| as int16, NaN (above 0x7f80) counted as 0, as in CastBlock.
      __m512i mx = _mm512_setzero_si512();
      for (int i = 0; i < kFp8Block; i += 32) {
        const __m512i v = _mm512_and_si512(_mm512_loadu_si512(x + i), _mm512_set1_epi16(0x7fff));
        mx = _mm512_max_epi16(
            mx, _mm512_maskz_mov_epi16(_mm512_cmple_epi16_mask(v, _mm512_set1_epi16(0x7f80)), v));
      }
      __m256i m256 = _mm256_max_epi16(_mm512_castsi512_si256(mx), _mm512_extracti64x4_epi64(mx, 1));
      __m128i m = _mm_max_epi16(_mm256_castsi256_si128(m256), _mm256_extracti128_si256(m256, 1));
      m = _mm_max_epi16(m, _mm_srli_si128(m, 8));
      m = _mm_max_epi16(m, _mm_srli_si128(m, 4));
      m = _mm_max_epi16(m, _mm_srli_si128(m, 2));
      scale[b - b0] = static_cast<float>(static_cast<int16_t>(_mm_extract_epi16(m, 0)));  // bits, exact
    }
    if (!opt.round_scale) {
      // The default scales 16 blocks at a time: BlockScale's two scalar divisions per block were about a
      // fifth of the row (BM_Fp8CastRow). Same IEEE max and divisions, so the same bits: amax = max(1e-4,
      // the block's |x| max as a float: its BF16 bits << 16; inf stays inf), scale_inv = amax / 448 (stored),
      // scale = 448 / amax (applied).
      for (int b = b0; b < b1; b += 16) {
        const __mmask16 m = b1 - b >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (b1 - b)) - 1);
        const __m512i bits = _mm512_cvttps_epi32(_mm512_maskz_loadu_ps(m, scale + (b - b0)));
        const __m512 amax =
            _mm512_max_ps(_mm512_castsi512_ps(_mm512_slli_epi32(bits, 16)), _mm512_set1_ps(kFp8AmaxFloor));
        _mm512_mask_storeu_ps(fs + b, m, _mm512_div_ps(amax, _mm512_set1_ps(kE4m3Max)));
        _mm512_mask_storeu_ps(scale + (b - b0), m, _mm512_div_ps(_mm512_set1_ps(kE4m3Max), amax));
      }
    } else {
      for (int b = b0; b < b1; ++b)
        scale[b - b0] = BlockScale(static_cast<int16_t>(scale[b - b0]), opt, fs, bytes, b);
    }
    for (int b = b0; b < b1; ++b) {
      const auto* x = reinterpret_cast<const uint16_t*>(in + b * kFp8Block);
      const __m512 vs = _mm512_set1_ps(scale[b - b0]);
      if (next != nullptr)  // the same block of the next row: 4 lines per ~60 conversion ops
        for (int l = 0; l < kFp8Block * 2; l += 64)
          _mm_prefetch(reinterpret_cast<const char*>(next + b * kFp8Block) + l, _MM_HINT_T0);
      uint8_t* q = out + b * kFp8Block;
      for (int i = 0; i < kFp8Block; i += 64) {
        // BF16 -> float by interleaving zero words below each value (one op per 16, not a widen + shift).
        // The unpacks work within 128-bit lanes: per lane L, c[0] / c[1] hold columns 8L..8L+3 / 8L+4..8L+7
        // of the first 32, c[2] / c[3] the same of the next 32; UnpackedOrder puts them back in order.
        __m512i c[4];
        for (int h = 0; h < 2; ++h) {
          const __m512i v = _mm512_loadu_si512(x + i + 32 * h);
          const __m512 lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), v));
          const __m512 hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), v));
          c[2 * h] = E4m3Codes(_mm512_mul_ps(lo, vs));
          c[2 * h + 1] = E4m3Codes(_mm512_mul_ps(hi, vs));
        }
        _mm512_storeu_si512(q + i, PackCodes(c, UnpackedOrder()));
      }
    }
  }
  if (next != nullptr)
    for (int l = full * kFp8Block * 2; l < hidden * 2; l += 64)
      _mm_prefetch(reinterpret_cast<const char*>(next) + l, _MM_HINT_T0);
  CastRowTail(in, hidden, opt, out, scales);
}
EPX_AVX512_END

// AVX2 by hand, for CPUs without AVX-512 (AMD Zen 1-3, Intel client cores): the structure of CastRowAvx512
// on 8 lanes. GCC's vectorisation of CastBlock (the "avx2" clone of CastRow) spends most of its instructions
// on masks, blends and narrowing: this takes about half its time (BM_Fp8CastRow, Zen 3: 1.85 vs 3.5 us per
// 7168-column row). Same IEEE operations (no FMA: the multiply x * scale and the one float add of
// E4m3Code), so bitwise the same codes and scales.
//
// Without mask registers each E4m3Code select would cost a compare and a blend, so the sign and NaN take
// another route: the codes are computed on |x| * scale (= |x * scale| exactly: scale > 0, and IEEE
// rounding is symmetric), and the sign of x (that of x * scale when the result is not NaN) is added on
// 16-bit lanes, where the final signed-saturating pack turns both NaN and sign into the right byte.

// E4m3Code of m, a non-negative float or a NaN of either sign (what |x| * scale can be: +inf * 0 is the
// default NaN, sign set), without the sign: 0..0x7e, NaN -> 0x100. The saturation is two mins: min_ps
// (448, m) keeps a NaN m (it returns the second operand then) and clamps everything else at 448 (inf too),
// then the unsigned min sends NaN (above 0x7f800000, or negative) to 0x4c000000, whose "normal" code is
// 0x100, and leaves the rest <= 448 alone.
EPX_AVX2_INLINE __m256i E4m3MagCodes8(__m256 m) {
  const __m256i a = _mm256_min_epu32(_mm256_castps_si256(_mm256_min_ps(_mm256_set1_ps(kE4m3Max), m)),
                                     _mm256_set1_epi32(0x4c000000));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
  const __m256i t = _mm256_add_epi32(
      _mm256_add_epi32(a, _mm256_set1_epi32(static_cast<int>(0x7ffffu - (120u << 23)))), odd);
  const __m256i normal = _mm256_srli_epi32(t, 20);
  // a < 2^-6 (0x3c800000) as the sign of a - 0x3c800000 (no overflow: a <= 0x4c000000), which blendv_ps
  // reads: written as a compare, GCC makes it a <= 0x3c7fffff, then min + compare-equal (two ops).
  const __m256i is_sub = _mm256_sub_epi32(a, _mm256_set1_epi32(0x3c800000));
  const __m256i sub =
      _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(16384.0f))),
                       _mm256_set1_epi32(0x46800000));
  return _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(normal), _mm256_castsi256_ps(sub), _mm256_castsi256_ps(is_sub)));
}

// 16 codes from two groups of E4m3MagCodes8 and the 16-bit lanes `neg` (all ones where the value is
// negative): packus_epi32 keeps every code (<= 0x100) and leaves 16-bit lane j holding the code of lane j
// of (lo, hi) unpacked, as unpacklo / unpackhi of 16-bit lanes take them. A negative value gets + 0xff80,
// that is code - 128 in [-128, -2], which the signed pack to bytes turns into 0x80 | code; NaN, 0x100 or
// 0x100 - 128, saturates to 0x7f for either sign.
EPX_AVX2_INLINE __m256i SignedCodes16(__m256i lo, __m256i hi, __m256i neg) {
  return _mm256_add_epi16(_mm256_packus_epi32(lo, hi), _mm256_slli_epi16(neg, 7));
}

EPX_AVX2_KERNEL void FloatsAvx2(const float* in, size_t n, uint8_t* out) {
  size_t i = 0;
  // Columns 8g..8g+7 in group g: after the packs, dword 4L + g holds columns 8g + 4L..8g + 4L + 3, which
  // belong at dword 2g + L.
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (; i + 32 <= n; i += 32) {  // the row cast's steps, on floats
    __m256i s[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i u0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i + 16 * h));
      const __m256i u1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i + 16 * h + 8));
      const __m256i abs = _mm256_set1_epi32(0x7fffffff);
      const __m256i neg = _mm256_packs_epi32(_mm256_srai_epi32(u0, 31), _mm256_srai_epi32(u1, 31));
      s[h] = SignedCodes16(E4m3MagCodes8(_mm256_castsi256_ps(_mm256_and_si256(u0, abs))),
                           E4m3MagCodes8(_mm256_castsi256_ps(_mm256_and_si256(u1, abs))), neg);
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(s[0], s[1]), order));
  }
  for (; i < n; ++i) out[i] = static_cast<uint8_t>(E4m3Code(in[i]));
}

EPX_AVX2_KERNEL void CastRowAvx2(const bf16* in, int hidden, const Fp8Options& opt, uint8_t* out,
                                 void* scales, const bf16* next) {
  const int full = hidden / kFp8Block;
  float* fs = static_cast<float*>(scales);
  uint8_t* bytes = static_cast<uint8_t*>(scales);
  // Three passes per chunk of blocks, as in CastRowAvx512 (and for the same latency reason).
  constexpr int kChunk = 64;
  alignas(32) int32_t amax[kChunk];
  alignas(32) float scale[kChunk];
  for (int b0 = 0; b0 < full; b0 += kChunk) {
    const int b1 = std::min(full, b0 + kChunk);
    for (int b = b0; b < b1; ++b) {
      const auto* x = reinterpret_cast<const uint16_t*>(in + b * kFp8Block);
      // amax bits: max over |x| as int16, NaN counted as 0 (CastBlock). Without a mask register, + 0x7f
      // moves NaN (0x7f81..0x7fff) to negative int16, below every biased |x| (0x7f..0x7fff) and below the
      // start value 0x7f (that is, 0): one op where a compare and an and would be two.
      __m256i mx = _mm256_set1_epi16(0x7f);
      for (int i = 0; i < kFp8Block; i += 16) {
        const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)),
                                           _mm256_set1_epi16(0x7fff));
        mx = _mm256_max_epi16(mx, _mm256_add_epi16(v, _mm256_set1_epi16(0x7f)));
      }
      __m128i m = _mm_max_epi16(_mm256_castsi256_si128(mx), _mm256_extracti128_si256(mx, 1));
      m = _mm_max_epi16(m, _mm_srli_si128(m, 8));
      m = _mm_max_epi16(m, _mm_srli_si128(m, 4));
      m = _mm_max_epi16(m, _mm_srli_si128(m, 2));
      amax[b - b0] = static_cast<int16_t>(_mm_extract_epi16(m, 0)) - 0x7f;
    }
    if (!opt.round_scale) {
      // 8 blocks at a time, as CastRowAvx512 does 16: the same IEEE max and divisions.
      for (int b = b0; b < b1; b += 8) {
        const __m256i lanes =
            _mm256_cmpgt_epi32(_mm256_set1_epi32(b1 - b), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256i bits = _mm256_maskload_epi32(amax + (b - b0), lanes);  // past b1: 0, not unset
        const __m256 a =
            _mm256_max_ps(_mm256_castsi256_ps(_mm256_slli_epi32(bits, 16)), _mm256_set1_ps(kFp8AmaxFloor));
        _mm256_maskstore_ps(fs + b, lanes, _mm256_div_ps(a, _mm256_set1_ps(kE4m3Max)));
        _mm256_store_ps(scale + (b - b0), _mm256_div_ps(_mm256_set1_ps(kE4m3Max), a));
      }
    } else {
      for (int b = b0; b < b1; ++b)
        scale[b - b0] = BlockScale(static_cast<int16_t>(amax[b - b0]), opt, fs, bytes, b);
    }
    for (int b = b0; b < b1; ++b) {
      const auto* x = reinterpret_cast<const uint16_t*>(in + b * kFp8Block);
      const __m256 vs = _mm256_set1_ps(scale[b - b0]);
      if (next != nullptr)
        for (int l = 0; l < kFp8Block * 2; l += 64)
          _mm_prefetch(reinterpret_cast<const char*>(next + b * kFp8Block) + l, _MM_HINT_T0);
      uint8_t* q = out + b * kFp8Block;
      for (int i = 0; i < kFp8Block; i += 32) {
        // |x| as float by interleaving zero words below the BF16 bits, within 128-bit lanes, so that
        // SignedCodes16's lanes are x's lanes again; the byte pack leaves columns 0..7, 16..23 in the low
        // lane and 8..15, 24..31 in the high one: in order after swapping the middle quarters.
        __m256i s[2];
        for (int h = 0; h < 2; ++h) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i + 16 * h));
          const __m256i abs = _mm256_and_si256(v, _mm256_set1_epi16(0x7fff));
          const __m256 lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), abs));
          const __m256 hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), abs));
          s[h] = SignedCodes16(E4m3MagCodes8(_mm256_mul_ps(lo, vs)), E4m3MagCodes8(_mm256_mul_ps(hi, vs)),
                               _mm256_srai_epi16(v, 15));
        }
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i),
                            _mm256_permute4x64_epi64(_mm256_packs_epi16(s[0], s[1]), 0xd8));
      }
    }
  }
  if (next != nullptr)
    for (int l = full * kFp8Block * 2; l < hidden * 2; l += 64)
      _mm_prefetch(reinterpret_cast<const char*>(next) + l, _MM_HINT_T0);
  CastRowTail(in, hidden, opt, out, scales);
}

#endif

}  // namespace

uint8_t FloatToE4m3(float f) {
  return static_cast<uint8_t>(E4m3Code(f));
}

void FloatsToE4m3(const float* in, size_t n, uint8_t* out) {
#if defined(__x86_64__)
  if (avx512::Usable()) return FloatsAvx512(in, n, out);
  if (avx2::Usable()) return FloatsAvx2(in, n, out);
#endif
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(E4m3Code(in[i]));
}

void CastRowToFp8(const bf16* in, int hidden, const Fp8Options& opt, uint8_t* out, void* scales,
                  const bf16* next) {
#if defined(__x86_64__)
  if (avx512::Usable())
    return CastRowAvx512(in, hidden, opt, out, scales, next);  // not by ifunc: EPX_FP8_TARGETS
  if (avx2::Usable()) return CastRowAvx2(in, hidden, opt, out, scales, next);
#endif
  CastRow(in, hidden, opt, out, scales);
}

void CastRowFromFp8(const uint8_t* in, const void* scales, int hidden, bool ue8m0, float* out) {
  const int nb = Fp8NumBlocks(hidden);
  for (int b = 0; b < nb; ++b) {
    float s = ue8m0
                  ? std::bit_cast<float>(static_cast<uint32_t>(static_cast<const uint8_t*>(scales)[b]) << 23)
                  : static_cast<const float*>(scales)[b];
    const int c0 = b * kFp8Block, c1 = std::min(hidden, c0 + kFp8Block);
    for (int c = c0; c < c1; ++c) out[c] = E4m3ToFloat(in[c]) * s;
  }
}

}  // namespace epx
