#include "bench/mpi/mpi_baseline.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/bf16_math.h"
#include "kernels/fp8.h"

namespace epx {
namespace {

// Grows v to at least n elements; never shrinks, so a buffer reaches its high-water mark once and later
// calls of the same (or a smaller) shape neither allocate nor touch memory they do not use.
template <typename T>
T* Grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

template <typename T>
size_t Bytes(const std::vector<T>& v) {
  return v.capacity() * sizeof(T);
}

size_t RoundUp(size_t v, size_t a) {
  return (v + a - 1) / a * a;
}

Status MpiStatus(int rc, const char* what, int rank) {
  if (rc == MPI_SUCCESS) return Status::Ok();
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  return EPX_ERROR(kTransport, "mpi baseline rank {}: {} failed: {}", rank, what, std::string(msg, len));
}

// Exclusive prefix sum of counts into displs; returns the total.
int Prefix(const std::vector<int>& counts, std::vector<int>& displs, int n) {
  int sum = 0;
  for (int i = 0; i < n; ++i) {
    displs[i] = sum;
    sum += counts[i];
  }
  return sum;
}

// ---- Count-exchange headers ------------------------------------------------------------------------
// Every dispatch starts with one MPI_Alltoall of a fixed-size header per destination. Besides the counts it
// carries the caller's shape, and an "ok" word that a rank whose own input is invalid sets to 0: every
// rank then sees the problem in the same collective and all fail together (no rank is left waiting in a
// later Alltoallv that the failing rank never enters).

// Normal header: {ok, rows for this destination, H, K, E, dtype, has weights}.
constexpr int kNormalHdr = 7;
constexpr const char* kNormalHdrNames[kNormalHdr] = {"ok",          "rows",  "hidden",      "topk",
                                                     "num_experts", "dtype", "with_weights"};
// Low-latency header: {ok, records (pairs) for this destination, H, K, E, T_max, FP8 mode}. Per-expert
// counts need no header: each record names its local expert, and a source's records arrive sorted by it.
constexpr int kLlHdr = 7;
constexpr const char* kLlHdrNames[kLlHdr] = {"ok",          "records",    "hidden",  "topk",
                                             "num_experts", "max_tokens", "FP8 mode"};

int LlMode(const LlDispatchOptions& o) {
  if (!o.use_fp8) return 0;
  return o.fp8.ue8m0 ? 3 : o.fp8.round_scale ? 2 : 1;
}

// Normal metadata record of one row: int64 local topk_idx[K], float weights[K], int32 source token.
size_t NormalMetaBytes(int topk) {
  return RoundUp(12 * static_cast<size_t>(topk) + 4, 8);
}

// Low-latency record of one (token, expert) pair:
//   [scales][int32 token][int32 local expert][pad to 16][x row][pad to 16].
// Scales first keeps every float/int32 aligned whatever H is; x rows are copied with memcpy anyway.
struct LlRecord {
  size_t scale_bytes, token_off, x_off, row_bytes, bytes;
  LlRecord(int hidden, const LlDispatchOptions& opt) {
    scale_bytes = LlScaleRowBytes(hidden, opt);
    token_off = scale_bytes;
    x_off = RoundUp(scale_bytes + 8, 16);
    row_bytes = static_cast<size_t>(hidden) * (opt.use_fp8 ? 1 : 2);
    bytes = RoundUp(x_off + row_bytes, 16);
  }
};

Status ValidateNormal(const MpiNormalInput& in, int R, int me) {
  const int N = in.num_tokens, H = in.hidden, K = in.topk, E = in.num_experts;
  if (N < 0 || H < 1 || K < 1 || E < 1 || E % R != 0 || in.expert_alignment < 1)
    return EPX_ERROR(kInvalidArgument,
                     "mpi normal dispatch on rank {}: N={} H={} K={} E={} alignment={} with R={}", me, N, H,
                     K, E, in.expert_alignment, R);
  const bool fp8 = in.dtype == TokenDtype::kFp8;
  const size_t n = static_cast<size_t>(N);
  if (in.x.size() != n * H * DtypeBytes(in.dtype) || in.topk_idx.size() != n * K ||
      (fp8 && in.x_scales.size() != n * Fp8NumBlocks(H)) || (!fp8 && !in.x_scales.empty()) ||
      in.topk_weights.size() != (in.with_weights ? n * K : 0))
    return EPX_ERROR(
        kInvalidArgument,
        "mpi normal dispatch on rank {}: spans x={} scales={} topk_idx={} weights={} do not match N={} H={} "
        "K={} {}",
        me, in.x.size(), in.x_scales.size(), in.topk_idx.size(), in.topk_weights.size(), N, H, K,
        fp8 ? "FP8" : "BF16");
  for (size_t i = 0; i < in.topk_idx.size(); ++i)
    if (in.topk_idx[i] < -1 || in.topk_idx[i] >= E)
      return EPX_ERROR(kInvalidArgument,
                       "mpi normal dispatch on rank {}: token {} slot {}: expert {} not in [-1, {})", me,
                       i / K, i % K, in.topk_idx[i], E);
  return Status::Ok();
}

Status ValidateLl(const MpiLlInput& in, int R, int me) {
  const int N = in.num_tokens, H = in.hidden, K = in.topk, E = in.num_experts;
  if (H < 1 || K < 1 || E < 1 || E % R != 0 || in.max_tokens < 0 || N < 0 || N > in.max_tokens)
    return EPX_ERROR(kInvalidArgument, "mpi ll dispatch on rank {}: N={} T_max={} H={} K={} E={} with R={}",
                     me, N, in.max_tokens, H, K, E, R);
  if (in.opt.use_fp8 && in.opt.fp8.ue8m0 && !in.opt.fp8.round_scale)
    return EPX_ERROR(kInvalidArgument, "mpi ll dispatch on rank {}: ue8m0 needs round_scale", me);
  const size_t n = static_cast<size_t>(N);
  if (in.x.size() != n * H || in.topk_idx.size() != n * K)
    return EPX_ERROR(kInvalidArgument,
                     "mpi ll dispatch on rank {}: spans x={} topk_idx={} do not match N={} H={} K={}", me,
                     in.x.size(), in.topk_idx.size(), N, H, K);
  for (int t = 0; t < N; ++t)
    for (int k = 0; k < K; ++k) {
      const int64_t e = in.topk_idx[static_cast<size_t>(t) * K + k];
      if (e < -1 || e >= E)
        return EPX_ERROR(kInvalidArgument,
                         "mpi ll dispatch on rank {}: token {} slot {}: expert {} not in [-1, {})", me, t, k,
                         e, E);
      for (int j = 0; j < k && e >= 0; ++j)
        if (in.topk_idx[static_cast<size_t>(t) * K + j] == e)
          return EPX_ERROR(kInvalidArgument, "mpi ll dispatch on rank {}: token {} selects expert {} twice",
                           me, t, e);
    }
  return Status::Ok();
}

// Checks the headers received from every source against this rank's: returns the first problem.
Status CheckHeaders(const char* what, int me, const std::vector<int>& hdr, int stride, int R, const int* mine,
                    int first_shape, int num_shape, const char* const* names) {
  for (int s = 0; s < R; ++s) {
    const int* h = &hdr[static_cast<size_t>(s) * stride];
    if (h[0] != 1)
      return EPX_ERROR(kInvalidArgument, "{} on rank {}: rank {} has invalid input (it reports why)", what,
                       me, s);
    for (int i = first_shape; i < first_shape + num_shape; ++i)
      if (h[i] != mine[i])
        return EPX_ERROR(kInvalidArgument, "{} on rank {}: rank {} disagrees on {}: {} there, {} here", what,
                         me, s, names[i], h[i], mine[i]);
  }
  return Status::Ok();
}

}  // namespace

// ---- Workspace ---------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<MpiWorkspace>> MpiWorkspace::Create(MPI_Comm comm) {
  std::unique_ptr<MpiWorkspace> ws(new MpiWorkspace());
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  EPX_RETURN_IF_ERROR(MpiStatus(MPI_Comm_dup(comm, &ws->comm_), "MPI_Comm_dup", rank));
  EPX_RETURN_IF_ERROR(
      MpiStatus(MPI_Comm_set_errhandler(ws->comm_, MPI_ERRORS_RETURN), "set_errhandler", rank));
  MPI_Comm_rank(ws->comm_, &ws->rank_);
  MPI_Comm_size(ws->comm_, &ws->size_);
  const int R = ws->size_;
  for (auto* v :
       {&ws->scratch_, &ws->n_.send_counts, &ws->n_.send_displs, &ws->n_.recv_counts, &ws->n_.recv_displs,
        &ws->n_.mpi_send_counts, &ws->n_.mpi_recv_counts, &ws->l_.send_counts, &ws->l_.send_displs,
        &ws->l_.recv_counts, &ws->l_.recv_displs, &ws->l_.mpi_send_counts, &ws->l_.mpi_recv_counts})
    v->assign(R, 0);
  return ws;
}

MpiWorkspace::~MpiWorkspace() {
  for (auto& [bytes, type] : types_) MPI_Type_free(&type);
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

StatusOr<MPI_Datatype> MpiWorkspace::RowType(size_t bytes) {
  for (const auto& [b, type] : types_)
    if (b == bytes) return type;
  MPI_Datatype type;
  EPX_RETURN_IF_ERROR(
      MpiStatus(MPI_Type_contiguous(static_cast<int>(bytes), MPI_BYTE, &type), "MPI_Type_contiguous", rank_));
  EPX_RETURN_IF_ERROR(MpiStatus(MPI_Type_commit(&type), "MPI_Type_commit", rank_));
  types_.emplace_back(bytes, type);
  return type;
}

size_t MpiWorkspace::bytes() const {
  return Bytes(n_.slot) + Bytes(n_.send_x) + Bytes(n_.send_scales) + Bytes(n_.send_meta) +
         Bytes(n_.recv_meta) + Bytes(n_.back_y) + Bytes(n_.back_w) + Bytes(n_.acc) + Bytes(l_.expert_cursor) +
         Bytes(l_.pair_pos) + Bytes(l_.pair_rank) + Bytes(l_.recv_row) + Bytes(l_.send_rec) +
         Bytes(l_.recv_rec) + Bytes(l_.back_send) + Bytes(l_.back_recv) + Bytes(l_.acc) + Bytes(send_hdr_) +
         Bytes(recv_hdr_);
}

// ---- Normal dispatch -----------------------------------------------------------------------------------

Status MpiNormalDispatch(MpiWorkspace& ws, const MpiNormalInput& in, RefDispatch* out) {
  const int R = ws.size_, me = ws.rank_;
  auto& n = ws.n_;
  n.valid = false;
  Status local = ValidateNormal(in, R, me);
  const int N = in.num_tokens, H = in.hidden, K = in.topk, E = in.num_experts;
  const int epr = local.ok() ? E / R : 1, nb = Fp8NumBlocks(std::max(H, 1));
  const bool fp8 = in.dtype == TokenDtype::kFp8, weights = in.with_weights;
  const size_t row_bytes = static_cast<size_t>(std::max(H, 0)) * DtypeBytes(in.dtype);
  const size_t meta_bytes = NormalMetaBytes(std::max(K, 0));

  // Routing: slot[t * R + r] = row of token t in the send buffer block of rank r (-1: not sent there).
  // Rows of one destination are in token order, so the receiver gets (source, token) order for free.
  int sent = 0;
  Grow(ws.send_hdr_, static_cast<size_t>(R) * kNormalHdr);
  Grow(ws.recv_hdr_, static_cast<size_t>(R) * kNormalHdr);
  if (local.ok()) {
    int32_t* slot = Grow(n.slot, static_cast<size_t>(N) * R);
    std::fill(slot, slot + static_cast<size_t>(N) * R, -1);
    std::fill(n.send_counts.begin(), n.send_counts.end(), 0);
    for (int t = 0; t < N; ++t)
      for (int k = 0; k < K; ++k) {
        const int64_t e = in.topk_idx[static_cast<size_t>(t) * K + k];
        if (e < 0) continue;
        int32_t& s = slot[static_cast<size_t>(t) * R + e / epr];
        if (s < 0) {
          s = 0;  // "goes there"; the row is assigned below, in token order
          ++n.send_counts[e / epr];
        }
      }
    sent = Prefix(n.send_counts, n.send_displs, R);
    std::vector<int>& cursor = ws.scratch_;
    std::copy(n.send_displs.begin(), n.send_displs.end(), cursor.begin());
    for (size_t i = 0; i < static_cast<size_t>(N) * R; ++i)
      if (slot[i] >= 0) slot[i] = cursor[i % R]++;
  }
  for (int r = 0; r < R; ++r) {
    int* h = &ws.send_hdr_[static_cast<size_t>(r) * kNormalHdr];
    const int hdr[kNormalHdr] = {
        local.ok() ? 1 : 0, local.ok() ? n.send_counts[r] : 0, H, K, E, static_cast<int>(in.dtype),
        weights ? 1 : 0};
    std::copy(hdr, hdr + kNormalHdr, h);
  }
  EPX_RETURN_IF_ERROR(MpiStatus(MPI_Alltoall(ws.send_hdr_.data(), kNormalHdr, MPI_INT, ws.recv_hdr_.data(),
                                             kNormalHdr, MPI_INT, ws.comm_),
                                "MPI_Alltoall (normal counts)", me));
  if (!local.ok()) return local;
  EPX_RETURN_IF_ERROR(CheckHeaders("mpi normal dispatch", me, ws.recv_hdr_, kNormalHdr, R,
                                   &ws.send_hdr_[static_cast<size_t>(me) * kNormalHdr], 2, 5,
                                   kNormalHdrNames));
  for (int s = 0; s < R; ++s) n.recv_counts[s] = ws.recv_hdr_[static_cast<size_t>(s) * kNormalHdr + 1];
  const int M = Prefix(n.recv_counts, n.recv_displs, R);

  // Outputs first: this rank's own rows are copied into them while packing. x and scales of the other
  // ranks are received in place (MPI's receive order, by source rank then token, is the output order).
  out->num_rows = M;
  out->x.resize(static_cast<size_t>(M) * row_bytes);
  out->x_scales.resize(fp8 ? static_cast<size_t>(M) * nb : 0);
  out->topk_idx.resize(static_cast<size_t>(M) * K);
  out->topk_weights.resize(weights ? static_cast<size_t>(M) * K : 0);
  out->src_rank.resize(M);
  out->src_idx.resize(M);
  out->tokens_per_expert.assign(epr, 0);

  // Pack whole rows per destination (a token going to several ranks is copied once per rank), with its
  // metadata record: top-k remapped to the destination's local ids here, so the receiver only copies.
  // Own rows go straight to the output (their x/scales Alltoallv count is 0); their metadata still takes
  // the metadata Alltoallv (small), which keeps the unpacking below uniform.
  n.self_shift = n.recv_displs[me] - n.send_displs[me];
  uint8_t* send_x = Grow(n.send_x, std::max<size_t>(sent * row_bytes, 1));
  float* send_scales = Grow(n.send_scales, std::max<size_t>(fp8 ? static_cast<size_t>(sent) * nb : 0, 1));
  uint8_t* send_meta = Grow(n.send_meta, std::max<size_t>(sent * meta_bytes, 1));
  for (int t = 0; t < N; ++t)
    for (int r = 0; r < R; ++r) {
      const int32_t s = n.slot[static_cast<size_t>(t) * R + r];
      if (s < 0) continue;
      const size_t row = r == me ? static_cast<size_t>(s + n.self_shift) : static_cast<size_t>(s);
      std::memcpy((r == me ? out->x.data() : send_x) + row * row_bytes, in.x.data() + t * row_bytes,
                  row_bytes);
      if (fp8)
        std::memcpy((r == me ? out->x_scales.data() : send_scales) + row * nb,
                    &in.x_scales[static_cast<size_t>(t) * nb], 4 * static_cast<size_t>(nb));
      uint8_t* m = send_meta + s * meta_bytes;
      for (int k = 0; k < K; ++k) {
        const int64_t e = in.topk_idx[static_cast<size_t>(t) * K + k];
        const bool mine = e >= 0 && e / epr == r;
        const int64_t local_e = mine ? e - static_cast<int64_t>(r) * epr : -1;
        const float w = mine && weights ? in.topk_weights[static_cast<size_t>(t) * K + k] : 0.0f;
        std::memcpy(m + 8 * k, &local_e, 8);
        std::memcpy(m + 8 * K + 4 * k, &w, 4);
      }
      const int32_t token = t;
      std::memcpy(m + 12 * K, &token, 4);
    }
  std::copy(n.send_counts.begin(), n.send_counts.end(), n.mpi_send_counts.begin());
  std::copy(n.recv_counts.begin(), n.recv_counts.end(), n.mpi_recv_counts.begin());
  n.mpi_send_counts[me] = n.mpi_recv_counts[me] = 0;

  uint8_t* recv_meta = Grow(n.recv_meta, std::max<size_t>(M * meta_bytes, 1));
  // Zero-row buffers may have no storage; MPI never touches a buffer whose counts are all 0, but a valid
  // pointer keeps the call well-formed for any implementation.
  uint8_t dummy[16];
  auto at = [&dummy](auto* p) -> void* { return p ? static_cast<void*>(p) : dummy; };

  EPX_ASSIGN_OR_RETURN(MPI_Datatype row_t, ws.RowType(row_bytes));
  EPX_ASSIGN_OR_RETURN(MPI_Datatype meta_t, ws.RowType(meta_bytes));
  EPX_RETURN_IF_ERROR(MpiStatus(
      MPI_Alltoallv(send_x, n.mpi_send_counts.data(), n.send_displs.data(), row_t, at(out->x.data()),
                    n.mpi_recv_counts.data(), n.recv_displs.data(), row_t, ws.comm_),
      "MPI_Alltoallv (normal x)", me));
  if (fp8) {
    EPX_ASSIGN_OR_RETURN(MPI_Datatype scale_t, ws.RowType(4 * static_cast<size_t>(nb)));
    EPX_RETURN_IF_ERROR(MpiStatus(MPI_Alltoallv(send_scales, n.mpi_send_counts.data(), n.send_displs.data(),
                                                scale_t, at(out->x_scales.data()), n.mpi_recv_counts.data(),
                                                n.recv_displs.data(), scale_t, ws.comm_),
                                  "MPI_Alltoallv (normal scales)", me));
  }
  EPX_RETURN_IF_ERROR(
      MpiStatus(MPI_Alltoallv(send_meta, n.send_counts.data(), n.send_displs.data(), meta_t, recv_meta,
                              n.recv_counts.data(), n.recv_displs.data(), meta_t, ws.comm_),
                "MPI_Alltoallv (normal metadata)", me));

  // Unpack the metadata records (rows are already in (source rank, token) order).
  for (int s = 0; s < R; ++s)
    for (int i = n.recv_displs[s]; i < n.recv_displs[s] + n.recv_counts[s]; ++i) {
      const uint8_t* m = recv_meta + static_cast<size_t>(i) * meta_bytes;
      int64_t* idx = &out->topk_idx[static_cast<size_t>(i) * K];
      std::memcpy(idx, m, 8 * static_cast<size_t>(K));
      if (weights)
        std::memcpy(&out->topk_weights[static_cast<size_t>(i) * K], m + 8 * K, 4 * static_cast<size_t>(K));
      std::memcpy(&out->src_idx[i], m + 12 * K, 4);
      out->src_rank[i] = s;
      for (int k = 0; k < K; ++k)
        if (idx[k] >= 0) ++out->tokens_per_expert[idx[k]];
    }
  const int a = in.expert_alignment;
  for (int& c : out->tokens_per_expert) c = (c + a - 1) / a * a;

  n.num_tokens = N;
  n.hidden = H;
  n.topk = K;
  n.num_rows = M;
  n.weights = weights;
  n.valid = true;
  return Status::Ok();
}

// ---- Normal combine ------------------------------------------------------------------------------------

Status MpiNormalCombine(MpiWorkspace& ws, const MpiNormalCombineInput& in, RefCombine* out) {
  const int R = ws.size_, me = ws.rank_;
  auto& n = ws.n_;
  if (!n.valid)
    return EPX_ERROR(kFailedPrecondition, "mpi normal combine on rank {}: no dispatch before", me);
  const int N = n.num_tokens, M = n.num_rows, H = in.hidden, K = in.topk;
  const size_t nh = static_cast<size_t>(N) * std::max(H, 0);
  // Checked locally only: a combine's shapes are the caller's (as for any MPI collective).
  if (H < 1 || K < 0 || in.y.size() != static_cast<size_t>(M) * H ||
      in.topk_weights.size() != static_cast<size_t>(M) * K || (!in.bias0.empty() && in.bias0.size() != nh) ||
      (!in.bias1.empty() && in.bias1.size() != nh))
    return EPX_ERROR(
        kInvalidArgument,
        "mpi normal combine on rank {}: H={} K={} y={} weights={} bias0={} bias1={} do not match "
        "M={} N={}",
        me, H, K, in.y.size(), in.topk_weights.size(), in.bias0.size(), in.bias1.size(), M, N);
  const int sent = n.send_displs[R - 1] + n.send_counts[R - 1];
  bf16* back_y = Grow(n.back_y, std::max<size_t>(static_cast<size_t>(sent) * H, 1));
  float* back_w = Grow(n.back_w, std::max<size_t>(static_cast<size_t>(sent) * K, 1));
  float* acc = Grow(n.acc, H);
  uint8_t dummy[16];
  auto at = [&dummy](const void* p) -> void* { return p ? const_cast<void*>(p) : dummy; };

  // y is [M, H] in dispatch output order = blocks by source rank: it is sent as is, no packing, and what
  // comes back lands in the dispatch's send layout, so slot[t * R + r] finds (t, r) again. The own block
  // stays out of the collective (count 0).
  EPX_ASSIGN_OR_RETURN(MPI_Datatype y_t, ws.RowType(2 * static_cast<size_t>(H)));
  EPX_RETURN_IF_ERROR(
      MpiStatus(MPI_Alltoallv(at(in.y.data()), n.mpi_recv_counts.data(), n.recv_displs.data(), y_t, back_y,
                              n.mpi_send_counts.data(), n.send_displs.data(), y_t, ws.comm_),
                "MPI_Alltoallv (normal combine y)", me));
  if (K > 0) {
    EPX_ASSIGN_OR_RETURN(MPI_Datatype w_t, ws.RowType(4 * static_cast<size_t>(K)));
    EPX_RETURN_IF_ERROR(
        MpiStatus(MPI_Alltoallv(at(in.topk_weights.data()), n.mpi_recv_counts.data(), n.recv_displs.data(),
                                w_t, back_w, n.mpi_send_counts.data(), n.send_displs.data(), w_t, ws.comm_),
                  "MPI_Alltoallv (normal combine weights)", me));
  }

  // The reference's one-node order, in FP32: acc = 0; += bias0; += bias1; += y of each rank ascending;
  // one rounding. Starting from 0 (not from the first row) matters: 0 + (-0) = +0. The rows are summed by
  // epx's own vectorised SumBf16Rows (kernels/bf16_math.h, bitwise the same as that loop), as epx's normal
  // combine does, so a comparison measures the exchange and not a slower scalar loop.
  out->x.resize(nh);
  out->topk_weights.assign(K > 0 ? static_cast<size_t>(N) * K : 0, 0.0f);
  const bf16** terms = Grow(n.terms, static_cast<size_t>(R) + 2);
  for (int t = 0; t < N; ++t) {
    const size_t row = static_cast<size_t>(t) * H;
    int nt = 0;
    if (!in.bias0.empty()) terms[nt++] = in.bias0.data() + row;
    if (!in.bias1.empty()) terms[nt++] = in.bias1.data() + row;
    float* wacc = K > 0 ? &out->topk_weights[static_cast<size_t>(t) * K] : nullptr;
    for (int r = 0; r < R; ++r) {
      const int32_t s = n.slot[static_cast<size_t>(t) * R + r];
      if (s < 0) continue;
      // Own rows were not sent back: read them where the caller left them.
      terms[nt++] = r == me ? in.y.data() + static_cast<size_t>(s + n.self_shift) * H
                            : back_y + static_cast<size_t>(s) * H;
      const float* w = r == me ? in.topk_weights.data() + static_cast<size_t>(s + n.self_shift) * K
                               : back_w + static_cast<size_t>(s) * K;
      for (int k = 0; k < K; ++k) wacc[k] += w[k];
    }
    SumBf16Rows(out->x.data() + row, acc, terms, nt, H);
  }
  return Status::Ok();
}

// ---- Low-latency dispatch ------------------------------------------------------------------------------

Status MpiLlDispatch(MpiWorkspace& ws, const MpiLlInput& in, LlRefDispatch* out) {
  const int R = ws.size_, me = ws.rank_;
  auto& l = ws.l_;
  l.valid = false;
  Status local = ValidateLl(in, R, me);
  const int N = in.num_tokens, H = in.hidden, K = in.topk, E = in.num_experts;
  const int El = local.ok() ? E / R : 0;
  const LlRecord rec(std::max(H, 1), in.opt);

  // Pairs per global expert -> packing cursors. Global expert order is (destination rank, local expert),
  // so the prefix over experts gives the per-destination blocks, each ordered by local expert, then token.
  int sent = 0;
  if (local.ok()) {
    int* cursor = Grow(l.expert_cursor, E);
    std::fill(cursor, cursor + E, 0);
    for (int64_t e : in.topk_idx)
      if (e >= 0) ++cursor[e];
    for (int e = 0; e < E; ++e) {
      const int c = cursor[e];
      cursor[e] = sent;
      sent += c;
    }
    for (int r = 0; r < R; ++r) {
      l.send_displs[r] = cursor[r * El];
      l.send_counts[r] = (r + 1 < R ? cursor[(r + 1) * El] : sent) - cursor[r * El];
    }
  }
  Grow(ws.send_hdr_, static_cast<size_t>(R) * kLlHdr);
  Grow(ws.recv_hdr_, static_cast<size_t>(R) * kLlHdr);
  for (int r = 0; r < R; ++r) {
    const int hdr[kLlHdr] = {local.ok() ? 1 : 0, local.ok() ? l.send_counts[r] : 0, H, K, E, in.max_tokens,
                             LlMode(in.opt)};
    std::copy(hdr, hdr + kLlHdr, &ws.send_hdr_[static_cast<size_t>(r) * kLlHdr]);
  }
  EPX_RETURN_IF_ERROR(MpiStatus(
      MPI_Alltoall(ws.send_hdr_.data(), kLlHdr, MPI_INT, ws.recv_hdr_.data(), kLlHdr, MPI_INT, ws.comm_),
      "MPI_Alltoall (ll counts)", me));
  if (!local.ok()) return local;
  EPX_RETURN_IF_ERROR(CheckHeaders("mpi ll dispatch", me, ws.recv_hdr_, kLlHdr, R,
                                   &ws.send_hdr_[static_cast<size_t>(me) * kLlHdr], 2, 5, kLlHdrNames));
  for (int s = 0; s < R; ++s) l.recv_counts[s] = ws.recv_hdr_[static_cast<size_t>(s) * kLlHdr + 1];
  const int M = Prefix(l.recv_counts, l.recv_displs, R);

  // Pack: the token is cast (or copied) once, into the record of its first pair; its other pairs copy
  // that whole record (payload, scales, token) and set their own local expert.
  uint8_t* send_rec = Grow(l.send_rec, std::max<size_t>(sent * rec.bytes, 1));
  int32_t* pair_pos = Grow(l.pair_pos, static_cast<size_t>(N) * K);
  int32_t* pair_rank = Grow(l.pair_rank, static_cast<size_t>(N) * K);
  int* cursor = l.expert_cursor.data();
  for (int t = 0; t < N; ++t) {
    const uint8_t* first = nullptr;
    for (int k = 0; k < K; ++k) {
      const int64_t e = in.topk_idx[static_cast<size_t>(t) * K + k];
      if (e < 0) {
        pair_pos[static_cast<size_t>(t) * K + k] = -1;
        continue;
      }
      const int pos = cursor[e]++;
      pair_pos[static_cast<size_t>(t) * K + k] = pos;
      pair_rank[static_cast<size_t>(t) * K + k] = static_cast<int32_t>(e / El);
      uint8_t* r = send_rec + static_cast<size_t>(pos) * rec.bytes;
      if (first) {
        std::memcpy(r, first, rec.bytes);
      } else {
        const bf16* x = in.x.data() + static_cast<size_t>(t) * H;
        if (in.opt.use_fp8)
          CastRowToFp8(x, H, in.opt.fp8, r + rec.x_off, r);
        else
          std::memcpy(r + rec.x_off, x, rec.row_bytes);
        const int32_t token = t;
        std::memcpy(r + rec.token_off, &token, 4);
        first = r;
      }
      const int32_t local_e = static_cast<int32_t>(e % El);
      std::memcpy(r + rec.token_off + 4, &local_e, 4);
    }
  }

  // The own block stays out of the collective (count 0) and is unpacked from send_rec directly.
  std::copy(l.send_counts.begin(), l.send_counts.end(), l.mpi_send_counts.begin());
  std::copy(l.recv_counts.begin(), l.recv_counts.end(), l.mpi_recv_counts.begin());
  l.mpi_send_counts[me] = l.mpi_recv_counts[me] = 0;
  l.self_shift = l.recv_displs[me] - l.send_displs[me];
  uint8_t* recv_rec = Grow(l.recv_rec, std::max<size_t>(M * rec.bytes, 1));
  EPX_ASSIGN_OR_RETURN(MPI_Datatype rec_t, ws.RowType(rec.bytes));
  EPX_RETURN_IF_ERROR(
      MpiStatus(MPI_Alltoallv(send_rec, l.mpi_send_counts.data(), l.send_displs.data(), rec_t, recv_rec,
                              l.mpi_recv_counts.data(), l.recv_displs.data(), rec_t, ws.comm_),
                "MPI_Alltoallv (ll records)", me));

  // Unpack. Sources in rank order, each source's records in (local expert, token) order: appending every
  // record to its expert reproduces the contract's (source, token) order inside each expert, exactly as
  // the reference's loop does; begin/count of each (expert, source) block fall out of the counters.
  const int rows = R * in.max_tokens;
  const size_t total_rows = static_cast<size_t>(El) * rows;
  out->local_experts = El;
  out->rows = rows;
  out->hidden = H;
  out->row_bytes = rec.row_bytes;
  out->scale_row_bytes = rec.scale_bytes;
  out->x.resize(total_rows * rec.row_bytes);  // no-op after the first call of a shape: rows are not cleared
  out->scales.resize(total_rows * rec.scale_bytes);
  out->count.assign(El, 0);
  out->src_info.assign(total_rows, -1);
  out->layout_range.resize(static_cast<size_t>(El) * R);
  int32_t* recv_row = Grow(l.recv_row, std::max(M, 1));
  for (int s = 0; s < R; ++s) {
    for (int e = 0; e < El; ++e) out->layout_range[static_cast<size_t>(e) * R + s] = out->count[e];
    for (int i = l.recv_displs[s]; i < l.recv_displs[s] + l.recv_counts[s]; ++i) {
      const uint8_t* r = s == me ? send_rec + static_cast<size_t>(i - l.self_shift) * rec.bytes
                                 : recv_rec + static_cast<size_t>(i) * rec.bytes;
      int32_t token, e;
      std::memcpy(&token, r + rec.token_off, 4);
      std::memcpy(&e, r + rec.token_off + 4, 4);
      const size_t row = static_cast<size_t>(e) * rows + out->count[e]++;
      std::memcpy(out->x.data() + row * rec.row_bytes, r + rec.x_off, rec.row_bytes);
      if (rec.scale_bytes) std::memcpy(out->scales.data() + row * rec.scale_bytes, r, rec.scale_bytes);
      out->src_info[row] = token;
      recv_row[i] = static_cast<int32_t>(row);
    }
    for (int e = 0; e < El; ++e) {
      int64_t& range = out->layout_range[static_cast<size_t>(e) * R + s];
      const int32_t begin = static_cast<int32_t>(range);
      range = LlPackRange(begin, out->count[e] - begin);
    }
  }

  l.num_tokens = N;
  l.hidden = H;
  l.topk = K;
  l.local_experts = El;
  l.rows = rows;
  l.valid = true;
  return Status::Ok();
}

// ---- Low-latency combine -------------------------------------------------------------------------------

Status MpiLlCombine(MpiWorkspace& ws, const MpiLlCombineInput& in, std::vector<bf16>* out) {
  const int me = ws.rank_;
  auto& l = ws.l_;
  if (!l.valid) return EPX_ERROR(kFailedPrecondition, "mpi ll combine on rank {}: no dispatch before", me);
  const int R = ws.size_, N = l.num_tokens, H = l.hidden, K = l.topk;
  if (in.y.size() != static_cast<size_t>(l.local_experts) * l.rows * H ||
      in.topk_weights.size() != static_cast<size_t>(N) * K)
    return EPX_ERROR(kInvalidArgument,
                     "mpi ll combine on rank {}: y={} weights={}, want [{}, {}, {}] and [{}, {}]", me,
                     in.y.size(), in.topk_weights.size(), l.local_experts, l.rows, H, N, K);
  const int M = l.recv_displs[R - 1] + l.recv_counts[R - 1];
  const int sent = l.send_displs[R - 1] + l.send_counts[R - 1];
  const size_t row_bytes = 2 * static_cast<size_t>(H);

  // Pack: the rows go back in the order their records arrived (per source: local expert, then token), so
  // they land on the source in its dispatch send layout, where pair_pos finds them.
  bf16* back_send = Grow(l.back_send, std::max<size_t>(static_cast<size_t>(M) * H, 1));
  bf16* back_recv = Grow(l.back_recv, std::max<size_t>(static_cast<size_t>(sent) * H, 1));
  const int own_begin = l.recv_displs[me], own_end = own_begin + l.recv_counts[me];
  for (int i = 0; i < M; ++i)
    if (i < own_begin || i >= own_end)  // own rows are read from y directly below
      std::memcpy(back_send + static_cast<size_t>(i) * H,
                  in.y.data() + static_cast<size_t>(l.recv_row[i]) * H, row_bytes);
  EPX_ASSIGN_OR_RETURN(MPI_Datatype y_t, ws.RowType(row_bytes));
  EPX_RETURN_IF_ERROR(
      MpiStatus(MPI_Alltoallv(back_send, l.mpi_recv_counts.data(), l.recv_displs.data(), y_t, back_recv,
                              l.mpi_send_counts.data(), l.send_displs.data(), y_t, ws.comm_),
                "MPI_Alltoallv (ll combine)", me));

  // LlReferenceCombine's order: grouped by expert rank (ranks in order, top-k order inside a group), FP32,
  // the product rounded to FP32 before the add, one rounding at the end -- summed by epx's own
  // GroupedWeightedSumBf16 (kernels/bf16_math.h, bitwise that loop), as epx's low-latency combine does, so
  // that a comparison measures the exchange and not the arithmetic (the same choice as the normal combine
  // above).
  float* acc = Grow(l.acc, 2 * static_cast<size_t>(H));
  const bf16** terms = Grow(l.terms, static_cast<size_t>(std::max(K, 1)));
  float* w = Grow(l.w, static_cast<size_t>(std::max(K, 1)));
  SumGroup* groups = Grow(l.groups, static_cast<size_t>(std::max(K, 1)));
  out->resize(static_cast<size_t>(N) * H);
  for (int t = 0; t < N; ++t) {
    int n = 0, ng = 0;
    for (int d = 0; d < R; ++d) {  // a pass per rank: K is small, and this keeps top-k order in a group
      const int first = n;
      for (int k = 0; k < K; ++k) {
        const size_t tk = static_cast<size_t>(t) * K + k;
        const int32_t pos = l.pair_pos[tk];
        if (pos < 0 || l.pair_rank[tk] != d) continue;
        w[n] = in.topk_weights[tk];
        terms[n++] = pos + l.self_shift >= own_begin && pos + l.self_shift < own_end
                         ? in.y.data() + static_cast<size_t>(l.recv_row[pos + l.self_shift]) * H
                         : back_recv + static_cast<size_t>(pos) * H;
      }
      if (n > first) groups[ng++] = SumGroup{first, n - first, nullptr};
    }
    GroupedWeightedSumBf16(out->data() + static_cast<size_t>(t) * H, acc, terms, w, groups, ng, H);
  }
  return Status::Ok();
}

}  // namespace epx
