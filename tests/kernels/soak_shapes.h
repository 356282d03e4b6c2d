// tests/kernels/soak_shapes.h: the soak test's (soak_mr_test.cc) buffers, run parameters and random shapes,
// and the expert outputs it feeds to combine: everything that is a pure function of (seed, iteration,
// rank), so that every rank draws the same sequence of calls without talking.
#pragma once

#include <epx/low_latency.h>
#include <epx/normal.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/fp8.h"
#include "kernels/problem_gen.h"
#include "tests/kernels/mr_check.h"
#include "tests/transport/mr_env.h"

namespace epx::soak {

using test::Ctx;

inline constexpr int64_t kDefaultIters = 600;  // the CI size (tests/kernels/CMakeLists.txt)
inline constexpr uint64_t kDefaultSeed = 0x5eed0007;
inline constexpr int kMaxReported = 3;  // detailed failure reports per rank; the rest are counted

// ---- Buffers ----------------------------------------------------------------------------------------------
// Small shapes (4 ranks share 2 cores) that still reach the corners: H up to 3 FP8 blocks (an odd multiple
// of 128) and below one, E/R from 1 to 16, T_max from 8 to 64, depths 2..4 and 1..3 channels (1 is the
// inline path). All of it takes a few MiB of heap; the test prints the sum.

inline constexpr NormalLimits kNormalLimits{.max_hidden = 384, .max_topk = 8, .max_local_experts = 16};
inline constexpr int kNormalMaxTokens = 96;
inline constexpr int kHiddens[] = {1, 7, 64, 100, 128, 200, 256, 300, 384};

struct LlSetup {
  const char* name;
  int max_tokens, hidden, topk, experts_per_rank, depth, channels;
};
inline constexpr LlSetup kLlSetups[] = {
    {"A", 32, 256, 8, 9, 3, 2},  // E = 9R: never a power of two
    {"B", 8, 384, 4, 4, 2, 1},   // DeepEP's double buffering, the caller's thread does the data path
    {"C", 64, 128, 2, 1, 4, 3},  // one expert per rank: every routed token of a rank goes to one row block
};
inline constexpr int kNumLl = sizeof(kLlSetups) / sizeof(kLlSetups[0]);

inline LowLatencyConfig LlConfigOf(const LlSetup& s) {
  LowLatencyConfig c;
  c.max_tokens = s.max_tokens;
  c.hidden = s.hidden;
  c.topk = s.topk;
  c.num_experts = s.experts_per_rank * Ctx().world_size();
  c.num_ranks = Ctx().world_size();
  c.depth = s.depth;
  return c;
}

inline NormalConfig MainNormalConfig() {
  auto cfg = NormalConfig::FromEnv();
  EXPECT_TRUE(cfg.ok()) << cfg.status().ToString();
  NormalConfig c = cfg.ok() ? *cfg : NormalConfig{};
  // Two channels unless the environment says otherwise: auto gives one per core, and the soak must run
  // several per rank.
  if (std::getenv("EPX_NORMAL_CHANNELS") == nullptr) c.num_channels = 2;
  return c;
}
// Rings of two slots with more channels: credits wrap on nearly every token.
inline NormalConfig TinyNormalConfig() {
  NormalConfig c;
  c.num_channels = 3;
  c.node_slots = c.rdma_slots = 2;
  c.node_chunk = c.rdma_chunk = 1;
  return c;
}

// ---- Run parameters ---------------------------------------------------------------------------------------

inline uint64_t EnvUint(const char* name, uint64_t dflt, uint64_t max) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return dflt;
  char* end = nullptr;
  errno = 0;
  const unsigned long long x = std::strtoull(v, &end, 0);
  if (*end != '\0' || *v == '-' || errno != 0 || x > max) {
    std::fprintf(stderr, "rank %d: %s='%s' is not an integer in [0, %llu] (0x... for hex)\n", Ctx().rank(),
                 name, v, static_cast<unsigned long long>(max));
    std::exit(2);
  }
  return x;
}

inline std::string EnvOr(const char* name, const char* dflt) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : dflt;
}

struct Params {
  uint64_t seed = kDefaultSeed;
  int64_t first = 0, iters = kDefaultIters;
  // A command that runs iteration `iter` alone in the same world (the environment that shapes it included).
  std::string Replay(int64_t iter) const {
    const Placement& pl = Ctx().placement();
    char exe[4096] = "soak_mr_test";
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) exe[n] = '\0';
    return fmt::format(
        "EPX_SOAK_SEED={:#x} EPX_SOAK_FIRST={} EPX_SOAK_ITERS=1 EPX_HEAP_SIZE={} EPX_TIMEOUT={}{} epx-run -n "
        "{}{} "
        "-- {}",
        seed, iter, EnvOr("EPX_HEAP_SIZE", "(default)"), EnvOr("EPX_TIMEOUT", "(default)"),
        pl.num_nodes > 1 ? " EPX_RDMA=" + EnvOr("EPX_RDMA", "auto") : "", pl.world_size,
        pl.num_nodes > 1 ? fmt::format(" --nodes {}", pl.num_nodes) : "", exe);
  }
};

// ---- Shapes -----------------------------------------------------------------------------------------------

inline uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The draws of one iteration: a pure function of (seed, iteration).
struct Rng {
  Rng(uint64_t seed, int64_t iter) : s(Mix(seed) ^ Mix(static_cast<uint64_t>(iter) + 0x50a6)) {}
  uint64_t Next() { return s = Mix(s); }
  int Below(int n) { return n <= 1 ? 0 : static_cast<int>(Next() % static_cast<uint64_t>(n)); }
  bool Chance(int percent) { return Below(100) < percent; }
  double PNone() { return std::array{0.0, 0.0, 0.1, 0.3, 0.9}[Below(5)]; }
  // 0, 1 and the maximum each a tenth of the time: the edges are where counts go wrong.
  int Tokens(int max) {
    const int c = Below(10);
    return c == 0 ? 0 : c == 1 ? std::min(1, max) : c == 2 ? max : 2 + Below(std::max(max - 1, 1));
  }
  int Hidden(int max) {
    if (Chance(25)) return max;
    int n = 0;
    while (n < static_cast<int>(std::size(kHiddens)) && kHiddens[n] <= max) ++n;
    return kHiddens[Below(n)];
  }
  uint64_t s;
};

// A problem over the world's ranks: routing, weights and rows all from spec.seed.
inline ProblemSpec SpecOf(Rng& rng, int experts, int topk, int hidden, int max_tokens) {
  const Placement& pl = Ctx().placement();
  ProblemSpec p;
  p.num_ranks = pl.world_size;
  p.local_size = pl.local_size;
  p.num_experts = experts;
  p.topk = topk;
  p.hidden = hidden;
  p.seed = rng.Next();
  p.p_none = rng.PNone();
  p.hot_expert = rng.Chance(10) ? rng.Below(experts) : -1;
  for (int r = 0; r < pl.world_size; ++r) p.num_tokens.push_back(rng.Tokens(max_tokens));
  return p;
}

inline std::string SpecString(const ProblemSpec& p) {
  return fmt::format("E={} K={} H={} N=[{}] p_none={} hot={} problem seed {:#x}", p.num_experts, p.topk,
                     p.hidden, fmt::join(p.num_tokens, ","), p.p_none, p.hot_expert, p.seed);
}

struct NormalShape {
  ProblemSpec spec;
  bool tiny = false;  // the two-slot-ring buffer
  int alignment = 1;
  bool worst = false;  // num_worst_tokens = all tokens of all ranks (+ 0..2)
  int worst_extra = 0;
  bool cached = false;  // a cached dispatch (new x when BF16) before the combine
  bool weights = true, bias0 = false, bias1 = false;
  std::string ToString() const {
    return fmt::format("normal{} {} {} align={} worst={} cached={} combine weights={} bias0={} bias1={}",
                       tiny ? " (tiny rings)" : "", spec.dtype == TokenDtype::kFp8 ? "FP8" : "BF16",
                       SpecString(spec), alignment, worst ? fmt::format("all+{}", worst_extra) : "no", cached,
                       weights, bias0, bias1);
  }
};

inline NormalShape DrawNormal(Rng& rng) {
  NormalShape s;
  const int R = Ctx().world_size();
  const int epr = std::array{1, 2, 3, 4, 5, 8, 9, 16}[rng.Below(8)];
  const int K = 1 + rng.Below(std::min(kNormalLimits.max_topk, epr * R));
  s.tiny = rng.Chance(20);
  // Tiny rings wrap within a few tokens already, and each token there costs thread switches.
  s.spec = SpecOf(rng, epr * R, K, rng.Hidden(kNormalLimits.max_hidden), s.tiny ? 24 : kNormalMaxTokens);
  s.spec.dtype = rng.Chance(35) ? TokenDtype::kFp8 : TokenDtype::kBf16;
  s.alignment = std::array{1, 1, 1, 4, 32}[rng.Below(5)];
  s.worst = rng.Chance(15);
  s.worst_extra = rng.Below(3);
  s.cached = rng.Chance(15);
  s.weights = rng.Chance(75);
  s.bias0 = rng.Chance(30);
  s.bias1 = rng.Chance(30);
  return s;
}

enum class OutMode { kVector, kCallerSpan, kZeroCopy };
inline constexpr const char* kModeNames[] = {"out->x", "out=", "zero-copy"};

struct LlCall {
  ProblemSpec spec;
  bool fp8 = false;
  Fp8Options fp8_opt;
  OutMode mode = OutMode::kVector;
  bool combine_two_phase = false;
  std::string ToString() const {
    return fmt::format("{{{} {}{}{} combine {}{}}}", SpecString(spec), fp8 ? "FP8" : "BF16",
                       fp8 && fp8_opt.round_scale ? " round_scale" : "", fp8 && fp8_opt.ue8m0 ? " ue8m0" : "",
                       kModeNames[static_cast<int>(mode)], combine_two_phase ? " two-phase" : "");
  }
};

// kOneCall: dispatch, combine. kTwoPhase: each with a hook and Receive. kPair: two micro-batches'
// dispatches in flight (received in either order), then their combines. kOverlap: DeepEP's overlap, the
// dispatch of b in flight while a combines.
enum class LlVariant { kOneCall, kTwoPhase, kPair, kOverlap };
inline constexpr const char* kVariantNames[] = {"one-call", "two-phase", "pair", "overlap"};

struct LlShape {
  int setup = 0;
  LlVariant variant = LlVariant::kOneCall;
  bool reverse = false;  // kPair: receive b before a
  LlCall a, b;
  bool two() const { return variant == LlVariant::kPair || variant == LlVariant::kOverlap; }
  std::string ToString() const {
    const LlSetup& s = kLlSetups[setup];
    return fmt::format("ll buffer {} (T_max={} H={} K={} E/R={} D={} C={}) {}{}: a {}{}", s.name,
                       s.max_tokens, s.hidden, s.topk, s.experts_per_rank, s.depth, s.channels,
                       kVariantNames[static_cast<int>(variant)], reverse ? " reversed" : "", a.ToString(),
                       two() ? " b " + b.ToString() : "");
  }
};

inline LlCall DrawLlCall(Rng& rng, const LlSetup& s) {
  LlCall c;
  const int E = s.experts_per_rank * Ctx().world_size();
  c.spec = SpecOf(rng, E, 1 + rng.Below(std::min(s.topk, E)), rng.Hidden(s.hidden), s.max_tokens);
  c.fp8 = rng.Chance(50);
  const int o = rng.Below(3);
  c.fp8_opt = Fp8Options{.round_scale = o >= 1, .ue8m0 = o == 2};
  c.mode = static_cast<OutMode>(rng.Below(3));
  c.combine_two_phase = rng.Chance(50);
  return c;
}

inline LlShape DrawLl(Rng& rng) {
  LlShape s;
  s.setup = rng.Below(kNumLl);
  s.variant = static_cast<LlVariant>(rng.Below(4));
  s.reverse = rng.Chance(50) && s.variant == LlVariant::kPair;
  s.a = DrawLlCall(rng, kLlSetups[s.setup]);
  if (s.two()) s.b = DrawLlCall(rng, kLlSetups[s.setup]);
  if (s.variant == LlVariant::kOneCall) s.a.combine_two_phase = false;
  if (s.variant == LlVariant::kTwoPhase) s.a.combine_two_phase = true;
  return s;
}

struct Shape {
  bool normal = true;
  NormalShape n;
  LlShape l;
  std::string ToString() const { return normal ? n.ToString() : l.ToString(); }
  std::string Kind() const {
    return normal
               ? (n.tiny ? "normal tiny" : "normal")
               : fmt::format("ll {} {}", kLlSetups[l.setup].name, kVariantNames[static_cast<int>(l.variant)]);
  }
};
inline Shape DrawShape(uint64_t seed, int64_t iter) {
  Rng rng(seed, iter);
  Shape s;
  s.normal = rng.Chance(60);
  if (s.normal)
    s.n = DrawNormal(rng);
  else
    s.l = DrawLl(rng);
  return s;
}

// ---- Expert outputs ---------------------------------------------------------------------------------------
// y is computed from the received rows (dequantised for FP8), scaled by a factor of the rank and local
// expert that is not a power of two: each contribution to a sum differs and rounds, so a reduction in the
// wrong order, a row of the wrong rank or a row sent back to the wrong top-k slot changes bits.

inline float ExpertFactor(int rank, int local_expert) {
  return 0.75f + 0.3125f * static_cast<float>(rank) + 0.1875f * static_cast<float>(local_expert);
}

inline void ExpertRow(const uint8_t* x, const void* scales, bool fp8, bool ue8m0, int H, float factor,
                      float* tmp, bf16* y) {
  if (fp8) {
    CastRowFromFp8(x, scales, H, ue8m0, tmp);
  } else {
    for (int j = 0; j < H; ++j) tmp[j] = Bf16ToFloat(reinterpret_cast<const bf16*>(x)[j]);
  }
  for (int j = 0; j < H; ++j) y[j] = FloatToBf16(tmp[j] * factor);
}

// Normal mode: [rows, H] for the dispatch output rows of `rank` (x / x_scales as DispatchOutput holds them).
inline std::vector<bf16> NormalExpertOutputs(std::span<const uint8_t> x, std::span<const float> scales,
                                             int rows, int H, TokenDtype dtype, int rank) {
  const bool fp8 = dtype == TokenDtype::kFp8;
  const size_t hb = static_cast<size_t>(H) * DtypeBytes(dtype), nb = fp8 ? Fp8NumBlocks(H) : 0;
  std::vector<bf16> y(static_cast<size_t>(rows) * H);
  std::vector<float> tmp(H);
  for (int i = 0; i < rows && (i + 1) * hb <= x.size() && (i + 1) * nb <= scales.size(); ++i)
    ExpertRow(&x[i * hb], fp8 ? &scales[i * nb] : nullptr, fp8, false, H, ExpertFactor(rank, 0), tmp.data(),
              &y[static_cast<size_t>(i) * H]);
  return y;
}

// Low-latency mode: [E_local, R*T_max, H] from what `rank` received; rows past count are NaN, so a combine
// that read one would show it.
inline std::vector<bf16> LlExpertOutputs(const LlRefDispatch& d, bool fp8, bool ue8m0, int rank) {
  const int H = d.hidden;
  std::vector<bf16> y(static_cast<size_t>(d.local_experts) * d.rows * H, bf16{0x7fc0});
  std::vector<float> tmp(H);
  if (d.count.size() != static_cast<size_t>(d.local_experts)) return y;  // a broken dispatch: reported
  for (int e = 0; e < d.local_experts; ++e)
    for (int i = 0; i < std::min(d.count[e], d.rows); ++i) {
      const size_t row = static_cast<size_t>(e) * d.rows + i;
      if ((row + 1) * d.row_bytes > d.x.size() || (row + 1) * d.scale_row_bytes > d.scales.size()) return y;
      ExpertRow(d.row(e, i), d.scales.data() + row * d.scale_row_bytes, fp8, ue8m0, H, ExpertFactor(rank, e),
                tmp.data(), &y[row * H]);
    }
  return y;
}

}  // namespace epx::soak
