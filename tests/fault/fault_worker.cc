// tests/fault/fault_worker.cc: the rank program of the fault matrix (fault_matrix_test.cc). Every rank
// builds one Context, one NormalBuffer and one LlBuffer, then runs `--rounds` rounds of
//   normal dispatch + combine (count exchange, send/forward/receive, return/forward/reduce), then
//   low-latency dispatch + combine,
// on small deterministic inputs (kernels/problem_gen.h). EPX_FAULT makes one rank SIGKILL itself at a
// named point (core/fault.h); every survivor must then fail a call and report it here as
//   fault-worker: rank R FAILED t_mono_ns=T in <call> (round N): <status>
// on stderr and exit 3 at once (the test measures T against the victim's own t_mono_ns line). No
// results are checked in this mode: the normal and low-latency suites do that; it only moves data.
//
// --mask: low-latency rounds only, on an LlBuffer with mask_on_failure, and every result IS checked,
// bitwise, against kernels/ll_reference.h: the survivors of the EPX_FAULT victim must mask it and go on
// (issue 7: "with masking on, survivors continue and their results equal the reference computed without
// the dead rank"). Which reference applies to which call is decided by MaskWant() below from where the
// victim dies; each survivor runs kMaskRoundsAfter more rounds after the round of the death, checks
// MaskedRanks() == {victim} and exits 0 with
//   fault-worker: rank R masked [V], N rounds checked after the death (...)
// Then the survivors go on in normal mode without the masked rank (a NormalBuffer made at setup; see
// RunNormalPhase: checked rounds).
// A wrong result prints "fault-worker: rank R CHECK FAILED ..." and the rank exits 4 after its rounds.
// Without EPX_FAULT, --mask runs `--rounds` checked rounds against the full reference (the baseline), and
// the normal phase with nobody masked.
//
// --exit-between V: normal mode only, no EPX_FAULT: every rank runs the checked normal phase (2 rounds,
// nobody masked); then rank V exits (code 0) between calls, and each survivor, after a pause that grows with
// its rank (so the others wait long enough in the next call for the liveness scan to see the exit), masks V
// with NormalBuffer::MaskRank -- no low-latency buffer saw the death -- and runs the phase without it:
//   fault-worker: rank V exits between calls t_mono_ns=T
//   fault-worker: rank R normal mode without [V]: 2 rounds checked
//
// --readmit (readmit_worker.cc, under epx-run --respawn): --mask up to the victim's death and after it,
// then every rank re-creates its Context, the restarted victim joins, and all ranks run checked rounds
// against the full reference.
//
//   fault_worker [--rounds N] [--mask | --readmit | --exit-between V] [--ll-channels C]
//                                   prints "fault-worker: ready rank R pid P" once set up
#include "tests/fault/fault_worker.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/fault.h"
#include "core/log.h"
#include "kernels/ll.h"
#include "kernels/ll_reference.h"
#include "kernels/normal.h"
#include "kernels/problem_gen.h"
#include "kernels/reference.h"
#include "transport/context.h"

namespace epx {

long long MonoNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

[[noreturn]] void Fail(int rank, const char* call, int round, const Status& s) {
  const long long t = MonoNs();  // taken first: the moment the library returned the error
  std::fflush(stdout);
  std::fprintf(stderr, "fault-worker: rank %d FAILED t_mono_ns=%lld in %s (round %d): %s\n", rank, t, call,
               round, s.ToString().c_str());
  std::fflush(stderr);
  // No destructors: a buffer whose call failed is not usable, and nothing here needs flushing.
  ::_exit(3);
}

ProblemSpec RoundSpec(const Context& ctx, uint64_t seed) {
  ProblemSpec spec;
  spec.num_ranks = ctx.world_size();
  spec.local_size = ctx.placement().local_size;
  spec.num_experts = kExpertsPerRank * ctx.world_size();
  spec.hidden = kHidden;
  spec.topk = kTopk;
  spec.seed = seed;
  return spec;
}

std::unique_ptr<NormalBuffer> CreateNormalBuffer(Context& ctx) {
  auto ncfg = NormalConfig::FromEnv();
  if (!ncfg.ok()) Fail(ctx.rank(), "NormalConfig::FromEnv", -1, ncfg.status());
  if (std::getenv("EPX_NORMAL_CHANNELS") == nullptr) ncfg->num_channels = 2;
  auto nb = NormalBuffer::Create(ctx, *ncfg, NormalLimits{kHidden, kTopk, kExpertsPerRank});
  if (!nb.ok()) Fail(ctx.rank(), "NormalBuffer::Create", -1, nb.status());
  return std::move(*nb);
}

namespace {

template <typename T>
std::span<const T> As(const std::vector<uint8_t>& v) {
  return {reinterpret_cast<const T*>(v.data()), v.size() / sizeof(T)};
}

// ---- --mask -----------------------------------------------------------------------------------------

constexpr int kMaskRoundsAfter = 3;  // rounds each survivor runs after the round of the death
constexpr bf16 kNan{0x7fc0};         // expert-output rows past count: a combine that read one would show

std::atomic<int> g_me{-1};

// The LlBuffer configuration of every mode (--mask adds mask_on_failure). Depth 2: the rotation wraps every
// round, so with a dead rank the release waits must skip it too.
LowLatencyConfig LlConfig(int world_size) {
  LowLatencyConfig lcfg;
  lcfg.max_tokens = kTokens;
  lcfg.hidden = kHidden;
  lcfg.topk = kTopk;
  lcfg.num_experts = kExpertsPerRank * world_size;
  lcfg.depth = 2;
  lcfg.use_fp8 = false;
  return lcfg;
}

// Log sink of --mask: the library's lines go to stderr unchanged, but its mask warning ("low-latency: rank
// X masks rank Y (mask_on_failure) ...") is followed by a line with the time it was logged, since log
// lines carry none and the matrix reports the time from the victim's death to each survivor's mask.
void StampMaskNotices(std::string_view line) {
  const long long t = MonoNs();  // first: the moment the library logged it
  std::string out(line);
  const size_t at = out.find(" masks rank ");
  if (at != std::string::npos && out.find("(mask_on_failure)") != std::string::npos)
    out += fmt::format("fault-worker: rank {} mask notice: masks rank {} t_mono_ns={}\n", g_me.load(),
                       std::atoi(out.c_str() + at + std::strlen(" masks rank ")), t);
  (void)!::write(STDERR_FILENO, out.data(), out.size());  // one write: lines of other threads stay whole
}

// One low-latency round: every rank's inputs (a pure function of the round, so every rank builds the
// same), the references with and without the victim, and how the round calls the buffer.
struct LlRound {
  std::unique_ptr<GeneratedProblem> gen;             // owns the rows that full.x_row points into
  LlRefProblem full, without;                        // without == full when there is no victim
  std::vector<LlRefDispatch> full_ref, without_ref;  // [R] what every rank must receive
  LlDispatchOptions opt;
  bool two_phase = false;
  int combine_mode = 0;  // 0: out->x, 1: out= (caller span), 2: zero-copy (NextCombineBuffer)
  uint64_t salt = 0;     // of the expert outputs
};

std::unique_ptr<LlRound> MakeLlRound(const Context& ctx, int round, int victim) {
  const int R = ctx.world_size();
  auto lr = std::make_unique<LlRound>();
  ProblemSpec spec = RoundSpec(ctx, 5000 + static_cast<uint64_t>(round));
  spec.p_none = 0.1;           // -1 slots: combine must skip them as it skips the masked rank's experts
  for (int r = 0; r < R; ++r)  // every 4th round one rank (the victim too, in time) sends nothing
    spec.num_tokens.push_back(round % 4 == 3 && r == round % R ? 0 : kTokens - (5 * r + 3 * round) % 11);
  lr->gen = std::make_unique<GeneratedProblem>(spec, -1);
  const RefProblem& g = lr->gen->problem();
  LlRefProblem& p = lr->full;
  p.num_ranks = R;
  p.num_experts = spec.num_experts;
  p.hidden = kHidden;
  p.topk = kTopk;
  p.max_tokens = kTokens;
  p.num_tokens = g.num_tokens;
  p.topk_idx = g.topk_idx;
  p.topk_weights = g.topk_weights;
  p.x_row = [gen = lr->gen.get()](int r, int t) {
    return reinterpret_cast<const bf16*>(gen->x(r).data()) + static_cast<size_t>(t) * kHidden;
  };
  lr->without = victim >= 0 ? LlReferenceWithoutRank(p, victim) : p;
  // Rounds differ in payload, phases and combine output, so the death meets each of them somewhere.
  lr->opt.use_fp8 = round % 4 == 1 || round % 4 == 2;
  lr->two_phase = round % 2 == 1;
  lr->combine_mode = round % 3;
  lr->salt = 9000 + static_cast<uint64_t>(round);
  for (int r = 0; r < R; ++r) {
    auto f = LlReferenceDispatch(lr->full, r, lr->opt);
    auto w = LlReferenceDispatch(lr->without, r, lr->opt);
    if (!f.ok() || !w.ok()) {  // a bug of this generator, not of the library
      std::fprintf(stderr, "fault-worker: reference dispatch failed: %s\n",
                   (!f.ok() ? f.status() : w.status()).ToString().c_str());
      ::_exit(2);
    }
    lr->full_ref.push_back(std::move(*f));
    lr->without_ref.push_back(std::move(*w));
  }
  return lr;
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

// Expert outputs of `rank` as seen through dispatch output d: row i of local expert e = HashRow(salt,
// global expert, source, token), a pure function of what the row answers. So a rank's outputs made from
// its own (kernel) dispatch and the references' made from the reference dispatch agree row for row
// whatever the layout, and the combine references need no data from other ranks.
std::vector<bf16> HashOutputs(const LlRefDispatch& d, int R, int rank, uint64_t salt) {
  const int El = d.local_experts, H = d.hidden;
  std::vector<bf16> y(static_cast<size_t>(El) * d.rows * H, kNan);
  if (d.count.size() != static_cast<size_t>(El) || d.src_info.size() != static_cast<size_t>(El) * d.rows)
    return y;
  for (int e = 0; e < El; ++e)
    for (int i = 0; i < std::min(d.count[e], d.rows); ++i) {
      const size_t row = static_cast<size_t>(e) * d.rows + i;
      const int s = SourceOf(d, R, e, i), t = d.src_info[row];
      if (s < 0 || t < 0) continue;  // a broken dispatch: its own check reports it
      GeneratedProblem::HashRow(salt, rank * El + e, s, t, H, &y[row * H]);
    }
  return y;
}

// "" when the dispatch output equals the reference: shapes, count, layout_range and src_info (every row,
// -1 past count) exactly, payload and scales of rows [0, count) bitwise (rows past count are unspecified,
// kernels/ll.h); else the first difference.
std::string DispatchDiff(const LlDispatchOutput& o, const LlRefDispatch& r) {
  if (o.local_experts != r.local_experts || o.rows != r.rows || o.hidden != r.hidden ||
      o.row_bytes != r.row_bytes || o.scale_row_bytes != r.scale_row_bytes)
    return fmt::format("shape (E_local {}, rows {}, H {}, row {} B, scales {} B) vs ({}, {}, {}, {}, {})",
                       o.local_experts, o.rows, o.hidden, o.row_bytes, o.scale_row_bytes, r.local_experts,
                       r.rows, r.hidden, r.row_bytes, r.scale_row_bytes);
  if (o.count != r.count)
    return fmt::format("count [{}] vs [{}]", fmt::join(o.count, ","), fmt::join(r.count, ","));
  if (o.layout_range != r.layout_range) {
    std::string a, b;
    for (size_t i = 0; i < r.layout_range.size() && i < o.layout_range.size(); ++i) {
      a += fmt::format("{}+{} ", LlRangeBegin(o.layout_range[i]), LlRangeCount(o.layout_range[i]));
      b += fmt::format("{}+{} ", LlRangeBegin(r.layout_range[i]), LlRangeCount(r.layout_range[i]));
    }
    return "layout_range (begin+count) [" + a + "] vs [" + b + "]";
  }
  if (o.src_info != r.src_info) {
    size_t i = 0;
    while (i < o.src_info.size() && i < r.src_info.size() && o.src_info[i] == r.src_info[i]) ++i;
    return fmt::format("src_info differs first at row {} of local expert {}", i % r.rows, i / r.rows);
  }
  const size_t total = static_cast<size_t>(r.local_experts) * r.rows;
  if (o.x.size() < total * r.row_bytes || o.scales.size() < total * r.scale_row_bytes)
    return fmt::format("x has {} B, scales {} B", o.x.size(), o.scales.size());
  int bad = 0;
  std::string first;
  for (int e = 0; e < r.local_experts; ++e)
    for (int i = 0; i < r.count[e]; ++i) {
      const size_t row = static_cast<size_t>(e) * r.rows + i;
      const bool x_ok = std::memcmp(o.x.data() + row * r.row_bytes, r.row(e, i), r.row_bytes) == 0;
      const bool s_ok = r.scale_row_bytes == 0 ||
                        std::memcmp(o.scales.data() + row * r.scale_row_bytes,
                                    r.scales.data() + row * r.scale_row_bytes, r.scale_row_bytes) == 0;
      if ((!x_ok || !s_ok) && bad++ == 0)
        first = fmt::format("local expert {} row {} ({})", e, i, x_ok ? "scales" : "payload");
    }
  return bad == 0 ? "" : fmt::format("{} rows differ, first {}", bad, first);
}

// "" when the combine output equals the reference bitwise; else the first difference.
std::string CombineDiff(std::span<const bf16> got, const std::vector<bf16>& ref) {
  if (got.size() != ref.size()) return fmt::format("{} elements vs {}", got.size(), ref.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    if (got[i].bits != ref[i].bits && bad++ == 0) first = i;
  return bad == 0 ? ""
                  : fmt::format("{} elements differ, first token {} column {}: {:#06x} vs {:#06x}", bad,
                                first / kHidden, first % kHidden, got[first].bits, ref[first].bits);
}

// Source `me`'s combine reference of problem p, the expert outputs made from p's reference dispatch.
std::vector<bf16> CombineRef(const LlRefProblem& p, const std::vector<LlRefDispatch>& refs, int me,
                             uint64_t salt) {
  std::vector<std::vector<bf16>> ys;
  for (int r = 0; r < p.num_ranks; ++r) ys.push_back(HashOutputs(refs[r], p.num_ranks, r, salt));
  const int rows = p.rows_per_expert();
  auto ref = LlReferenceCombine(p, me, [&](int r, int e, int row) {
    return ys[r].data() + (static_cast<size_t>(e) * rows + row) * kHidden;
  });
  if (!ref.ok()) {
    std::fprintf(stderr, "fault-worker: reference combine failed: %s\n", ref.status().ToString().c_str());
    ::_exit(2);
  }
  return std::move(*ref);
}

// Which reference a survivor's result must equal. LL calls are numbered in order: the dispatch of round r
// is call 2r, its combine 2r + 1; the victim dies in call X (DeathCall). With v the victim:
//   c <= X - 2  kFull: the victim was alive and unmasked until the call returned: the victim got into
//               call X only after its receive phase of X - 1, which needs every survivor's send phase
//               of X - 1, which a survivor starts only once its call X - 2 returned.
//   c == X - 1  kEither: a survivor may still be in its receive phase of X - 1 when the victim dies, see
//               the death (transport/liveness.h) while waiting for another peer and mask it: it then
//               drops the victim's part of that call (kernels/ll.h "Masking": the dispatch receive phase
//               runs again without it, combine sums no row of a masked rank).
//   c == X      ll.dispatch.send: kWithout. The point is before any count; the killing channel posted
//               none of its experts' counts, and every survivor has local experts of every victim
//               channel (E_local = 8 >= channels, experts e % C == c on channel c), so whatever the other
//               channels posted, each survivor misses counts and must drop all of the victim's part.
//               ll.combine.send: kWithout with one channel (the killing hit is before any row). With
//               several, kEither even when the killing hit is the first of the call: the other channels
//               run on their own threads while the SIGKILL is delivered (the kernel stops the threads of
//               a dying process one by one), so another channel may pass its point and post all of ITS
//               sources' rows and done flags (channel c serves sources s % C == c) before the process is
//               gone; a source of that channel then gets the victim's whole part (seen on rxe, CI of
//               f3b0c95: ranks 1 and 3 of channel 1 got the full result after rank 0 died at hit 1).
//               .recv points: kEither: the victim posted all of call X and died before its receive phase.
//   c > X       kWithout: the victim takes no part any more.
// kFull means: equal to the reference with the victim AND MaskedRanks() empty after the call; kWithout:
// equal to the reference without the victim AND MaskedRanks() == {v}; kEither: one of the two (never a
// mix: a result with part of the victim's contribution matches neither).
enum class Want { kFull, kWithout, kEither };
const char* WantName(Want w) {
  return w == Want::kFull      ? "the reference with the victim, victim unmasked"
         : w == Want::kWithout ? "the reference without the victim, victim masked"
                               : "either reference (with the victim and unmasked, or without it and masked)";
}

bool IsSendPoint(FaultPoint p) {
  return p == FaultPoint::kLlDispatchSend || p == FaultPoint::kLlCombineSend;
}

// The call in which the victim dies. The .send points are hit once per channel per call (in the
// per-channel lambda of kernels/ll_dispatch.cc and ll_combine.cc), the .recv points once per call, and
// EPX_FAULT's after counts hits over all threads of the process.
int DeathCall(const FaultSpec& f, int channels) {
  const bool combine = f.point == FaultPoint::kLlCombineSend || f.point == FaultPoint::kLlCombineRecv;
  const int round = static_cast<int>((f.after - 1) / (IsSendPoint(f.point) ? channels : 1));
  return 2 * round + (combine ? 1 : 0);
}

Want MaskWant(const FaultSpec& f, int channels, int death_call, int call) {
  if (!f.enabled() || call <= death_call - 2) return Want::kFull;
  if (call == death_call - 1) return Want::kEither;
  if (call == death_call) {
    if (f.point == FaultPoint::kLlDispatchSend) return Want::kWithout;
    if (f.point == FaultPoint::kLlCombineSend && channels == 1) return Want::kWithout;
    return Want::kEither;
  }
  return Want::kWithout;
}

struct MaskChecker {
  LlBuffer& lb;
  int me;
  FaultSpec fault;
  int channels;
  int death_call;
  int failures = 0;
  bool saw_mask = false;

  // Checks one call's result given its differences from the two references ("" = equal).
  void Check(int call, int round, const char* what, const std::string& vs_full,
             const std::string& vs_without) {
    const std::vector<int> masked = lb.MaskedRanks();
    if (!masked.empty() && !saw_mask) {
      saw_mask = true;  // the time is an upper bound of the mask: the call had to return first
      std::printf("fault-worker: rank %d sees MaskedRanks [%s] t_mono_ns=%lld after round %d %s\n", me,
                  fmt::format("{}", fmt::join(masked, ",")).c_str(), MonoNs(), round, what);
    }
    const int v = fault.rank;
    const bool unmasked = masked.empty(), only_v = v >= 0 && masked == std::vector<int>{v};
    const bool ok_full = vs_full.empty() && unmasked, ok_without = vs_without.empty() && only_v;
    const Want want = MaskWant(fault, channels, death_call, call);
    const bool pass = want == Want::kFull      ? ok_full
                      : want == Want::kWithout ? ok_without
                                               : ok_full || ok_without;
    if (!pass) {
      ++failures;
      std::printf(
          "fault-worker: rank %d CHECK FAILED round %d %s (call %d; the victim dies in call %d): "
          "expected %s; MaskedRanks [%s]; vs the reference with the victim: %s; vs the reference without "
          "it: %s\n",
          me, round, what, call, death_call, WantName(want),
          fmt::format("{}", fmt::join(masked, ",")).c_str(), vs_full.empty() ? "equal" : vs_full.c_str(),
          vs_without.empty() ? "equal" : vs_without.c_str());
    } else if (want == Want::kEither) {
      std::printf("fault-worker: rank %d round %d %s (call %d, the victim dies in call %d): %s\n", me, round,
                  what, call, death_call,
                  ok_full && ok_without ? "the same with or without the victim"
                  : ok_full             ? "with the victim's part (not masked yet)"
                                        : "without the victim (masked during the call)");
    }
  }
};

// ---- --mask, normal phase ---------------------------------------------------------------------------
// After the low-latency rounds (where the survivors found and masked the victim), the normal buffer made
// at setup goes on without the ranks the LlBuffer masked: NormalBuffer::MaskRank each of them, then
// dispatch and combine checked bitwise against kernels/reference.h without them (several nodes: a live
// rank whose same-index rank is masked is relayed by a node peer). A mask the buffer cannot route (see
// NormalBuffer::MaskRank) is refused with kUnsupported at the first call (nothing moves, nobody hangs):
// the phase prints that, and the test that ran the worker decides whether it expected it.
//   fault-worker: rank R normal mode without [V]: N rounds checked
//   fault-worker: rank R normal mode without [V]: refused as expected (kUnsupported: ...)

constexpr int kNormalRoundsAfter = 2;

// "" when the kernel's dispatch output equals the reference; else the first difference.
std::string NormalDispatchDiff(const DispatchOutput& o, const RefDispatch& r, int H) {
  const size_t M = static_cast<size_t>(r.num_rows), K = kTopk, row = 2 * static_cast<size_t>(H);
  if (o.num_recv_tokens != r.num_rows) return fmt::format("{} rows vs {}", o.num_recv_tokens, r.num_rows);
  if (o.tokens_per_expert != r.tokens_per_expert)
    return fmt::format("tokens_per_expert [{}] vs [{}]", fmt::join(o.tokens_per_expert, ","),
                       fmt::join(r.tokens_per_expert, ","));
  if (o.x.size() < M * row || o.src_idx.size() < M || o.topk_idx.size() < M * K ||
      o.topk_weights.size() < M * K)
    return "outputs too small";
  for (size_t i = 0; i < M; ++i) {
    if (o.src_idx[i] != r.src_idx[i] || std::memcmp(&o.x[i * row], &r.x[i * row], row) != 0 ||
        !std::equal(&o.topk_idx[i * K], &o.topk_idx[(i + 1) * K], &r.topk_idx[i * K]) ||
        std::memcmp(&o.topk_weights[i * K], &r.topk_weights[i * K], 4 * K) != 0)
      return fmt::format("row {} (source {} token {}) differs", i, r.src_rank[i], r.src_idx[i]);
  }
  return "";
}

// Runs the phase on a survivor; returns the number of failed checks.
int RunNormalPhase(Context& ctx, NormalBuffer& nb, const std::vector<int>& masked) {
  const int me = ctx.rank(), R = ctx.world_size();
  const std::string who =
      fmt::format("fault-worker: rank {} normal mode without [{}]", me, fmt::join(masked, ","));
  for (int v : masked) {
    if (Status s = nb.MaskRank(v); !s.ok()) {
      if (s.code() != Code::kUnsupported) Fail(me, "NormalBuffer::MaskRank", -1, s);
      std::printf("%s: refused as expected (kUnsupported: %s)\n", who.c_str(), s.message().c_str());
      return 0;
    }
  }
  int failures = 0;
  for (int round = 0; round < kNormalRoundsAfter; ++round) {
    ProblemSpec spec = RoundSpec(ctx, 7000 + static_cast<uint64_t>(round));
    for (int r = 0; r < R; ++r) spec.num_tokens.push_back(kTokens - (3 * r + round) % 7);
    GeneratedProblem g(spec, -1);  // every rank's rows: the reference of every destination needs them
    RefProblem without = g.problem();
    for (int v : masked) without = ReferenceWithoutRank(without, v);
    auto route = ReferenceRouting(without);
    if (!route.ok()) Fail(me, "reference routing", round, route.status());

    DispatchInput in;
    in.num_tokens = g.problem().num_tokens[me];
    in.hidden = kHidden;
    in.dtype = TokenDtype::kBf16;
    in.x = g.x(me);
    in.num_experts = spec.num_experts;
    in.topk = kTopk;
    in.topk_idx = g.problem().topk_idx[me];  // still naming the masked ranks' experts: the buffer drops them
    in.topk_weights = g.problem().topk_weights[me];
    DispatchOutput out;
    NormalHandle h;
    if (Status s = nb.Dispatch(in, &out, &h); !s.ok()) {
      if (round == 0 && s.code() == Code::kUnsupported) {
        std::printf("%s: refused as expected (kUnsupported: %s)\n", who.c_str(), s.message().c_str());
        return 0;
      }
      Fail(me, "normal dispatch (masked)", round, s);
    }
    std::vector<RefDispatch> ref;
    for (int r = 0; r < R; ++r) ref.push_back(ReferenceDispatch(without, *route, r));
    if (std::string d = NormalDispatchDiff(out, ref[me], kHidden); !d.empty()) {
      ++failures;
      std::printf("%s: CHECK FAILED round %d dispatch: %s\n", who.c_str(), round, d.c_str());
    }
    // Expert outputs: a hash of (this rank, source, token) per row, so the reference needs no data from
    // other ranks; made from the reference rows (equal to ours when the dispatch check passed).
    const uint64_t salt = 7700 + static_cast<uint64_t>(round);
    std::vector<std::vector<bf16>> ys;
    for (int r = 0; r < R; ++r) ys.push_back(GeneratedProblem::HashedOutputs(salt, r, ref[r], kHidden));
    CombineInput cin;
    cin.hidden = kHidden;
    cin.y = ys[me];
    CombineOutput cout;
    // A slow expert: the lowest live rank starts the first combine 200 ms late, so the others idle in the
    // combine's ring loops far past their liveness interval (ProgressWatch) and ask every health source,
    // the RDMA domain's death notices included: the masked rank's death must not fail them (it did when
    // only the same-index peer was masked in the domain; rxe_fault_two_hosts, 2 x 2 cells).
    if (round == 0 && me == (masked.empty() || masked.front() != 0 ? 0 : 1)) ::usleep(200000);
    if (Status s = nb.Combine(h, cin, &cout); !s.ok()) Fail(me, "normal combine (masked)", round, s);
    RefCombineInputs rin;
    rin.y_row = [&](int r, int row) { return ys[r].data() + static_cast<size_t>(row) * kHidden; };
    const RefCombine want = ReferenceCombine(without, *route, me, rin);
    if (std::string d = CombineDiff(cout.x, want.x); !d.empty()) {
      ++failures;
      std::printf("%s: CHECK FAILED round %d combine: %s\n", who.c_str(), round, d.c_str());
    }
  }
  if (failures == 0) std::printf("%s: %d rounds checked\n", who.c_str(), kNormalRoundsAfter);
  return failures;
}

}  // namespace

int RunMasked(Context& ctx, int rounds, int channels, bool ignore_fault, bool normal_phase) {
  const int me = ctx.rank(), R = ctx.world_size();
  auto fault = ParseFaultSpec(std::getenv("EPX_FAULT") && !ignore_fault ? std::getenv("EPX_FAULT") : "");
  if (!fault.ok()) Fail(me, "EPX_FAULT", -1, fault.status());
  const bool faulty = fault->enabled();
  if (faulty && fault->point != FaultPoint::kLlDispatchSend && fault->point != FaultPoint::kLlDispatchRecv &&
      fault->point != FaultPoint::kLlCombineSend && fault->point != FaultPoint::kLlCombineRecv) {
    std::fprintf(stderr,
                 "fault-worker: --mask runs low-latency calls only: EPX_FAULT point %s is never hit\n",
                 FaultPointName(fault->point));
    return 2;
  }
  if (channels < 1 || channels > kExpertsPerRank) {  // MaskWant's ll.dispatch.send case needs E_local >= C
    std::fprintf(stderr, "fault-worker: --ll-channels %d not in 1..%d\n", channels, kExpertsPerRank);
    return 2;
  }
  const int death_call = faulty ? DeathCall(*fault, channels) : -1;
  const int death_round = death_call / 2;
  if (faulty) rounds = death_round + 1 + kMaskRoundsAfter;

  LowLatencyConfig lcfg = LlConfig(R);
  lcfg.mask_on_failure = true;
  auto made = LlBuffer::Create(ctx, lcfg, channels);
  if (!made.ok()) Fail(me, "LlBuffer::Create", -1, made.status());
  LlBuffer& lb = **made;
  // Made now, while every rank is alive (creation is collective); used after the low-latency rounds.
  const std::unique_ptr<NormalBuffer> nb = normal_phase ? CreateNormalBuffer(ctx) : nullptr;
  if (Status s = ctx.bootstrap().Barrier("fault-worker-setup"); !s.ok()) Fail(me, "setup barrier", -1, s);

  MaskChecker check{lb, me, *fault, channels, death_call};
  int checked_after = 0;
  for (int round = 0; round < rounds; ++round) {
    const auto lr = MakeLlRound(ctx, round, fault->rank);
    const LlRefProblem& p = lr->full;
    LlDispatchInput in;
    in.num_tokens = p.num_tokens[me];
    in.hidden = kHidden;
    in.x = As<bf16>(lr->gen->x(me));
    in.topk = kTopk;
    in.topk_idx = p.topk_idx[me];
    in.use_fp8 = lr->opt.use_fp8;
    LlDispatchOutput out;
    LlHandle h;
    LlHook hook;
    Status s = lb.Dispatch(in, &out, &h, lr->two_phase ? &hook : nullptr);
    if (s.ok() && lr->two_phase) s = lb.Receive(&hook);
    if (!s.ok()) Fail(me, "low-latency dispatch", round, s);
    check.Check(2 * round, round, lr->two_phase ? "dispatch (two-phase)" : "dispatch",
                DispatchDiff(out, lr->full_ref[me]), DispatchDiff(out, lr->without_ref[me]));

    // Expert outputs from this rank's own dispatch output: whatever it received is answered.
    const std::vector<bf16> y = HashOutputs(out, R, me, lr->salt);
    LlCombineInput cin;
    cin.topk_weights = p.topk_weights[me];
    LlCombineOutput cout;
    std::vector<bf16> caller;
    if (lr->combine_mode == 2) {
      auto rows = lb.NextCombineBuffer();
      if (!rows.ok()) Fail(me, "low-latency NextCombineBuffer", round, rows.status());
      const size_t stride = lb.combine_row_stride(), n = y.size() / kHidden;
      for (size_t r = 0; r < n; ++r) std::copy_n(&y[r * kHidden], kHidden, rows->data() + r * stride);
      cin.zero_copy = true;
    } else {
      cin.y = y;
    }
    if (lr->combine_mode == 1) {
      caller.assign(static_cast<size_t>(in.num_tokens) * kHidden, kNan);
      cout.out = caller;
    }
    LlHook chook;
    s = lb.Combine(h, cin, &cout, lr->two_phase ? &chook : nullptr);
    if (s.ok() && lr->two_phase) s = lb.Receive(&chook);
    if (!s.ok()) Fail(me, "low-latency combine", round, s);
    const std::span<const bf16> got = lr->combine_mode == 1 ? std::span<const bf16>(caller) : cout.x;
    static constexpr const char* kModes[] = {"out->x", "out=", "zero-copy"};
    const std::string what =
        fmt::format("combine ({}{})", kModes[lr->combine_mode], lr->two_phase ? ", two-phase" : "");
    check.Check(2 * round + 1, round, what.c_str(),
                CombineDiff(got, CombineRef(lr->full, lr->full_ref, me, lr->salt)),
                CombineDiff(got, CombineRef(lr->without, lr->without_ref, me, lr->salt)));
    if (faulty && 2 * round > death_call) ++checked_after;
  }

  if (!faulty) {
    if (!lb.MaskedRanks().empty() || check.failures > 0) {
      std::printf("fault-worker: rank %d: %d check(s) failed, MaskedRanks [%s] (nobody died)\n", me,
                  check.failures, fmt::format("{}", fmt::join(lb.MaskedRanks(), ",")).c_str());
      return 4;
    }
    if (nb != nullptr && RunNormalPhase(ctx, *nb, {}) > 0) return 4;  // the phase itself, nobody masked
    std::printf("fault-worker: rank %d done (%d rounds, every result checked)\n", me, rounds);
    if (Status s = ctx.bootstrap().Barrier("fault-worker-end"); !s.ok()) Fail(me, "final barrier", rounds, s);
    return 0;
  }
  // A survivor (the victim never gets here): no bootstrap call any more, the victim is gone for good.
  const std::vector<int> masked = lb.MaskedRanks();
  if (masked != std::vector<int>{fault->rank}) {
    ++check.failures;
    std::printf("fault-worker: rank %d CHECK FAILED at the end: MaskedRanks [%s], expected [%d]\n", me,
                fmt::format("{}", fmt::join(masked, ",")).c_str(), fault->rank);
  }
  if (check.failures > 0) {
    std::printf("fault-worker: rank %d: %d check(s) failed\n", me, check.failures);
    return 4;
  }
  // The time: the matrix checks that survivors went on at once, not after a wait ran into its deadline.
  std::printf(
      "fault-worker: rank %d masked [%s], %d rounds checked after the death (it died in round %d, "
      "%d round(s) in all) t_mono_ns=%lld\n",
      me, fmt::format("{}", fmt::join(masked, ",")).c_str(), checked_after, death_round, rounds, MonoNs());
  if (nb != nullptr && RunNormalPhase(ctx, *nb, masked) > 0) {
    std::printf("fault-worker: rank %d: normal-mode check(s) failed\n", me);
    return 4;
  }
  return 0;
}

namespace {

// --exit-between (see the header).
int RunExitBetween(Context& ctx, int victim) {
  const int me = ctx.rank();
  if (victim < 0 || victim >= ctx.world_size() || victim == 0) {  // rank 0 holds the bootstrap
    std::fprintf(stderr, "fault-worker: --exit-between %d not in 1..%d\n", victim, ctx.world_size() - 1);
    return 2;
  }
  const std::unique_ptr<NormalBuffer> nb = CreateNormalBuffer(ctx);
  if (Status s = ctx.bootstrap().Barrier("fault-worker-setup"); !s.ok()) Fail(me, "setup barrier", -1, s);
  if (RunNormalPhase(ctx, *nb, {}) > 0) return 4;
  if (me == victim) {
    std::printf("fault-worker: rank %d exits between calls t_mono_ns=%lld\n", me, MonoNs());
    std::fflush(stdout);
    ::_exit(0);  // no destructors: as if killed, but without failing the job
  }
  ::usleep(static_cast<useconds_t>(100000 * (1 + me)));
  return RunNormalPhase(ctx, *nb, {victim}) > 0 ? 4 : 0;
}

int Main(int argc, char** argv) {
  int rounds = 3, ll_channels = 1, exit_between = -1;
  bool mask = false, readmit = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
      rounds = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--ll-channels") == 0 && i + 1 < argc) {
      ll_channels = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--mask") == 0) {
      mask = true;
    } else if (std::strcmp(argv[i], "--readmit") == 0) {
      readmit = true;
    } else if (std::strcmp(argv[i], "--exit-between") == 0 && i + 1 < argc) {
      exit_between = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "fault-worker: unknown argument '%s'\n", argv[i]);
      return 2;
    }
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  if (mask || readmit) SetLogSink(&StampMaskNotices);  // before any thread of the library exists
  if (readmit) {
    if (auto p = PlacementFromEnv(); p.ok()) g_me = p->rank;  // for the mask notices; errors come later
    return RunReadmit(rounds, ll_channels);
  }

  auto ctx_or = Context::Create();
  if (!ctx_or.ok()) {
    std::fprintf(stderr, "fault-worker: context setup failed: %s\n", ctx_or.status().ToString().c_str());
    return 2;
  }
  Context& ctx = **ctx_or;
  const int me = ctx.rank(), R = ctx.world_size();
  std::printf("fault-worker: ready rank %d pid %d\n", me, static_cast<int>(::getpid()));
  g_me = me;
  if (mask) return RunMasked(ctx, rounds, ll_channels, /*ignore_fault=*/false, /*normal_phase=*/true);
  if (exit_between >= 0) return RunExitBetween(ctx, exit_between);

  const std::unique_ptr<NormalBuffer> nb = CreateNormalBuffer(ctx);
  auto lb = LlBuffer::Create(ctx, LlConfig(R), 1);
  if (!lb.ok()) Fail(me, "LlBuffer::Create", -1, lb.status());
  if (Status s = ctx.bootstrap().Barrier("fault-worker-setup"); !s.ok()) Fail(me, "setup barrier", -1, s);

  for (int round = 0; round < rounds; ++round) {
    ProblemSpec spec = RoundSpec(ctx, 1000 + static_cast<uint64_t>(round));
    for (int r = 0; r < R; ++r) spec.num_tokens.push_back(kTokens - (3 * r + round) % 7);
    GeneratedProblem g(spec, me);
    const RefProblem& p = g.problem();

    // Normal mode: count exchange, dispatch, combine of the received rows.
    DispatchInput in;
    in.num_tokens = p.num_tokens[me];
    in.hidden = kHidden;
    in.dtype = TokenDtype::kBf16;
    in.x = g.x(me);
    in.num_experts = p.num_experts;
    in.topk = kTopk;
    in.topk_idx = p.topk_idx[me];
    in.topk_weights = p.topk_weights[me];
    DispatchOutput out;
    NormalHandle h;
    if (Status s = nb->Dispatch(in, &out, &h); !s.ok()) Fail(me, "normal dispatch", round, s);
    CombineInput cin;
    cin.hidden = kHidden;
    cin.y = As<bf16>(out.x).first(static_cast<size_t>(out.num_recv_tokens) * kHidden);
    CombineOutput cout;
    if (Status s = nb->Combine(h, cin, &cout); !s.ok()) Fail(me, "normal combine", round, s);

    // Low-latency mode: the same tokens (BF16), combined back with their weights.
    LlDispatchInput lin;
    lin.num_tokens = p.num_tokens[me];
    lin.hidden = kHidden;
    lin.x = As<bf16>(g.x(me));
    lin.topk = kTopk;
    lin.topk_idx = p.topk_idx[me];
    lin.use_fp8 = false;
    LlDispatchOutput lout;
    LlHandle lh;
    if (Status s = (*lb)->Dispatch(lin, &lout, &lh); !s.ok()) Fail(me, "low-latency dispatch", round, s);
    LlCombineInput lcin;
    lcin.y = As<bf16>(lout.x);
    lcin.topk_weights = p.topk_weights[me];
    LlCombineOutput lcout;
    if (Status s = (*lb)->Combine(lh, lcin, &lcout); !s.ok()) Fail(me, "low-latency combine", round, s);
  }
  std::printf("fault-worker: rank %d done (%d rounds)\n", me, rounds);
  if (Status s = ctx.bootstrap().Barrier("fault-worker-end"); !s.ok()) Fail(me, "final barrier", rounds, s);
  return 0;
}

}  // namespace
}  // namespace epx

int main(int argc, char** argv) {
  return epx::Main(argc, argv);
}
