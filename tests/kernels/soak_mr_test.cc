// Soak test (issue 7): thousands of randomly shaped normal and low-latency dispatch/combine calls, mixed on
// one Context, every output compared bitwise with the serial references (kernels/reference.h,
// kernels/ll_reference.h). One gtest binary run as R rank processes by epx-run, like normal_mr_test.
//
// Iteration i draws its whole shape from (EPX_SOAK_SEED, i) alone, identically on every rank, so all ranks
// make the same sequence of collective calls without talking, and a failing iteration can be replayed by
// itself: EPX_SOAK_FIRST=i EPX_SOAK_ITERS=1 (with the same seed and epx-run world; the failure report prints
// the command). Buffers and output objects live across iterations (memory reuse, LL buffer rotation,
// counters that are never reset) and a replay starts them fresh: if a replay passes, the state of the earlier
// iterations matters, and a longer replay (a smaller EPX_SOAK_FIRST) is the next step.
//
// Each iteration's outputs are hashed (FNV-1a) twice, the kernels' and the reference's; the two must agree.
// The running hash over all iterations is a function of (seed, first, iterations, R, nodes) only, so it is
// printed for a nightly run to be compared with the previous one.
//
// Environment: EPX_SOAK_ITERS (default kDefaultIters), EPX_SOAK_SEED (default kDefaultSeed), EPX_SOAK_FIRST
// (default 0). A mismatch is reported with iteration, seed, shape and rank and the run stops at the next
// progress point (all ranks agree there, so none is left waiting); a failed call (error status) cannot be
// survived by the others (the buffer is unusable, peers are mid-call), so the rank reports and exits and
// epx-run stops the rest.
#include <epx/low_latency.h>
#include <epx/normal.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/fp8.h"
#include "kernels/problem_gen.h"
#include "tests/kernels/mr_check.h"
#include "tests/kernels/soak_shapes.h"
#include "tests/transport/mr_env.h"

namespace epx {
namespace {

using test::Ctx;
using test::Fnv1a;
using Clock = std::chrono::steady_clock;

using namespace soak;  // NOLINT: the soak's own shapes (tests/kernels/soak_shapes.h)

// ---- The soak ---------------------------------------------------------------------------------------------

// One LL call's inputs, references and output objects. Kept in place while a two-phase call is pending
// (the library holds pointers to out, h and back).
struct LlTrial {
  std::unique_ptr<GeneratedProblem> g;
  LlRefProblem p;
  LlDispatchOptions opt;
  std::vector<LlRefDispatch> refs;  // [R]
  LlDispatchOutput* out = nullptr;  // persistent objects of the soak, reused across iterations
  LlHandle* h = nullptr;
  LlCombineOutput* back = nullptr;
  LlHook hook, chook;
  OutMode mode = OutMode::kVector;
  std::vector<std::vector<bf16>> ys;  // [R] expert outputs
  std::vector<bf16> caller;           // the out= target
};

class Soak {
 public:
  explicit Soak(const Params& prm) : prm_(prm), me_(Ctx().rank()), R_(Ctx().world_size()) {}

  // Collective: every rank creates the same buffers in the same order.
  void CreateBuffers() {
    const Placement& pl = Ctx().placement();
    size_t bytes = 0;
    for (const NormalConfig& c : {MainNormalConfig(), TinyNormalConfig()}) {
      auto b = NormalHeapBytes(c, kNormalLimits, pl.world_size, pl.local_size);
      ASSERT_TRUE(b.ok()) << b.status().ToString();
      bytes += *b;
    }
    for (const LlSetup& s : kLlSetups) {
      auto b = LlHeapBytes(LlConfigOf(s));
      ASSERT_TRUE(b.ok()) << b.status().ToString();
      bytes += *b;
    }
    if (me_ == 0)
      std::printf("soak: buffers take %.1f MiB of a %.0f MiB heap\n", bytes / 1048576.0,
                  Ctx().heap().size() / 1048576.0);
    ASSERT_LT(bytes, Ctx().heap().size()) << "raise EPX_HEAP_SIZE";
    auto n = NormalBuffer::Create(Ctx(), MainNormalConfig(), kNormalLimits);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    normal_ = std::move(*n);
    n = NormalBuffer::Create(Ctx(), TinyNormalConfig(), kNormalLimits);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    tiny_ = std::move(*n);
    for (const LlSetup& s : kLlSetups) {
      auto b = LlBuffer::Create(Ctx(), LlConfigOf(s), s.channels);
      ASSERT_TRUE(b.ok()) << b.status().ToString();
      ll_.push_back(std::move(*b));
    }
  }

  void Run();

 private:
  // Context of every message: replayable from it alone.
  std::string Where(int64_t iter) const {
    const Placement& pl = Ctx().placement();
    return fmt::format("soak iteration {} (seed {:#x}) on rank {} of {} ({} node{}): {}", iter, prm_.seed,
                       me_, R_, pl.num_nodes, pl.num_nodes > 1 ? "s" : "", shape_);
  }
  // An error status: the buffer is unusable and peers are mid-call, so there is no going on.
  void Must(const Status& st, const char* call) {
    if (st.ok()) return;
    std::fprintf(stderr, "%s\n  %s failed: %s\n  replay: %s\n", Where(iter_).c_str(), call,
                 st.ToString().c_str(), prm_.Replay(iter_).c_str());
    std::fflush(nullptr);
    std::_Exit(1);
  }
  template <typename T>
  T Must(StatusOr<T> v, const char* what) {
    Must(v.status(), what);
    return std::move(*v);
  }
  // Times a library call (the rest of an iteration is the reference and the checks).
  template <typename F>
  void Call(const char* what, F&& f) {
    const auto t0 = Clock::now();
    Must(f(), what);
    lib_ms_ += std::chrono::duration<float, std::milli>(Clock::now() - t0).count();
  }
  void Check(const char* what, std::string diff) {
    if (!diff.empty()) diffs_ += fmt::format("\n  {}: {}", what, diff);
  }

  void NormalIteration(const NormalShape& s);
  void LlIteration(const LlShape& s);
  void LlPrepare(const LlCall& c, int max_tokens, int slot, LlTrial& t);
  void LlDispatch(LlBuffer& buf, LlTrial& t, bool two_phase) {
    const std::vector<uint8_t>& x = t.g->x(me_);
    const LlDispatchInput in{.num_tokens = t.p.num_tokens[me_],
                             .hidden = t.p.hidden,
                             .x = {reinterpret_cast<const bf16*>(x.data()), x.size() / sizeof(bf16)},
                             .topk = t.p.topk,
                             .topk_idx = t.p.topk_idx[me_],
                             .use_fp8 = t.opt.use_fp8,
                             .fp8 = t.opt.fp8};
    Call("low-latency dispatch", [&] { return buf.Dispatch(in, t.out, t.h, two_phase ? &t.hook : nullptr); });
  }
  void LlReceive(LlBuffer& buf, LlHook* hook) {
    Call("low-latency receive", [&] { return buf.Receive(hook); });
  }
  void LlCheckDispatch(const LlTrial& t, const char* which);
  void LlCombine(LlBuffer& buf, LlTrial& t, OutMode mode, bool two_phase);
  void LlCheckCombine(const LlTrial& t, const char* which);

  const Params prm_;
  const int me_, R_;
  std::unique_ptr<NormalBuffer> normal_, tiny_;
  std::vector<std::unique_ptr<LlBuffer>> ll_;
  // Output objects reused by every iteration, as a caller's would be.
  DispatchOutput nout_, nout2_;
  NormalHandle nh_;
  CombineOutput nback_;
  LlDispatchOutput lout_[2];
  LlHandle lh_[2];
  LlCombineOutput lback_[2];
  // The current iteration.
  int64_t iter_ = 0;
  std::string shape_, diffs_;
  Fnv1a got_, want_;  // kernels' outputs, references
  float lib_ms_ = 0;  // inside library calls, this iteration
};

void Soak::NormalIteration(const NormalShape& s) {
  NormalBuffer& buf = s.tiny ? *tiny_ : *normal_;
  // Every rank's rows materialised: the references read each row several times, and an FP8 row that is not
  // materialised is cast again on every read.
  const GeneratedProblem g(s.spec, -1);
  const RefProblem& p = g.problem();
  const int H = p.hidden, K = p.topk, N = p.num_tokens[me_];
  const RefRouting route = Must(ReferenceRouting(p), "ReferenceRouting (a generator bug)");
  int total = 0;
  for (int n : p.num_tokens) total += n;
  const int worst = s.worst ? total + s.worst_extra : 0;
  DispatchInput in = test::NormalInputOf(g, me_);
  in.expert_alignment = s.alignment;
  in.num_worst_tokens = worst;
  Call("normal dispatch", [&] { return buf.Dispatch(in, &nout_, &nh_); });
  const RefDispatch ref = ReferenceDispatch(p, route, me_, s.alignment);
  const int rows = worst > 0 ? worst : ref.num_rows;
  const DispatchOutput want = test::ExpectedNormalDispatch(ref, H, p.dtype, K, rows, true);
  Check("normal dispatch", test::DiffNormalDispatch(nout_, want));
  test::HashNormalDispatch(got_, nout_);
  test::HashNormalDispatch(want_, want);

  // Expert outputs come from the rows of the last dispatch: the cached one (new x when BF16) if any.
  std::unique_ptr<GeneratedProblem> g2;
  const DispatchOutput* rows_from = &nout_;
  if (s.cached) {
    ProblemSpec spec2 = s.spec;
    spec2.rank_coded = spec2.dtype == TokenDtype::kBf16;  // same routing (same seed), other rows
    g2 = std::make_unique<GeneratedProblem>(spec2, -1);
    DispatchInput in2 = test::NormalInputOf(*g2, me_);
    in2.topk_idx = {};
    in2.topk_weights = {};
    in2.num_worst_tokens = worst;
    in2.expert_alignment = s.alignment;
    Call("cached dispatch", [&] { return buf.Dispatch(nh_, in2, &nout2_); });
    const DispatchOutput want2 = test::ExpectedNormalDispatch(
        ReferenceDispatch(g2->problem(), route, me_, s.alignment), H, p.dtype, K, rows, false);
    Check("cached dispatch", test::DiffNormalDispatch(nout2_, want2));
    test::HashNormalDispatch(got_, nout2_);
    test::HashNormalDispatch(want_, want2);
    rows_from = &nout2_;
  }
  const RefProblem& py = g2 ? g2->problem() : p;
  std::vector<RefDispatch> refs;  // every rank's received rows: their expert outputs, for the reference
  std::vector<std::vector<bf16>> ys;
  for (int r = 0; r < R_; ++r) {
    refs.push_back(ReferenceDispatch(py, route, r));
    ys.push_back(
        r == me_ ? NormalExpertOutputs(rows_from->x, rows_from->x_scales, rows_from->num_rows, H, p.dtype, r)
                 : NormalExpertOutputs(refs[r].x, refs[r].x_scales, refs[r].num_rows, H, p.dtype, r));
  }
  std::vector<bf16> b0(static_cast<size_t>(N) * H), b1(b0.size());
  const uint64_t salt = p.num_experts * 7919 + s.spec.seed;
  for (int t = 0; t < N; ++t) {
    GeneratedProblem::HashRow(salt, me_, t, 0, H, &b0[static_cast<size_t>(t) * H]);
    GeneratedProblem::HashRow(salt, me_, t, 1, H, &b1[static_cast<size_t>(t) * H]);
  }
  CombineInput cin;
  cin.hidden = H;
  cin.y = ys[me_];
  if (s.weights) {
    cin.topk = K;
    cin.topk_weights = nout_.topk_weights;
  }
  if (s.bias0) cin.bias0 = b0;
  if (s.bias1) cin.bias1 = b1;
  Call("normal combine", [&] { return buf.Combine(nh_, cin, &nback_); });
  RefCombineInputs rin;
  rin.y_row = [&](int r, int i) { return &ys[r][static_cast<size_t>(i) * H]; };
  if (s.weights) rin.w_row = [&](int r, int i) { return &refs[r].topk_weights[static_cast<size_t>(i) * K]; };
  if (s.bias0) rin.bias0 = b0.data();
  if (s.bias1) rin.bias1 = b1.data();
  const RefCombine cref = ReferenceCombine(p, route, me_, rin);
  Check("normal combine x", test::DiffBits("x", nback_.x, cref.x, H));
  Check("normal combine weights", test::DiffBits("topk_weights", nback_.topk_weights, cref.topk_weights, K));
  got_.Add(nback_.x);
  got_.Add(nback_.topk_weights);
  want_.Add(cref.x);
  want_.Add(cref.topk_weights);
}

// Inputs and every rank's reference dispatch of one LL call; `slot` picks the persistent output objects.
void Soak::LlPrepare(const LlCall& c, int max_tokens, int slot, LlTrial& t) {
  t.g = std::make_unique<GeneratedProblem>(c.spec, -1);  // every rank's rows: the reference reads them all
  t.p = test::LlProblemOf(*t.g, max_tokens);
  t.opt.use_fp8 = c.fp8;
  t.opt.fp8 = c.fp8 ? c.fp8_opt : Fp8Options{};
  t.out = &lout_[slot];
  t.h = &lh_[slot];
  t.back = &lback_[slot];
  for (int r = 0; r < R_; ++r)
    t.refs.push_back(Must(LlReferenceDispatch(t.p, r, t.opt), "LlReferenceDispatch (a generator bug)"));
}

void Soak::LlCheckDispatch(const LlTrial& t, const char* which) {
  Check(which, test::DiffLlDispatch(*t.out, t.refs[me_]));
  test::HashLlDispatch(got_, *t.out);
  test::HashLlDispatch(want_, t.refs[me_]);
}

// This rank's expert outputs from its own received rows, the others' from their references (equal when
// every rank's dispatch check passes).
void Soak::LlCombine(LlBuffer& buf, LlTrial& t, OutMode mode, bool two_phase) {
  t.mode = mode;
  t.ys.clear();
  for (int r = 0; r < R_; ++r)
    t.ys.push_back(LlExpertOutputs(r == me_ ? *t.out : t.refs[r], t.opt.use_fp8, t.opt.fp8.ue8m0, r));
  const std::vector<bf16>& y = t.ys[me_];
  const int H = t.p.hidden;
  LlCombineInput in;
  in.topk_weights = t.p.topk_weights[me_];
  t.back->out = {};
  if (mode == OutMode::kCallerSpan) {
    t.caller.assign(static_cast<size_t>(t.p.num_tokens[me_]) * H, bf16{0x7fc0});
    t.back->out = t.caller;
  }
  Call("low-latency combine", [&]() -> Status {
    if (mode != OutMode::kZeroCopy) {
      in.y = y;
    } else {
      // Row i of local expert e at element (e * R*T_max + i) * stride: the buffer's H, wider than this
      // call's.
      EPX_ASSIGN_OR_RETURN(std::span<bf16> rows, buf.NextCombineBuffer());
      const size_t stride = buf.combine_row_stride(), n = y.size() / H;
      if (stride < static_cast<size_t>(H) || rows.size() < n * stride)
        return Status(Code::kInternal,
                      fmt::format("zero-copy buffer of {} elements, stride {}: too small for {} "
                                  "rows of {}",
                                  rows.size(), stride, n, H));
      for (size_t r = 0; r < n; ++r) std::copy_n(&y[r * H], H, rows.data() + r * stride);
      in.zero_copy = true;
    }
    return buf.Combine(*t.h, in, t.back, two_phase ? &t.chook : nullptr);
  });
}

void Soak::LlCheckCombine(const LlTrial& t, const char* which) {
  const int rows = t.p.rows_per_expert(), H = t.p.hidden;
  const LlExpertOutput y = [&](int r, int e, int row) {
    return t.ys[r].data() + (static_cast<size_t>(e) * rows + row) * H;
  };
  const std::vector<bf16> ref = Must(LlReferenceCombine(t.p, me_, y), "LlReferenceCombine (a generator bug)");
  const std::span<const bf16> got =
      t.mode == OutMode::kCallerSpan ? std::span<const bf16>(t.caller) : t.back->x;
  Check(which, test::DiffBits("x", got, std::span<const bf16>(ref), H));
  got_.Add(got);
  want_.Add(ref);
}

void Soak::LlIteration(const LlShape& s) {
  LlBuffer& buf = *ll_[s.setup];
  LlTrial a, b;
  LlTrial* trials[] = {&a, &b};
  for (int i = 0; i < (s.two() ? 2 : 1); ++i)
    LlPrepare(i == 0 ? s.a : s.b, kLlSetups[s.setup].max_tokens, i, *trials[i]);
  switch (s.variant) {
    case LlVariant::kOneCall:
      LlDispatch(buf, a, false);
      LlCheckDispatch(a, "ll dispatch a");
      LlCombine(buf, a, s.a.mode, s.a.combine_two_phase);
      LlCheckCombine(a, "ll combine a");
      break;
    case LlVariant::kTwoPhase:
      LlDispatch(buf, a, true);
      LlReceive(buf, &a.hook);
      LlCheckDispatch(a, "ll dispatch a");
      LlCombine(buf, a, s.a.mode, s.a.combine_two_phase);
      LlReceive(buf, &a.chook);
      LlCheckCombine(a, "ll combine a");
      break;
    case LlVariant::kPair:
      LlDispatch(buf, a, true);
      LlDispatch(buf, b, true);
      LlReceive(buf, s.reverse ? &b.hook : &a.hook);
      LlReceive(buf, s.reverse ? &a.hook : &b.hook);
      LlCheckDispatch(a, "ll dispatch a");
      LlCheckDispatch(b, "ll dispatch b");
      LlCombine(buf, a, s.a.mode, s.a.combine_two_phase);
      LlCombine(buf, b, s.b.mode, s.b.combine_two_phase);
      if (s.reverse && b.chook.pending) LlReceive(buf, &b.chook);
      if (a.chook.pending) LlReceive(buf, &a.chook);
      if (b.chook.pending) LlReceive(buf, &b.chook);
      LlCheckCombine(a, "ll combine a");
      LlCheckCombine(b, "ll combine b");
      break;
    case LlVariant::kOverlap:
      LlDispatch(buf, a, false);
      LlCheckDispatch(a, "ll dispatch a");
      LlDispatch(buf, b, true);
      LlCombine(buf, a, s.a.mode, s.a.combine_two_phase);
      LlReceive(buf, &b.hook);
      if (a.chook.pending) LlReceive(buf, &a.chook);
      LlCheckDispatch(b, "ll dispatch b");
      LlCheckCombine(a, "ll combine a");
      LlCombine(buf, b, s.b.mode, s.b.combine_two_phase);
      if (b.chook.pending) LlReceive(buf, &b.chook);
      LlCheckCombine(b, "ll combine b");
      break;
  }
}

struct IterTime {
  float total_ms, lib_ms;  // the whole iteration; the library calls in it
};

// Per-iteration times: "1.28 ms/iter median, p99 31.1 ms, max 124.3 ms".
std::string TimeStats(std::vector<float> v) {
  if (v.empty()) return "no iterations";
  std::sort(v.begin(), v.end());
  return fmt::format("{:.2f} ms/iter median, p99 {:.1f} ms, max {:.1f} ms", v[v.size() / 2],
                     v[std::min(v.size() - 1, v.size() * 99 / 100)], v.back());
}

struct Checkpoint {
  uint64_t failures, hash, normal, ll;
};

void Soak::Run() {
  const Placement& pl = Ctx().placement();
  const int64_t end = prm_.first + prm_.iters, step = std::max<int64_t>(1, prm_.iters / 10);
  std::vector<IterTime> times;  // this rank's
  times.reserve(prm_.iters);
  Fnv1a running;
  uint64_t failures = 0, normal = 0, ll = 0;
  const auto start = Clock::now();
  if (me_ == 0)
    fmt::print("soak: iterations {}..{}, seed {:#x}, {} ranks on {} node{}\n", prm_.first, end - 1, prm_.seed,
               R_, pl.num_nodes, pl.num_nodes > 1 ? "s" : "");
  for (iter_ = prm_.first; iter_ < end; ++iter_) {
    const auto t0 = Clock::now();
    got_ = want_ = Fnv1a{};
    diffs_.clear();
    lib_ms_ = 0;
    const Shape shape = DrawShape(prm_.seed, iter_);
    shape_ = shape.ToString();
    if (shape.normal) {
      NormalIteration(shape.n);
      ++normal;
    } else {
      LlIteration(shape.l);
      ++ll;
    }
    if (got_.h != want_.h || !diffs_.empty()) {
      if (failures++ < kMaxReported)
        ADD_FAILURE() << Where(iter_) << "\n  hash of the outputs " << fmt::format("{:#018x}", got_.h)
                      << ", of the reference " << fmt::format("{:#018x}", want_.h) << diffs_
                      << "\n  replay: " << prm_.Replay(iter_);
    }
    running.Add(got_.h);
    times.push_back({std::chrono::duration<float, std::milli>(Clock::now() - t0).count(), lib_ms_});
    const int64_t done = iter_ + 1 - prm_.first;
    if (done % step != 0 && iter_ + 1 != end) continue;
    // All ranks meet here (not in every iteration: a bootstrap round costs more than a small call), so a
    // failure on any rank stops every rank at the same point.
    const auto all =
        Must(Ctx().bootstrap().AllGatherPod("soak-progress", Checkpoint{failures, running.h, normal, ll}),
             "progress all-gather");
    uint64_t all_failures = 0;
    for (const Checkpoint& c : all) all_failures += c.failures;
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (me_ == 0 && iter_ + 1 != end)
      fmt::print("soak: {}/{} iterations ({} normal, {} ll), {:.1f} s, about {:.0f} s left{}\n", done,
                 prm_.iters, normal, ll, s, s / done * (prm_.iters - done),
                 all_failures ? ", FAILURES: stopping" : "");
    std::fflush(stdout);
    if (all_failures > 0) {
      if (failures == 0)
        ADD_FAILURE() << "rank " << me_ << " stops at iteration " << iter_ << ": other ranks found "
                      << all_failures << " failing iterations";
      ++iter_;
      break;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const int64_t ran = iter_ - prm_.first;
  auto raw = Must(Ctx().bootstrap().AllGather("soak-times", {reinterpret_cast<const uint8_t*>(times.data()),
                                                             times.size() * sizeof(IterTime)}),
                  "times all-gather");
  auto hashes = Must(Ctx().bootstrap().AllGatherPod("soak-hash", Checkpoint{failures, running.h, normal, ll}),
                     "hash all-gather");
  EXPECT_EQ(failures, 0u) << "rank " << me_ << ": " << failures << " failing iterations of " << ran
                          << (failures > kMaxReported ? " (the first ones are reported above)" : "");
  if (me_ != 0 || ran == 0) return;
  // Per iteration, the slowest rank: a collective call is as fast as its slowest participant.
  std::vector<IterTime> all_times(static_cast<size_t>(R_) * times.size());
  std::memcpy(all_times.data(), raw.data(), std::min(raw.size(), all_times.size() * sizeof(IterTime)));
  std::vector<float> total(times.size(), 0.0f), lib(times.size(), 0.0f);
  for (int r = 0; r < R_; ++r)
    for (size_t i = 0; i < times.size(); ++i) {
      total[i] = std::max(total[i], all_times[r * times.size() + i].total_ms);
      lib[i] = std::max(lib[i], all_times[r * times.size() + i].lib_ms);
    }
  Fnv1a world;
  uint64_t all_failures = 0;
  for (const Checkpoint& c : hashes) {
    world.Add(c.hash);
    all_failures += c.failures;
  }
  fmt::print(
      "soak: {} iterations ({} normal, {} ll), {} ranks{}, seed {:#x}, first {}, hash {:#018x}, {:.1f} s, "
      "{}{}\n",
      ran, normal, ll, R_, pl.num_nodes > 1 ? fmt::format(" on {} nodes", pl.num_nodes) : "", prm_.seed,
      prm_.first, world.h, seconds, TimeStats(total),
      all_failures ? fmt::format(", {} FAILING ITERATIONS", all_failures) : "");
  // The rest of an iteration is the references and checks; shapes are redrawn from (seed, iteration).
  fmt::print("soak: in library calls: {}\n", TimeStats(lib));
  std::map<std::string, std::vector<float>> by_kind;
  for (size_t i = 0; i < lib.size(); ++i)
    by_kind[DrawShape(prm_.seed, prm_.first + static_cast<int64_t>(i)).Kind()].push_back(lib[i]);
  for (const auto& [kind, v] : by_kind)
    fmt::print("soak:   {:>14}: {:5} x {}\n", kind, v.size(), TimeStats(v));
  std::vector<size_t> order(lib.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return lib[a] > lib[b]; });
  for (size_t j = 0; j < std::min<size_t>(3, order.size()); ++j) {
    const int64_t i = prm_.first + static_cast<int64_t>(order[j]);
    fmt::print("soak: slowest in the library: iteration {}, {:.1f} ms: {}\n", i, lib[order[j]],
               DrawShape(prm_.seed, i).ToString());
  }
  std::fflush(stdout);
}

TEST(Soak, RandomShapesMatchTheReference) {
  Params prm;
  constexpr uint64_t kMaxIter = uint64_t{1} << 40;
  prm.seed = EnvUint("EPX_SOAK_SEED", kDefaultSeed, ~uint64_t{0});
  prm.first = static_cast<int64_t>(EnvUint("EPX_SOAK_FIRST", 0, kMaxIter));
  prm.iters = static_cast<int64_t>(EnvUint("EPX_SOAK_ITERS", kDefaultIters, kMaxIter));
  Soak soak(prm);
  soak.CreateBuffers();
  if (testing::Test::HasFatalFailure()) return;
  soak.Run();
}

}  // namespace
}  // namespace epx
