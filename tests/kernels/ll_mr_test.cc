// Multi-rank suite of the low-latency (decode) dispatch/combine, kernels/ll.h: one gtest binary run as R
// rank processes by epx-run (one node, or several with EPX_RDMA=shm today and verbs in the soft-RoCE
// guest: only the environment changes). Every rank rebuilds all ranks' inputs from a seed and checks its
// own outputs against the serial reference (kernels/ll_reference.h): bitwise for dispatch (count,
// src_info, layout_range, BF16 or FP8 payload + scales of the valid rows), for the handle, and for
// combine; within DeepEP's calc_diff bound for the FP8 dispatch -> dequantize -> combine round trip.
//
// Every LL call is collective and all ranks make the same sequence of calls (that is how they agree on
// the rotating buffer), so comparisons use EXPECT: a mismatch must not make one rank skip a call the
// others make; only call statuses ASSERT. Inputs meant to be rejected are bad on every rank alike, so
// every rank fails the same call before anything is posted and no rank is left waiting.
#include "tests/kernels/ll_mr_common.h"

namespace epx::lltest {
namespace {

// ---- Tests --------------------------------------------------------------------------------------------

TEST(LlMr, HeapFitsAndPathIsTheEnvironments) {
  const Placement& pl = Ctx().placement();
  size_t total = 0;
  for (const LowLatencyConfig& c : {MainConfig(), SingleConfig(), DeepConfig(), DoomedConfig()}) {
    auto b = LlHeapBytes(c);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    total += *b;
  }
  NormalConfig ncfg;
  ncfg.num_channels = 2;
  auto nb = NormalHeapBytes(ncfg, kNormalLimits, pl.world_size, pl.local_size);
  ASSERT_TRUE(nb.ok()) << nb.status().ToString();
  if (Ctx().rank() == 0)
    std::printf("ll_mr_test: LL buffers %.2f MiB + normal buffer %.2f MiB of a %.0f MiB heap\n",
                total / 1048576.0, *nb / 1048576.0, Ctx().heap().size() / 1048576.0);
  EXPECT_LT(total + *nb, Ctx().heap().size());
  // The suite runs the path the environment asks for: RDMA only with several nodes, of EPX_RDMA's kind.
  const char* kind = std::getenv("EPX_RDMA");
  const std::string want = pl.num_nodes == 1                     ? ""
                           : kind && std::string(kind) != "auto" ? kind
                                                                 : Main().rdma_kind();
  EXPECT_EQ(Main().rdma_kind(), want);
  EXPECT_EQ(Main().config().num_ranks, pl.world_size);
  EXPECT_EQ(Main().config().max_tokens, kTmax);
  if (MainChannels() != 0) {
    EXPECT_EQ(Main().num_channels(), 2);
  }
  EXPECT_GE(Main().combine_row_stride(), static_cast<size_t>(kHidden));
}

// 1. BF16 dispatch of rank-coded rows: bitwise vs the reference, and independently: row i of expert e
// carries the code of the source whose layout_range block holds i, and its token (last column) is
// src_info[i], increasing inside the block.
TEST(LlMr, DispatchRankCodedBf16) {
  StatsCheck stats(Main());
  Gen zero;
  zero.rank_coded = true;
  zero.zero_ranks = true;  // N = 0 on ranks 1, 4, ...: their experts still hear "0" from everyone
  Gen hot;
  hot.rank_coded = true;
  hot.full = true;
  hot.hot_expert = 0;  // every token of every rank: expert 0 gets all R*T_max rows
  hot.topk = kTopk;
  hot.hidden = kHidden;
  Gen k1;
  k1.rank_coded = true;
  k1.topk = 1;
  k1.p_none = 0;
  uint64_t seed = 10;
  for (const Gen& g : {zero, hot, k1}) {
    auto run = MakeTrial(Main(), g, ++seed, /*fp8=*/false);
    ASSERT_OK(PostDispatch(Main(), *run, false));
    CheckDispatch(*run);
    stats.Dispatched(*run);
    const LlDispatchOutput& out = run->out;
    const int R = Ctx().world_size(), H = g.hidden, me = Ctx().rank();
    if (out.x.size() < static_cast<size_t>(out.local_experts) * out.rows * H * 2) continue;  // reported above
    int bad = 0;
    for (int e = 0; e < out.local_experts; ++e)
      for (int s = 0; s < R; ++s) {
        const int64_t range = out.layout_range[static_cast<size_t>(e) * R + s];
        for (int i = LlRangeBegin(range); i < LlRangeBegin(range) + LlRangeCount(range); ++i) {
          const auto* row = reinterpret_cast<const bf16*>(out.row(e, i));
          const int32_t t = out.src_info[static_cast<size_t>(e) * out.rows + i];
          bad += row[0].bits != RankCode(s) || row[H - 1].bits != t;
          if (i > LlRangeBegin(range)) bad += out.src_info[static_cast<size_t>(e) * out.rows + i - 1] >= t;
        }
      }
    EXPECT_EQ(bad, 0) << "rank-coded rows out of place on rank " << me << " (" << run->what << ")";
    if (g.hot_expert == 0 && me == 0) {
      EXPECT_EQ(out.count[0], R * kTmax);  // the expert's rows are exactly full
    }
  }
  stats.Check("rank-coded dispatches");
}

// 2. FP8 dispatch: E4M3 payload and scales bitwise for each scale format, H with and without a partial
// 128-column block.
TEST(LlMr, DispatchFp8Bitwise) {
  StatsCheck stats(Main());
  uint64_t seed = 20;
  for (int hidden : {200, 256})
    for (Fp8Options o : {Fp8Options{}, Fp8Options{.round_scale = true}, Fp8Options{true, true}}) {
      Gen g;
      g.hidden = hidden;
      g.topk = hidden == 256 ? kTopk : 3;
      g.zero_ranks = hidden == 200;
      auto run = MakeTrial(Main(), g, ++seed, /*fp8=*/true, o);
      ASSERT_OK(PostDispatch(Main(), *run, false));
      CheckDispatch(*run);
      stats.Dispatched(*run);
    }
  stats.Check("FP8 dispatches");
}

// 3. Combine bitwise, in each output mode: into out->x, into the caller's span (`out=`), and zero-copy
// (rows written into NextCombineBuffer() at combine_row_stride()).
TEST(LlMr, CombineBitwiseEachOutputMode) {
  StatsCheck stats(Main());
  uint64_t seed = 30;
  for (OutMode mode : {OutMode::kVector, OutMode::kCallerSpan, OutMode::kZeroCopy})
    for (int k : {1, 5, kTopk}) {
      Gen g;
      g.topk = k;
      g.zero_ranks = k == 5;
      g.hidden = k == kTopk ? kHidden : 200;
      auto run = MakeTrial(Main(), g, ++seed, /*fp8=*/k == 5);
      RoundTrip(Main(), *run, mode, seed * 7);
      stats.Dispatched(*run);
      stats.Combined();
    }
  stats.Check("combines");
}

// 3b. Each rank picks its own combine mode in the same call: a one-phase default-mode rank leaves FP32
// partials for its node-local sources, a two-phase or zero-copy one leaves rows, and every source must
// read each peer's kind (kernels/ll.h "Combine"). Rotating the modes over the ranks gives every pair of
// (expert rank, source) modes somewhere; bitwise vs the reference each time.
TEST(LlMr, CombineRanksInDifferentModesInOneCall) {
  StatsCheck stats(Main());
  const int me = Ctx().rank();
  constexpr OutMode kModes[] = {OutMode::kVector, OutMode::kZeroCopy, OutMode::kCallerSpan};
  for (int round = 0; round < 6; ++round) {
    Gen g;
    g.hidden = round % 2 ? kHidden : 200;
    auto run = MakeTrial(Main(), g, 40 + round, /*fp8=*/round % 3 == 0);
    ASSERT_OK(PostDispatch(Main(), *run, false));
    CheckDispatch(*run);
    const OutMode mode = kModes[(me + round) % 3];
    const bool two_phase = (me + round / 3) % 2 == 1;
    ASSERT_OK(PostCombine(Main(), *run, mode, 900 + round, two_phase));
    if (two_phase) ASSERT_OK(Main().Receive(&run->chook));
    CheckCombine(*run);
    stats.Dispatched(*run);
    stats.Combined();
  }
  stats.Check("mixed-mode combines");
}

// 4. FP8 dispatch -> dequantize (what an FP8 expert sees) as the expert output -> combine. Bitwise vs
// the reference fed with the dequantized reference rows, and within DeepEP's test_low_latency bound
// calc_diff < 9e-4 of the BF16 path (the reference with the original BF16 rows as expert outputs).
TEST(LlMr, Fp8RoundTripWithinDeepEpBound) {
  StatsCheck stats(Main());
  uint64_t seed = 40;
  for (Fp8Options o : {Fp8Options{}, Fp8Options{true, true}})
    for (OutMode mode : {OutMode::kVector, OutMode::kZeroCopy}) {
      Gen g;
      g.hidden = kHidden;
      g.topk = kTopk;
      auto run = MakeTrial(Main(), g, ++seed, /*fp8=*/true, o);
      ASSERT_OK(PostDispatch(Main(), *run, false));
      CheckDispatch(*run);
      run->ys.clear();
      for (int r = 0; r < Ctx().world_size(); ++r)
        run->ys.push_back(DequantOutputs(r == run->pr.me ? run->out : run->refs[r], o.ue8m0));
      ASSERT_OK(PostCombineOf(Main(), *run, mode, false));
      CheckCombine(*run);
      stats.Dispatched(*run);
      stats.Combined();
      // The BF16 path: expert outputs = the tokens themselves, rows found through every rank's reference.
      const int R = Ctx().world_size(), rows = run->pr.p.rows_per_expert();
      LlExpertOutput bf16_rows = [&](int r, int e, int row) {
        const LlRefDispatch& d = run->refs[r];
        return run->pr.p.x_row(SourceOf(d, R, e, row), d.src_info[static_cast<size_t>(e) * rows + row]);
      };
      auto exact = LlReferenceCombine(run->pr.p, run->pr.me, bf16_rows);
      EXPECT_TRUE(exact.ok()) << exact.status().ToString();
      if (!exact.ok()) continue;  // (not ASSERT: the next iteration's calls must still be made)
      const double diff = CalcDiff(CombineResult(*run), *exact);
      EXPECT_LT(diff, 9e-4) << "FP8 round trip (" << run->what << ") on rank " << run->pr.me;
      if (run->pr.me == 0)
        std::printf("ll_mr_test: FP8 round trip %s: calc_diff %.3g (DeepEP bound 9e-4)\n", run->what.c_str(),
                    diff);
    }
  stats.Check("FP8 round trips");
}

// The shape of call i of a sequence (varied: H, K, BF16/FP8 and scale format, ranks without tokens, no
// tokens at all, the full hot expert).
Gen SequenceGen(int i, const LowLatencyConfig& cfg) {
  Gen g;
  static constexpr int kH[] = {200, 256, 64, 128, 200, 8, 256};
  g.hidden = std::min(kH[i % 7], cfg.hidden);
  g.topk = 1 + (i * 3) % cfg.topk;
  g.zero_ranks = i % 3 == 2;
  g.no_tokens = i % 7 == 5;
  if (i % 7 == 3) {
    g.full = true;
    g.hot_expert = cfg.num_experts - 1;
  }
  return g;
}
Fp8Options SequenceFp8(int i) {
  return i % 4 == 1 ? Fp8Options{} : i % 4 == 3 ? Fp8Options{true, i % 8 == 7} : Fp8Options{true, false};
}

// 5a. Many calls in a row, shapes and seeds varying per call, with no cleaning: 7 dispatch + combine
// pairs rotate several times through the D buffers (monotonic counters, stale slots of earlier calls).
// On Main (D = 3, 2 channels) and Single (D = 2, DeepEP's double buffering, 1 channel: the inline path).
TEST(LlMr, ManyCallsInARowWithoutCleaning) {
  for (LlBuffer* buf : {&Main(), &Single()}) {
    StatsCheck stats(*buf);
    for (int i = 0; i < 7; ++i) {
      auto run = MakeTrial(*buf, SequenceGen(i, buf->config()), 500 + i, /*fp8=*/i % 2 == 1, SequenceFp8(i));
      RoundTrip(*buf, *run, static_cast<OutMode>(i % 3), 600 + i);
      stats.Dispatched(*run);
      stats.Combined();
    }
    stats.Check(fmt::format("sequence on depth {}", buf->config().depth));
  }
}

// 5b. Two-phase with two micro-batches in flight on Main (D = 3): dispatch a, dispatch b, receive a, b;
// the same with the receives in reverse order; the two combines in flight, received in reverse order;
// and DeepEP's overlap: the dispatch of one micro-batch in flight with the combine of another.
TEST(LlMr, TwoPhaseMicroBatches) {
  LlBuffer& buf = Main();
  StatsCheck stats(buf);
  std::vector<std::unique_ptr<Trial>> r;
  for (int i = 0; i < 5; ++i) {
    Gen g = SequenceGen(i + 1, buf.config());
    r.push_back(MakeTrial(buf, g, 700 + i, /*fp8=*/i % 2 == 0, SequenceFp8(i)));
  }
  auto received = [&](Trial& run) {
    CheckDispatch(run);
    stats.Dispatched(run);
  };
  // a, b in order.
  ASSERT_OK(PostDispatch(buf, *r[0], true));
  ASSERT_OK(PostDispatch(buf, *r[1], true));
  EXPECT_TRUE(r[0]->hook.pending && r[1]->hook.pending);
  ASSERT_OK(buf.Receive(&r[0]->hook));
  ASSERT_OK(buf.Receive(&r[1]->hook));
  EXPECT_FALSE(r[0]->hook.pending || r[1]->hook.pending);
  received(*r[0]);
  received(*r[1]);
  // c, d received in reverse order.
  ASSERT_OK(PostDispatch(buf, *r[2], true));
  ASSERT_OK(PostDispatch(buf, *r[3], true));
  ASSERT_OK(buf.Receive(&r[3]->hook));
  ASSERT_OK(buf.Receive(&r[2]->hook));
  received(*r[2]);
  received(*r[3]);
  // Combines of a and b in flight, received in reverse order.
  ASSERT_OK(PostCombine(buf, *r[0], OutMode::kVector, 800, true));
  ASSERT_OK(PostCombine(buf, *r[1], OutMode::kCallerSpan, 801, true));
  ASSERT_OK(buf.Receive(&r[1]->chook));
  ASSERT_OK(buf.Receive(&r[0]->chook));
  CheckCombine(*r[0]);
  CheckCombine(*r[1]);
  // Overlap: dispatch e in flight while c combines (zero-copy: NextCombineBuffer with a call pending).
  ASSERT_OK(PostDispatch(buf, *r[4], true));
  ASSERT_OK(PostCombine(buf, *r[2], OutMode::kZeroCopy, 802, true));
  ASSERT_OK(buf.Receive(&r[4]->hook));
  ASSERT_OK(buf.Receive(&r[2]->chook));
  received(*r[4]);
  CheckCombine(*r[2]);
  // d's combine in flight while e combines synchronously.
  ASSERT_OK(PostCombine(buf, *r[3], OutMode::kVector, 803, true));
  ASSERT_OK(PostCombine(buf, *r[4], OutMode::kCallerSpan, 804, false));
  ASSERT_OK(buf.Receive(&r[3]->chook));
  CheckCombine(*r[3]);
  CheckCombine(*r[4]);
  stats.combines += 5;
  stats.Check("two-phase micro-batches");
}

// 5c. Depth: on Deep (D = 4, 3 channels) D calls may be posted, the last one with D - 1 pending; a call
// with D pending fails with kFailedPrecondition on every rank before anything is posted (ll.cc checks the
// buffer before the inputs), and the buffer stays usable: the pending calls are received in any order and
// the sequence continues, with one rank late to receive. Also: combining a handle whose dispatch was not
// received yet, and receiving a hook twice, are errors.
TEST(LlMr, DepthLimitAndPendingCalls) {
  LlBuffer& buf = Deep();
  const int D = buf.config().depth;
  ASSERT_EQ(D, 4);
  StatsCheck stats(buf);
  std::vector<std::unique_ptr<Trial>> r;
  for (int i = 0; i <= D; ++i) {
    Gen g = SequenceGen(i, buf.config());
    r.push_back(MakeTrial(buf, g, 900 + i, /*fp8=*/i % 2 == 1, SequenceFp8(i)));
  }
  for (int i = 0; i < D; ++i) {
    ASSERT_OK(PostDispatch(buf, *r[i], true));
    if (i == 0) {  // the handle is incomplete until its receive phase ran
      std::vector<bf16> y(static_cast<size_t>(buf.config().local_experts()) * buf.config().rows_per_expert() *
                          r[0]->pr.p.hidden);
      LlCombineInput in{.y = y, .topk_weights = r[0]->pr.p.topk_weights[r[0]->pr.me]};
      LlCombineOutput back;
      EXPECT_EQ(buf.Combine(r[0]->h, in, &back).code(), Code::kFailedPrecondition);
    }
  }
  // D pending: every kind of call is refused, the same way on every rank.
  LlDispatchOutput out;
  LlHandle h;
  Status st = buf.Dispatch(r[D]->pr.Input(r[D]->opt), &out, &h);
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
  EXPECT_EQ(buf.NextCombineBuffer().status().code(), Code::kFailedPrecondition);
  // Received out of order, rank 0 late: the others receive and go on to post the combines, which reuse
  // the buffers rank 0 has not read yet; they must wait for its release (kernels/ll.h "Rotation") or
  // their combine rows would overwrite its dispatch slots.
  if (Ctx().rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(150));
  for (int i : {2, 0, 3, 1}) {
    ASSERT_OK(buf.Receive(&r[i]->hook));
    CheckDispatch(*r[i]);
    stats.Dispatched(*r[i]);
  }
  LlHook again = r[2]->hook;
  again.pending = true;  // a stale copy that still claims to be pending
  EXPECT_EQ(buf.Receive(&again).code(), Code::kInvalidArgument);
  EXPECT_EQ(buf.Receive(&r[2]->hook).code(), Code::kInvalidArgument);  // already received
  // D combines in flight (the last zero-copy: its buffer is free with D - 1 pending), received in
  // another order.
  for (int i = 0; i < D; ++i)
    ASSERT_OK(PostCombine(buf, *r[i], i == D - 1 ? OutMode::kZeroCopy : static_cast<OutMode>(i % 2), 950 + i,
                          true));
  for (int i : {3, 1, 0, 2}) {
    ASSERT_OK(buf.Receive(&r[i]->chook));
    CheckCombine(*r[i]);
    stats.Combined();
  }
  // The refused call, now accepted.
  RoundTrip(buf, *r[D], OutMode::kZeroCopy, 960);
  stats.Dispatched(*r[D]);
  stats.Combined();
  stats.Check("depth test");
}

// A normal-mode dispatch + combine on Buf(), checked bitwise (y = the received rows).
void NormalRoundTrip(uint64_t seed) {
  const Placement& pl = Ctx().placement();
  const int me = Ctx().rank();
  ProblemSpec spec;
  spec.num_ranks = pl.world_size;
  spec.local_size = pl.local_size;
  spec.num_experts = 9 * pl.world_size;
  spec.hidden = 200;
  spec.topk = 4;
  spec.seed = seed;
  spec.p_none = 0.1;
  for (int r = 0; r < pl.world_size; ++r)
    spec.num_tokens.push_back(20 + (5 * r + static_cast<int>(seed)) % 9);
  GeneratedProblem g(spec, me);
  const RefProblem& p = g.problem();
  auto route = ReferenceRouting(p);
  ASSERT_TRUE(route.ok()) << route.status().ToString();
  DispatchInput in;
  in.num_tokens = p.num_tokens[me];
  in.hidden = p.hidden;
  in.dtype = p.dtype;
  in.x = g.x(me);
  in.num_experts = p.num_experts;
  in.topk = p.topk;
  in.topk_idx = p.topk_idx[me];
  in.topk_weights = p.topk_weights[me];
  DispatchOutput out;
  NormalHandle h;
  ASSERT_OK(Buf().Dispatch(in, &out, &h));
  const RefDispatch ref = ReferenceDispatch(p, *route, me);
  EXPECT_EQ(out.num_recv_tokens, ref.num_rows) << "normal dispatch, rank " << me;
  EXPECT_TRUE(std::equal(ref.x.begin(), ref.x.end(), out.x.begin(), out.x.end())) << "normal x, rank " << me;
  EXPECT_EQ(out.src_idx, ref.src_idx) << "normal src_idx, rank " << me;
  EXPECT_EQ(out.topk_idx, ref.topk_idx) << "normal topk_idx, rank " << me;
  std::vector<bf16> y(out.x.size() / 2);
  std::memcpy(y.data(), out.x.data(), out.x.size());
  CombineInput cin;
  cin.hidden = p.hidden;
  cin.y = y;
  CombineOutput back;
  ASSERT_OK(Buf().Combine(h, cin, &back));
  RefCombineInputs rin;
  rin.y_row = [&](int r, int i) {
    const auto [src, t] = route->rows[r][i];
    return static_cast<const bf16*>(p.x_row(src, t));
  };
  const RefCombine want = ReferenceCombine(p, *route, me, rin);
  EXPECT_TRUE(std::equal(want.x.begin(), want.x.end(), back.x.begin(), back.x.end(),
                         [](bf16 a, bf16 b) { return a.bits == b.bits; }))
      << "normal combine, rank " << me;
}

// 6. Mode switch: normal and low-latency calls alternate on one Context with no cleaning in between
// (the LL block is its own allocation, kernels/ll.h).
TEST(LlMr, ModeSwitchWithNormalBuffer) {
  StatsCheck stats(Main());
  for (int i = 0; i < 3; ++i) {
    NormalRoundTrip(1100 + i);
    Gen g = SequenceGen(i + 4, Main().config());
    auto run = MakeTrial(Main(), g, 1200 + i, /*fp8=*/i == 1, SequenceFp8(i));
    RoundTrip(Main(), *run, static_cast<OutMode>(i), 1300 + i);
    stats.Dispatched(*run);
    stats.Combined();
  }
  NormalRoundTrip(1199);
  stats.Check("mode switch");
}

// 7a. Bad inputs are rejected before anything is posted, identically on every rank (each input is bad on
// every rank), and the buffer serves the next call. Failed calls do not count in the statistics.
TEST(LlMr, BadInputRejectedOnEveryRank) {
  LlBuffer& buf = Main();
  StatsCheck stats(buf);
  const LowLatencyConfig& cfg = buf.config();
  Gen g;  // every rank has >= 1 token (no zero_ranks): every rank can be given the same defect
  g.p_empty = 0;
  g.p_none = 0;
  auto run = MakeTrial(buf, g, 1400, /*fp8=*/false);
  const LlDispatchInput good = run->pr.Input(run->opt);
  LlDispatchOutput out;
  LlHandle h;
  auto expect_bad = [&](const LlDispatchInput& in, const char* needle, const char* what) {
    const Status st = buf.Dispatch(in, &out, &h);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << what << ": " << st.ToString();
    EXPECT_NE(st.message().find(needle), std::string::npos) << what << ": " << st.message();
  };
  // N > T_max with x and topk_idx of that size.
  const int n_big = cfg.max_tokens + 1;
  std::vector<bf16> x_big(static_cast<size_t>(n_big) * g.hidden);
  std::vector<int64_t> idx_big(static_cast<size_t>(n_big) * g.topk, -1);
  LlDispatchInput in = good;
  in.num_tokens = n_big;
  in.x = x_big;
  in.topk_idx = idx_big;
  expect_bad(in, "T_max", "N > T_max");
  // topk_idx out of range, both ends, and an expert twice in one token.
  std::vector<int64_t> idx(good.topk_idx.begin(), good.topk_idx.end());
  in = good;
  in.topk_idx = idx;
  idx[0] = cfg.num_experts;
  expect_bad(in, "topk_idx[0, 0]", "expert id E");
  idx[0] = -2;
  expect_bad(in, "topk_idx[0, 0]", "expert id -2");
  idx[0] = idx[1] = 0;
  expect_bad(in, "twice", "duplicate expert");
  // Sizes and limits.
  in = good;
  in.x = good.x.first(good.x.size() - 1);
  expect_bad(in, "x has", "short x");
  in = good;
  std::vector<bf16> x_wide(static_cast<size_t>(good.num_tokens) * (cfg.hidden + 1));
  in.hidden = cfg.hidden + 1;
  in.x = x_wide;
  expect_bad(in, "hidden", "H > the buffer's hidden");
  in = good;
  std::vector<int64_t> idx_wide(static_cast<size_t>(good.num_tokens) * (cfg.topk + 1), -1);
  in.topk = cfg.topk + 1;
  in.topk_idx = idx_wide;
  expect_bad(in, "topk", "K > the buffer's topk");
  in = good;
  in.use_fp8 = true;
  in.fp8 = Fp8Options{.round_scale = false, .ue8m0 = true};
  expect_bad(in, "ue8m0", "ue8m0 without round_scale");
  // The buffer still works, and the handle it made is checked by combine like any input.
  ASSERT_OK(PostDispatch(buf, *run, false));
  CheckDispatch(*run);
  stats.Dispatched(*run);
  run->ys = {HashOutputs(run->out, run->pr.me, 1401)};
  const std::vector<bf16>& y = run->ys[0];
  const std::vector<float>& w = run->pr.p.topk_weights[run->pr.me];
  LlCombineOutput back;
  auto expect_bad_combine = [&](const LlHandle& hh, const LlCombineInput& cin, const char* what) {
    const Status st = buf.Combine(hh, cin, &back);
    EXPECT_EQ(st.code(), Code::kInvalidArgument) << what << ": " << st.ToString();
  };
  expect_bad_combine(run->h, {.y = y, .topk_weights = std::span(w).first(w.size() - 1)}, "short weights");
  expect_bad_combine(run->h, {.y = std::span(y).first(y.size() - 1), .topk_weights = w}, "short y");
  expect_bad_combine(run->h, {.y = y, .zero_copy = true, .topk_weights = w}, "y with zero_copy");
  expect_bad_combine(LlHandle{}, {.y = y, .topk_weights = w}, "handle of no buffer");
  std::vector<bf16> wrong(static_cast<size_t>(run->pr.p.num_tokens[run->pr.me]) * g.hidden + 1);
  back.out = wrong;
  expect_bad_combine(run->h, {.y = y, .topk_weights = w}, "out= of the wrong size");
  LlHook stray;
  EXPECT_EQ(buf.Receive(&stray).code(), Code::kInvalidArgument);
  // And the combine goes through.
  ASSERT_OK(PostCombine(buf, *run, OutMode::kCallerSpan, 1401, false));
  CheckCombine(*run);
  stats.Combined();
  stats.Check("bad inputs");
}

// 7b. Create is collective and checks the config over the bootstrap: a rank with a different T_max (or
// depth) fails Create on every rank, with a message naming the field, before allocating anything.
TEST(LlMr, ConfigMismatchAtCreateNamesTheField) {
  if (Ctx().world_size() == 1) GTEST_SKIP() << "needs two ranks";
  LowLatencyConfig c = DeepConfig();
  c.max_tokens += Ctx().rank() == 1;
  auto b = LlBuffer::Create(Ctx(), c, 1);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kInvalidArgument);
  EXPECT_NE(b.status().message().find("max_tokens"), std::string::npos) << b.status().message();
  c = DeepConfig();
  c.depth += Ctx().rank() == Ctx().world_size() - 1;
  b = LlBuffer::Create(Ctx(), c, 1);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("depth"), std::string::npos) << b.status().message();
  c = DeepConfig();
  c.depth = 1;  // invalid everywhere: rejected locally, before the bootstrap
  b = LlBuffer::Create(Ctx(), c, 1);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("depth"), std::string::npos) << b.status().message();
  // Nothing was allocated or left half-agreed: the buffers still work.
  auto run = MakeTrial(Deep(), Gen{.hidden = 128}, 1500, /*fp8=*/true);
  RoundTrip(Deep(), *run, OutMode::kVector, 1501);
}

// 7c. Ranks that disagree on a call's shape (here rank 0 dispatches H = 136, the others 200) get an
// error naming the source and both shapes (kernels/ll.h "Header word") instead of garbage. Every token
// selects an expert on every rank, so every rank hears the odd one (or, on rank 0, the others). The call
// fails midway, which leaves the buffer unusable (ll.cc): a separate buffer, checked to refuse further
// calls.
TEST(LlMr, CallShapeMismatchBetweenRanksIsNamed) {
  if (Ctx().world_size() == 1) GTEST_SKIP() << "needs two ranks";
  Gen g;
  g.all_ranks = true;
  g.hidden = Ctx().rank() == 0 ? 136 : 200;
  auto run = MakeTrial(Doomed(), g, 1600, /*fp8=*/false);
  Status st = PostDispatch(Doomed(), *run, false);
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("H="), std::string::npos) << st.message();
  st = PostDispatch(Doomed(), *run, false);
  EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
}

}  // namespace
}  // namespace epx::lltest
