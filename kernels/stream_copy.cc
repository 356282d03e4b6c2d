#include "kernels/stream_copy.h"

#include <cstdint>
#include <cstring>

#include "kernels/avx2.h"
#include "kernels/avx512.h"

namespace epx {
namespace {

#if defined(__x86_64__)
EPX_AVX512_KERNEL void StreamAvx512(uint8_t* d, const uint8_t* s, size_t n) {
  const size_t head = (64 - (reinterpret_cast<uintptr_t>(d) & 63)) & 63;
  std::memcpy(d, s, head);
  d += head, s += head, n -= head;
  size_t i = 0;
  for (; i + 256 <= n; i += 256) {  // 4 lines per step: loads first, so they overlap
    const __m512i a = _mm512_loadu_si512(s + i), b = _mm512_loadu_si512(s + i + 64);
    const __m512i c = _mm512_loadu_si512(s + i + 128), e = _mm512_loadu_si512(s + i + 192);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i), a);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i + 64), b);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i + 128), c);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i + 192), e);
  }
  for (; i + 64 <= n; i += 64)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d + i), _mm512_loadu_si512(s + i));
  std::memcpy(d + i, s + i, n - i);
}

// The same with 32-byte stores: a line's two halves are written back to back, so the write-combining
// buffer still fills whole lines.
EPX_AVX2_KERNEL void StreamAvx2(uint8_t* d, const uint8_t* s, size_t n) {
  const size_t head = (64 - (reinterpret_cast<uintptr_t>(d) & 63)) & 63;
  std::memcpy(d, s, head);
  d += head, s += head, n -= head;
  size_t i = 0;
  for (; i + 128 <= n; i += 128) {  // 2 lines per step: loads first, so they overlap
    const auto* p = reinterpret_cast<const __m256i*>(s + i);
    const __m256i a = _mm256_loadu_si256(p), b = _mm256_loadu_si256(p + 1);
    const __m256i c = _mm256_loadu_si256(p + 2), e = _mm256_loadu_si256(p + 3);
    auto* q = reinterpret_cast<__m256i*>(d + i);
    _mm256_stream_si256(q, a);
    _mm256_stream_si256(q + 1, b);
    _mm256_stream_si256(q + 2, c);
    _mm256_stream_si256(q + 3, e);
  }
  for (; i + 64 <= n; i += 64) {
    const auto* p = reinterpret_cast<const __m256i*>(s + i);
    const __m256i a = _mm256_loadu_si256(p), b = _mm256_loadu_si256(p + 1);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i + 32), b);
  }
  std::memcpy(d + i, s + i, n - i);
}
#endif

}  // namespace

void StreamCopy(void* dst, const void* src, size_t n) {
#if defined(__x86_64__)
  if (n >= 1024 && avx512::Usable()) {
    StreamAvx512(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), n);
    return;
  }
  if (n >= 1024 && avx2::Usable()) {
    StreamAvx2(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), n);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

void StreamFence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

}  // namespace epx
