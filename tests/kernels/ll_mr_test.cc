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
#include <epx/normal.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "kernels/fp8.h"
#include "kernels/ll.h"
#include "kernels/problem_gen.h"
#include "kernels/reference.h"
#include "tests/transport/mr_env.h"

namespace epx {
namespace {

using test::Ctx;

// ---- Buffers ---------------------------------------------------------------------------------------
// Small shapes (the suite runs 4 ranks on 2 cores) that still hit the corners: E = 9R experts (never a
// power of two), calls with H = 200 on an H = 256 buffer (a partial FP8 block; rows narrower than the
// combine row stride), several channels. LlHeapBytes at R = 4: Main 3.6 MiB, Single 2.4 MiB, Deep
// 0.6 MiB, Doomed < 0.2 MiB; with the normal buffer of the mode-switch test all fit EPX_HEAP_SIZE=64M
// with a wide margin (HeapFitsAndPathIsTheEnvironments prints the sum).

constexpr int kTmax = 32, kHidden = 256, kTopk = 8, kExpertsPerRank = 9;
constexpr bf16 kNan{0x7fc0};  // fills rows a kernel must not read

LowLatencyConfig MainConfig() {
  LowLatencyConfig c;
  c.max_tokens = kTmax;
  c.hidden = kHidden;
  c.topk = kTopk;
  c.num_experts = kExpertsPerRank * Ctx().world_size();
  c.num_ranks = Ctx().world_size();
  c.depth = 3;
  return c;
}
// DeepEP's double buffering (D = 2) with one channel: the caller's thread runs the data path.
LowLatencyConfig SingleConfig() {
  LowLatencyConfig c = MainConfig();
  c.depth = 2;
  return c;
}
// Deeper rotation for the two-phase tests: up to 3 calls in flight, 3 channels, E = 4R.
LowLatencyConfig DeepConfig() {
  LowLatencyConfig c;
  c.max_tokens = 16;
  c.hidden = 128;
  c.topk = 4;
  c.num_experts = 4 * Ctx().world_size();
  c.num_ranks = Ctx().world_size();
  c.depth = 4;
  return c;
}
// A buffer the shape-mismatch test breaks on purpose (a call that fails midway leaves it unusable).
LowLatencyConfig DoomedConfig() {
  LowLatencyConfig c;
  c.max_tokens = 8;
  c.hidden = 256;
  c.topk = 8;
  c.num_experts = 2 * Ctx().world_size();
  c.num_ranks = Ctx().world_size();
  c.depth = 2;
  return c;
}

// Buffers are created on first use (every rank reaches that in the same test) and deliberately never
// destroyed: the heap they take is never given back anyway, and a static destructor would run after
// main()'s Context (and the heap the RDMA domain registered) is gone.
LlBuffer* CreateOrDie(const LowLatencyConfig& cfg, int channels) {
  auto b = LlBuffer::Create(Ctx(), cfg, channels);
  if (!b.ok()) {
    std::fprintf(stderr, "rank %d: LlBuffer::Create failed: %s\n", Ctx().rank(),
                 b.status().ToString().c_str());
    std::abort();
  }
  return b->release();
}
// Two channels unless the environment says otherwise (auto would give 1 on a 2-core machine under
// epx-run, and the suite must exercise several).
int MainChannels() {
  return std::getenv("EPX_LL_CHANNELS") == nullptr ? 2 : 0;
}
LlBuffer& Main() {
  static LlBuffer* b = CreateOrDie(MainConfig(), MainChannels());
  return *b;
}
LlBuffer& Single() {
  static LlBuffer* b = CreateOrDie(SingleConfig(), 1);
  return *b;
}
LlBuffer& Deep() {
  static LlBuffer* b = CreateOrDie(DeepConfig(), 3);
  return *b;
}
LlBuffer& Doomed() {
  static LlBuffer* b = CreateOrDie(DoomedConfig(), 1);
  return *b;
}

// The normal-mode buffer of the mode-switch test (as in normal_mr_test.cc).
constexpr NormalLimits kNormalLimits{.max_hidden = 320, .max_topk = 8, .max_local_experts = 16};
NormalBuffer& Buf() {
  static NormalBuffer* buf = [] {
    auto cfg = NormalConfig::FromEnv();
    EXPECT_TRUE(cfg.ok());
    if (std::getenv("EPX_NORMAL_CHANNELS") == nullptr) cfg->num_channels = 2;
    auto b = NormalBuffer::Create(Ctx(), *cfg, kNormalLimits);
    if (!b.ok()) {
      std::fprintf(stderr, "rank %d: NormalBuffer::Create failed: %s\n", Ctx().rank(),
                   b.status().ToString().c_str());
      std::abort();
    }
    return b->release();
  }();
  return *buf;
}

// ---- Inputs: a pure function of (seed, rank, token, column) --------------------------------------------

uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
uint64_t Hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return Mix(Mix(Mix(seed ^ a) ^ b) ^ c);
}
bool Chance(uint64_t h, double p) {
  return static_cast<double>(h % 1000000) < p * 1e6;
}

struct Gen {
  int hidden = 200;
  int topk = 4;
  double p_none = 0.15;     // a top-k slot is -1
  double p_empty = 0.05;    // a token selects no expert at all (its combine result is +0)
  bool zero_ranks = false;  // ranks r % 3 == 1 have no tokens
  bool no_tokens = false;   // no rank has tokens: every count is 0, every combine output empty
  bool full = false;        // every rank has exactly T_max tokens
  int hot_expert = -1;      // >= 0: slot 0 of every token is this expert (with `full`, its rows fill up)
  bool all_ranks = false;   // topk = R, slot k selects an expert of rank k (every rank hears every rank)
  bool rank_coded = false;  // BF16 row of (s, t): every column RankCode(s), except the last = bit pattern t
};

uint16_t RankCode(int s) {
  return static_cast<uint16_t>(0x4000 + 0x10 * s);  // 2.0, 2.25, ...: distinct, finite
}

// Every rank's tokens (rows materialised for all ranks: a few KiB each) as the reference sees them.
struct LlProblem {
  LlRefProblem p;
  std::shared_ptr<std::vector<std::vector<bf16>>> x;  // [R][N_r * H]; shared with p.x_row
  int me = 0;
  LlDispatchInput Input(const LlDispatchOptions& opt) const {
    LlDispatchInput in;
    in.num_tokens = p.num_tokens[me];
    in.hidden = p.hidden;
    in.x = (*x)[me];
    in.topk = p.topk;
    in.topk_idx = p.topk_idx[me];
    in.use_fp8 = opt.use_fp8;
    in.fp8 = opt.fp8;
    return in;
  }
};

LlProblem MakeProblem(const LowLatencyConfig& cfg, const Gen& g, uint64_t seed) {
  const int R = Ctx().world_size(), E = cfg.num_experts, El = E / R, H = g.hidden;
  const int K = g.all_ranks ? R : g.topk;
  LlProblem pr;
  pr.me = Ctx().rank();
  LlRefProblem& p = pr.p;
  p.num_ranks = R;
  p.num_experts = E;
  p.hidden = H;
  p.topk = K;
  p.max_tokens = cfg.max_tokens;
  p.num_tokens.resize(R);
  p.topk_idx.resize(R);
  p.topk_weights.resize(R);
  pr.x = std::make_shared<std::vector<std::vector<bf16>>>(R);
  std::vector<int> perm(E);
  for (int s = 0; s < R; ++s) {
    // N_s in [1, T_max] (T_max with `full`); 0 for every third rank with `zero_ranks`, for all with
    // `no_tokens`.
    const int N = g.no_tokens || (g.zero_ranks && s % 3 == 1) ? 0
                  : g.full                                    ? cfg.max_tokens
                           : 1 + static_cast<int>(Hash(seed, 1, s, 0) % cfg.max_tokens);
    p.num_tokens[s] = N;
    auto& idx = p.topk_idx[s];
    auto& w = p.topk_weights[s];
    idx.assign(static_cast<size_t>(N) * K, -1);
    w.resize(static_cast<size_t>(N) * K);
    for (int t = 0; t < N; ++t) {
      const size_t row = static_cast<size_t>(t) * K;
      // Weights of every slot, -1 slots included: combine must skip those (their weight is not 0).
      for (int k = 0; k < K; ++k)
        w[row + k] = static_cast<float>(Hash(seed, 2, s, row + k) % 100000) / 100000.0f;
      if (g.all_ranks) {
        for (int k = 0; k < K; ++k) idx[row + k] = k * El + static_cast<int>(Hash(seed, 3, s, t) % El);
        continue;
      }
      if (g.hot_expert < 0 && Chance(Hash(seed, 4, s, t), g.p_empty)) continue;  // no expert at all
      // K distinct experts: a partial Fisher-Yates shuffle driven by the hash.
      for (int e = 0; e < E; ++e) perm[e] = e;
      int first = 0;
      if (g.hot_expert >= 0) {
        std::swap(perm[0], perm[g.hot_expert]);
        first = 1;
      }
      for (int k = first; k < K; ++k)
        std::swap(perm[k], perm[k + static_cast<int>(Hash(seed, 5, s, row + k) % (E - k))]);
      for (int k = 0; k < K; ++k)
        idx[row + k] = k >= first && Chance(Hash(seed, 6, s, row + k), g.p_none) ? -1 : perm[k];
    }
    auto& xs = (*pr.x)[s];
    xs.resize(static_cast<size_t>(N) * H);
    for (int t = 0; t < N; ++t) {
      bf16* out = &xs[static_cast<size_t>(t) * H];
      if (g.rank_coded) {
        std::fill(out, out + H, bf16{RankCode(s)});
        out[H - 1] = bf16{static_cast<uint16_t>(t)};
      } else {
        GeneratedProblem::HashRow(seed, 7, s, t, H, out);
      }
    }
  }
  p.x_row = [x = pr.x, H](int r, int t) -> const bf16* {
    return (*x)[r].data() + static_cast<size_t>(t) * H;
  };
  return pr;
}

// ---- One dispatch (and its combine), with what is needed to check both afterwards ----------------------

enum class OutMode { kVector, kCallerSpan, kZeroCopy };

const char* ModeName(OutMode m) {
  return m == OutMode::kVector ? "out->x" : m == OutMode::kCallerSpan ? "out=" : "zero-copy";
}

// Kept behind a unique_ptr: a posted call holds pointers to `out`, `h` and `back`.
struct Trial {
  LlProblem pr;
  LlDispatchOptions opt;
  std::vector<LlRefDispatch> refs;  // [R] what every rank must receive with the call's options
  std::string what;
  LlDispatchOutput out;
  LlHandle h;
  LlHook hook;
  // Combine.
  OutMode mode = OutMode::kVector;
  std::vector<std::vector<bf16>> ys;  // [R] every rank's expert outputs [E_local, R*T_max, H]
  LlCombineOutput back;
  std::vector<bf16> caller;  // the `out=` target
  LlHook chook;
};

std::unique_ptr<Trial> MakeTrial(const LlBuffer& buf, const Gen& g, uint64_t seed, bool fp8,
                                 Fp8Options o = {}) {
  auto run = std::make_unique<Trial>();
  run->pr = MakeProblem(buf.config(), g, seed);
  run->opt.use_fp8 = fp8;
  run->opt.fp8 = fp8 ? o : Fp8Options{};
  run->what = fmt::format("seed {} H {} K {} {}{}{}{}", seed, g.hidden, run->pr.p.topk, fp8 ? "FP8" : "BF16",
                          o.round_scale && fp8 ? " round_scale" : "", o.ue8m0 && fp8 ? " ue8m0" : "",
                          g.zero_ranks ? " zero-ranks" : "");
  for (int r = 0; r < Ctx().world_size(); ++r) {
    auto ref = LlReferenceDispatch(run->pr.p, r, run->opt);
    EXPECT_TRUE(ref.ok()) << ref.status().ToString();  // a bug of this file's generator
    run->refs.push_back(ref.ok() ? std::move(ref.value()) : LlRefDispatch{});
  }
  return run;
}

Status PostDispatch(LlBuffer& buf, Trial& run, bool two_phase) {
  return buf.Dispatch(run.pr.Input(run.opt), &run.out, &run.h, two_phase ? &run.hook : nullptr);
}

// Source rank of row i of local expert e: the layout_range block that contains it (-1: none).
int SourceOf(const LlRefDispatch& d, int R, int e, int i) {
  if (d.layout_range.size() < static_cast<size_t>(e + 1) * R) return -1;
  for (int s = 0; s < R; ++s) {
    const int64_t r = d.layout_range[static_cast<size_t>(e) * R + s];
    if (i >= LlRangeBegin(r) && i < LlRangeBegin(r) + LlRangeCount(r)) return s;
  }
  return -1;
}

// count, src_info (all rows: -1 past count), layout_range exactly; payload and scales of rows [0, count)
// bitwise. Rows past count are unspecified (kernels/ll.h) and not compared.
void ExpectDispatchEq(const LlDispatchOutput& out, const LlRefDispatch& ref, const std::string& what) {
  const int me = Ctx().rank();
  EXPECT_EQ(out.local_experts, ref.local_experts) << what << " rank " << me;
  EXPECT_EQ(out.rows, ref.rows) << what << " rank " << me;
  EXPECT_EQ(out.hidden, ref.hidden) << what << " rank " << me;
  EXPECT_EQ(out.row_bytes, ref.row_bytes) << what << " rank " << me;
  EXPECT_EQ(out.scale_row_bytes, ref.scale_row_bytes) << what << " rank " << me;
  EXPECT_EQ(out.count, ref.count) << what << ": count differs on rank " << me;
  EXPECT_EQ(out.layout_range, ref.layout_range) << what << ": layout_range differs on rank " << me;
  EXPECT_EQ(out.src_info, ref.src_info) << what << ": src_info differs on rank " << me;
  const size_t total = static_cast<size_t>(ref.local_experts) * ref.rows;
  if (out.count.size() != ref.count.size() || out.x.size() < total * ref.row_bytes ||
      out.scales.size() < total * ref.scale_row_bytes) {
    ADD_FAILURE() << what << ": output sizes on rank " << me << ": x " << out.x.size() << " scales "
                  << out.scales.size() << " (want >= " << total * ref.row_bytes << ", "
                  << total * ref.scale_row_bytes << ")";
    return;
  }
  int bad_x = 0, bad_s = 0;
  std::string first;
  for (int e = 0; e < ref.local_experts; ++e)
    for (int i = 0; i < std::min(out.count[e], ref.count[e]); ++i) {
      const size_t row = static_cast<size_t>(e) * ref.rows + i;
      const bool x_ok = std::memcmp(out.x.data() + row * ref.row_bytes, ref.x.data() + row * ref.row_bytes,
                                    ref.row_bytes) == 0;
      const bool s_ok = ref.scale_row_bytes == 0 ||  // BF16: no scales (and null data(): no memcmp)
                        std::memcmp(out.scales.data() + row * ref.scale_row_bytes,
                                    ref.scales.data() + row * ref.scale_row_bytes, ref.scale_row_bytes) == 0;
      if ((!x_ok || !s_ok) && first.empty()) first = fmt::format("local expert {} row {}", e, i);
      bad_x += !x_ok;
      bad_s += !s_ok;
    }
  EXPECT_EQ(bad_x, 0) << what << ": payload differs on rank " << me << " in " << bad_x << " rows, first "
                      << first;
  EXPECT_EQ(bad_s, 0) << what << ": scales differ on rank " << me << " in " << bad_s << " rows, first "
                      << first;
}

// The handle: this rank's routing, the receive layout, and per row the top-k slot of its expert on the
// source (where combine sends the row back to).
void ExpectHandleEq(const Trial& run) {
  const LlHandle& h = run.h;
  const LlRefProblem& p = run.pr.p;
  const LlRefDispatch& ref = run.refs[run.pr.me];
  const int me = run.pr.me, R = p.num_ranks, El = p.local_experts();
  EXPECT_EQ(h.num_tokens, p.num_tokens[me]) << run.what;
  EXPECT_EQ(h.hidden, p.hidden) << run.what;
  EXPECT_EQ(h.topk, p.topk) << run.what;
  EXPECT_EQ(h.topk_idx, p.topk_idx[me]) << run.what << ": handle topk_idx on rank " << me;
  EXPECT_EQ(h.count, ref.count) << run.what << ": handle count on rank " << me;
  EXPECT_EQ(h.layout_range, ref.layout_range) << run.what << ": handle layout_range on rank " << me;
  EXPECT_EQ(h.src_info, ref.src_info) << run.what << ": handle src_info on rank " << me;
  if (h.src_slot.size() != static_cast<size_t>(El) * ref.rows) {
    ADD_FAILURE() << run.what << ": handle src_slot has " << h.src_slot.size() << " entries on rank " << me;
    return;
  }
  int bad = 0;
  for (int e = 0; e < El; ++e)
    for (int i = 0; i < ref.count[e]; ++i) {
      const size_t row = static_cast<size_t>(e) * ref.rows + i;
      const int s = SourceOf(ref, R, e, i), t = ref.src_info[row];
      const auto* idx = &p.topk_idx[s][static_cast<size_t>(t) * p.topk];
      const int k = static_cast<int>(std::find(idx, idx + p.topk, static_cast<int64_t>(me) * El + e) - idx);
      bad += h.src_slot[row] != k;
    }
  EXPECT_EQ(bad, 0) << run.what << ": handle src_slot wrong in " << bad << " rows on rank " << me;
}

void CheckDispatch(const Trial& run) {
  if (run.refs.size() != static_cast<size_t>(Ctx().world_size())) return;  // reference failed: reported
  ExpectDispatchEq(run.out, run.refs[run.pr.me], "dispatch " + run.what);
  ExpectHandleEq(run);
}

// Expert outputs of `rank` seen through dispatch output d: row i of local expert e = HashRow(salt, global
// expert, source, token), a pure function of what the row answers, so any rank can rebuild any rank's
// outputs from the reference dispatch. Rows past count are NaN: a combine that read one would show it.
std::vector<bf16> HashOutputs(const LlRefDispatch& d, int rank, uint64_t salt) {
  const int R = Ctx().world_size(), El = d.local_experts, H = d.hidden;
  std::vector<bf16> y(static_cast<size_t>(El) * d.rows * H, kNan);
  if (d.count.size() != static_cast<size_t>(El) || d.src_info.size() != static_cast<size_t>(El) * d.rows)
    return y;
  for (int e = 0; e < El; ++e)
    for (int i = 0; i < std::min(d.count[e], d.rows); ++i) {
      const size_t row = static_cast<size_t>(e) * d.rows + i;
      const int s = SourceOf(d, R, e, i), t = d.src_info[row];
      if (s < 0 || t < 0) continue;  // a broken dispatch, reported by its check
      GeneratedProblem::HashRow(salt, rank * El + e, s, t, H, &y[row * H]);
    }
  return y;
}

// What an expert consuming FP8 sees: the received rows dequantized (x = q * scale), rounded to BF16.
std::vector<bf16> DequantOutputs(const LlRefDispatch& d, bool ue8m0) {
  const int El = d.local_experts, H = d.hidden;
  std::vector<bf16> y(static_cast<size_t>(El) * d.rows * H, kNan);
  std::vector<float> f(H);
  if (d.count.size() != static_cast<size_t>(El) ||
      d.x.size() < static_cast<size_t>(El) * d.rows * d.row_bytes ||
      d.scales.size() < static_cast<size_t>(El) * d.rows * d.scale_row_bytes)
    return y;
  for (int e = 0; e < El; ++e)
    for (int i = 0; i < std::min(d.count[e], d.rows); ++i) {
      const size_t row = static_cast<size_t>(e) * d.rows + i;
      CastRowFromFp8(d.row(e, i), d.scales.data() + row * d.scale_row_bytes, H, ue8m0, f.data());
      for (int j = 0; j < H; ++j) y[row * H + j] = FloatToBf16(f[j]);
    }
  return y;
}

// Sends run.ys[me] back (after the dispatch was received) in the given output mode.
Status PostCombineOf(LlBuffer& buf, Trial& run, OutMode mode, bool two_phase) {
  const LlRefProblem& p = run.pr.p;
  const int me = run.pr.me, H = p.hidden;
  run.mode = mode;
  run.back = LlCombineOutput{};
  LlCombineInput in;
  in.topk_weights = p.topk_weights[me];
  const std::vector<bf16>& y = run.ys[me];
  if (mode == OutMode::kZeroCopy) {
    auto rows = buf.NextCombineBuffer();
    if (!rows.ok()) return rows.status();
    // Row i of local expert e at element (e * R*T_max + i) * stride; the stride fits the buffer's hidden,
    // wider than this call's H.
    const size_t stride = buf.combine_row_stride(), n = y.size() / H;
    EXPECT_GE(stride, static_cast<size_t>(buf.config().hidden));
    EXPECT_EQ(rows->size(), n * stride);
    if (stride < static_cast<size_t>(H) || rows->size() < n * stride)
      return Status(Code::kInternal, "test: zero-copy buffer too small");
    for (size_t r = 0; r < n; ++r) std::copy_n(&y[r * H], H, rows->data() + r * stride);
    in.zero_copy = true;
  } else {
    in.y = y;
  }
  if (mode == OutMode::kCallerSpan) {
    run.caller.assign(static_cast<size_t>(p.num_tokens[me]) * H, kNan);
    run.back.out = run.caller;
  }
  return buf.Combine(run.h, in, &run.back, two_phase ? &run.chook : nullptr);
}

// Combine of hash expert outputs: this rank's from its own (kernel) dispatch output, the others' from
// their reference dispatch (equal when every rank's dispatch check passes).
Status PostCombine(LlBuffer& buf, Trial& run, OutMode mode, uint64_t salt, bool two_phase) {
  run.ys.clear();
  for (int r = 0; r < Ctx().world_size(); ++r)
    run.ys.push_back(HashOutputs(r == run.pr.me ? run.out : run.refs[r], r, salt));
  return PostCombineOf(buf, run, mode, two_phase);
}

std::span<const bf16> CombineResult(const Trial& run) {
  if (run.mode == OutMode::kCallerSpan) return run.caller;
  return run.back.x;
}

std::vector<bf16> ReferenceCombineOf(const Trial& run, const std::vector<std::vector<bf16>>& ys) {
  const int rows = run.pr.p.rows_per_expert(), H = run.pr.p.hidden;
  LlExpertOutput y = [&](int r, int e, int row) {
    return ys[r].data() + (static_cast<size_t>(e) * rows + row) * H;
  };
  auto ref = LlReferenceCombine(run.pr.p, run.pr.me, y);
  EXPECT_TRUE(ref.ok()) << ref.status().ToString();
  return ref.ok() ? std::move(ref.value()) : std::vector<bf16>{};
}

void CheckCombine(const Trial& run) {
  const int me = run.pr.me, H = run.pr.p.hidden;
  const std::vector<bf16> ref = ReferenceCombineOf(run, run.ys);
  const std::span<const bf16> got = CombineResult(run);
  const std::string what = fmt::format("combine ({}) of {}", ModeName(run.mode), run.what);
  ASSERT_EQ(got.size(), ref.size()) << what << " rank " << me;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    if (got[i].bits != ref[i].bits && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": differs on rank " << me << " in " << bad << " elements, first token "
                     << first / H << " column " << first % H << ": " << got[first].bits << " vs "
                     << ref[first].bits;
}

// Dispatch then combine, both synchronous and checked.
void RoundTrip(LlBuffer& buf, Trial& run, OutMode mode, uint64_t salt) {
  ASSERT_OK(PostDispatch(buf, run, false));
  CheckDispatch(run);
  ASSERT_OK(PostCombine(buf, run, mode, salt, false));
  CheckCombine(run);
}

// Received (token, expert) pairs and call counts expected in a buffer's cumulative statistics.
struct StatsCheck {
  explicit StatsCheck(LlBuffer& b)
      : buf(b), before(b.stats()), want(before.recv_tokens_per_expert.size(), 0) {}
  void Dispatched(const Trial& run) {
    if (run.refs.empty()) return;
    const auto& c = run.refs[run.pr.me].count;
    for (size_t e = 0; e < want.size() && e < c.size(); ++e) want[e] += c[e];
    ++dispatches;
  }
  void Combined() { ++combines; }
  void Check(const std::string& what) const {
    const LlStats after = buf.stats();
    const int me = Ctx().rank();
    ASSERT_EQ(after.recv_tokens_per_expert.size(), static_cast<size_t>(buf.config().local_experts()));
    for (size_t e = 0; e < want.size(); ++e)
      EXPECT_EQ(after.recv_tokens_per_expert[e] - before.recv_tokens_per_expert[e], want[e])
          << what << ": recv_tokens_per_expert[" << e << "] on rank " << me;
    EXPECT_EQ(after.wait_ns_per_source.size(), static_cast<size_t>(Ctx().world_size())) << what;
    EXPECT_EQ(after.dispatches - before.dispatches, dispatches) << what << " rank " << me;
    EXPECT_EQ(after.combines - before.combines, combines) << what << " rank " << me;
  }
  LlBuffer& buf;
  LlStats before;
  std::vector<uint64_t> want;
  uint64_t dispatches = 0, combines = 0;
};

// DeepEP's similarity measure (tests/utils.py calc_diff): 1 - 2<x,y> / (|x|^2 + |y|^2) in double; 0 for
// equal tensors, about half the relative squared error otherwise. DeepEP first shifts both tensors by +1,
// which only loosens the measure for data centred on 0 like ours; this is the unshifted, stricter form.
double CalcDiff(std::span<const bf16> x, std::span<const bf16> y) {
  double xy = 0, xx_yy = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    const double a = Bf16ToFloat(x[i]), b = Bf16ToFloat(y[i]);
    xy += a * b;
    xx_yy += a * a + b * b;
  }
  return xx_yy == 0 ? 0.0 : 1.0 - 2.0 * xy / xx_yy;
}

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
}  // namespace epx
