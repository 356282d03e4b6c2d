// The MPI baseline (bench/mpi/mpi_baseline.h) against the serial references, bitwise, on every rank.
// Run as R processes by mpirun (ctest mpi_baseline_2ranks / mpi_baseline_4ranks). Every rank runs the same
// cases in the same order (the calls are collective); each builds the whole problem (all ranks' routing,
// rows regenerated on demand) and checks its own outputs. Rank 1 has 0 tokens in most cases.
#include "bench/mpi/mpi_baseline.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_problem.h"
#include "kernels/fp8.h"
#include "kernels/problem_gen.h"
#include "kernels/reference.h"

namespace epx {
namespace {

MpiWorkspace* g_ws = nullptr;  // one for the whole run: later cases reuse (and regrow) its buffers

int Rank() {
  return g_ws->rank();
}
int Size() {
  return g_ws->size();
}

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// First index where two vectors differ (or the sizes), for messages; "" when equal.
template <typename T>
std::string Diff(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size())
    return "size " + std::to_string(got.size()) + " vs " + std::to_string(want.size());
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0)
      return "first difference at element " + std::to_string(i);
  return "";
}

// What the problems of both modes share: R ranks on one logical node (the baseline's combine order,
// mpi_baseline.h), c.experts_per_rank experts on each, rank 1 without tokens when c.zero_rank, else
// tokens(r) on rank r.
template <typename Case, typename Tokens>
ProblemSpec CaseSpec(const Case& c, Tokens&& tokens) {
  const int R = Size();
  std::vector<int> num_tokens;
  for (int r = 0; r < R; ++r) num_tokens.push_back(c.zero_rank && r == 1 ? 0 : tokens(r));
  return {.num_ranks = R,
          .local_size = R,
          .num_experts = c.experts_per_rank * R,
          .hidden = c.hidden,
          .topk = c.topk,
          .num_tokens = std::move(num_tokens),
          .seed = c.seed,
          .p_none = c.p_none};
}

// ---- Normal mode ---------------------------------------------------------------------------------------

struct NormalCase {
  int hidden = 300;  // not a multiple of 128: a partial FP8 scale block
  int topk = 4;
  int experts_per_rank = 4;
  TokenDtype dtype = TokenDtype::kBf16;
  double p_none = 0.25;
  bool with_weights = true;
  bool zero_rank = true;  // rank 1 has no tokens
  int hot_expert = -1;
  int alignment = 1;
  bool bias = false;
  bool negative_zeros = false;  // some y columns are -0 (0 + -0 = +0 must come out)
  uint64_t seed = 1;
};

std::string Name(const NormalCase& c) {
  return std::string(c.dtype == TokenDtype::kFp8 ? "FP8" : "BF16") + " H=" + std::to_string(c.hidden) +
         " K=" + std::to_string(c.topk) + " seed=" + std::to_string(c.seed);
}

// Makes a row order-sensitive: about half of its columns become +-2^30, the rest keep their small hashed
// values (multiples of 2^-10 below 4). Sums of such rows are exact or absorb the small terms depending on
// the order ((2^30 - 2^30) + 1 = 1, but (1 - 2^30) + 2^30 = 0), so a summation order other than the
// reference's shows up even after the final BF16 rounding, which hides mere last-bit FP32 differences.
void OrderSensitive(uint64_t salt, int hidden, bf16* out) {
  for (int j = 0; j < hidden; ++j) {
    const uint64_t h = Mix(salt + j);
    if (h % 2) out[j] = FloatToBf16(h & 2 ? 0x1p30f : -0x1p30f);
  }
}

// Expert output row `row` of rank r (what its experts send back), any rank can compute it.
void YRow(const NormalCase& c, int r, int row, bf16* out) {
  GeneratedProblem::HashRow(c.seed * 7 + 5, 11, r, row, c.hidden, out);
  OrderSensitive(Mix(c.seed) ^ (static_cast<uint64_t>(r) << 40) ^ (static_cast<uint64_t>(row) << 8), c.hidden,
                 out);
  if (c.negative_zeros)
    for (int j = 0; j < c.hidden; j += 5) out[j] = bf16{0x8000};
}

void RunNormal(const NormalCase& c) {
  SCOPED_TRACE(Name(c));
  const int R = Size(), me = Rank(), H = c.hidden, K = c.topk;
  ProblemSpec spec = CaseSpec(c, [](int r) { return 40 + 17 * r; });
  spec.dtype = c.dtype;
  spec.hot_expert = c.hot_expert;
  spec.with_weights = c.with_weights;
  GeneratedProblem gen(spec, me);
  const RefProblem& p = gen.problem();
  auto route = ReferenceRouting(p);
  ASSERT_TRUE(route.ok()) << route.status().ToString();

  // Dispatch.
  MpiNormalInput in = NormalInputOf<MpiNormalInput>(gen, me);
  in.with_weights = c.with_weights;
  if (!c.with_weights) in.topk_weights = {};
  in.expert_alignment = c.alignment;
  // Output objects live across cases (of other shapes too): reused memory must not leak old values.
  static RefDispatch got;
  Status st = MpiNormalDispatch(*g_ws, in, &got);
  ASSERT_TRUE(st.ok()) << st.ToString();
  // Every rank's expected dispatch: the combine weights of rank r are its received weights.
  std::vector<RefDispatch> want;
  for (int r = 0; r < R; ++r) want.push_back(ReferenceDispatch(p, *route, r, c.alignment));
  const RefDispatch& w = want[me];
  EXPECT_EQ(got.num_rows, w.num_rows);
  EXPECT_EQ(Diff(got.x, w.x), "") << "x";
  EXPECT_EQ(Diff(got.x_scales, w.x_scales), "") << "x_scales";
  EXPECT_EQ(Diff(got.topk_idx, w.topk_idx), "") << "topk_idx";
  EXPECT_EQ(Diff(got.topk_weights, w.topk_weights), "") << "topk_weights";
  EXPECT_EQ(Diff(got.src_rank, w.src_rank), "") << "src_rank";
  EXPECT_EQ(Diff(got.src_idx, w.src_idx), "") << "src_idx";
  EXPECT_EQ(got.tokens_per_expert, w.tokens_per_expert);

  // Combine: y rows hashed from (rank, row); weights = the rank's received weights.
  const int M = w.num_rows, N = p.num_tokens[me];
  std::vector<bf16> y(static_cast<size_t>(M) * H);
  for (int i = 0; i < M; ++i) YRow(c, me, i, &y[static_cast<size_t>(i) * H]);
  std::vector<bf16> b0, b1;
  if (c.bias) {
    b0.resize(static_cast<size_t>(N) * H);
    b1.resize(static_cast<size_t>(N) * H);
    for (int t = 0; t < N; ++t) {
      GeneratedProblem::HashRow(c.seed, 21, me, t, H, &b0[static_cast<size_t>(t) * H]);
      GeneratedProblem::HashRow(c.seed, 22, me, t, H, &b1[static_cast<size_t>(t) * H]);
      OrderSensitive(Mix(c.seed + 21) ^ (static_cast<uint64_t>(t) << 8), H, &b0[static_cast<size_t>(t) * H]);
      OrderSensitive(Mix(c.seed + 22) ^ (static_cast<uint64_t>(t) << 8), H, &b1[static_cast<size_t>(t) * H]);
    }
  }
  MpiNormalCombineInput cin;
  cin.hidden = H;
  cin.y = y;
  if (c.with_weights) {
    cin.topk = K;
    cin.topk_weights = got.topk_weights;
  }
  cin.bias0 = b0;
  cin.bias1 = b1;
  static RefCombine back;
  st = MpiNormalCombine(*g_ws, cin, &back);
  ASSERT_TRUE(st.ok()) << st.ToString();

  std::vector<bf16> yrow(H);
  RefCombineInputs rin;
  rin.y_row = [&](int r, int row) -> const bf16* {
    YRow(c, r, row, yrow.data());
    return yrow.data();
  };
  if (c.with_weights)
    rin.w_row = [&](int r, int row) { return &want[r].topk_weights[static_cast<size_t>(row) * K]; };
  rin.bias0 = c.bias ? b0.data() : nullptr;
  rin.bias1 = c.bias ? b1.data() : nullptr;
  const RefCombine wc = ReferenceCombine(p, *route, me, rin);
  EXPECT_EQ(Diff(back.x, wc.x), "") << "combine x";
  EXPECT_EQ(Diff(back.topk_weights, wc.topk_weights), "") << "combine weights";
}

TEST(MpiNormal, Bf16) {
  RunNormal({});
}

TEST(MpiNormal, Fp8) {
  RunNormal({.dtype = TokenDtype::kFp8, .seed = 2});
}

TEST(MpiNormal, Fp8WideRowsAllRanksHaveTokens) {
  RunNormal(
      {.hidden = 1024, .topk = 8, .dtype = TokenDtype::kFp8, .p_none = 0.1, .zero_rank = false, .seed = 3});
}

TEST(MpiNormal, NoWeightsHotExpertAlignment) {
  RunNormal({.with_weights = false, .hot_expert = 1, .alignment = 4, .seed = 4});
}

TEST(MpiNormal, BiasAndNegativeZeros) {
  // Many tokens go nowhere (p_none): their combine output is bias only (or +0).
  RunNormal({.p_none = 0.4, .bias = true, .negative_zeros = true, .seed = 5});
}

TEST(MpiNormal, TopkOneManyExperts) {
  RunNormal({.hidden = 7, .topk = 1, .experts_per_rank = 8, .seed = 6});
}

// After a warm-up call, calls of the same shape grow nothing in the workspace.
TEST(MpiNormal, WorkspaceStopsGrowing) {
  const NormalCase c{.hidden = 2048, .seed = 7};
  RunNormal(c);
  const size_t bytes = g_ws->bytes();
  for (int i = 0; i < 3; ++i) RunNormal(c);
  EXPECT_EQ(g_ws->bytes(), bytes);
  RunNormal({});  // a smaller shape afterwards still works in the grown buffers
  EXPECT_EQ(g_ws->bytes(), bytes);
}

// An invalid input on one rank fails the call on every rank (nobody hangs), and the workspace keeps working.
TEST(MpiNormal, InvalidInputOnOneRankFailsEverywhere) {
  const int R = Size(), me = Rank(), H = 8, K = 2, E = 2 * R;
  std::vector<uint8_t> x(4 * (2 * H) * 2, 0);  // room for the H = 2H disagreement below
  std::vector<int64_t> idx = {0, 1, 2, -1, 3, 0, 1, 2};
  if (me == R - 1) idx[5] = E;  // out of range
  std::vector<float> w(8, 0.5f);
  MpiNormalInput in{.num_tokens = 4,
                    .hidden = H,
                    .x = std::span<const uint8_t>(x.data(), 4 * H * 2),
                    .num_experts = E,
                    .topk = K,
                    .topk_idx = idx,
                    .topk_weights = w};
  RefDispatch out;
  const Status st = MpiNormalDispatch(*g_ws, in, &out);
  EXPECT_EQ(st.code(), Code::kInvalidArgument) << st.ToString();
  // Combine without a successful dispatch is refused locally.
  MpiNormalCombineInput cin{.hidden = H};
  RefCombine back;
  EXPECT_EQ(MpiNormalCombine(*g_ws, cin, &back).code(), Code::kFailedPrecondition);
  // A shape disagreement (H) is caught by the count exchange, also on every rank.
  idx[5] = 0;
  in.hidden = me == 0 ? 2 * H : H;
  in.x = std::span<const uint8_t>(x.data(), static_cast<size_t>(4) * in.hidden * 2);
  EXPECT_EQ(MpiNormalDispatch(*g_ws, in, &out).code(), Code::kInvalidArgument);
  RunNormal({});
}

// ---- Low-latency mode ----------------------------------------------------------------------------------

struct LlCase {
  int hidden = 300;
  int topk = 4;
  int experts_per_rank = 4;
  int max_tokens = 24;
  double p_none = 0.3;
  bool zero_rank = true;
  LlDispatchOptions opt = {};
  bool exact_weights = true;    // weights +-{0.5, 1, 2}: products exact, so large terms cancel exactly
  bool order_sensitive = true;  // y rows through OrderSensitive (else plain hashed rows)
  uint64_t seed = 11;
};

// The whole LL problem on every rank (rows of all ranks materialised: a few hundred KiB).
struct LlProblem {
  std::unique_ptr<GeneratedProblem> gen;  // routing (K distinct experts, -1 slots) and BF16 rows
  LlRefProblem p;
};

LlProblem MakeLl(const LlCase& c) {
  const int R = Size();
  const ProblemSpec spec = CaseSpec(c, [&](int r) {
    return c.max_tokens / 2 + static_cast<int>(Mix(c.seed * 31 + r) % (c.max_tokens / 2 + 1));
  });
  LlProblem pr;
  pr.gen = std::make_unique<GeneratedProblem>(spec, -1);
  pr.p = LlProblemOf(pr.gen->problem(), c.max_tokens);
  LlRefProblem& p = pr.p;
  if (c.exact_weights)
    for (int r = 0; r < R; ++r)
      for (size_t i = 0; i < p.topk_weights[r].size(); ++i) {
        const uint64_t h = Mix(c.seed * 1000003 + static_cast<uint64_t>(r) * 65537 + i);
        p.topk_weights[r][i] = std::ldexp(h & 4 ? -1.0f : 1.0f, static_cast<int>(h % 3) - 1);
      }
  return pr;
}

void LlYRow(const LlCase& c, int r, int e, int row, bf16* out) {
  GeneratedProblem::HashRow(c.seed * 3 + 1, r, e, row, c.hidden, out);
  if (c.order_sensitive)
    OrderSensitive(Mix(c.seed + 1) ^ (static_cast<uint64_t>(r) << 48) ^ (static_cast<uint64_t>(e) << 32) ^
                       (static_cast<uint64_t>(row) << 8),
                   c.hidden, out);
}

void RunLl(const LlCase& c) {
  SCOPED_TRACE("LL H=" + std::to_string(c.hidden) + " fp8=" + std::to_string(c.opt.use_fp8) +
               " round_scale=" + std::to_string(c.opt.fp8.round_scale) +
               " ue8m0=" + std::to_string(c.opt.fp8.ue8m0) + " seed=" + std::to_string(c.seed));
  const int me = Rank(), H = c.hidden, K = c.topk;
  LlProblem pr = MakeLl(c);
  const LlRefProblem& p = pr.p;
  const int N = p.num_tokens[me];
  MpiLlInput in;
  in.num_tokens = N;
  in.hidden = H;
  in.x =
      std::span<const bf16>(reinterpret_cast<const bf16*>(pr.gen->x(me).data()), static_cast<size_t>(N) * H);
  in.num_experts = p.num_experts;
  in.topk = K;
  in.topk_idx = p.topk_idx[me];
  in.max_tokens = c.max_tokens;
  in.opt = c.opt;
  static LlRefDispatch got;  // reused across cases, like the normal outputs
  Status st = MpiLlDispatch(*g_ws, in, &got);
  ASSERT_TRUE(st.ok()) << st.ToString();
  auto want = LlReferenceDispatch(p, me, c.opt);
  ASSERT_TRUE(want.ok()) << want.status().ToString();
  const LlRefDispatch& w = *want;
  // No ASSERT between collective calls: a rank that returned early would leave the others waiting in the
  // combine below. A shape mismatch only skips the row comparison.
  EXPECT_EQ(got.local_experts, w.local_experts);
  EXPECT_EQ(got.rows, w.rows);
  EXPECT_EQ(got.row_bytes, w.row_bytes);
  EXPECT_EQ(got.scale_row_bytes, w.scale_row_bytes);
  const bool same_shape = got.local_experts == w.local_experts && got.rows == w.rows &&
                          got.row_bytes == w.row_bytes && got.scale_row_bytes == w.scale_row_bytes &&
                          got.x.size() == w.x.size() && got.scales.size() == w.scales.size();
  EXPECT_EQ(got.count, w.count);
  EXPECT_EQ(got.src_info, w.src_info);
  EXPECT_EQ(got.layout_range, w.layout_range);
  // Valid rows only: rows past count are unspecified in the baseline (as in epx's LL output).
  int bad_x = 0, bad_s = 0;
  for (int e = 0; same_shape && e < w.local_experts; ++e)
    for (int i = 0; i < w.count[e]; ++i) {
      const size_t row = static_cast<size_t>(e) * w.rows + i;
      bad_x +=
          std::memcmp(got.x.data() + row * w.row_bytes, w.x.data() + row * w.row_bytes, w.row_bytes) != 0;
      if (w.scale_row_bytes)
        bad_s += std::memcmp(got.scales.data() + row * w.scale_row_bytes,
                             w.scales.data() + row * w.scale_row_bytes, w.scale_row_bytes) != 0;
    }
  EXPECT_EQ(bad_x, 0) << "rows of x differ";
  EXPECT_EQ(bad_s, 0) << "rows of scales differ";

  // Combine: y rows hashed from (rank, expert, row); rows past count hold NaNs, which must not be read.
  const int El = w.local_experts, rows = w.rows;
  std::vector<bf16> y(static_cast<size_t>(El) * rows * H, bf16{0x7fc0});
  for (int e = 0; e < El; ++e)
    for (int i = 0; i < w.count[e]; ++i) LlYRow(c, me, e, i, &y[(static_cast<size_t>(e) * rows + i) * H]);
  static std::vector<bf16> back;
  st = MpiLlCombine(*g_ws, {.y = y, .topk_weights = p.topk_weights[me]}, &back);
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::vector<bf16> yrow(H);
  auto wc = LlReferenceCombine(p, me, [&](int r, int e, int row) -> const bf16* {
    LlYRow(c, r, e, row, yrow.data());
    return yrow.data();
  });
  ASSERT_TRUE(wc.ok()) << wc.status().ToString();
  EXPECT_EQ(Diff(back, *wc), "") << "ll combine";
}

TEST(MpiLl, Bf16) {
  RunLl({});
}

TEST(MpiLl, Fp8) {
  // GeneratedProblem's weights in [0, 1) and plain rows: inexact products, so rounding the product before
  // the add (no FMA) matters.
  RunLl({.hidden = 2048,
         .topk = 8,
         .opt = {.use_fp8 = true, .fp8 = {}},
         .exact_weights = false,
         .order_sensitive = false,
         .seed = 12});
}

TEST(MpiLl, Fp8RoundScale) {
  RunLl({.opt = {.use_fp8 = true, .fp8 = {.round_scale = true}}, .seed = 13});
}

TEST(MpiLl, Fp8Ue8m0WideRows) {
  RunLl({.hidden = 1024,
         .topk = 8,
         .zero_rank = false,
         .opt = {.use_fp8 = true, .fp8 = {.round_scale = true, .ue8m0 = true}},
         .seed = 14});
}

TEST(MpiLl, ManyEmptyTokensSmallRows) {
  // Many tokens select no expert at all (p_none): their combine output is +0.
  RunLl({.hidden = 5, .max_tokens = 40, .p_none = 0.7, .opt = {.use_fp8 = true, .fp8 = {}}, .seed = 15});
}

TEST(MpiLl, InvalidInputOnOneRankFailsEverywhere) {
  const int R = Size(), me = Rank(), H = 8;
  std::vector<bf16> x(2 * H);
  std::vector<int64_t> idx = {0, 1, 1, 2};
  if (me == 0) idx = {1, 1, 1, 2};  // expert 1 twice in one token
  MpiLlInput in{.num_tokens = 2,
                .hidden = H,
                .x = x,
                .num_experts = 2 * R,
                .topk = 2,
                .topk_idx = idx,
                .max_tokens = 4};
  LlRefDispatch out;
  EXPECT_EQ(MpiLlDispatch(*g_ws, in, &out).code(), Code::kInvalidArgument);
  std::vector<bf16> back;
  EXPECT_EQ(MpiLlCombine(*g_ws, {}, &back).code(), Code::kFailedPrecondition);
  RunLl({});
}

// Normal and LL calls interleave on one workspace without disturbing each other's routing.
TEST(MpiBoth, InterleavedModes) {
  for (int i = 0; i < 2; ++i) {
    RunLl({.seed = 20u + i});
    RunNormal({.dtype = i ? TokenDtype::kFp8 : TokenDtype::kBf16, .seed = 30u + i});
  }
}

}  // namespace
}  // namespace epx

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rc = 0;
  {
    auto ws = epx::MpiWorkspace::Create(MPI_COMM_WORLD);
    if (!ws.ok()) {
      std::fprintf(stderr, "workspace: %s\n", ws.status().ToString().c_str());
      MPI_Abort(MPI_COMM_WORLD, 2);
    }
    epx::g_ws = ws->get();
    rc = RUN_ALL_TESTS();
    epx::g_ws = nullptr;
  }  // the workspace frees its communicator before MPI_Finalize
  // Every rank's verdict: the job fails if any rank failed (mpirun's exit code would say so too, but this
  // also prints which ranks).
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rc != 0) std::fprintf(stderr, "rank %d: FAILED\n", rank);
  MPI_Finalize();
  return worst;
}
