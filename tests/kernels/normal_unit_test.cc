// Unit tests of the pieces of normal dispatch/combine that run in one process: config validation and
// sizing, message layouts, the credit ring (on a one-rank context), the worker pool, and the serial
// reference on hand-checked examples (including the documented BF16 rounding order).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "kernels/normal_config.h"
#include "kernels/normal_plan.h"
#include "kernels/problem_gen.h"
#include "kernels/reference.h"
#include "kernels/ring.h"
#include "kernels/worker_pool.h"
#include "transport/context.h"

namespace epx {
namespace {

TEST(NormalConfig, ValidateNamesTheField) {
  NormalConfig c;
  EXPECT_NE(c.Validate(8, 4).message().find("auto"), std::string::npos);  // 0 = auto: resolve first
  c.num_channels = 2;
  EXPECT_TRUE(c.Validate(8, 4).ok());
  c.node_chunk = c.node_slots + 1;
  Status s = c.Validate(8, 4);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("node_chunk"), std::string::npos) << s.message();
  c.node_chunk = 4;
  c.rdma_slots = 1;
  EXPECT_NE(c.Validate(8, 4).message().find("rdma_slots"), std::string::npos);
  c.rdma_slots = 32;
  EXPECT_NE(c.Validate(6, 4).message().find("whole nodes"), std::string::npos);
  EXPECT_NE(c.Validate(64, 64).message().find("local ranks"), std::string::npos);
}

// The formula documented in kernels/normal_config.h, term by term.
TEST(NormalConfig, HeapBytesFollowTheDocumentedFormula) {
  NormalConfig c;
  c.num_channels = 2;
  c.node_slots = c.rdma_slots = 32;
  NormalLimits lim{.max_hidden = 7168, .max_topk = 8, .max_local_experts = 256};
  const size_t slot = NormalSlotBytes(lim, 4);
  EXPECT_EQ(slot, AlignUp(AlignUp(16 + 4 * 4, 64) + AlignUp(2 * 7168, 16) + AlignUp(8 * 8, 16) + 4 * 8, 64));
  EXPECT_EQ(slot, 14528u);
  const size_t C = 2, L = 4, S = 32, row = AlignUp(16 + 4 * C + 4 * 256, 64);
  for (size_t NN : {1, 2}) {
    const size_t R = L * NN;
    const size_t rings = C * L * S * slot + C * L * NN * S * slot + (NN > 1 ? 4 * C * NN * S * slot : 0);
    const size_t words = 64 * 2 * C * L * (1 + NN) + (NN > 1 ? 64 * (4 * C * NN + 1) : 0);
    const size_t counts = row * (2 * R + 2 * NN * (L + 1) * (L + 1)) + 2 * L * (64 + row * (L + 1));
    auto got = NormalHeapBytes(c, lim, static_cast<int>(R), static_cast<int>(L));
    ASSERT_TRUE(got.ok());
    EXPECT_GE(*got, rings + words + counts) << "NN=" << NN;
    EXPECT_LE(*got, rings + words + counts + 8192) << "NN=" << NN;
  }
}

TEST(NormalConfig, MessageLayoutsAreAlignedAndFitTheSlot) {
  NormalLimits lim{.max_hidden = 300, .max_topk = 8, .max_local_experts = 4};
  const size_t slot = NormalSlotBytes(lim, 8);
  for (auto dt : {TokenDtype::kBf16, TokenDtype::kFp8})
    for (int k : {0, 1, 8}) {
      auto m = DispatchMsgLayout::Make(300, k, dt, 8);
      EXPECT_EQ(m.payload_off % 64, 0u);
      EXPECT_EQ(m.topk_off % 8, 0u);
      EXPECT_GE(m.payload_off, sizeof(MsgHeader) + 4 * 8);
      EXPECT_EQ(m.scales_bytes, dt == TokenDtype::kFp8 ? 3u * 4 : 0u);
      EXPECT_LE(m.bytes, slot);
    }
  EXPECT_LE(CombineMsgLayout::Make(300, 8).bytes, slot);
}

// A ring from this rank to itself on a one-rank context: fill, drain, wrap around many times.
TEST(Ring, ShmCreditsAndWrapAround) {
  setenv("EPX_HEAP_SIZE", "2M", 1);
  auto ctx = Context::Create();
  unsetenv("EPX_HEAP_SIZE");
  ASSERT_TRUE(ctx.ok()) << ctx.status().ToString();
  Context& c = **ctx;
  constexpr uint32_t kSlots = 3, kSlot = 64;
  auto words = c.allocator().Allocate(128, 64, "ring words");
  auto slots = c.allocator().Allocate(kSlots * kSlot, 64, "ring slots");
  ASSERT_TRUE(words.ok() && slots.ok());
  std::memset(c.heap().base() + *words, 0, 128);
  RingSpec spec{0, 0, *slots, kSlots, kSlot, *words, *words + 64, 0};
  RingSender tx;
  RingReceiver rx;
  tx.InitShm(c.node(), spec);
  rx.InitShm(c.node(), spec);
  uint64_t sent = 0, got = 0;
  for (int round = 0; round < 10; ++round) {
    while (*tx.HasRoom()) {
      std::memcpy(tx.NextSlot(), &sent, 8);
      tx.Push();
      ++sent;
    }
    EXPECT_EQ(sent - got, kSlots) << "a full ring holds exactly its slots";
    const uint64_t left = round == 0 ? 0 : 1;  // the message left unconsumed last round
    EXPECT_EQ(*rx.Available(), left) << "nothing new is visible before Publish";
    ASSERT_TRUE(tx.Publish(8).ok());
    if (left) {  // Available() re-reads the tail only once the cached messages are consumed
      rx.Consume(1);
      ++got;
    }
    const uint64_t n = *rx.Available();
    ASSERT_EQ(n, kSlots - left);
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t v;
      std::memcpy(&v, rx.Slot(i), 8);
      EXPECT_EQ(v, got + i);
    }
    rx.Consume(n - 1);
    got += n - 1;
    EXPECT_FALSE(*tx.HasRoom()) << "credits move only at Release";
    ASSERT_TRUE(rx.Release().ok());
    EXPECT_TRUE(*tx.HasRoom());
  }
}

TEST(WorkerPool, RunsEveryIndexAndReportsTheFirstError) {
  WorkerPool pool(3);
  std::atomic<int> mask{0};
  auto ok = [&](int i) {
    mask |= 1 << i;
    return Status::Ok();
  };
  for (int rep = 0; rep < 5; ++rep) {
    mask = 0;
    ASSERT_TRUE(pool.Run(ok).ok());
    EXPECT_EQ(mask.load(), 7);
  }
  auto fail = [&](int i) {
    return i != 1 ? Status::Ok() : Status(Code::kInternal, fmt::format("worker {}", i));
  };
  Status s = pool.Run(fail);
  EXPECT_EQ(s.code(), Code::kInternal);
  EXPECT_EQ(s.message(), "worker 1");
}

TEST(WorkerPool, ReportsTheFirstFailureNotTheStoppedEchoes) {
  // Worker 0 stops at once because "another worker failed" (an echo, no cause of its own); worker 2
  // fails for real; worker 1 fails later. The caller must see worker 2's error, not the lowest index.
  WorkerPool pool(3);
  std::atomic<bool> two_done{false};
  auto fn = [&](int i) {
    if (i == 0) return StoppedByOtherWorker();
    if (i == 2) {
      two_done.store(true);
      return Status(Code::kPeerFailure, "worker 2");
    }
    while (!two_done.load()) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let worker 2's result land first
    return Status(Code::kTimeout, "worker 1");
  };
  Status s = pool.Run(fn);
  EXPECT_EQ(s.code(), Code::kPeerFailure);
  EXPECT_EQ(s.message(), "worker 2");
  // Only echoes: one of them is still reported.
  auto stopped = [&](int) { return StoppedByOtherWorker(); };
  EXPECT_TRUE(IsStoppedByOtherWorker(pool.Run(stopped)));
}

// Two tokens of one source on R=4 ranks: the reference's order and values, written out by hand.
RefProblem HandProblem(int local_size, std::vector<bf16>* x) {
  RefProblem p;
  p.num_ranks = 4;
  p.local_size = local_size;
  p.num_experts = 4;
  p.hidden = 1;
  p.topk = 3;
  p.num_tokens = {2, 0, 0, 0};
  p.topk_idx = {{2, 0, 1, 3, -1, 3}, {}, {}, {}};  // token 0 -> ranks 0,1,2; token 1 -> rank 3
  p.topk_weights = {{0.5f, 0.25f, 0.125f, 1.0f, 0.0f, 2.0f}, {}, {}, {}};
  *x = {FloatToBf16(1.0f), FloatToBf16(2.0f)};
  p.x_row = [x](int, int t) { return &(*x)[t]; };
  return p;
}

TEST(Reference, DispatchOrderRemapAndWeights) {
  std::vector<bf16> x;
  RefProblem p = HandProblem(4, &x);
  auto route = ReferenceRouting(p);
  ASSERT_TRUE(route.ok());
  RefDispatch r3 = ReferenceDispatch(p, *route, 3, /*expert_alignment=*/4);
  ASSERT_EQ(r3.num_rows, 1);
  EXPECT_EQ(r3.src_idx, std::vector<int32_t>{1});
  EXPECT_EQ(r3.topk_idx, (std::vector<int64_t>{0, -1, 0}));  // expert 3 is local expert 0 twice
  EXPECT_EQ(r3.topk_weights, (std::vector<float>{1.0f, 0.0f, 2.0f}));
  EXPECT_EQ(r3.tokens_per_expert, std::vector<int>{4});  // 2 pairs, rounded up to 4
  RefDispatch r0 = ReferenceDispatch(p, *route, 0);
  EXPECT_EQ(r0.topk_idx, (std::vector<int64_t>{-1, 0, -1}));
  EXPECT_EQ(r0.topk_weights, (std::vector<float>{0.0f, 0.25f, 0.0f}));
}

// Token 0 goes to ranks 0, 1, 2 with y = 1, 2^-8, 2^-8. One node: 1 + 2^-8 + 2^-8 = 1 + 2^-7 is exact.
// Two nodes of 2: node 0's partial bf16(1 + 2^-8) ties to even = 1, then 1 + 2^-8 ties to 1 again.
TEST(Reference, CombineRoundsEachNodePartial) {
  const float y[] = {1.0f, 1.0f / 256, 1.0f / 256, 4.0f};
  std::vector<bf16> ys;
  for (float v : y) ys.push_back(FloatToBf16(v));
  for (int L : {4, 2}) {
    std::vector<bf16> x;
    RefProblem p = HandProblem(L, &x);
    auto route = ReferenceRouting(p);
    ASSERT_TRUE(route.ok());
    RefCombineInputs in;
    in.y_row = [&](int r, int) { return &ys[r]; };
    in.w_row = [](int, int) {
      static const float w[3] = {0.5f, 0.25f, 0.125f};
      return w;
    };
    RefCombine c = ReferenceCombine(p, *route, 0, in);
    EXPECT_EQ(Bf16ToFloat(c.x[0]), L == 4 ? 1.0f + 1.0f / 128 : 1.0f) << "L=" << L;
    EXPECT_EQ(Bf16ToFloat(c.x[1]), 4.0f);
    EXPECT_EQ(c.topk_weights[0], 1.5f);  // 3 contributions of 0.5
  }
}

TEST(ProblemGen, DeterministicAndMaterialisesOnlyItsRank) {
  ProblemSpec s{.num_ranks = 2,
                .local_size = 1,
                .num_experts = 6,
                .hidden = 130,
                .topk = 3,
                .dtype = TokenDtype::kFp8,
                .num_tokens = {5, 3},
                .seed = 7,
                .p_none = 0.3};
  GeneratedProblem a(s, 0), b(s, -1);
  EXPECT_EQ(a.x(0), b.x(0));
  EXPECT_TRUE(a.x(1).empty());
  EXPECT_EQ(a.problem().topk_idx, b.problem().topk_idx);
  // Regenerated rows of a rank that is not materialised equal the materialised ones.
  for (int t = 0; t < 3; ++t) {
    EXPECT_EQ(std::memcmp(a.problem().x_row(1, t), &b.x(1)[t * 130], 130), 0);
    EXPECT_EQ(std::memcmp(a.problem().scale_row(1, t), &b.scales(1)[t * 2], 8), 0);
  }
  for (int64_t e : a.problem().topk_idx[0]) EXPECT_TRUE(e >= -1 && e < 6);
}

}  // namespace
}  // namespace epx
