// tests/kernels/ll_mr_common.h: the buffers, input generator and checks shared by the multi-rank
// low-latency suites (ll_mr_test.cc: the data path; ll_mask_mr_test.cc: rank masking). One gtest binary,
// run as R rank processes by epx-run; every rank rebuilds all ranks' inputs from a seed and checks its
// own outputs against the serial reference (kernels/ll_reference.h).
#pragma once

#include <epx/normal.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/fp8.h"
#include "kernels/ll.h"
#include "kernels/problem_gen.h"
#include "kernels/reference.h"
#include "tests/transport/mr_env.h"

namespace epx::lltest {

using test::Ctx;

// ---- Buffers ---------------------------------------------------------------------------------------
// Small shapes (the suite runs 4 ranks on 2 cores) that still hit the corners: E = 9R experts (never a
// power of two), calls with H = 200 on an H = 256 buffer (a partial FP8 block; rows narrower than the
// combine row stride), several channels. LlHeapBytes at R = 4: Main 3.6 MiB, Single 2.4 MiB, Deep
// 0.6 MiB, Doomed < 0.2 MiB; with the normal buffer of the mode-switch test all fit EPX_HEAP_SIZE=64M
// with a wide margin (HeapFitsAndPathIsTheEnvironments prints the sum).

inline constexpr int kTmax = 32, kHidden = 256, kTopk = 8, kExpertsPerRank = 9;
inline constexpr bf16 kNan{0x7fc0};  // fills rows a kernel must not read

inline LowLatencyConfig MainConfig() {
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
inline LowLatencyConfig SingleConfig() {
  LowLatencyConfig c = MainConfig();
  c.depth = 2;
  return c;
}
// Deeper rotation for the two-phase tests: up to 3 calls in flight, 3 channels, E = 4R.
inline LowLatencyConfig DeepConfig() {
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
inline LowLatencyConfig DoomedConfig() {
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
inline LlBuffer* CreateOrDie(const LowLatencyConfig& cfg, int channels) {
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
inline int MainChannels() {
  return std::getenv("EPX_LL_CHANNELS") == nullptr ? 2 : 0;
}
inline LlBuffer& Main() {
  static LlBuffer* b = CreateOrDie(MainConfig(), MainChannels());
  return *b;
}
inline LlBuffer& Single() {
  static LlBuffer* b = CreateOrDie(SingleConfig(), 1);
  return *b;
}
inline LlBuffer& Deep() {
  static LlBuffer* b = CreateOrDie(DeepConfig(), 3);
  return *b;
}
inline LlBuffer& Doomed() {
  static LlBuffer* b = CreateOrDie(DoomedConfig(), 1);
  return *b;
}

// The normal-mode buffer of the mode-switch test (as in normal_mr_test.cc).
inline constexpr NormalLimits kNormalLimits{.max_hidden = 320, .max_topk = 8, .max_local_experts = 16};
inline NormalBuffer& Buf() {
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

inline uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline uint64_t Hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return Mix(Mix(Mix(seed ^ a) ^ b) ^ c);
}
inline bool Chance(uint64_t h, double p) {
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

inline uint16_t RankCode(int s) {
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

inline LlProblem MakeProblem(const LowLatencyConfig& cfg, const Gen& g, uint64_t seed) {
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

inline const char* ModeName(OutMode m) {
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

inline std::unique_ptr<Trial> MakeTrial(const LlBuffer& buf, const Gen& g, uint64_t seed, bool fp8,
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

inline Status PostDispatch(LlBuffer& buf, Trial& run, bool two_phase) {
  return buf.Dispatch(run.pr.Input(run.opt), &run.out, &run.h, two_phase ? &run.hook : nullptr);
}

// Source rank of row i of local expert e: the layout_range block that contains it (-1: none).
inline int SourceOf(const LlRefDispatch& d, int R, int e, int i) {
  if (d.layout_range.size() < static_cast<size_t>(e + 1) * R) return -1;
  for (int s = 0; s < R; ++s) {
    const int64_t r = d.layout_range[static_cast<size_t>(e) * R + s];
    if (i >= LlRangeBegin(r) && i < LlRangeBegin(r) + LlRangeCount(r)) return s;
  }
  return -1;
}

// count, src_info (all rows: -1 past count), layout_range exactly; payload and scales of rows [0, count)
// bitwise. Rows past count are unspecified (kernels/ll.h) and not compared.
inline void ExpectDispatchEq(const LlDispatchOutput& out, const LlRefDispatch& ref, const std::string& what) {
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
inline void ExpectHandleEq(const Trial& run) {
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

inline void CheckDispatch(const Trial& run) {
  if (run.refs.size() != static_cast<size_t>(Ctx().world_size())) return;  // reference failed: reported
  ExpectDispatchEq(run.out, run.refs[run.pr.me], "dispatch " + run.what);
  ExpectHandleEq(run);
}

// Expert outputs of `rank` seen through dispatch output d: row i of local expert e = HashRow(salt, global
// expert, source, token), a pure function of what the row answers, so any rank can rebuild any rank's
// outputs from the reference dispatch. Rows past count are NaN: a combine that read one would show it.
inline std::vector<bf16> HashOutputs(const LlRefDispatch& d, int rank, uint64_t salt) {
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
inline std::vector<bf16> DequantOutputs(const LlRefDispatch& d, bool ue8m0) {
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
inline Status PostCombineOf(LlBuffer& buf, Trial& run, OutMode mode, bool two_phase) {
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
inline Status PostCombine(LlBuffer& buf, Trial& run, OutMode mode, uint64_t salt, bool two_phase) {
  run.ys.clear();
  for (int r = 0; r < Ctx().world_size(); ++r)
    run.ys.push_back(HashOutputs(r == run.pr.me ? run.out : run.refs[r], r, salt));
  return PostCombineOf(buf, run, mode, two_phase);
}

inline std::span<const bf16> CombineResult(const Trial& run) {
  if (run.mode == OutMode::kCallerSpan) return run.caller;
  return run.back.x;
}

inline std::vector<bf16> ReferenceCombineOf(const Trial& run, const std::vector<std::vector<bf16>>& ys) {
  const int rows = run.pr.p.rows_per_expert(), H = run.pr.p.hidden;
  LlExpertOutput y = [&](int r, int e, int row) {
    return ys[r].data() + (static_cast<size_t>(e) * rows + row) * H;
  };
  auto ref = LlReferenceCombine(run.pr.p, run.pr.me, y);
  EXPECT_TRUE(ref.ok()) << ref.status().ToString();
  return ref.ok() ? std::move(ref.value()) : std::vector<bf16>{};
}

inline void CheckCombine(const Trial& run) {
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
inline void RoundTrip(LlBuffer& buf, Trial& run, OutMode mode, uint64_t salt) {
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
inline double CalcDiff(std::span<const bf16> x, std::span<const bf16> y) {
  double xy = 0, xx_yy = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
    const double a = Bf16ToFloat(x[i]), b = Bf16ToFloat(y[i]);
    xy += a * b;
    xx_yy += a * a + b * b;
  }
  return xx_yy == 0 ? 0.0 : 1.0 - 2.0 * xy / xx_yy;
}

}  // namespace epx::lltest
