// kernels/problem_gen.h: deterministic dispatch/combine inputs for tests and `epx-bench normal`.
//
// Every value is a pure function of (seed, rank, token, column), so each rank process can rebuild any
// other rank's inputs without communication: a rank materialises its own rows (the kernels' input)
// and the reference reads other ranks' rows through accessors that regenerate them on demand.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/dtypes.h"
#include "kernels/reference.h"

namespace epx {

struct ProblemSpec {
  int num_ranks = 1, local_size = 1, num_experts = 1, hidden = 128, topk = 1;
  TokenDtype dtype = TokenDtype::kBf16;
  std::vector<int> num_tokens;  // [R]
  uint64_t seed = 1;
  double p_none = 0.0;  // probability that a top-k slot is -1
  int hot_expert = -1;  // >= 0: slot 0 of every token is this expert (the rest distinct from it)
  bool with_weights = true;
  bool rank_coded = false;  // BF16 only: every element of row (s, t) has the bit pattern (s << 10 | t)
};

class GeneratedProblem {
 public:
  // Materialises the rows of `own_rank` (-1: of every rank) and the top-k of every rank.
  GeneratedProblem(const ProblemSpec& spec, int own_rank);
  GeneratedProblem(const GeneratedProblem&) = delete;  // the accessors point into this object
  GeneratedProblem& operator=(const GeneratedProblem&) = delete;

  const RefProblem& problem() const { return p_; }
  const ProblemSpec& spec() const { return spec_; }
  // Own rank's inputs, contiguous (empty for ranks that are not materialised).
  const std::vector<uint8_t>& x(int rank) const { return x_[rank]; }
  const std::vector<float>& scales(int rank) const { return scales_[rank]; }

  // BF16 row of (rank, token) before any FP8 cast: what the FP8 payload was made from.
  static void Bf16Row(const ProblemSpec& s, int rank, int token, bf16* out);
  // A BF16 row derived from (salt, a, b, c): expert outputs and biases in tests and benchmarks.
  static void HashRow(uint64_t salt, int a, int b, int c, int hidden, bf16* out);
  // Normal-mode expert outputs of `rank` for the rows of its reference dispatch d: row i = HashRow(salt,
  // rank, source, token), so a reference combine needs no data from other ranks. [d.num_rows, hidden].
  static std::vector<bf16> HashedOutputs(uint64_t salt, int rank, const RefDispatch& d, int hidden);

 private:
  void MakeRow(int rank, int token, uint8_t* x, float* scales) const;
  ProblemSpec spec_;
  RefProblem p_;
  std::vector<std::vector<uint8_t>> x_;
  std::vector<std::vector<float>> scales_;
  // Scratch for rows of ranks that are not materialised (the reference reads one row at a time).
  mutable std::vector<uint8_t> row_x_;
  mutable std::vector<float> row_scales_;
};

}  // namespace epx
