#include "kernels/bf16_math.h"

#include <cstdint>
#include <cstring>

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

// The one body, inlined into a wrapper per instruction set (a generic function may be inlined into
// one with more ISA extensions, and is then vectorised for them).
__attribute__((always_inline)) inline void SumBody(bf16* out, float* acc, const bf16* const* rows,
                                                   int num_rows, int n) {
  auto* __restrict o = reinterpret_cast<uint16_t*>(out);
  float* __restrict a = acc;
  if (num_rows == 0) {
    std::memset(o, 0, 2 * static_cast<size_t>(n));
    return;
  }
  const auto* __restrict first = reinterpret_cast<const uint16_t*>(rows[0]);
  if (num_rows == 1) {
    for (int j = 0; j < n; ++j) o[j] = ToBf16Bits(0.0f + FromBf16Bits(first[j]));
    return;
  }
  for (int j = 0; j < n; ++j) a[j] = 0.0f + FromBf16Bits(first[j]);
  for (int r = 1; r + 1 < num_rows; ++r) {
    const auto* __restrict y = reinterpret_cast<const uint16_t*>(rows[r]);
    for (int j = 0; j < n; ++j) a[j] += FromBf16Bits(y[j]);
  }
  const auto* __restrict last = reinterpret_cast<const uint16_t*>(rows[num_rows - 1]);
  for (int j = 0; j < n; ++j) o[j] = ToBf16Bits(a[j] + FromBf16Bits(last[j]));
}

// The weighted variant: the same shape, each term w * y rounded to FP32 first (-ffp-contract=off keeps
// the compiler from fusing it into the add, also where the ISA has FMA).
__attribute__((always_inline)) inline void WeightedBody(bf16* out, float* acc, const bf16* const* rows,
                                                        const float* w, int num_rows, int n) {
  auto* __restrict o = reinterpret_cast<uint16_t*>(out);
  float* __restrict a = acc;
  if (num_rows == 0) {
    std::memset(o, 0, 2 * static_cast<size_t>(n));
    return;
  }
  const auto* __restrict first = reinterpret_cast<const uint16_t*>(rows[0]);
  const float w0 = w[0];
  if (num_rows == 1) {
    for (int j = 0; j < n; ++j) o[j] = ToBf16Bits(0.0f + w0 * FromBf16Bits(first[j]));
    return;
  }
  for (int j = 0; j < n; ++j) a[j] = 0.0f + w0 * FromBf16Bits(first[j]);
  for (int r = 1; r + 1 < num_rows; ++r) {
    const auto* __restrict y = reinterpret_cast<const uint16_t*>(rows[r]);
    const float wr = w[r];
    for (int j = 0; j < n; ++j) a[j] += wr * FromBf16Bits(y[j]);
  }
  const auto* __restrict last = reinterpret_cast<const uint16_t*>(rows[num_rows - 1]);
  const float wl = w[num_rows - 1];
  for (int j = 0; j < n; ++j) o[j] = ToBf16Bits(a[j] + wl * FromBf16Bits(last[j]));
}

__attribute__((target("avx512f,avx512bw"))) void WeightedAvx512(bf16* out, float* acc, const bf16* const* rows,
                                                                const float* w, int num_rows, int n) {
  WeightedBody(out, acc, rows, w, num_rows, n);
}
__attribute__((target("avx2"))) void WeightedAvx2(bf16* out, float* acc, const bf16* const* rows, const float* w,
                                                  int num_rows, int n) {
  WeightedBody(out, acc, rows, w, num_rows, n);
}
void WeightedBaseline(bf16* out, float* acc, const bf16* const* rows, const float* w, int num_rows, int n) {
  WeightedBody(out, acc, rows, w, num_rows, n);
}

__attribute__((target("avx512f,avx512bw"))) void SumAvx512(bf16* out, float* acc, const bf16* const* rows,
                                                           int num_rows, int n) {
  SumBody(out, acc, rows, num_rows, n);
}
__attribute__((target("avx2"))) void SumAvx2(bf16* out, float* acc, const bf16* const* rows, int num_rows,
                                             int n) {
  SumBody(out, acc, rows, num_rows, n);
}
void SumBaseline(bf16* out, float* acc, const bf16* const* rows, int num_rows, int n) {
  SumBody(out, acc, rows, num_rows, n);
}

using SumFn = void (*)(bf16*, float*, const bf16* const*, int, int);

// Chosen once, at first use (not an ifunc: resolvers run before sanitizer runtimes are up).
SumFn PickSum() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return SumAvx512;
  if (__builtin_cpu_supports("avx2")) return SumAvx2;
  return SumBaseline;
}

using WeightedFn = void (*)(bf16*, float*, const bf16* const*, const float*, int, int);
WeightedFn PickWeighted() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return WeightedAvx512;
  if (__builtin_cpu_supports("avx2")) return WeightedAvx2;
  return WeightedBaseline;
}

}  // namespace

void WeightedSumBf16Rows(bf16* out, float* acc, const bf16* const* rows, const float* w, int num_rows, int n) {
  static const WeightedFn fn = PickWeighted();
  fn(out, acc, rows, w, num_rows, n);
}

void SumBf16Rows(bf16* out, float* acc, const bf16* const* rows, int num_rows, int n) {
  static const SumFn fn = PickSum();
  fn(out, acc, rows, num_rows, n);
}

}  // namespace epx
