// tests/kernels/mr_check.h: small helpers shared by the multi-rank kernel suites: inputs from a
// GeneratedProblem, bitwise comparison of outputs with the serial references that say WHERE they differ
// (returned as text, so each suite adds its own context: iteration, seed, shape, rank), and an FNV-1a
// digest of the same fields, so that a long run can be summarised by one number that does not depend on
// timing, buffers or memory reuse.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/ll_reference.h"
#include "kernels/normal.h"
#include "kernels/problem_gen.h"
#include "kernels/reference.h"

namespace epx::test {

// FNV-1a, 64-bit. Written out here (not std::hash) because the value is printed and compared between
// runs, builds and machines.
struct Fnv1a {
  uint64_t h = 0xcbf29ce484222325ull;
  void Add(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  template <typename T>
  void Add(std::span<const T> v) {
    static_assert(std::is_trivially_copyable_v<T>);
    Add(static_cast<uint64_t>(v.size()));  // lengths too: [a][bc] and [ab][c] must differ
    Add(v.data(), v.size_bytes());
  }
  template <typename T>
  void Add(const std::vector<T>& v) {
    Add(std::span<const T>(v));
  }
  void Add(uint64_t v) { Add(&v, sizeof(v)); }
};

// Element-wise bitwise comparison. "" when equal; otherwise the name, how many elements differ and the
// first one (as row/column when `row` > 0 elements make a row), with both bit patterns.
template <typename T>
std::string DiffBits(const char* name, std::span<const T> got, std::span<const T> want, size_t row = 0) {
  static_assert(std::is_trivially_copyable_v<T>);
  if (got.size() != want.size())
    return fmt::format("{}: {} elements, want {}; ", name, got.size(), want.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 && bad++ == 0) first = i;
  if (bad == 0) return "";
  uint64_t g = 0, w = 0;
  std::memcpy(&g, &got[first], std::min(sizeof(T), sizeof(g)));
  std::memcpy(&w, &want[first], std::min(sizeof(T), sizeof(w)));
  const std::string at =
      row > 0 ? fmt::format("row {} column {}", first / row, first % row) : fmt::format("{}", first);
  return fmt::format("{}: {} of {} elements differ, first at {}: 0x{:x} vs 0x{:x}; ", name, bad, got.size(),
                     at, g, w);
}
template <typename T>
std::string DiffBits(const char* name, const std::vector<T>& got, const std::vector<T>& want,
                     size_t row = 0) {
  return DiffBits(name, std::span<const T>(got), std::span<const T>(want), row);
}

// ---- Normal mode ------------------------------------------------------------------------------------

// Rank `rank`'s Dispatch input of a problem whose rows of that rank are materialised.
inline DispatchInput NormalInputOf(const GeneratedProblem& g, int rank) {
  const RefProblem& p = g.problem();
  DispatchInput in;
  in.num_tokens = p.num_tokens[rank];
  in.hidden = p.hidden;
  in.dtype = p.dtype;
  in.x = g.x(rank);
  in.x_scales = g.scales(rank);
  in.num_experts = p.num_experts;
  in.topk = p.topk;
  in.topk_idx = p.topk_idx[rank];
  in.topk_weights = p.topk_weights[rank];
  return in;
}

// The DispatchOutput a rank must get, from the reference: `rows` rows (M, or num_worst_tokens with the
// unused tail of include/epx/normal.h), top-k only when `with_topk` (cached dispatch carries none).
inline DispatchOutput ExpectedNormalDispatch(const RefDispatch& ref, int hidden, TokenDtype dtype, int topk,
                                             int rows, bool with_topk) {
  const int M = ref.num_rows, K = with_topk ? topk : 0;
  const size_t hb = static_cast<size_t>(hidden) * DtypeBytes(dtype);
  const size_t nb = dtype == TokenDtype::kFp8 ? Fp8NumBlocks(hidden) : 0;
  DispatchOutput d;
  d.num_recv_tokens = M;
  d.num_rows = rows;
  d.hidden = hidden;
  d.dtype = dtype;
  d.x = ref.x;
  d.x.resize(rows * hb, 0);
  d.x_scales = ref.x_scales;
  d.x_scales.resize(rows * nb, 0.0f);
  if (with_topk) {
    d.topk_idx = ref.topk_idx;
    d.topk_idx.resize(static_cast<size_t>(rows) * K, -1);
    d.topk_weights = ref.topk_weights;
    d.topk_weights.resize(static_cast<size_t>(rows) * K, 0.0f);
  }
  d.src_idx = ref.src_idx;
  d.src_idx.resize(rows, -1);
  d.tokens_per_expert = ref.tokens_per_expert;
  return d;
}

inline std::string DiffNormalDispatch(const DispatchOutput& got, const DispatchOutput& want) {
  std::string d;
  if (got.num_recv_tokens != want.num_recv_tokens || got.num_rows != want.num_rows)
    d += fmt::format("rows: {} received of {}, want {} of {}; ", got.num_recv_tokens, got.num_rows,
                     want.num_recv_tokens, want.num_rows);
  const size_t K = want.topk_idx.size() / std::max(want.num_rows, 1);
  d += DiffBits("x", got.x, want.x, static_cast<size_t>(want.hidden) * DtypeBytes(want.dtype));
  d += DiffBits("x_scales", got.x_scales, want.x_scales, Fp8NumBlocks(want.hidden));
  d += DiffBits("topk_idx", got.topk_idx, want.topk_idx, K);
  d += DiffBits("topk_weights", got.topk_weights, want.topk_weights, K);
  d += DiffBits("src_idx", got.src_idx, want.src_idx);
  d += DiffBits("tokens_per_expert", got.tokens_per_expert, want.tokens_per_expert);
  return d;
}

inline void HashNormalDispatch(Fnv1a& f, const DispatchOutput& d) {
  f.Add(static_cast<uint64_t>(d.num_recv_tokens) << 32 | static_cast<uint32_t>(d.num_rows));
  f.Add(d.x);
  f.Add(d.x_scales);
  f.Add(d.topk_idx);
  f.Add(d.topk_weights);
  f.Add(d.src_idx);
  f.Add(d.tokens_per_expert);
}

// ---- Low-latency mode -----------------------------------------------------------------------------

// The low-latency view of a BF16 GeneratedProblem whose rows are all materialised (own_rank -1): the same
// tokens, routing and weights (every num_tokens must be <= max_tokens).
inline LlRefProblem LlProblemOf(const GeneratedProblem& g, int max_tokens) {
  const RefProblem& p = g.problem();
  LlRefProblem l;
  l.num_ranks = p.num_ranks;
  l.num_experts = p.num_experts;
  l.hidden = p.hidden;
  l.topk = p.topk;
  l.max_tokens = max_tokens;
  l.num_tokens = p.num_tokens;
  l.topk_idx = p.topk_idx;
  l.topk_weights = p.topk_weights;
  l.x_row = [row = p.x_row](int r, int t) { return static_cast<const bf16*>(row(r, t)); };
  return l;
}

// Shapes, count, src_info and layout_range exactly; payload and scales of the valid rows [0, count) only:
// rows past count are unspecified (kernels/ll.h) and hold whatever an earlier call left there.
inline std::string DiffLlDispatch(const LlRefDispatch& got, const LlRefDispatch& want) {
  if (got.local_experts != want.local_experts || got.rows != want.rows || got.hidden != want.hidden ||
      got.row_bytes != want.row_bytes || got.scale_row_bytes != want.scale_row_bytes)
    return fmt::format("shape: {} experts x {} rows, H {}, {} + {} B, want {} x {}, H {}, {} + {} B; ",
                       got.local_experts, got.rows, got.hidden, got.row_bytes, got.scale_row_bytes,
                       want.local_experts, want.rows, want.hidden, want.row_bytes, want.scale_row_bytes);
  std::string d = DiffBits("count", got.count, want.count);
  d += DiffBits("layout_range", got.layout_range, want.layout_range, want.count.size());
  d += DiffBits("src_info", got.src_info, want.src_info, want.rows);
  if (!d.empty()) return d;  // the valid rows are not even the same rows
  const size_t total = static_cast<size_t>(want.local_experts) * want.rows;
  if (got.x.size() < total * want.row_bytes || got.scales.size() < total * want.scale_row_bytes)
    return fmt::format("sizes: x {} scales {}, want >= {}, {}; ", got.x.size(), got.scales.size(),
                       total * want.row_bytes, total * want.scale_row_bytes);
  for (int e = 0; e < want.local_experts; ++e)
    for (int i = 0; i < want.count[e]; ++i) {
      const size_t row = static_cast<size_t>(e) * want.rows + i;
      const auto span_of = [row](const std::vector<uint8_t>& v, size_t n) {
        return std::span(v).subspan(row * n, n);
      };
      d += DiffBits("x", span_of(got.x, want.row_bytes), span_of(want.x, want.row_bytes));
      d += DiffBits("scales", span_of(got.scales, want.scale_row_bytes),
                    span_of(want.scales, want.scale_row_bytes));
      if (!d.empty()) return fmt::format("local expert {} row {} (of {}): {}", e, i, want.count[e], d);
    }
  return "";
}

inline void HashLlDispatch(Fnv1a& f, const LlRefDispatch& d) {
  f.Add(d.count);
  f.Add(d.layout_range);
  f.Add(d.src_info);
  for (size_t e = 0; e < d.count.size(); ++e) {
    const size_t first = e * d.rows, n = std::max(d.count[e], 0);
    const auto add_rows = [&](const std::vector<uint8_t>& v, size_t row_bytes) {
      const size_t begin = std::min(v.size(), first * row_bytes);
      f.Add(v.data() + begin, std::min(n * row_bytes, v.size() - begin));
    };
    add_rows(d.x, d.row_bytes);
    add_rows(d.scales, d.scale_row_bytes);
  }
}

}  // namespace epx::test
