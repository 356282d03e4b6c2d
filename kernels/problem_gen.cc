#include "kernels/problem_gen.h"

#include <cstring>

#include "kernels/fp8.h"

namespace epx {
namespace {

// splitmix64: a well-mixed 64-bit hash of a 64-bit input.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
uint64_t Hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return Mix(Mix(Mix(seed ^ a) ^ b) ^ c);
}

// Uniform in [-4, 4) with a few decimal-like steps: values every bit pattern of BF16 can be hit by.
float HashFloat(uint64_t h) {
  return static_cast<float>(static_cast<int64_t>(h % 8192) - 4096) / 1024.0f;
}

}  // namespace

void GeneratedProblem::HashRow(uint64_t salt, int a, int b, int c, int hidden, bf16* out) {
  const uint64_t base = Hash(salt, a, b, c);
  for (int j = 0; j < hidden; ++j) out[j] = FloatToBf16(HashFloat(Mix(base + j)));
}

std::vector<bf16> GeneratedProblem::HashedOutputs(uint64_t salt, int rank, const RefDispatch& d, int hidden) {
  std::vector<bf16> y(static_cast<size_t>(d.num_rows) * hidden);
  for (int i = 0; i < d.num_rows; ++i)
    HashRow(salt, rank, d.src_rank[i], d.src_idx[i], hidden, &y[static_cast<size_t>(i) * hidden]);
  return y;
}

void GeneratedProblem::Bf16Row(const ProblemSpec& s, int rank, int token, bf16* out) {
  if (s.rank_coded) {
    const bf16 v{static_cast<uint16_t>((rank << 10 | token) & 0x7fff)};
    for (int j = 0; j < s.hidden; ++j) out[j] = v;
  } else {
    HashRow(s.seed, 1, rank, token, s.hidden, out);
  }
}

void GeneratedProblem::MakeRow(int rank, int token, uint8_t* x, float* scales) const {
  if (spec_.dtype == TokenDtype::kBf16) {
    Bf16Row(spec_, rank, token, reinterpret_cast<bf16*>(x));
    return;
  }
  std::vector<bf16> row(spec_.hidden);  // FP8 path: tests and --check only, never timed
  Bf16Row(spec_, rank, token, row.data());
  CastRowToFp8(row.data(), spec_.hidden, Fp8Options{}, x, scales);
}

GeneratedProblem::GeneratedProblem(const ProblemSpec& spec, int own_rank) : spec_(spec) {
  const int R = spec.num_ranks, H = spec.hidden, K = spec.topk, E = spec.num_experts;
  const size_t hb = static_cast<size_t>(H) * DtypeBytes(spec.dtype), nb = Fp8NumBlocks(H);
  const bool fp8 = spec.dtype == TokenDtype::kFp8;
  p_.num_ranks = R;
  p_.local_size = spec.local_size;
  p_.num_experts = E;
  p_.hidden = H;
  p_.topk = K;
  p_.dtype = spec.dtype;
  p_.num_tokens = spec.num_tokens;
  p_.with_weights = spec.with_weights;
  p_.topk_idx.resize(R);
  p_.topk_weights.resize(R);
  x_.resize(R);
  scales_.resize(R);
  std::vector<int> perm(E);
  for (int r = 0; r < R; ++r) {
    const int N = spec.num_tokens[r];
    auto& idx = p_.topk_idx[r];
    idx.resize(static_cast<size_t>(N) * K);
    if (spec.with_weights) p_.topk_weights[r].resize(static_cast<size_t>(N) * K);
    for (int t = 0; t < N; ++t) {
      // K distinct experts: a partial Fisher-Yates shuffle driven by the hash.
      for (int e = 0; e < E; ++e) perm[e] = e;
      int first = 0;
      if (spec.hot_expert >= 0) {
        std::swap(perm[0], perm[spec.hot_expert]);
        first = 1;
      }
      for (int k = first; k < K; ++k) {
        const int j =
            k + static_cast<int>(Hash(spec.seed, 2, r, static_cast<uint64_t>(t) * 1024 + k) % (E - k));
        std::swap(perm[k], perm[j]);
      }
      for (int k = 0; k < K; ++k) {
        const uint64_t h = Hash(spec.seed, 3, r, static_cast<uint64_t>(t) * 1024 + k);
        const bool none =
            spec.p_none > 0 && static_cast<double>(h % 1000000) < spec.p_none * 1e6 && k >= first;
        idx[static_cast<size_t>(t) * K + k] = none ? -1 : perm[k];
        if (spec.with_weights)
          p_.topk_weights[r][static_cast<size_t>(t) * K + k] =
              static_cast<float>(Mix(h) % 100000) / 100000.0f;
      }
    }
    if (own_rank == -1 || own_rank == r) {
      x_[r].resize(N * hb);
      if (fp8) scales_[r].resize(N * nb);
      for (int t = 0; t < N; ++t) MakeRow(r, t, &x_[r][t * hb], fp8 ? &scales_[r][t * nb] : nullptr);
    }
  }
  row_x_.resize(hb);
  row_scales_.resize(nb);
  // Accessors: materialised rows directly, others regenerated into the scratch row. The scale of an
  // FP8 row is produced together with its bytes, so scale_row regenerates too (cheap, tests only).
  p_.x_row = [this, hb](int rank, int token) -> const void* {
    if (!x_[rank].empty()) return &x_[rank][token * hb];
    MakeRow(rank, token, row_x_.data(), row_scales_.data());
    return row_x_.data();
  };
  p_.scale_row = [this, nb](int rank, int token) -> const float* {
    if (!scales_[rank].empty()) return &scales_[rank][token * nb];
    MakeRow(rank, token, row_x_.data(), row_scales_.data());
    return row_scales_.data();
  };
}

}  // namespace epx
