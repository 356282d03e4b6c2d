// LowLatencyConfig validation and the size hint (kernels/ll_config.h): the documented example, the
// formula recomputed by hand for a small config, and one failing case per invariant.
#include "kernels/ll_config.h"

#include <gtest/gtest.h>

namespace epx {
namespace {

TEST(LlConfig, DefaultIsValid) {
  LowLatencyConfig c;
  EXPECT_TRUE(c.Validate().ok());
}

TEST(LlConfig, DocumentedExample) {
  LowLatencyConfig c;  // H=7168, K=8, T_max=128, E=256, D=3
  c.num_ranks = 16;
  auto l = LlLayout::Make(c);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->header_bytes, 48u);
  EXPECT_EQ(l->dispatch_msg, 14400u);
  EXPECT_EQ(l->combine_msg, 14336u);
  EXPECT_EQ(l->send_bytes, 448u << 20);
  EXPECT_EQ(l->recv_bytes, 450u << 20);
  // 2.63 GiB; and independent of R for a fixed E up to the counter block.
  auto b16 = LlHeapBytes(c);
  c.num_ranks = 4;
  auto b4 = LlHeapBytes(c);
  ASSERT_TRUE(b16.ok() && b4.ok());
  EXPECT_NEAR(static_cast<double>(*b16) / (1ull << 30), 2.6309, 1e-3);
  EXPECT_LE(*b16 - *b4, 4096u);
}

TEST(LlConfig, SmallConfigByHand) {
  LowLatencyConfig c;
  c.max_tokens = 4;
  c.hidden = 300;  // 3 FP8 blocks
  c.topk = 3;
  c.num_experts = 6;
  c.num_ranks = 2;
  c.depth = 4;
  auto l = LlLayout::Make(c);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->header_bytes, 32u);   // align16(8 + 12)
  EXPECT_EQ(l->dispatch_msg, 640u);  // align64(32 + max(600, 304 + 12))
  EXPECT_EQ(l->combine_msg, 640u);   // align64(600)
  // send = max(4 * 640, 3 * 8 * 640) = 15360 -> 16384; recv = max(3 * 8 * 640, 4 * 3 * 640 + 2 * 4 *
  // align64(4 * 300)) = max(15360, 7680 + 9728) -> 20480
  EXPECT_EQ(l->send_bytes, 16384u);
  EXPECT_EQ(l->partial_bytes, 1216u);
  EXPECT_EQ(l->partial_off, 7680u);
  EXPECT_EQ(l->recv_bytes, 20480u);
  EXPECT_EQ(l->counter_bytes, 128u);  // align64(8 * (3 * 2 + 2 * 2))
  EXPECT_EQ(l->counters_total, 4096u);
  EXPECT_EQ(l->table_bytes, 128u);  // align64(8 + 4 * 3 * 2 + 4 * 2 + 4 * 4 * 3)
  EXPECT_EQ(l->tables_total, 4096u);
  EXPECT_EQ(l->heap_bytes, 4u * (16384 + 20480) + 4096 + 4096);
  // Linear in depth.
  c.depth = 2;
  EXPECT_EQ(*LlHeapBytes(c), 2u * (16384 + 20480) + 4096 + 4096);
}

TEST(LlConfig, RejectsEachInvariant) {
  auto bad = [](auto mutate) {
    LowLatencyConfig c;
    c.num_ranks = 4;
    mutate(c);
    Status s = c.Validate();
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
    EXPECT_FALSE(LlHeapBytes(c).ok());
  };
  bad([](LowLatencyConfig& c) { c.num_experts = 6; });  // not a multiple of R = 4
  bad([](LowLatencyConfig& c) { c.num_ranks = 0; });
  bad([](LowLatencyConfig& c) { c.max_tokens = 0; });
  bad([](LowLatencyConfig& c) { c.max_tokens = kLlMaxTokens + 1; });
  bad([](LowLatencyConfig& c) { c.topk = 0; });
  bad([](LowLatencyConfig& c) { c.topk = kLlMaxTopk + 1; });
  bad([](LowLatencyConfig& c) { c.hidden = 0; });
  bad([](LowLatencyConfig& c) { c.depth = 1; });
  bad([](LowLatencyConfig& c) { c.depth = kLlMaxDepth + 1; });
  bad([](LowLatencyConfig& c) { c.fp8 = {false, true}; });  // ue8m0 without round_scale
  bad([](LowLatencyConfig& c) {                             // 2^31 rows: E_local * R * T_max = E * T_max
    c.num_experts = 1 << 16;
    c.max_tokens = 1 << 15;
  });
  LowLatencyConfig ok;
  ok.num_ranks = 4;
  ok.depth = 2;
  ok.max_tokens = kLlMaxTokens;
  ok.num_experts = 8;
  ok.fp8 = {true, true};
  EXPECT_TRUE(ok.Validate().ok());
}

}  // namespace
}  // namespace epx
