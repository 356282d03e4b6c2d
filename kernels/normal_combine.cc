// Combine: the progress loop of one channel thread of rank (b, h). Each pass runs three roles without
// blocking; the loop ends when all three are done.
//
//   return   expert outputs: row i (from source s = (a, g), channel c) goes to forwarder (b, g), into
//            the node combine ring of source node a. Rows of one source and channel are contiguous in
//            the dispatch output and are sent in row order = the source's token order.
//   relay    (several nodes, masked ranks: NormalState::via) the partials from node n of each node peer
//            l this rank relays into n: they follow our own on the RDMA combine ring from (n, g) (the
//            forwarder sends in its dispatch order), so once our own are taken, they are copied whole
//            onto the node dispatch ring to l (idle in combine), peer after peer in ascending l.
//   forward  (several nodes) for each source node a != b, the tokens this rank forwarded in dispatch,
//            in the same order (the handle's masks): once the head slot of the combine ring of every
//            local rank in the mask holds the token's row, sum them in FP32 in ascending local rank,
//            round to BF16 and send one RDMA message to the source. Weights: FP32 sums.
//   reduce   this rank's own tokens of the channel in order: once every contribution is at the head
//            of its ring (own node: the node combine rings of source node b; other nodes: the RDMA
//            combine ring from each), acc = 0 (+bias0) (+bias1), then
//              one node:  acc += y of each local rank ascending
//              several:   acc += bf16(sum of own node's y, ascending) and += each remote partial, all
//                         in ascending node order
//            and round once to BF16. The same order as kernels/reference.cc.
//
// Rows whose forwarder is this rank itself (sources with our local index, and those relayed to us) skip
// the rings: the reducer reads them straight from y, in the same order and at the same place in the sum.
// A node combine ring to forwarder g for source node a carries the rows of every source routed through g
// (its own, then the relayed ones ascending), each source's after the previous one's: the order in which
// g forwarded them.
//
// Zero-copy (one node, y in the expert rank's CombineInputBuffer): a node ring message carries the row's
// index instead of the row, and the reducer reads the row from the peer's heap. The row stays valid
// until the peer's call returns, which is after the node barrier that ends the call (kernels/normal.cc),
// i.e. after every reducer is done with it. Every message ends with a mode word, so a peer that
// disagrees on zero_copy is named instead of read as garbage.
//
// Rings are consumed strictly in order and reduced straight from their slots, so memory stays bounded
// by the ring sizes for any N. Why this cannot deadlock: every ring carries one stream (one source
// rank's tokens of one channel, or one source node's for a forwarder) in the order its consumer
// processes them, so the message a consumer waits for is always the next one its producer will
// write, and the producer's ring has room for it once the consumer has taken the earlier ones. Node
// combine rings are split per source node for this reason: with one shared ring, a forwarder waiting
// for credit from source node a could hold up rows that source node a' waits for, and a' could in turn
// be holding up a.
#include <cstring>

#include "kernels/bf16_math.h"
#include "kernels/normal_state.h"
#include "kernels/stream_copy.h"

namespace epx {
namespace {

class CombineChannel : ChannelTask<CombineJob> {
 public:
  CombineChannel(NormalState& st, CombineJob& job, int c)
      : ChannelTask(st, job, c), H_(job.in->hidden), K_(job.msg.topk) {}

  Status Run();

 private:
  StatusOr<bool> Pass(bool* progressed);  // one non-blocking pass of all roles; true when all are done
  Status Return(int s, bool* progressed);
  Status RelayBack(int n, bool* progressed);
  // The next row of y this rank reads in place for a token it forwards from node a (or reduces, a = b).
  size_t NextSelfRow(int a);
  // The ring that brings the partials of node n (!= b) for our own tokens.
  RingReceiver& PartialsFrom(int n) {
    const int via = st_.Via(st_.rank, n);
    return via == st_.local ? rings_.rc_recv[n] : rings_.nd_recv[via];
  }
  Status Forward(int a, bool* progressed);
  Status Reduce(bool* progressed);
  // Whether the head slot of every node combine ring (local l in mask, source node a) is filled.
  StatusOr<bool> NodeRowsReady(uint32_t mask, int a);
  // Appends those rows to terms (ascending l) and adds their weights to wsum; consumes them. The
  // slots stay valid until the Release at the end of the pass.
  void TakeNodeRows(uint32_t mask, int a, const bf16** terms, int* num_terms, float* wsum);
  Status ReleaseAndPublish();
  std::string Diagnose() const;

  const int H_, K_;
  // Rows a peer's CombineInputBuffer holds at this call's H (bounds a zero-copy row index).
  const size_t zc_rows_ = P_.ZcYBytes() / (2 * static_cast<size_t>(H_));
  int t0_ = 0, t1_ = 0, token_ = 0;  // own tokens of the channel; next to reduce
  int row_[kMaxNodes * kMaxLocalRanks] = {}, row_end_[kMaxNodes * kMaxLocalRanks] = {};  // per source
  int fwd_[kMaxNodes] = {}, fwd_end_[kMaxNodes] = {};  // positions in the handle's masks, per source node
  // Rows read in place, per node a: the sources routed through us (a, our index, then relayed ones), the
  // current one's rows [self_row_, self_end_), and how many rows were / are to be read.
  int self_src_[kMaxNodes][kMaxLocalRanks] = {}, self_num_[kMaxNodes] = {}, self_k_[kMaxNodes] = {};
  int self_row_[kMaxNodes] = {}, self_end_[kMaxNodes] = {}, self_taken_[kMaxNodes] = {},
      self_total_[kMaxNodes] = {};
  int pred_[kMaxNodes * kMaxLocalRanks] = {};  // the source before s on its node combine ring, or -1
  // Relays: the node each node peer l is relayed into by this rank (-1: none), and its partials; our own
  // tokens' partials from node n taken so far / in all (they come before the relayed ones).
  int relay_node_[kMaxLocalRanks] = {}, relayed_[kMaxLocalRanks] = {}, to_relay_[kMaxLocalRanks] = {};
  int own_taken_[kMaxNodes] = {}, own_need_[kMaxNodes] = {};
  float wacc_[1024] = {}, wpart_[1024] = {};
  const bf16* terms_[2 + kMaxLocalRanks + kMaxNodes] = {};  // rows of one sum, in summation order
};

Status CombineChannel::Return(int s, bool* progressed) {
  int& i = row_[s];
  if (i == row_end_[s] || (pred_[s] >= 0 && row_[pred_[s]] < row_end_[pred_[s]])) return Status::Ok();
  RingSender& ring = rings_.nc_send[st_.Via(s, st_.node) * NN_ + s / L_];
  const CombineInput& in = *job_.in;
  while (i < row_end_[s]) {
    EPX_ASSIGN_OR_RETURN(bool room, ring.HasRoom());
    if (!room) break;
    uint8_t* m = ring.NextSlot();
    const CombineMsgLayout& ml = job_.msg;
    if (ml.pull) {
      const auto row = static_cast<uint32_t>(i);
      std::memcpy(m, &row, sizeof(row));
    } else {
      std::memcpy(m, in.y.data() + static_cast<size_t>(i) * H_, 2 * static_cast<size_t>(H_));
    }
    if (K_)
      std::memcpy(m + ml.weights_off, in.topk_weights.data() + static_cast<size_t>(i) * K_,
                  4 * static_cast<size_t>(K_));
    const uint32_t mode = ml.pull ? kCombineRowRefs : kCombineRows;
    std::memcpy(m + ml.mode_off, &mode, sizeof(mode));
    ring.Push();
    ++i;
    *progressed = true;
    EPX_FAULT_POINT(kNormalCombineSend);
    if (ring.unpublished() >= static_cast<uint64_t>(P_.cfg.node_chunk))
      EPX_RETURN_IF_ERROR(ring.Publish(job_.msg.bytes));
  }
  return Status::Ok();
}

StatusOr<bool> CombineChannel::NodeRowsReady(uint32_t mask, int a) {
  const CombineMsgLayout& ml = job_.msg;
  for (int l = 0; l < L_; ++l) {
    if (!(mask >> l & 1) || l == st_.local) continue;  // our own rows are always there
    RingReceiver& r = rings_.nc_recv[l * NN_ + a];
    EPX_ASSIGN_OR_RETURN(uint64_t avail, r.Available());
    if (avail == 0) return false;
    // Written by the peer: its mode must be ours, and a row index must lie inside its input buffer.
    const uint8_t* m = r.Slot(0);
    uint32_t mode, row = 0;
    std::memcpy(&mode, m + ml.mode_off, sizeof(mode));
    if (ml.pull) std::memcpy(&row, m, sizeof(row));
    if (mode != (ml.pull ? kCombineRowRefs : kCombineRows) ||
        (ml.pull && static_cast<size_t>(row) >= zc_rows_))
      return EPX_ERROR(
          kInvalidArgument,
          "normal combine: rank {} got a {} from rank {} (mode word {:#x}, row {}) but combines {}: all "
          "ranks must pass the same CombineInput::zero_copy",
          st_.rank, mode == kCombineRowRefs ? "row reference" : "row", st_.RankOf(st_.node, l), mode, row,
          ml.pull ? "zero-copy" : "with copies");
  }
  return true;
}

void CombineChannel::TakeNodeRows(uint32_t mask, int a, const bf16** terms, int* num_terms, float* wsum) {
  const CombineInput& in = *job_.in;
  for (int l = 0; l < L_; ++l) {
    if (!(mask >> l & 1)) continue;
    const float* w;
    if (l == st_.local) {
      const size_t row = NextSelfRow(a);
      terms[(*num_terms)++] = in.y.data() + row * H_;
      w = in.topk_weights.data() + row * K_;
    } else {
      RingReceiver& r = rings_.nc_recv[l * NN_ + a];
      const uint8_t* m = r.Slot(0);
      if (job_.msg.pull) {  // the row stays in the peer's CombineInputBuffer (index checked by NodeRowsReady)
        uint32_t row;
        std::memcpy(&row, m, sizeof(row));
        terms[(*num_terms)++] = reinterpret_cast<const bf16*>(
            st_.ctx.node().Address(st_.RankOf(st_.node, l), P_.ZcY()) + static_cast<size_t>(row) * 2 * H_);
      } else {
        terms[(*num_terms)++] = reinterpret_cast<const bf16*>(m);
      }
      w = reinterpret_cast<const float*>(m + job_.msg.weights_off);
      r.Consume(1);
    }
    for (int k = 0; k < K_; ++k) wsum[k] += w[k];
  }
}

size_t CombineChannel::NextSelfRow(int a) {
  while (self_row_[a] == self_end_[a] && self_k_[a] + 1 < self_num_[a]) {
    const int s = self_src_[a][++self_k_[a]];
    const int* p = &h_.recv_channel_prefix[static_cast<size_t>(s) * (P_.C + 1)];
    self_row_[a] = h_.rank_prefix[s] + p[c_];
    self_end_[a] = h_.rank_prefix[s] + p[c_ + 1];
  }
  ++self_taken_[a];
  return static_cast<size_t>(self_row_[a]++);
}

Status CombineChannel::RelayBack(int n, bool* progressed) {
  if (own_taken_[n] < own_need_[n]) return Status::Ok();  // ours come first on the ring from (n, g)
  RingReceiver& in = rings_.rc_recv[n];
  for (int l = 0; l < L_; ++l) {
    if (relay_node_[l] != n) continue;
    EPX_ASSIGN_OR_RETURN(int moved, MoveMessages(in, rings_.nd_send[l], to_relay_[l] - relayed_[l],
                                                 job_.msg.bytes, P_.cfg.node_chunk));
    relayed_[l] += moved;
    *progressed |= moved > 0;
    if (relayed_[l] < to_relay_[l]) break;  // the next peer's partials follow this one's
  }
  return Status::Ok();
}

Status CombineChannel::Forward(int a, bool* progressed) {
  RingSender& out = rings_.rc_send[a];
  const uint32_t* masks = h_.fwd_masks.data();
  int& j = fwd_[a];
  while (j < fwd_end_[a]) {
    EPX_ASSIGN_OR_RETURN(bool ready, NodeRowsReady(masks[j], a));
    if (!ready) break;
    EPX_ASSIGN_OR_RETURN(bool room, out.HasRoom());
    if (!room) break;
    int n = 0;
    std::fill(wpart_, wpart_ + K_, 0.0f);
    TakeNodeRows(masks[j], a, terms_, &n, wpart_);
    uint8_t* m = out.NextSlot();
    SumBf16Rows(reinterpret_cast<bf16*>(m), rings_.acc.data(), terms_, n, H_);  // the node's partial
    if (K_) std::memcpy(m + job_.msg.weights_off, wpart_, 4 * static_cast<size_t>(K_));
    out.Push();
    ++j;
    *progressed = true;
    EPX_FAULT_POINT(kNormalCombineForward);
    if (out.unpublished() >= static_cast<uint64_t>(P_.cfg.rdma_chunk))
      EPX_RETURN_IF_ERROR(out.Publish(job_.msg.bytes));
  }
  return Status::Ok();
}

Status CombineChannel::Reduce(bool* progressed) {
  const CombineInput& in = *job_.in;
  CombineOutput& out = *job_.out;
  const int b = st_.node;
  for (; token_ < t1_; ++token_) {
    const int t = token_;
    uint32_t own = 0;
    uint64_t nodes = 0;
    for (int n = 0; n < NN_; ++n)
      for (int l = 0; l < L_; ++l)
        if (h_.InRank(t, n * L_ + l)) {
          nodes |= uint64_t{1} << n;
          if (n == b) own |= 1u << l;
        }
    EPX_ASSIGN_OR_RETURN(bool ready, NodeRowsReady(own, b));
    for (int n = 0; n < NN_ && ready; ++n) {
      if (n == b || !(nodes >> n & 1)) continue;
      EPX_ASSIGN_OR_RETURN(uint64_t avail, PartialsFrom(n).Available());
      ready = avail > 0;
    }
    if (!ready) break;

    // The terms of the sum, in the documented order: bias0, bias1, then one node: each rank's row;
    // several nodes: each node's partial (our own node's made here, rounded like the others).
    const size_t x0 = static_cast<size_t>(t) * H_;
    int nt = 0;
    if (!in.bias0.empty()) terms_[nt++] = in.bias0.data() + x0;
    if (!in.bias1.empty()) terms_[nt++] = in.bias1.data() + x0;
    std::fill(wacc_, wacc_ + K_, 0.0f);
    if (NN_ == 1) {
      TakeNodeRows(own, b, terms_, &nt, wacc_);
    } else {
      for (int n = 0; n < NN_; ++n) {
        if (!(nodes >> n & 1)) continue;
        if (n == b) {
          const bf16* rows[kMaxLocalRanks];
          int nr = 0;
          std::fill(wpart_, wpart_ + K_, 0.0f);
          TakeNodeRows(own, b, rows, &nr, wpart_);
          SumBf16Rows(rings_.own_partial.data(), rings_.acc.data(), rows, nr, H_);
          terms_[nt++] = rings_.own_partial.data();
        } else {
          RingReceiver& r = PartialsFrom(n);
          const uint8_t* m = r.Slot(0);
          terms_[nt++] = reinterpret_cast<const bf16*>(m);
          std::memcpy(wpart_, m + job_.msg.weights_off, 4 * static_cast<size_t>(K_));
          r.Consume(1);
          ++own_taken_[n];
        }
        for (int k = 0; k < K_; ++k) wacc_[k] += wpart_[k];
      }
    }
    // out.x ([N, H], far larger than the cache, not read again by this call): streaming stores, fenced
    // when the channel ends (Run).
    SumBf16RowsStream(&out.x[x0], rings_.acc.data(), terms_, nt, H_);
    if (K_) std::memcpy(&out.topk_weights[static_cast<size_t>(t) * K_], wacc_, 4 * static_cast<size_t>(K_));
    *progressed = true;
    EPX_FAULT_POINT(kNormalCombineReduce);
  }
  return Status::Ok();
}

Status CombineChannel::ReleaseAndPublish() {
  for (auto& r : rings_.nc_recv) EPX_RETURN_IF_ERROR(r.Release());
  for (auto& s : rings_.nc_send) EPX_RETURN_IF_ERROR(s.Publish(job_.msg.bytes));
  if (NN_ == 1) return Status::Ok();
  for (int n = 0; n < NN_; ++n) {
    if (n == st_.node) continue;
    EPX_RETURN_IF_ERROR(rings_.rc_recv[n].Release());
    EPX_RETURN_IF_ERROR(rings_.rc_send[n].Publish(job_.msg.bytes));
    const int via = st_.Via(st_.rank, n);
    if (via != st_.local) EPX_RETURN_IF_ERROR(rings_.nd_recv[via].Release());  // partials relayed to us
  }
  for (int l = 0; l < L_; ++l)
    if (relay_node_[l] >= 0) EPX_RETURN_IF_ERROR(rings_.nd_send[l].Publish(job_.msg.bytes));
  return st_.rdma->Flush(c_);
}

std::string CombineChannel::Diagnose() const {
  std::string s = fmt::format("normal combine: rank {} channel {} stuck;", st_.rank, c_);
  for (int r = 0; r < P_.R; ++r)
    if (row_[r] < row_end_[r])
      s += fmt::format(" return to source {}: row {} of [.., {}) ({});", r, row_[r], row_end_[r],
                       rings_.nc_send[std::max(0, st_.Via(r, st_.node)) * NN_ + r / L_].Describe());
  for (int a = 0; a < NN_; ++a)
    if (fwd_[a] < fwd_end_[a])
      s += fmt::format(" forward to node {}: token {} of {} ({});", a, fwd_[a], fwd_end_[a],
                       rings_.rc_send[a].Describe());
  for (int l = 0; l < L_; ++l)
    if (relay_node_[l] >= 0 && relayed_[l] < to_relay_[l])
      s += fmt::format(" relay partials of rank {} from node {}: {} of {} (ours: {} of {}) ({});",
                       st_.RankOf(st_.node, l), relay_node_[l], relayed_[l], to_relay_[l],
                       own_taken_[relay_node_[l]], own_need_[relay_node_[l]], rings_.nd_send[l].Describe());
  if (token_ < t1_) s += fmt::format(" reduce own token {} of [{}, {});", token_, t0_, t1_);
  for (int i = 0; i < L_ * NN_; ++i)
    s += fmt::format(" from local {} for node {}: {};", i / NN_, i % NN_, rings_.nc_recv[i].Describe());
  for (int n = 0; n < NN_ && NN_ > 1; ++n)
    if (n != st_.node) s += fmt::format(" partials from node {}: {};", n, rings_.rc_recv[n].Describe());
  return s;
}

Status CombineChannel::Run() {
  if (K_ > 1024) return EPX_ERROR(kInvalidArgument, "combine: topk {} > 1024", K_);
  ChannelRange(h_.num_tokens, P_.C, c_, &t0_, &t1_);
  token_ = t0_;
  const int b = st_.node;
  for (int s = 0; s < P_.R; ++s) {
    const int* p = &h_.recv_channel_prefix[static_cast<size_t>(s) * (P_.C + 1)];
    row_[s] = h_.rank_prefix[s] + p[c_];
    row_end_[s] = h_.rank_prefix[s] + p[c_ + 1];
    pred_[s] = -1;
  }
  for (int a = 0; a < NN_; ++a) {
    // Sources whose rows we read in place (we forward them; own node: ourselves), in forwarding order.
    self_num_[a] = RingSources(st_, a, b, st_.local, self_src_[a]);
    self_k_[a] = 0;
    self_taken_[a] = self_total_[a] = 0;
    self_row_[a] = self_end_[a] = 0;
    for (int k = 0; k < self_num_[a]; ++k) {
      const int s = self_src_[a][k];
      if (k == 0) self_row_[a] = row_[s], self_end_[a] = row_end_[s];
      self_total_[a] += row_end_[s] - row_[s];
      row_[s] = row_end_[s];
    }
    // The order of the sources sharing a node combine ring (forwarder g, source node a).
    for (int g = 0; g < L_ && a != b; ++g) {
      int src[kMaxLocalRanks];
      const int n = RingSources(st_, a, b, g, src);
      for (int k = 1; k < n; ++k) pred_[src[k]] = src[k - 1];
    }
  }
  for (int n = 0; n < NN_; ++n) own_taken_[n] = own_need_[n] = 0;
  EPX_RETURN_IF_ERROR(RelayPlanOf(st_, h_, c_, relay_node_, to_relay_));
  for (int l = 0; l < L_; ++l) {
    relayed_[l] = 0;
    if (relay_node_[l] < 0 || own_need_[relay_node_[l]] > 0) continue;
    const int n = relay_node_[l];  // our own tokens with a partial from node n: they precede the relayed
    for (int t = t0_; t < t1_; ++t)
      for (int x = 0; x < L_; ++x)
        if (h_.InRank(t, n * L_ + x)) {
          ++own_need_[n];
          break;
        }
  }
  for (int a = 0; a < NN_; ++a) {
    const int* fp = &h_.fwd_prefix[static_cast<size_t>(c_) * (NN_ + 1)];
    fwd_[a] = a == st_.node ? fp[a + 1] : fp[a];
    fwd_end_[a] = fp[a + 1];
  }
  Status loop = RunProgressLoop(
      st_, c_, job_.abort, [&](bool* progressed) { return Pass(progressed); }, [&] { return Diagnose(); });
  StreamFence();  // Reduce's output rows before this channel reports done (kernels/stream_copy.h)
  EPX_RETURN_IF_ERROR(loop);
  for (int a = 0; a < NN_; ++a)  // the masks and the row counts of the handle must agree
    EPX_CHECK_OR_RETURN(self_taken_[a] == self_total_[a],
                        "rank {} channel {} read {} of its {} rows of node {}", st_.rank, c_, self_taken_[a],
                        self_total_[a], a);
  return Status::Ok();
}

StatusOr<bool> CombineChannel::Pass(bool* progressed) {
  bool done = true;
  for (int i = 0; i < P_.R; ++i) {
    const int s = (st_.rank + i) % P_.R;  // start at our own rank: spread the load over destinations
    EPX_RETURN_IF_ERROR(Return(s, progressed));
    done &= row_[s] == row_end_[s];
  }
  for (int a = 0; a < NN_; ++a) {
    if (a == st_.node) continue;
    EPX_RETURN_IF_ERROR(Forward(a, progressed));
    done &= fwd_[a] == fwd_end_[a];
    EPX_RETURN_IF_ERROR(RelayBack(a, progressed));
  }
  for (int l = 0; l < L_; ++l) done &= relayed_[l] == to_relay_[l];
  EPX_RETURN_IF_ERROR(Reduce(progressed));
  done &= token_ == t1_;
  EPX_RETURN_IF_ERROR(ReleaseAndPublish());
  return done;
}

}  // namespace

Status RunCombineChannel(NormalState& st, CombineJob& job, int c) {
  return CombineChannel(st, job, c).Run();
}

}  // namespace epx
