// Multi-rank suite of normal dispatch/combine: one gtest binary run as R rank processes (one node, or
// several with EPX_RDMA=shm today and verbs in the soft-RoCE guest: only the environment changes).
// Every rank rebuilds all ranks' inputs from the seed (kernels/problem_gen.h) and checks its own
// outputs bitwise against the serial reference (kernels/reference.h).
//
// Comparisons use EXPECT (a mismatch must not make one rank skip a collective call the others make);
// only call statuses ASSERT.
#include <epx/normal.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include "kernels/fp8.h"
#include "kernels/problem_gen.h"
#include "tests/transport/mr_env.h"

namespace epx {
namespace {

using test::Ctx;

constexpr NormalLimits kLimits{.max_hidden = 320, .max_topk = 8, .max_local_experts = 16};

NormalBuffer& Buf() {
  static std::unique_ptr<NormalBuffer> buf = [] {
    auto cfg = NormalConfig::FromEnv();
    EXPECT_TRUE(cfg.ok());
    // Two channels unless the environment says otherwise: auto would give one per rank under epx-run
    // on a small machine, and the suite must exercise several.
    if (std::getenv("EPX_NORMAL_CHANNELS") == nullptr) cfg->num_channels = 2;
    auto b = NormalBuffer::Create(Ctx(), *cfg, kLimits);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    return b.ok() ? std::move(*b) : nullptr;
  }();
  return *buf;
}

// The same limits with zero-copy inputs (NormalBuffer::DispatchInputBuffer / CombineInputBuffer).
NormalBuffer& ZcBuf() {
  static std::unique_ptr<NormalBuffer> buf = [] {
    NormalLimits lim = kLimits;
    lim.max_zero_copy_tokens = 64;
    auto b = NormalBuffer::Create(Ctx(), NormalConfig{.num_channels = 2}, lim);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    return b.ok() ? std::move(*b) : nullptr;
  }();
  return *buf;
}

struct Shape {
  int topk = 2;
  int experts_per_rank = 9;  // E = 9R: never a power of two
  int hidden = 200;          // not a multiple of 128
  TokenDtype dtype = TokenDtype::kBf16;
  double p_none = 0.1;
  int hot_expert = -1;
  bool zero_ranks = false;  // ranks r % 3 == 1 send nothing
  bool rank_coded = false;
  int tokens = 24;  // base tokens per rank (each rank adds (7r) % 11)
};

ProblemSpec SpecOf(const Shape& s, uint64_t seed) {
  const Placement& pl = Ctx().placement();
  ProblemSpec p;
  p.num_ranks = pl.world_size;
  p.local_size = pl.local_size;
  p.num_experts = s.experts_per_rank * pl.world_size;
  p.hidden = s.hidden;
  p.topk = s.topk;
  p.dtype = s.dtype;
  p.seed = seed;
  p.p_none = s.p_none;
  p.hot_expert = s.hot_expert;
  p.rank_coded = s.rank_coded;
  for (int r = 0; r < pl.world_size; ++r)
    p.num_tokens.push_back(s.zero_ranks && r % 3 == 1 ? 0 : s.tokens + (7 * r) % 11);
  return p;
}

template <typename T>
std::span<const uint8_t> Bytes(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

DispatchInput InputOf(const GeneratedProblem& g, int alignment = 1, int worst = 0) {
  const int me = Ctx().rank();
  const RefProblem& p = g.problem();
  DispatchInput in;
  in.num_tokens = p.num_tokens[me];
  in.hidden = p.hidden;
  in.dtype = p.dtype;
  in.x = Bytes(g.x(me));
  in.x_scales = g.scales(me);
  in.num_experts = p.num_experts;
  in.topk = p.topk;
  in.topk_idx = p.topk_idx[me];
  in.topk_weights = p.topk_weights[me];
  in.expert_alignment = alignment;
  in.num_worst_tokens = worst;
  return in;
}

// Bitwise comparison of the first M rows with the reference (topk only when `topk`).
void ExpectDispatchEq(const DispatchOutput& out, const RefDispatch& ref, bool topk, const std::string& what) {
  const int me = Ctx().rank();
  ASSERT_EQ(out.num_recv_tokens, ref.num_rows) << what << " rank " << me;
  const size_t M = ref.num_rows;
  EXPECT_TRUE(std::equal(ref.x.begin(), ref.x.end(), out.x.begin())) << what << ": x differs on rank " << me;
  EXPECT_TRUE(std::equal(ref.x_scales.begin(), ref.x_scales.end(), out.x_scales.begin()))
      << what << ": scales differ on rank " << me;
  EXPECT_TRUE(std::equal(ref.src_idx.begin(), ref.src_idx.end(), out.src_idx.begin()))
      << what << ": src_idx differs on rank " << me;
  EXPECT_EQ(out.tokens_per_expert, ref.tokens_per_expert) << what << " rank " << me;
  if (!topk) return;
  const size_t K = ref.topk_idx.size() / std::max<size_t>(M, 1);
  EXPECT_TRUE(std::equal(ref.topk_idx.begin(), ref.topk_idx.end(), out.topk_idx.begin()))
      << what << ": topk_idx differs on rank " << me;
  ASSERT_EQ(out.topk_weights.size(), static_cast<size_t>(out.num_rows) * K) << what;
  EXPECT_TRUE(std::equal(ref.topk_weights.begin(), ref.topk_weights.end(), out.topk_weights.begin()))
      << what << ": topk_weights differ on rank " << me;
}

// One dispatch checked against the reference; leaves outputs in `out`/`h` for further use.
struct Trial {
  std::unique_ptr<GeneratedProblem> g;
  std::unique_ptr<RefProblem> ref;  // the problem the reference sees, when not g's (a masked rank)
  RefRouting route;
  DispatchOutput out;
  NormalHandle h;
};

// zero_copy: x goes through buf's DispatchInputBuffer (peers copy the rows from this rank's heap).
void DispatchAndCheck(const Shape& s, uint64_t seed, Trial* run, int alignment = 1,
                      NormalBuffer* buf = nullptr, bool zero_copy = false) {
  NormalBuffer& b = buf ? *buf : Buf();
  run->g = std::make_unique<GeneratedProblem>(SpecOf(s, seed), Ctx().rank());
  auto route = ReferenceRouting(run->g->problem());
  ASSERT_TRUE(route.ok()) << route.status().ToString();
  run->route = std::move(*route);
  DispatchInput in = InputOf(*run->g, alignment);
  if (zero_copy) {
    std::span<uint8_t> zx = b.DispatchInputBuffer();
    ASSERT_GE(zx.size(), in.x.size());
    std::copy(in.x.begin(), in.x.end(), zx.begin());
    in.x = zx.first(in.x.size());
    in.zero_copy = true;
  }
  ASSERT_OK(b.Dispatch(in, &run->out, &run->h));
  const int me = Ctx().rank();
  // Layout: the handle's routing equals the reference layout of this rank's tokens.
  EXPECT_EQ(run->h.is_token_in_rank, run->route.layout[me].is_token_in_rank) << "rank " << me;
  RefDispatch ref = ReferenceDispatch(run->g->problem(), run->route, me, alignment);
  ExpectDispatchEq(run->out, ref, true, fmt::format("dispatch seed {} K {} H {}", seed, s.topk, s.hidden));
  EXPECT_TRUE(std::equal(ref.src_idx.begin(), ref.src_idx.end(), run->h.recv_src_idx.begin()));
  for (int r = 0; r < Ctx().world_size(); ++r)
    EXPECT_EQ(run->h.rank_prefix[r + 1] - run->h.rank_prefix[r], run->route.layout[r].tokens_per_rank[me]);
}

// Combine of rank-specific expert outputs y_r[i] = HashRow(salt, r, src, token), weights = the
// received weights, optional biases; compared bitwise with the reference.
void CombineAndCheck(Trial& run, uint64_t salt, bool bias, bool weights, CombineOutput* got = nullptr,
                     NormalBuffer* buf = nullptr, bool zero_copy = false) {
  const int me = Ctx().rank(), R = Ctx().world_size();
  const RefProblem& p = run.ref ? *run.ref : run.g->problem();
  const int H = p.hidden, K = p.topk;
  std::vector<RefDispatch> refs;
  for (int r = 0; r < R; ++r) refs.push_back(ReferenceDispatch(p, run.route, r));
  std::vector<std::vector<bf16>> ys;
  for (int r = 0; r < R; ++r) ys.push_back(GeneratedProblem::HashedOutputs(salt, r, refs[r], H));
  const int N = p.num_tokens[me];
  std::vector<bf16> b0(static_cast<size_t>(N) * H), b1(static_cast<size_t>(N) * H);
  for (int t = 0; t < N; ++t) {
    GeneratedProblem::HashRow(salt + 1, me, t, 0, H, &b0[static_cast<size_t>(t) * H]);
    GeneratedProblem::HashRow(salt + 2, me, t, 0, H, &b1[static_cast<size_t>(t) * H]);
  }
  CombineInput in;
  in.hidden = H;
  in.y = ys[me];
  if (weights) {
    in.topk = K;
    in.topk_weights = run.out.topk_weights;
  }
  if (bias) {
    in.bias0 = b0;
    in.bias1 = b1;
  }
  if (zero_copy) {  // y through the buffer's CombineInputBuffer: sources reduce from this rank's heap
    std::span<bf16> zy = buf->CombineInputBuffer();
    ASSERT_GE(zy.size(), in.y.size());
    std::copy(in.y.begin(), in.y.end(), zy.begin());
    in.y = zy.first(in.y.size());
    in.zero_copy = true;
  }
  CombineOutput out;
  ASSERT_OK((buf ? *buf : Buf()).Combine(run.h, in, &out));
  RefCombineInputs rin;
  rin.y_row = [&](int r, int i) { return &ys[r][static_cast<size_t>(i) * H]; };
  if (weights) rin.w_row = [&](int r, int i) { return &refs[r].topk_weights[static_cast<size_t>(i) * K]; };
  if (bias) rin.bias0 = b0.data(), rin.bias1 = b1.data();
  RefCombine ref = ReferenceCombine(p, run.route, me, rin);
  ASSERT_EQ(out.x.size(), ref.x.size());
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < ref.x.size(); ++i)
    if (out.x[i].bits != ref.x[i].bits && bad++ == 0) first_bad = i;
  EXPECT_EQ(bad, 0u) << "combine x differs on rank " << me << " at " << bad << " elements, first token "
                     << first_bad / H << " column " << first_bad % H;
  EXPECT_EQ(out.topk_weights, ref.topk_weights) << "combine weights differ on rank " << me;
  if (got) *got = std::move(out);
}

TEST(NormalMr, DispatchRankCodedBitwise) {
  // The suite runs the path the environment asks for: RDMA only with several nodes, of EPX_RDMA's kind.
  const Placement& pl = Ctx().placement();
  ASSERT_EQ(Buf().num_nodes(), pl.num_nodes);
  const char* kind = std::getenv("EPX_RDMA");
  const std::string want = pl.num_nodes == 1                     ? ""
                           : kind && std::string(kind) != "auto" ? kind
                                                                 : Buf().rdma_kind();
  EXPECT_EQ(Buf().rdma_kind(), want);
  Shape s;
  s.rank_coded = true;
  Trial run;
  DispatchAndCheck(s, 11, &run);
  // Independent check of order and placement: row i holds the code of (source, src_idx[i]) and
  // sources appear in ascending blocks.
  const int me = Ctx().rank();
  const bf16* x = run.out.x_bf16();
  for (int r = 0; r < Ctx().world_size(); ++r)
    for (int i = run.h.rank_prefix[r]; i < run.h.rank_prefix[r + 1]; ++i) {
      const uint16_t code = static_cast<uint16_t>((r << 10 | run.out.src_idx[i]) & 0x7fff);
      EXPECT_EQ(x[static_cast<size_t>(i) * s.hidden + s.hidden - 1].bits, code)
          << "rank " << me << " row " << i;
      if (i > run.h.rank_prefix[r]) {
        EXPECT_LT(run.out.src_idx[i - 1], run.out.src_idx[i]);
      }
    }
}

TEST(NormalMr, DispatchRandomShapesBitwise) {
  for (int k : {1, 2, 8})
    for (bool zero : {false, true}) {
      Shape s;
      s.topk = k;
      s.zero_ranks = zero;
      s.p_none = 0.2;
      Trial run;
      DispatchAndCheck(s, 100 + k * 2 + zero, &run, /*alignment=*/k == 2 ? 4 : 1);
    }
}

TEST(NormalMr, DispatchFp8Bitwise) {
  Shape s;
  s.dtype = TokenDtype::kFp8;
  s.hidden = 300;  // 3 scale blocks, the last one partial
  s.topk = 8;
  Trial run;
  DispatchAndCheck(s, 21, &run);
}

TEST(NormalMr, HotExpertAndCombineWithoutWeights) {
  Shape s;
  s.topk = 1;
  s.hot_expert = 0;  // every token to expert 0 (rank 0)
  s.p_none = 0;
  Trial run;
  DispatchAndCheck(s, 31, &run);
  CombineAndCheck(run, 32, /*bias=*/false, /*weights=*/false);
}

TEST(NormalMr, CombineBitwiseWithAndWithoutBias) {
  for (int k : {1, 8}) {
    Shape s;
    s.topk = k;
    s.zero_ranks = k == 8;
    Trial run;
    DispatchAndCheck(s, 41 + k, &run);
    CombineAndCheck(run, 50 + k, /*bias=*/false, /*weights=*/true);
    CombineAndCheck(run, 60 + k, /*bias=*/true, /*weights=*/true);  // handle reuse: a second combine
  }
}

TEST(NormalMr, CachedDispatchReproducesPlacement) {
  Shape s;
  s.topk = 8;
  Trial run;
  DispatchAndCheck(s, 71, &run);
  // New x over the same routing: rows must hold exactly the new data, in the same places.
  Shape s2 = s;
  s2.rank_coded = true;
  GeneratedProblem g2(SpecOf(s2, 71), Ctx().rank());
  DispatchInput in = InputOf(g2);
  in.topk_idx = {};
  in.topk_weights = {};
  DispatchOutput out;
  ASSERT_OK(Buf().Dispatch(run.h, in, &out));
  RefDispatch ref = ReferenceDispatch(g2.problem(), run.route, Ctx().rank());
  ExpectDispatchEq(out, ref, false, "cached dispatch");
  EXPECT_TRUE(out.topk_idx.empty());
  CombineAndCheck(run, 72, true, true);  // the handle still combines after a cached dispatch
}

TEST(NormalMr, WorstTokensEqualsExactOnValidPrefix) {
  Shape s;
  s.topk = 2;
  Trial run;
  DispatchAndCheck(s, 81, &run);
  int total = 0;
  for (int n : run.g->problem().num_tokens) total += n;
  DispatchOutput worst;
  NormalHandle h2;
  ASSERT_OK(Buf().Dispatch(InputOf(*run.g, 1, total), &worst, &h2));
  const int M = run.out.num_recv_tokens, K = s.topk;
  ASSERT_EQ(worst.num_rows, total);
  ASSERT_EQ(worst.num_recv_tokens, M);
  const size_t hb = static_cast<size_t>(s.hidden) * 2;
  EXPECT_TRUE(std::equal(run.out.x.begin(), run.out.x.end(), worst.x.begin()));
  EXPECT_TRUE(std::equal(run.out.topk_idx.begin(), run.out.topk_idx.end(), worst.topk_idx.begin()));
  EXPECT_TRUE(
      std::equal(run.out.topk_weights.begin(), run.out.topk_weights.end(), worst.topk_weights.begin()));
  for (size_t i = static_cast<size_t>(M) * K; i < worst.topk_idx.size(); ++i)
    ASSERT_EQ(worst.topk_idx[i], -1);
  for (size_t i = M * hb; i < worst.x.size(); ++i) ASSERT_EQ(worst.x[i], 0);
  CombineAndCheck(run, 82, false, true);
}

uint64_t Fnv(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

TEST(NormalMr, RepeatedRunsGiveIdenticalHash) {
  Shape s;
  s.topk = 8;
  s.hidden = 128;
  GeneratedProblem g(SpecOf(s, 91), Ctx().rank());
  const DispatchInput in = InputOf(g);
  uint64_t first = 0;
  for (int it = 0; it < 20; ++it) {
    DispatchOutput out;
    NormalHandle h;
    ASSERT_OK(Buf().Dispatch(in, &out, &h));
    std::vector<bf16> y(static_cast<size_t>(out.num_recv_tokens) * s.hidden);
    for (int i = 0; i < out.num_recv_tokens; ++i)
      GeneratedProblem::HashRow(92, Ctx().rank(), i, out.src_idx[i], s.hidden,
                                &y[static_cast<size_t>(i) * s.hidden]);
    CombineInput cin;
    cin.hidden = s.hidden;
    cin.y = y;
    cin.topk = s.topk;
    cin.topk_weights = out.topk_weights;
    CombineOutput back;
    ASSERT_OK(Buf().Combine(h, cin, &back));
    uint64_t hash = 0xcbf29ce484222325ull;
    hash = Fnv(hash, out.x.data(), out.x.size());
    hash = Fnv(hash, out.topk_idx.data(), out.topk_idx.size() * 8);
    hash = Fnv(hash, out.topk_weights.data(), out.topk_weights.size() * 4);
    hash = Fnv(hash, out.src_idx.data(), out.src_idx.size() * 4);
    hash = Fnv(hash, back.x.data(), back.x.size() * 2);
    hash = Fnv(hash, back.topk_weights.data(), back.topk_weights.size() * 4);
    if (it == 0) first = hash;
    EXPECT_EQ(hash, first) << "run " << it << " on rank " << Ctx().rank();
  }
}

TEST(NormalMr, BadShapesAreRejectedBeforeAnyExchange) {
  Shape s;
  GeneratedProblem g(SpecOf(s, 5), Ctx().rank());
  DispatchOutput out;
  NormalHandle h;
  DispatchInput in = InputOf(g);
  in.x = in.x.first(in.x.size() - 1);
  Status st = Buf().Dispatch(in, &out, &h);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("x has"), std::string::npos) << st.message();
  in = InputOf(g);
  in.num_experts = 0;  // no experts
  EXPECT_EQ(Buf().Dispatch(in, &out, &h).code(), Code::kInvalidArgument);
  in = InputOf(g);
  in.hidden = kLimits.max_hidden + 1;
  EXPECT_EQ(Buf().Dispatch(in, &out, &h).code(), Code::kInvalidArgument);
  std::vector<int64_t> idx(g.problem().topk_idx[Ctx().rank()]);
  if (!idx.empty()) idx[0] = 9 * Ctx().world_size();  // one past the last expert, on every rank with tokens
  in = InputOf(g);
  in.topk_idx = idx;
  // Every rank must fail the same way to stay in step: only check when all ranks have tokens.
  if (!idx.empty()) {
    st = Buf().Dispatch(in, &out, &h);
    EXPECT_EQ(st.code(), Code::kInvalidArgument);
    EXPECT_NE(st.message().find("topk_idx[0][0]"), std::string::npos) << st.message();
  }
  // The buffer still works after rejected calls.
  Trial run;
  DispatchAndCheck(s, 6, &run);
}

TEST(NormalMr, ShapeMismatchBetweenRanksIsNamedAndHarmless) {
  if (Ctx().world_size() == 1) GTEST_SKIP() << "needs two ranks";
  Shape s, odd;
  odd.hidden = 136;
  GeneratedProblem g(SpecOf(Ctx().rank() == 0 ? odd : s, 7), Ctx().rank());
  DispatchOutput out;
  NormalHandle h;
  Status st = Buf().Dispatch(InputOf(g), &out, &h);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("different hidden"), std::string::npos) << st.message();
  Trial run;  // the failed exchange moved no ring: the buffer still works
  DispatchAndCheck(s, 8, &run);
  CombineAndCheck(run, 9, true, true);
}

TEST(NormalMr, BuffersMustAgreeOnConfigAcrossRanks) {
  if (Ctx().world_size() == 1) GTEST_SKIP() << "needs two ranks";
  NormalConfig cfg;
  cfg.num_channels = 1;
  const NormalLimits lim{.max_hidden = 64 + Ctx().rank(), .max_topk = 2, .max_local_experts = 4};
  auto b = NormalBuffer::Create(Ctx(), cfg, lim);  // fails on every rank before allocating anything
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kInvalidArgument);
  EXPECT_NE(b.status().message().find("different config or limits"), std::string::npos)
      << b.status().message();
}

// A second buffer with the smallest rings and more channels than the first: hundreds of tokens must
// stream through 2-slot rings (credits wrap many times), and combine still reduces bitwise.
TEST(NormalMr, TinyRingsStreamManyTokens) {
  NormalConfig cfg;
  cfg.num_channels = 3;
  cfg.node_slots = cfg.rdma_slots = 2;
  cfg.node_chunk = cfg.rdma_chunk = 1;
  auto tiny = NormalBuffer::Create(Ctx(), cfg, {.max_hidden = 64, .max_topk = 4, .max_local_experts = 16});
  ASSERT_TRUE(tiny.ok()) << tiny.status().ToString();
  Shape s;
  s.topk = 4;
  s.hidden = 64;
  s.tokens = 150;
  GeneratedProblem g(SpecOf(s, 123), Ctx().rank());
  auto route = ReferenceRouting(g.problem());
  ASSERT_TRUE(route.ok());
  for (int it = 0; it < 2; ++it) {
    DispatchOutput out;
    NormalHandle h;
    ASSERT_OK((*tiny)->Dispatch(InputOf(g), &out, &h));
    ExpectDispatchEq(out, ReferenceDispatch(g.problem(), *route, Ctx().rank()), true, "tiny rings");
    std::vector<bf16> y(out.x.size() / 2);
    std::memcpy(y.data(), out.x.data(), out.x.size());  // y = received x: combine = x * #ranks (+ rounding)
    CombineInput cin;
    cin.hidden = s.hidden;
    cin.y = y;
    CombineOutput back;
    ASSERT_OK((*tiny)->Combine(h, cin, &back));
    RefCombineInputs rin;
    rin.y_row = [&](int r, int i) {
      const auto [src, t] = route->rows[r][i];
      return reinterpret_cast<const bf16*>(g.problem().x_row(src, t));
    };
    RefCombine ref = ReferenceCombine(g.problem(), *route, Ctx().rank(), rin);
    EXPECT_TRUE(std::equal(ref.x.begin(), ref.x.end(), back.x.begin(),
                           [](bf16 a, bf16 b) { return a.bits == b.bits; }))
        << "tiny rings combine, rank " << Ctx().rank();
  }
}

// Zero-copy inputs (one node): dispatch rows read from the sources' DispatchInputBuffer, combine rows
// reduced straight from the experts' CombineInputBuffer; bitwise the reference, BF16 and FP8, with and
// without weights and biases, several calls in a row (the node barrier at the end of each call is what
// lets the next one rewrite the buffers). Mixed modes are named; several nodes are refused up front.
TEST(NormalMr, ZeroCopyInputsMatchTheReference) {
  NormalBuffer& zc = ZcBuf();
  if (Ctx().placement().num_nodes > 1) {
    Trial run;
    run.g = std::make_unique<GeneratedProblem>(SpecOf(Shape{}, 5), Ctx().rank());
    DispatchInput in = InputOf(*run.g);
    std::span<uint8_t> zx = zc.DispatchInputBuffer();
    std::copy(in.x.begin(), in.x.end(), zx.begin());
    in.x = zx.first(in.x.size());
    in.zero_copy = true;
    Status st = zc.Dispatch(in, &run.out, &run.h);
    EXPECT_EQ(st.code(), Code::kUnsupported) << st.ToString();
    EXPECT_NE(st.message().find("zero_copy needs all ranks on one node"), std::string::npos) << st.message();
    return;
  }
  for (int i = 0; i < 4; ++i) {
    Shape s;
    s.topk = 1 + i % 4;
    s.hidden = i % 2 ? 320 : 136;
    s.dtype = i == 2 ? TokenDtype::kFp8 : TokenDtype::kBf16;
    s.zero_ranks = i == 3;
    Trial run;
    DispatchAndCheck(s, 700 + i, &run, 1, &zc, /*zero_copy=*/true);
    CombineAndCheck(run, 800 + i, /*bias=*/i % 2 == 1, /*weights=*/i != 1, nullptr, &zc, /*zero_copy=*/true);
  }
  // Without zero_copy the same buffer works as usual, and a cached dispatch may use zero-copy x.
  Trial run;
  DispatchAndCheck(Shape{}, 900, &run, 1, &zc, false);
  CombineAndCheck(run, 901, false, true, nullptr, &zc, false);
  // Bad use, on every rank alike (rejected before anything moves): rows not at the buffer's start.
  DispatchInput in = InputOf(*run.g);
  in.zero_copy = true;
  Status st = zc.Dispatch(in, &run.out, &run.h);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  EXPECT_NE(st.message().find("do not start at DispatchInputBuffer()"), std::string::npos) << st.message();
  st = Buf().Dispatch(in, &run.out, &run.h);  // a buffer without zero-copy inputs
  EXPECT_NE(st.message().find("max_zero_copy_tokens = 0"), std::string::npos) << st.message();
}

// Three checked rounds on `buf` without `victims` (masked by every survivor before): dispatch and combine
// equal the reference of the problem without them, bitwise, over several shapes.
void RunCheckedWithout(NormalBuffer* buf, const std::vector<int>& victims, uint64_t seed) {
  const int me = Ctx().rank();
  for (int i = 0; i < 3; ++i) {
    Shape s;
    s.topk = 2 + i;
    s.hidden = i == 1 ? 320 : 200;
    s.dtype = i == 2 ? TokenDtype::kFp8 : TokenDtype::kBf16;
    Trial run;
    run.g = std::make_unique<GeneratedProblem>(SpecOf(s, seed + i), me);
    RefProblem without = run.g->problem();
    for (int v : victims) without = ReferenceWithoutRank(without, v);
    run.ref = std::make_unique<RefProblem>(std::move(without));
    auto route = ReferenceRouting(*run.ref);
    ASSERT_TRUE(route.ok()) << route.status().ToString();
    run.route = std::move(*route);
    ASSERT_OK(buf->Dispatch(InputOf(*run.g), &run.out, &run.h));
    ExpectDispatchEq(run.out, ReferenceDispatch(*run.ref, run.route, me), true,
                     fmt::format("dispatch without rank(s) {} (seed {})", fmt::join(victims, ","), seed + i));
    CombineAndCheck(run, seed + 100 + i, /*bias=*/i == 1, /*weights=*/true, nullptr, buf);
  }
}

// Rank masking: the victims (one node: the last rank; several nodes: every rank of the last node, as
// after a lost host) are masked by the others and make no call on this buffer; the survivors' inputs
// still route tokens to their experts. Dispatch and combine equal the reference without them, bitwise,
// for several shapes; a handle from before a mask change is refused; unmasking a rank a call skipped is
// refused with how to re-admit it (a new buffer on every rank).
TEST(NormalMr, MaskedRankIsSkippedAndResultsMatchTheReferenceWithoutIt) {
  const int R = Ctx().world_size(), me = Ctx().rank(), L = Ctx().placement().local_size;
  const bool nodes = Ctx().placement().num_nodes > 1;
  std::vector<int> victims;
  for (int r = nodes ? R - L : R - 1; r < R; ++r) victims.push_back(r);
  const bool victim = me >= victims.front();
  static std::unique_ptr<NormalBuffer> buf = [] {
    auto b = NormalBuffer::Create(Ctx(), NormalConfig{.num_channels = 2}, kLimits);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    return b.ok() ? std::move(*b) : nullptr;
  }();
  ASSERT_NE(buf, nullptr);
  Status self = buf->MaskRank(me);
  EXPECT_NE(self.message().find("cannot mask itself"), std::string::npos) << self.message();
  if (R == 1) return;
  Trial before;
  DispatchAndCheck(Shape{}, 1000, &before, 1, buf.get());  // every rank: a handle made before the mask
  if (!victim) {
    for (int v : victims) ASSERT_OK(buf->MaskRank(v));
    EXPECT_EQ(buf->MaskedRanks(), victims);
    CombineInput stale;
    stale.hidden = 200;
    CombineOutput sink;
    Status st = buf->Combine(before.h, stale, &sink);  // refused before anything moves
    EXPECT_EQ(st.code(), Code::kFailedPrecondition) << st.ToString();
    EXPECT_NE(st.message().find("rank mask changed"), std::string::npos) << st.message();
    RunCheckedWithout(buf.get(), victims, 1100);
    Status un = buf->UnmaskRank(victims.back());
    EXPECT_EQ(un.code(), Code::kFailedPrecondition);
    EXPECT_NE(un.message().find("re-admit it by creating the NormalBuffer again"), std::string::npos)
        << un.message();
  }
  ASSERT_OK(Ctx().bootstrap().Barrier("normal-mask-done"));
}

// Several nodes, single ranks masked: a live rank whose same-index rank on another node is masked is
// relayed by a node peer (NormalState::via). Each case is a new buffer on every rank; the victims make no
// call on it. Cases: one rank of node 0 (every other node's rank of that index is relayed into node 0);
// L >= 4: two ranks of node 1 (two sources relayed through the same rank, one after the other); 3 nodes:
// one rank of node 0 plus the whole of node 2; L = 2: (0, 1) and (1, 0), which leaves (0, 0) without a
// route into node 1: the first call is refused up front, naming it, and nothing moves (after ClearMask every
// rank runs checked rounds on the buffer). Tiny rings.
TEST(NormalMr, SingleRanksMaskedAcrossNodesAreRelayed) {
  const int R = Ctx().world_size(), me = Ctx().rank(), L = Ctx().placement().local_size;
  const int NN = Ctx().placement().num_nodes;
  if (NN < 2 || L < 2)
    GTEST_SKIP() << "needs several nodes of several ranks (this run: " << NN << " x " << L << ")";
  std::vector<std::vector<int>> cases = {{1}};
  if (L >= 4) cases.push_back({L + 1, L + 2});
  if (NN >= 3) cases.push_back({1, 2 * L, 2 * L + 1});
  const bool refusal = L == 2 && NN == 2;
  if (refusal) cases.push_back({1, 2});
  for (size_t k = 0; k < cases.size(); ++k) {
    const std::vector<int>& victims = cases[k];
    // Tiny rings: streams cannot finish within a pass, so the relay's order (its own stream, then its
    // peers' one after the other, which the forwarder and the combine rely on) is exercised.
    auto b = NormalBuffer::Create(
        Ctx(),
        NormalConfig{.num_channels = 2, .node_slots = 2, .node_chunk = 1, .rdma_slots = 2, .rdma_chunk = 1},
        kLimits);
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    std::unique_ptr<NormalBuffer> buf = std::move(*b);
    if (std::find(victims.begin(), victims.end(), me) == victims.end()) {
      SCOPED_TRACE(fmt::format("rank {}: {} x {} without rank(s) {}", me, NN, L, fmt::join(victims, ",")));
      for (int v : victims) ASSERT_OK(buf->MaskRank(v));
      if (refusal && k + 1 == cases.size()) {
        Trial t;
        t.g = std::make_unique<GeneratedProblem>(SpecOf(Shape{}, 1400), me);
        Status st = buf->Dispatch(InputOf(*t.g), &t.out, &t.h);
        EXPECT_EQ(st.code(), Code::kUnsupported) << st.ToString();
        EXPECT_NE(
            st.message().find("rank 0 (node 0, local 0) has no route into node 1: its same-index rank 2 "
                              "is masked"),
            std::string::npos)
            << st.message();
        // Refused before anything moved: the buffer is intact (unmasking is allowed, no call skipped), and
        // without the mask the next call runs and matches the full reference.
        ASSERT_OK(buf->ClearMask());
        EXPECT_TRUE(buf->MaskedRanks().empty());
      } else {
        RunCheckedWithout(buf.get(), victims, 1300 + 10 * k);
      }
    }
    if (refusal && k + 1 == cases.size()) RunCheckedWithout(buf.get(), {}, 1390);  // every rank, no mask
    ASSERT_OK(Ctx().bootstrap().Barrier("normal-relay-case-done"));
  }
  (void)R;
}

}  // namespace
}  // namespace epx
