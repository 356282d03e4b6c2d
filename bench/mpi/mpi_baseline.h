// bench/mpi/mpi_baseline.h: the MPI baseline epx is compared with: normal and low-latency dispatch/combine
// as a CPU user would write them with plain MPI collectives (Open MPI from Debian), producing exactly the
// serial references' outputs (kernels/reference.h, kernels/ll_reference.h) so that results can be
// checked bitwise and timings compared in one run.
//
// It is meant to be a fair baseline, not a strawman:
//   * every buffer lives in one MpiWorkspace, grown to the high-water mark and never shrunk, so after the
//     first call of a shape no call allocates (outputs passed back in are reused the same way);
//   * packing and unpacking copy whole rows with memcpy; received rows land directly in the output where
//     the MPI receive order already is the output order (normal dispatch);
//   * counts travel in one MPI_Alltoall, the payload in one MPI_Alltoallv per array (rows are a contiguous
//     MPI datatype, so counts are in rows and never overflow int at large shapes);
//   * a rank's own rows bypass MPI (their Alltoallv count is 0): they are copied once, straight from the
//     input or the packed records to where they belong, instead of once more through MPI's self copy.
// What it does not do (and epx does): overlap, channels, zero-copy, hierarchical (node-aware) routing.
//
// Normal mode (include/epx/normal.h contract):
//   MpiNormalDispatch: MPI_Alltoall of a per-destination header (row count, shape), rows packed per
//     destination rank in token order, MPI_Alltoallv of x (straight into out->x: the receive buffer is
//     ordered by source rank, then token = the output order), of the FP8 scales, and of a per-row
//     metadata record (top-k remapped to local ids at the source, weights, token index).
//   MpiNormalCombine: each received row's y goes back with MPI_Alltoallv; the source reduces in the
//     reference's SINGLE-NODE order: acc = 0 (+ bias0) (+ bias1), += y of each rank ascending, FP32,
//     rounded once to BF16; weights the same without rounding. The baseline has no notion of nodes, so
//     it always uses that order: compare it with ReferenceCombine of a problem with local_size = R (one
//     logical node), also when epx itself runs on several nodes (whose order rounds per node).
// Low-latency mode (kernels/ll_reference.h contract):
//   MpiLlDispatch: FP8 cast once per token on the source (kernels/fp8.h CastRowToFp8), one record per
//     (token, expert) pair (payload, scales, token, local expert) packed by global expert (= destination
//     rank, then local expert), then token; MPI_Alltoall of per-destination counts, MPI_Alltoallv of the
//     records, unpacked (memcpy per row) into [local expert][source rank, token] rows. Rows of x/scales
//     past count[e] are unspecified (not cleared per call, like epx's LlDispatchOutput); src_info is -1
//     there.
//   MpiLlCombine: rows go back with MPI_Alltoallv; out[t] = the weighted sum of its rows in
//     LlReferenceCombine's order (grouped by expert rank, top-k order inside a group, FP32, the product
//     rounded before the add), bitwise that.
//
// Every call is collective over the workspace's communicator; all ranks make the same sequence of calls
// with the same hidden/topk/E/dtype/FP8 options and the same presence of weights/biases (as for any MPI
// collective). The dispatch header carries the shape, so a disagreement there (or an invalid input on
// any rank) fails the call on EVERY rank with kInvalidArgument instead of hanging. A combine uses the
// routing of the last dispatch of its mode on the same workspace.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "core/status.h"
#include "kernels/bf16_math.h"  // SumGroup
#include "kernels/dtypes.h"
#include "kernels/ll_reference.h"
#include "kernels/reference.h"

namespace epx {

class MpiWorkspace;

// ---- Normal mode -----------------------------------------------------------------------------------

// This rank's tokens (RefProblem's inputs of one rank).
struct MpiNormalInput {
  int num_tokens = 0;  // N (may be 0, may differ between ranks)
  int hidden = 0;      // H
  TokenDtype dtype = TokenDtype::kBf16;
  std::span<const uint8_t> x = {};           // [N, H] BF16 bit patterns or e4m3 bytes
  std::span<const float> x_scales = {};      // [N, ceil(H/128)] for FP8; empty for BF16
  int num_experts = 0;                       // E, E % R == 0; expert e lives on rank e / (E/R)
  int topk = 0;                              // K
  std::span<const int64_t> topk_idx = {};    // [N, K] global expert ids, -1 = none
  bool with_weights = true;                  // carry topk_weights (same on all ranks)
  std::span<const float> topk_weights = {};  // [N, K] when with_weights
  int expert_alignment = 1;                  // tokens_per_expert rounded up to a multiple of this
};

// Fills `out` exactly as ReferenceDispatch(p, route, rank, expert_alignment): rows by (source rank,
// token), topk_idx local (-1 elsewhere, weight 0 there), src_rank/src_idx, tokens_per_expert. `out` may
// be reused between calls (its vectors keep their capacity).
Status MpiNormalDispatch(MpiWorkspace& ws, const MpiNormalInput& in, RefDispatch* out);

struct MpiNormalCombineInput {
  int hidden = 0;                            // H of y (equal on all ranks)
  std::span<const bf16> y = {};              // [M, H]: row i answers row i of the last dispatch's output
  int topk = 0;                              // K of topk_weights; 0: combine without weights (on every rank)
  std::span<const float> topk_weights = {};  // [M, K] (a rank with M = 0 passes an empty span and K)
  std::span<const bf16> bias0 = {}, bias1 = {};  // [N, H] of this rank's tokens, or empty
};

// Fills `out` exactly as ReferenceCombine of the one-node problem (see the header comment): x [N, H],
// topk_weights [N, K] (empty without input weights).
Status MpiNormalCombine(MpiWorkspace& ws, const MpiNormalCombineInput& in, RefCombine* out);

// ---- Low-latency mode ------------------------------------------------------------------------------

// This rank's tokens (LlRefProblem's inputs of one rank).
struct MpiLlInput {
  int num_tokens = 0;                      // N <= max_tokens
  int hidden = 0;                          // H
  std::span<const bf16> x = {};            // [N, H]
  int num_experts = 0;                     // E, E % R == 0
  int topk = 0;                            // K
  std::span<const int64_t> topk_idx = {};  // [N, K] global ids in [-1, E), no expert twice in one token
  int max_tokens = 0;                      // T_max, equal on all ranks: rows per expert = R * T_max
  LlDispatchOptions opt = {};              // FP8 (round_scale / ue8m0) or BF16
};

// Fills `out` in LlRefDispatch's layout: count, src_info (-1 past count), layout_range and the valid rows
// of x/scales equal LlReferenceDispatch bitwise; rows past count are unspecified. `out` may be reused.
Status MpiLlDispatch(MpiWorkspace& ws, const MpiLlInput& in, LlRefDispatch* out);

struct MpiLlCombineInput {
  std::span<const bf16> y = {};              // [E_local, R * T_max, H] (rows past count are not read)
  std::span<const float> topk_weights = {};  // [N, K] of this rank's tokens (the last LL dispatch's N, K)
};

// out: [N, H], exactly LlReferenceCombine. `out` may be reused.
Status MpiLlCombine(MpiWorkspace& ws, const MpiLlCombineInput& in, std::vector<bf16>* out);

// ---- Workspace -------------------------------------------------------------------------------------

// All buffers of the baseline and the routing of the last dispatch of each mode. Not thread-safe; one
// per communicator and caller. Destroy it before MPI_Finalize (it frees a communicator and datatypes).
class MpiWorkspace {
 public:
  // Collective over comm: duplicates it (the baseline's collectives can never match the caller's) and
  // sets MPI_ERRORS_RETURN on the duplicate, so MPI failures come back as Status (kTransport).
  static StatusOr<std::unique_ptr<MpiWorkspace>> Create(MPI_Comm comm);
  ~MpiWorkspace();
  MpiWorkspace(const MpiWorkspace&) = delete;
  MpiWorkspace& operator=(const MpiWorkspace&) = delete;

  MPI_Comm comm() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  // Bytes of workspace buffers currently held (the high-water mark of all shapes seen).
  size_t bytes() const;

 private:
  friend Status MpiNormalDispatch(MpiWorkspace&, const MpiNormalInput&, RefDispatch*);
  friend Status MpiNormalCombine(MpiWorkspace&, const MpiNormalCombineInput&, RefCombine*);
  friend Status MpiLlDispatch(MpiWorkspace&, const MpiLlInput&, LlRefDispatch*);
  friend Status MpiLlCombine(MpiWorkspace&, const MpiLlCombineInput&, std::vector<bf16>*);
  MpiWorkspace() = default;
  // A committed contiguous datatype of `bytes` bytes (one row / record), created once per size.
  StatusOr<MPI_Datatype> RowType(size_t bytes);

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<std::pair<size_t, MPI_Datatype>> types_;

  std::vector<int> scratch_;              // [R]
  std::vector<int> send_hdr_, recv_hdr_;  // count-exchange headers, [R * header ints]

  // Normal mode: the last dispatch's routing, and its buffers.
  struct Normal {
    bool valid = false;
    int num_tokens = 0, hidden = 0, topk = 0, num_rows = 0;
    bool weights = false;
    // Of the dispatch, [R] each, in rows (collectives use a contiguous datatype of one row).
    std::vector<int> send_counts, send_displs, recv_counts, recv_displs;
    std::vector<int> mpi_send_counts, mpi_recv_counts;  // the same with this rank's own block 0
    int self_shift = 0;              // own block: output row = send-buffer row + self_shift
    std::vector<int32_t> slot;       // [N * R]: row of (t, r) in the send (and combine-receive) buffer, or -1
    std::vector<uint8_t> send_x;     // [rows sent, H * elt]
    std::vector<float> send_scales;  // [rows sent, ceil(H/128)]
    std::vector<uint8_t> send_meta;  // [rows sent, meta record]
    std::vector<uint8_t> recv_meta;  // [M, meta record]
    std::vector<bf16> back_y;        // combine: [rows sent, H] coming back
    std::vector<float> back_w;       // combine: [rows sent, K]
    std::vector<const bf16*> terms;  // [R + 2] rows summed for one token
    std::vector<float> acc;          // [H] FP32 accumulator
  } n_;

  // Low-latency mode: the last dispatch's routing, and its buffers.
  struct Ll {
    bool valid = false;
    int num_tokens = 0, hidden = 0, topk = 0, local_experts = 0, rows = 0;
    std::vector<int> send_counts, send_displs, recv_counts, recv_displs;  // of the dispatch, [R]
    std::vector<int> mpi_send_counts, mpi_recv_counts;  // the same with this rank's own block 0
    int self_shift = 0;              // own block: received-record index = sent-record index + self_shift
    std::vector<int> expert_cursor;  // [E] packing cursor per global expert
    std::vector<int32_t> pair_pos;   // [N * K]: record of (t, k) in the send (and back) buffer, or -1
    std::vector<int32_t> pair_rank;  // [N * K]: rank of (t, k)'s expert (combine groups by it)
    std::vector<int32_t> recv_row;   // [pairs received]: output row (e * rows + i) of each received record
    std::vector<uint8_t> send_rec;   // [pairs sent, record]
    std::vector<uint8_t> recv_rec;   // [pairs received, record]
    std::vector<bf16> back_send;     // combine: [pairs received, H] packed per source
    std::vector<bf16> back_recv;     // combine: [pairs sent, H]
    std::vector<float> acc;          // [2H]
    std::vector<const bf16*> terms;  // [K] rows of one token's weighted sum, grouped by expert rank
    std::vector<float> w;            // [K] their weights
    std::vector<SumGroup> groups;    // [K] the groups (kernels/bf16_math.h)
  } l_;
};

}  // namespace epx
