#include "kernels/bf16_math.h"

#include <cstdint>
#include <cstring>

#include "kernels/avx2.h"
#include "kernels/avx512.h"

namespace epx {
namespace {

// Branch-free FloatToBf16 (same results): the select vectorises where the branch would not.
inline uint16_t ToBf16Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}
inline float FromBf16Bits(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// One term of the sum: y, or w * y rounded to FP32 first (-ffp-contract=off keeps the compiler from fusing
// it into the add, also where the ISA has FMA).
template <bool kWeighted>
__attribute__((always_inline)) inline float TermOf(float w, uint16_t y) {
  if constexpr (kWeighted)
    return w * FromBf16Bits(y);
  else
    return FromBf16Bits(y);
}

// The one body of both sums, inlined into a wrapper per instruction set (a generic function may be inlined
// into one with more ISA extensions, and is then vectorised for them). kWeighted is a compile-time choice:
// each instantiation is the plain loop of its own sum, with no weight code in the unweighted one.
template <bool kWeighted>
__attribute__((always_inline)) inline void SumBody(bf16* out, float* acc, const bf16* const* rows,
                                                   const float* w, int num_rows, int n) {
  auto* __restrict o = reinterpret_cast<uint16_t*>(out);
  float* __restrict a = acc;
  if (num_rows == 0) {
    std::memset(o, 0, 2 * static_cast<size_t>(n));
    return;
  }
  const auto* __restrict first = reinterpret_cast<const uint16_t*>(rows[0]);
  const float w0 = kWeighted ? w[0] : 0.0f;
  if (num_rows == 1) {
    for (int j = 0; j < n; ++j) o[j] = ToBf16Bits(0.0f + TermOf<kWeighted>(w0, first[j]));
    return;
  }
  for (int j = 0; j < n; ++j) a[j] = 0.0f + TermOf<kWeighted>(w0, first[j]);
  for (int r = 1; r + 1 < num_rows; ++r) {
    const auto* __restrict y = reinterpret_cast<const uint16_t*>(rows[r]);
    const float wr = kWeighted ? w[r] : 0.0f;
    for (int j = 0; j < n; ++j) a[j] += TermOf<kWeighted>(wr, y[j]);
  }
  const auto* __restrict last = reinterpret_cast<const uint16_t*>(rows[num_rows - 1]);
  const float wl = kWeighted ? w[num_rows - 1] : 0.0f;
  for (int j = 0; j < n; ++j) o[j] = ToBf16Bits(a[j] + TermOf<kWeighted>(wl, last[j]));
}

// One group's FP32 partial: p[j] = ((0 + t0) + t1) + ... (num_rows >= 1).
__attribute__((always_inline)) inline void PartialBody(float* p, const bf16* const* rows, const float* w,
                                                       int num_rows, int n) {
  float* __restrict a = p;
  const auto* __restrict first = reinterpret_cast<const uint16_t*>(rows[0]);
  for (int j = 0; j < n; ++j) a[j] = 0.0f + TermOf<true>(w[0], first[j]);
  for (int r = 1; r < num_rows; ++r) {
    const auto* __restrict y = reinterpret_cast<const uint16_t*>(rows[r]);
    const float wr = w[r];
    for (int j = 0; j < n; ++j) a[j] += TermOf<true>(wr, y[j]);
  }
}

// GroupedWeightedSumBf16, portable: acc[0, n) the running sum, acc[n, 2n) a group's partial.
__attribute__((always_inline)) inline void GroupedBody(bf16* out, float* acc, const bf16* const* rows,
                                                       const float* w, const SumGroup* groups, int num_groups,
                                                       int n) {
  auto* __restrict o = reinterpret_cast<uint16_t*>(out);
  float* __restrict a = acc;
  float* __restrict p = acc + n;
  for (int j = 0; j < n; ++j) a[j] = 0.0f;
  for (int g = 0; g < num_groups; ++g) {
    const float* __restrict part = groups[g].partial;
    if (!part) {
      PartialBody(p, rows + groups[g].first, w + groups[g].first, groups[g].count, n);
      part = p;
    }
    for (int j = 0; j < n; ++j) a[j] += part[j];
  }
  for (int j = 0; j < n; ++j) o[j] = ToBf16Bits(a[j]);
}

#if defined(__x86_64__)
// AVX-512: column strips instead of row passes. The generic body above streams each row through acc
// (load, add, store per element and row); here a strip of 64 columns stays in four registers while
// every row adds into it, and only the final BF16 leaves the core: per 16 elements and row one
// load-convert, one shift, (one multiply,) one add. Each element still sees exactly the generic
// sequence -- 0 + t0, then + t1, ..., each product rounded to FP32 before its add (intrinsics are never
// contracted), then the same round-to-nearest-even/NaN rule -- so the results are bitwise the same.
EPX_AVX512_BEGIN

// ToBf16Bits on 16 lanes.
EPX_AVX512_INLINE __m256i ToBf16x16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                                             _mm512_and_si512(hi, _mm512_set1_epi32(1))),
                                            16);
  const __m512i nan = _mm512_or_si512(hi, _mm512_set1_epi32(0x40));
  const __mmask16 is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                   _mm512_set1_epi32(0x7f800000));
  return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, nan));
}
// One term: y, or fp32(w * y).
template <bool kWeighted>
EPX_AVX512_INLINE __m512 Term(__m512 y, __m512 w) {
  if constexpr (kWeighted)
    return _mm512_mul_ps(w, y);
  else
    return y;
}

// w[r] on 16 lanes (unused zeros for the plain sum).
template <bool kWeighted>
EPX_AVX512_INLINE __m512 Weight(const float* w, int r) {
  if constexpr (kWeighted)
    return _mm512_set1_ps(w[r]);
  else
    return _mm512_setzero_ps();
}

// out = bf16(0 + t0 + t1 + ... ) (t_r = rows[r], or fp32(w[r] * rows[r])); no rows give +0.
// (No lambdas: they would not inherit the target attribute.)
// 32 output bytes at p; kStream: two 16-byte non-temporal stores (p 16-byte aligned, checked by the caller).
template <bool kStream>
EPX_AVX512_INLINE void Store16Bf16(uint16_t* p, __m256i v) {
  if constexpr (kStream) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(v));
    _mm_stream_si128(reinterpret_cast<__m128i*>(p + 8), _mm256_extracti128_si256(v, 1));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
  }
}

template <bool kWeighted, bool kStream = false>
EPX_AVX512_KERNEL void StripsAvx512(bf16* out, const bf16* const* rows, const float* w, int num_rows, int n) {
  auto* o = reinterpret_cast<uint16_t*>(out);
  if (num_rows == 0) {
    std::memset(o, 0, 2 * static_cast<size_t>(n));
    return;
  }
  const auto* r0 = reinterpret_cast<const uint16_t*>(rows[0]);
  const __m512 w0 = Weight<kWeighted>(w, 0);
  int j = 0;
  for (; j + 64 <= n; j += 64) {
    __m512 a[4];
    for (int v = 0; v < 4; ++v)
      a[v] = _mm512_add_ps(_mm512_setzero_ps(), Term<kWeighted>(avx512::LoadBf16(r0 + j + 16 * v), w0));
    for (int r = 1; r < num_rows; ++r) {
      const uint16_t* y = reinterpret_cast<const uint16_t*>(rows[r]) + j;
      const __m512 wr = Weight<kWeighted>(w, r);
      for (int v = 0; v < 4; ++v)
        a[v] = _mm512_add_ps(a[v], Term<kWeighted>(avx512::LoadBf16(y + 16 * v), wr));
    }
    for (int v = 0; v < 4; ++v) Store16Bf16<kStream>(o + j + 16 * v, ToBf16x16(a[v]));
  }
  for (; j < n; j += 16) {  // the last < 64 columns, 16 at a time, the last group masked
    const __mmask16 m = n - j >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (n - j)) - 1);
    __m512 a = _mm512_add_ps(_mm512_setzero_ps(), Term<kWeighted>(avx512::LoadBf16Masked(r0 + j, m), w0));
    for (int r = 1; r < num_rows; ++r)
      a = _mm512_add_ps(
          a, Term<kWeighted>(avx512::LoadBf16Masked(reinterpret_cast<const uint16_t*>(rows[r]) + j, m),
                             Weight<kWeighted>(w, r)));
    _mm256_mask_storeu_epi16(o + j, m, ToBf16x16(a));
  }
}
// One group's partial of 16 columns at j (lanes outside m read as 0).
EPX_AVX512_INLINE __m512 GroupPartial16(const bf16* const* rows, const float* w, const SumGroup& g, int j,
                                        __mmask16 m) {
  if (g.partial) return _mm512_maskz_loadu_ps(m, g.partial + j);
  __m512 p = _mm512_add_ps(
      _mm512_setzero_ps(),
      _mm512_mul_ps(_mm512_set1_ps(w[g.first]),
                    avx512::LoadBf16Masked(reinterpret_cast<const uint16_t*>(rows[g.first]) + j, m)));
  for (int r = g.first + 1; r < g.first + g.count; ++r)
    p = _mm512_add_ps(
        p, _mm512_mul_ps(_mm512_set1_ps(w[r]),
                         avx512::LoadBf16Masked(reinterpret_cast<const uint16_t*>(rows[r]) + j, m)));
  return p;
}

// Grouped sum in strips of 64 columns, as StripsAvx512: a group's partial is built in four registers (or
// loaded) and added to the running sum, so neither leaves the core. Same operations in the same order as
// GroupedBody.
EPX_AVX512_KERNEL void GroupedAvx512(bf16* out, const bf16* const* rows, const float* w,
                                     const SumGroup* groups, int num_groups, int n) {
  auto* o = reinterpret_cast<uint16_t*>(out);
  int j = 0;
  for (; j + 64 <= n; j += 64) {
    __m512 a[4];
    for (int v = 0; v < 4; ++v) a[v] = _mm512_setzero_ps();
    for (int g = 0; g < num_groups; ++g) {
      const SumGroup& gr = groups[g];
      __m512 p[4];
      if (gr.partial) {
        for (int v = 0; v < 4; ++v) p[v] = _mm512_loadu_ps(gr.partial + j + 16 * v);
      } else {
        const auto* r0 = reinterpret_cast<const uint16_t*>(rows[gr.first]) + j;
        const __m512 w0 = _mm512_set1_ps(w[gr.first]);
        for (int v = 0; v < 4; ++v)
          p[v] = _mm512_add_ps(_mm512_setzero_ps(), _mm512_mul_ps(w0, avx512::LoadBf16(r0 + 16 * v)));
        for (int r = gr.first + 1; r < gr.first + gr.count; ++r) {
          const auto* y = reinterpret_cast<const uint16_t*>(rows[r]) + j;
          const __m512 wr = _mm512_set1_ps(w[r]);
          for (int v = 0; v < 4; ++v)
            p[v] = _mm512_add_ps(p[v], _mm512_mul_ps(wr, avx512::LoadBf16(y + 16 * v)));
        }
      }
      for (int v = 0; v < 4; ++v) a[v] = _mm512_add_ps(a[v], p[v]);
    }
    for (int v = 0; v < 4; ++v)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j + 16 * v), ToBf16x16(a[v]));
  }
  for (; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (n - j)) - 1);
    __m512 a = _mm512_setzero_ps();
    for (int g = 0; g < num_groups; ++g) a = _mm512_add_ps(a, GroupPartial16(rows, w, groups[g], j, m));
    _mm256_mask_storeu_epi16(o + j, m, ToBf16x16(a));
  }
}

// WeightedPartialF32 in strips of 64 columns.
EPX_AVX512_KERNEL void PartialAvx512(float* out, const bf16* const* rows, const float* w, int num_rows,
                                     int n) {
  const SumGroup g{0, num_rows, nullptr};
  int j = 0;
  for (; j + 64 <= n; j += 64) {
    __m512 p[4];
    const auto* r0 = reinterpret_cast<const uint16_t*>(rows[0]) + j;
    const __m512 w0 = _mm512_set1_ps(w[0]);
    for (int v = 0; v < 4; ++v)
      p[v] = _mm512_add_ps(_mm512_setzero_ps(), _mm512_mul_ps(w0, avx512::LoadBf16(r0 + 16 * v)));
    for (int r = 1; r < num_rows; ++r) {
      const auto* y = reinterpret_cast<const uint16_t*>(rows[r]) + j;
      const __m512 wr = _mm512_set1_ps(w[r]);
      for (int v = 0; v < 4; ++v) p[v] = _mm512_add_ps(p[v], _mm512_mul_ps(wr, avx512::LoadBf16(y + 16 * v)));
    }
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(out + j + 16 * v, p[v]);
  }
  for (; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>((1u << (n - j)) - 1);
    _mm512_mask_storeu_ps(out + j, m, GroupPartial16(rows, w, g, j, m));
  }
}
EPX_AVX512_END

// AVX2: the AVX-512 strips above on 256-bit registers, 32 columns per strip (four registers, as there:
// a group's partial and the running sum take eight of the sixteen). Columns past the last full strip go
// through the scalar twins below, which do the same operations in the same order (the target has no
// FMA, and -ffp-contract=off forbids fusing anyway), so every column gets bitwise the generic result.

// Scalar column j of StripsAvx512 / SumBody.
template <bool kWeighted>
EPX_AVX2_INLINE uint16_t StripColumn(const bf16* const* rows, const float* w, int num_rows, int j) {
  float a = 0.0f + TermOf<kWeighted>(kWeighted ? w[0] : 0.0f, reinterpret_cast<const uint16_t*>(rows[0])[j]);
  for (int r = 1; r < num_rows; ++r)
    a += TermOf<kWeighted>(kWeighted ? w[r] : 0.0f, reinterpret_cast<const uint16_t*>(rows[r])[j]);
  return ToBf16Bits(a);
}
// Scalar column j of one group's partial (PartialBody).
EPX_AVX2_INLINE float PartialColumn(const bf16* const* rows, const float* w, int num_rows, int j) {
  float p = 0.0f + TermOf<true>(w[0], reinterpret_cast<const uint16_t*>(rows[0])[j]);
  for (int r = 1; r < num_rows; ++r) p += TermOf<true>(w[r], reinterpret_cast<const uint16_t*>(rows[r])[j]);
  return p;
}

template <bool kWeighted>
EPX_AVX2_INLINE __m256 Term8(__m256 y, __m256 w) {
  if constexpr (kWeighted)
    return _mm256_mul_ps(w, y);
  else
    return y;
}
template <bool kWeighted>
EPX_AVX2_INLINE __m256 Weight8(const float* w, int r) {
  if constexpr (kWeighted)
    return _mm256_set1_ps(w[r]);
  else
    return _mm256_setzero_ps();
}
// 32 BF16 results (a[0..3], in order) to o; kStream: four 16-byte non-temporal stores (o 16-byte aligned,
// checked by the caller).
template <bool kStream>
EPX_AVX2_INLINE void Store32Bf16(uint16_t* o, const __m256 a[4]) {
  const __m256i lo = avx2::PackBf16(avx2::ToBf16Bits32(a[0]), avx2::ToBf16Bits32(a[1]));
  const __m256i hi = avx2::PackBf16(avx2::ToBf16Bits32(a[2]), avx2::ToBf16Bits32(a[3]));
  if constexpr (kStream) {
    auto* q = reinterpret_cast<__m128i*>(o);
    _mm_stream_si128(q, _mm256_castsi256_si128(lo));
    _mm_stream_si128(q + 1, _mm256_extracti128_si256(lo, 1));
    _mm_stream_si128(q + 2, _mm256_castsi256_si128(hi));
    _mm_stream_si128(q + 3, _mm256_extracti128_si256(hi, 1));
  } else {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16), hi);
  }
}

template <bool kWeighted, bool kStream = false>
EPX_AVX2_KERNEL void StripsAvx2(bf16* out, const bf16* const* rows, const float* w, int num_rows, int n) {
  auto* o = reinterpret_cast<uint16_t*>(out);
  if (num_rows == 0) {
    std::memset(o, 0, 2 * static_cast<size_t>(n));
    return;
  }
  const auto* r0 = reinterpret_cast<const uint16_t*>(rows[0]);
  const __m256 w0 = Weight8<kWeighted>(w, 0);
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    __m256 a[4];
    for (int v = 0; v < 4; ++v)
      a[v] = _mm256_add_ps(_mm256_setzero_ps(), Term8<kWeighted>(avx2::LoadBf16(r0 + j + 8 * v), w0));
    for (int r = 1; r < num_rows; ++r) {
      const uint16_t* y = reinterpret_cast<const uint16_t*>(rows[r]) + j;
      const __m256 wr = Weight8<kWeighted>(w, r);
      for (int v = 0; v < 4; ++v) a[v] = _mm256_add_ps(a[v], Term8<kWeighted>(avx2::LoadBf16(y + 8 * v), wr));
    }
    Store32Bf16<kStream>(o + j, a);
  }
  for (; j < n; ++j) o[j] = StripColumn<kWeighted>(rows, w, num_rows, j);
}

// GroupedAvx512 in strips of 32 columns; the same operations in the same order as GroupedBody.
EPX_AVX2_KERNEL void GroupedStripsAvx2(bf16* out, const bf16* const* rows, const float* w,
                                       const SumGroup* groups, int num_groups, int n) {
  auto* o = reinterpret_cast<uint16_t*>(out);
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    __m256 a[4];
    for (int v = 0; v < 4; ++v) a[v] = _mm256_setzero_ps();
    for (int g = 0; g < num_groups; ++g) {
      const SumGroup& gr = groups[g];
      __m256 p[4];
      if (gr.partial) {
        for (int v = 0; v < 4; ++v) p[v] = _mm256_loadu_ps(gr.partial + j + 8 * v);
      } else {
        const auto* r0 = reinterpret_cast<const uint16_t*>(rows[gr.first]) + j;
        const __m256 w0 = _mm256_set1_ps(w[gr.first]);
        for (int v = 0; v < 4; ++v)
          p[v] = _mm256_add_ps(_mm256_setzero_ps(), _mm256_mul_ps(w0, avx2::LoadBf16(r0 + 8 * v)));
        for (int r = gr.first + 1; r < gr.first + gr.count; ++r) {
          const auto* y = reinterpret_cast<const uint16_t*>(rows[r]) + j;
          const __m256 wr = _mm256_set1_ps(w[r]);
          for (int v = 0; v < 4; ++v)
            p[v] = _mm256_add_ps(p[v], _mm256_mul_ps(wr, avx2::LoadBf16(y + 8 * v)));
        }
      }
      for (int v = 0; v < 4; ++v) a[v] = _mm256_add_ps(a[v], p[v]);
    }
    Store32Bf16<false>(o + j, a);
  }
  for (; j < n; ++j) {
    float a = 0.0f;
    for (int g = 0; g < num_groups; ++g)
      a += groups[g].partial ? groups[g].partial[j]
                             : PartialColumn(rows + groups[g].first, w + groups[g].first, groups[g].count, j);
    o[j] = ToBf16Bits(a);
  }
}

// WeightedPartialF32 in strips of 32 columns; kStream: non-temporal stores (out 32-byte aligned, checked by
// the caller).
template <bool kStream = false>
EPX_AVX2_KERNEL void PartialStripsAvx2(float* out, const bf16* const* rows, const float* w, int num_rows,
                                       int n) {
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    __m256 p[4];
    const auto* r0 = reinterpret_cast<const uint16_t*>(rows[0]) + j;
    const __m256 w0 = _mm256_set1_ps(w[0]);
    for (int v = 0; v < 4; ++v)
      p[v] = _mm256_add_ps(_mm256_setzero_ps(), _mm256_mul_ps(w0, avx2::LoadBf16(r0 + 8 * v)));
    for (int r = 1; r < num_rows; ++r) {
      const auto* y = reinterpret_cast<const uint16_t*>(rows[r]) + j;
      const __m256 wr = _mm256_set1_ps(w[r]);
      for (int v = 0; v < 4; ++v) p[v] = _mm256_add_ps(p[v], _mm256_mul_ps(wr, avx2::LoadBf16(y + 8 * v)));
    }
    for (int v = 0; v < 4; ++v) {
      if constexpr (kStream)
        _mm256_stream_ps(out + j + 8 * v, p[v]);
      else
        _mm256_storeu_ps(out + j + 8 * v, p[v]);
    }
  }
  for (; j < n; ++j) out[j] = PartialColumn(rows, w, num_rows, j);
}
#endif

}  // namespace

// Each entry point branches on KernelIsa() (kernels/isa.h: fixed for the process after its first call, so
// the branch always goes the same way).
void WeightedSumBf16Rows(bf16* out, float* acc, const bf16* const* rows, const float* w, int num_rows,
                         int n) {
#if defined(__x86_64__)
  if (avx512::Usable()) return StripsAvx512<true>(out, rows, w, num_rows, n);
  if (avx2::Usable()) return StripsAvx2<true>(out, rows, w, num_rows, n);
#endif
  SumBody<true>(out, acc, rows, w, num_rows, n);
}

void SumBf16Rows(bf16* out, float* acc, const bf16* const* rows, int num_rows, int n) {
#if defined(__x86_64__)
  if (avx512::Usable()) return StripsAvx512<false>(out, rows, nullptr, num_rows, n);
  if (avx2::Usable()) return StripsAvx2<false>(out, rows, nullptr, num_rows, n);
#endif
  SumBody<false>(out, acc, rows, nullptr, num_rows, n);
}

void SumBf16RowsStream(bf16* out, float* acc, const bf16* const* rows, int num_rows, int n) {
#if defined(__x86_64__)
  const bool aligned = (reinterpret_cast<uintptr_t>(out) & 15) == 0;
  if (aligned && avx512::Usable()) return StripsAvx512<false, true>(out, rows, nullptr, num_rows, n);
  if (aligned && avx2::Usable()) return StripsAvx2<false, true>(out, rows, nullptr, num_rows, n);
#endif
  SumBf16Rows(out, acc, rows, num_rows, n);
}

void GroupedWeightedSumBf16(bf16* out, float* acc, const bf16* const* rows, const float* w,
                            const SumGroup* groups, int num_groups, int n) {
#if defined(__x86_64__)
  if (avx512::Usable()) return GroupedAvx512(out, rows, w, groups, num_groups, n);
  if (avx2::Usable()) return GroupedStripsAvx2(out, rows, w, groups, num_groups, n);
#endif
  GroupedBody(out, acc, rows, w, groups, num_groups, n);
}

void WeightedPartialF32(float* out, const bf16* const* rows, const float* w, int num_rows, int n) {
#if defined(__x86_64__)
  if (avx512::Usable()) return PartialAvx512(out, rows, w, num_rows, n);
  if (avx2::Usable()) return PartialStripsAvx2(out, rows, w, num_rows, n);
#endif
  PartialBody(out, rows, w, num_rows, n);
}

void WeightedPartialF32Stream(float* out, const bf16* const* rows, const float* w, int num_rows, int n) {
#if defined(__x86_64__)
  if (avx2::Usable() && (reinterpret_cast<uintptr_t>(out) & 31) == 0)
    return PartialStripsAvx2<true>(out, rows, w, num_rows, n);
#endif
  WeightedPartialF32(out, rows, w, num_rows, n);
}

}  // namespace epx
