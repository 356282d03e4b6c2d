// Multi-rank suite of low-latency rank masking (kernels/ll.h "Masking"), in the ll_mr_test binary: the
// survivors of a masked rank get exactly the reference of the problem WITHOUT that rank (its tokens gone,
// every top-k slot naming one of its experts set to -1), bitwise, in every output mode; the masked rank
// takes no part in the calls. Re-admission is a new buffer on every rank.
//
// The victim is the last rank. It never touches the masking test's buffer after creating it (it is the
// "dead" or "hung" rank) and waits in a bootstrap barrier until the survivors are done.
#include "tests/kernels/ll_mr_common.h"

namespace epx::lltest {
namespace {

LowLatencyConfig MaskConfig(bool on_failure, int64_t timeout_ms) {
  LowLatencyConfig c;
  c.max_tokens = 16;
  c.hidden = 128;
  c.topk = 4;
  c.num_experts = 3 * Ctx().world_size();
  c.num_ranks = Ctx().world_size();
  c.depth = 2;  // rotation wraps within the test: the release waits must skip the masked rank
  c.mask_on_failure = on_failure;
  c.timeout_ms = timeout_ms;
  return c;
}

// A trial whose INPUT is the full problem (survivors still route tokens to the victim's experts: the
// kernels must drop them) and whose references are those of the problem without the victim.
std::unique_ptr<Trial> MaskedTrial(const LlBuffer& buf, uint64_t seed, bool fp8, int v) {
  Gen g;
  g.hidden = 96;
  g.topk = 4;
  auto run = MakeTrial(buf, g, seed, fp8);
  run->what += fmt::format(" without rank {}", v);
  return run;
}
void UseReferenceWithout(Trial& run, int v) {
  run.pr.p = LlReferenceWithoutRank(run.pr.p, v);
  run.refs.clear();
  for (int r = 0; r < Ctx().world_size(); ++r) {
    auto ref = LlReferenceDispatch(run.pr.p, r, run.opt);
    EXPECT_TRUE(ref.ok()) << ref.status().ToString();
    run.refs.push_back(ref.ok() ? std::move(ref.value()) : LlRefDispatch{});
  }
}

// Dispatch (one-call or two-phase) + combine in `mode`, checked against the reference without v.
void MaskedRoundTrip(LlBuffer& buf, uint64_t seed, bool fp8, OutMode mode, bool two_phase, int v) {
  auto run = MaskedTrial(buf, seed, fp8, v);
  ASSERT_OK(PostDispatch(buf, *run, two_phase));
  if (two_phase) ASSERT_OK(buf.Receive(&run->hook));
  UseReferenceWithout(*run, v);
  ExpectDispatchEq(run->out, run->refs[run->pr.me], "masked dispatch " + run->what);
  ASSERT_OK(PostCombine(buf, *run, mode, seed + 99, two_phase));
  if (two_phase) ASSERT_OK(buf.Receive(&run->chook));
  CheckCombine(*run);
}

void DoneBarrier(const char* what) {
  ASSERT_OK(Ctx().bootstrap().Barrier(what));
}

// After a masked stretch, every rank (the victim included) makes a new buffer: the re-admitted rank takes
// part again, results are the full problem's.
void ReadmitWithNewBuffer() {
  auto fresh = LlBuffer::Create(Ctx(), MaskConfig(false, 0), 1);
  ASSERT_OK(fresh.status());
  EXPECT_TRUE((*fresh)->MaskedRanks().empty());
  Gen g;
  g.hidden = 96;
  g.topk = 4;
  auto run = MakeTrial(**fresh, g, 4242, true);
  RoundTrip(**fresh, *run, OutMode::kVector, 4243);
}

// 7a. MaskRank between calls: the survivors skip the victim in dispatch, combine, the release waits of the
// rotation (D = 2: call 2 reuses buffer 0), one-call and two-phase, every output mode, BF16 and FP8.
TEST(LlMask, MaskedRankIsSkippedAndResultsMatchTheReferenceWithoutIt) {
  const int R = Ctx().world_size(), me = Ctx().rank(), v = R - 1;
  auto made = LlBuffer::Create(Ctx(), MaskConfig(false, 0), 2);
  ASSERT_OK(made.status());
  LlBuffer& buf = **made;
  if (me != v) {
    // Argument checks first (nothing is posted): each names what is wrong.
    Status bad = buf.MaskRank(R);
    EXPECT_EQ(bad.code(), Code::kInvalidArgument);
    EXPECT_NE(bad.message().find(fmt::format("rank {} not in 0..{}", R, R - 1)), std::string::npos) << bad.message();
    bad = buf.MaskRank(me);
    EXPECT_NE(bad.message().find("cannot mask itself"), std::string::npos) << bad.message();
    // Masked and unmasked before any call skipped it: allowed.
    ASSERT_OK(buf.MaskRank(v));
    EXPECT_EQ(buf.MaskedRanks(), std::vector<int>{v});
    ASSERT_OK(buf.UnmaskRank(v));
    EXPECT_TRUE(buf.MaskedRanks().empty());
    ASSERT_OK(buf.MaskRank(v));
    MaskedRoundTrip(buf, 11, true, OutMode::kVector, false, v);
    MaskedRoundTrip(buf, 12, false, OutMode::kCallerSpan, true, v);
    MaskedRoundTrip(buf, 13, true, OutMode::kZeroCopy, false, v);
    MaskedRoundTrip(buf, 14, true, OutMode::kVector, true, v);
    // A call skipped it: its counters are out of step; unmasking says so and how to re-admit it.
    Status st = buf.UnmaskRank(v);
    EXPECT_EQ(st.code(), Code::kFailedPrecondition);
    EXPECT_NE(st.message().find("re-admit it by creating the LlBuffer again"), std::string::npos) << st.message();
    EXPECT_EQ(buf.MaskedRanks(), std::vector<int>{v});
  }
  DoneBarrier("ll-mask-explicit-done");
  ReadmitWithNewBuffer();
}

// 7b. mask_on_failure: the victim hangs (never calls); each survivor's wait for it times out (short
// per-buffer deadline), masks it and finishes the call without it: dispatch (the receive phase runs
// again without the masked source), then combine (already masked: nothing awaited).
TEST(LlMask, MaskOnFailureGoesOnWithoutAHungRank) {
  const int R = Ctx().world_size(), me = Ctx().rank(), v = R - 1;
  constexpr int64_t kTimeoutMs = 1500;
  auto made = LlBuffer::Create(Ctx(), MaskConfig(true, kTimeoutMs), 2);
  ASSERT_OK(made.status());
  LlBuffer& buf = **made;
  if (me != v) {
    const auto t0 = std::chrono::steady_clock::now();
    MaskedRoundTrip(buf, 21, true, OutMode::kVector, false, v);
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(buf.MaskedRanks(), std::vector<int>{v});
    // One deadline for the dispatch wait, none for the combine (v already masked); slack for 2 cores.
    EXPECT_GE(ms, kTimeoutMs) << "the survivor cannot know about the hung rank before its deadline";
    EXPECT_LT(ms, 2 * kTimeoutMs + 3000) << "the hung rank must cost one deadline, not one per wait";
    // Later calls skip it without waiting.
    MaskedRoundTrip(buf, 22, false, OutMode::kZeroCopy, true, v);
    MaskedRoundTrip(buf, 23, true, OutMode::kCallerSpan, false, v);
  }
  DoneBarrier("ll-mask-on-failure-done");
  ReadmitWithNewBuffer();
}

// Without mask_on_failure the same hang is an error naming the rank, and the buffer says it is unusable.
TEST(LlMask, WithoutMaskingAHungRankIsAnErrorNamingIt) {
  const int R = Ctx().world_size(), me = Ctx().rank(), v = R - 1;
  auto made = LlBuffer::Create(Ctx(), MaskConfig(false, 800), 1);
  ASSERT_OK(made.status());
  LlBuffer& buf = **made;
  if (me != v) {
    auto run = MaskedTrial(buf, 31, true, v);
    Status st = PostDispatch(buf, *run, false);
    EXPECT_EQ(st.code(), Code::kTimeout) << st.ToString();
    EXPECT_NE(st.message().find(fmt::format("rank {}", v)), std::string::npos) << st.message();
    EXPECT_TRUE(buf.MaskedRanks().empty());
    Status again = PostDispatch(buf, *run, false);
    EXPECT_EQ(again.code(), Code::kFailedPrecondition);
    EXPECT_NE(again.message().find("failed midway"), std::string::npos) << again.message();
  }
  DoneBarrier("ll-mask-off-done");
}

}  // namespace
}  // namespace epx::lltest
