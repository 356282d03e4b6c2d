// tests/kernels/stream_copy_test.cc: StreamCopy (kernels/stream_copy.h) is memcpy, for every head
// misalignment of the destination and sizes around the 1 KiB threshold and the 64/256-byte steps,
// writing nothing outside [dst, dst + n).
#include "kernels/stream_copy.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <vector>

namespace epx {
namespace {

TEST(StreamCopy, EqualsMemcpyForEveryAlignmentAndSize) {
  std::vector<uint8_t> src(9000);
  std::iota(src.begin(), src.end(), uint8_t{7});
  for (size_t n : {0, 1, 63, 64, 1023, 1024, 1025, 1087, 1280, 7168, 7392, 8191}) {
    for (size_t dst_off = 0; dst_off < 64; dst_off += 5) {
      for (size_t src_off : {0, 3}) {
        std::vector<uint8_t> dst(n + 256, 0xee);
        StreamCopy(dst.data() + 64 + dst_off, src.data() + src_off, n);
        StreamFence();
        for (size_t i = 0; i < dst.size(); ++i) {
          const bool inside = i >= 64 + dst_off && i < 64 + dst_off + n;
          const uint8_t want = inside ? src[src_off + i - 64 - dst_off] : 0xee;
          ASSERT_EQ(dst[i], want) << "n=" << n << " dst_off=" << dst_off << " src_off=" << src_off << " byte "
                                  << i;
        }
      }
    }
  }
}

}  // namespace
}  // namespace epx
