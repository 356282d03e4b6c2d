// Dispatch: the progress loop of one channel thread of rank (b, h). Each pass runs three roles without
// blocking, and the loop ends when all three are done:
//
//   send     this rank's tokens of the channel, one stream per destination: a local rank l of node b
//            (into the node ring to l) or a remote node n (into the RDMA ring to (n, h), carrying the
//            mask of wanted local ranks of n and their ordinals). A stream advances its own cursor as
//            far as its ring has room, so a full ring never holds up other destinations.
//   relay    (several nodes, masked ranks: NormalState::via) the stream into node n of each node peer l
//            this rank relays for, handed over on the node combine ring l -> us for node n (idle in
//            dispatch), copied whole onto our RDMA ring to node n once our own stream to n is done, one
//            peer after the other in ascending l: forwarder and combine rely on this order.
//   forward  (several nodes) messages from the RDMA ring of each source node a, copied whole into the
//            node ring of every local rank in their mask; a message moves once all of them have room.
//   receive  messages of the node ring from each forwarder g (for one node: each source), written to
//            row rank_prefix[src] + ordinal[h]. The ordinal is the token's index among the source's
//            tokens bound for this rank, so the row does not depend on arrival order: output order is
//            by source rank, then source token, whatever the interleaving.
//
// Messages for this rank itself (its own tokens, and forwarded tokens it wants) skip the rings and
// are placed directly: the same bytes at the same row, one copy less.
//
// Why this cannot deadlock: receiving never waits for anything; forwarding waits only for node-ring
// credits, which receiving returns; relaying waits for its peer's messages and RDMA credits, which
// forwarding returns; sending waits only for credits, which forwarding, relaying and receiving return. Each
// role's expected message counts come from the count exchange (or the handle), so a role stops exactly at the
// end of this call's messages even if a fast peer has already queued its next call's messages behind them in
// the same ring.
#include <cstring>

#include "kernels/normal_state.h"
#include "kernels/normal_wire.h"
#include "kernels/stream_copy.h"

namespace epx {
namespace {

class DispatchChannel : ChannelTask<DispatchJob> {
 public:
  DispatchChannel(NormalState& st, DispatchJob& job, int c) : ChannelTask(st, job, c) {}

  Status Run();

 private:
  StatusOr<bool> Pass(bool* progressed);  // one non-blocking pass of all roles; true when all are done
  Status SendStream(int n, uint32_t filter, RingSender& ring, int chunk, int* cursor, bool* progressed);
  Status SendSelf(bool* progressed);
  Status Relay(int n, bool* progressed);
  Status Forward(int a, bool* progressed);
  Status Receive(int g, bool* progressed);
  // Writes one received token to row rank_prefix[src] + ordinal of the output.
  Status PlaceRow(int src, int token, int ordinal, const uint8_t* payload, const float* scales,
                  const int64_t* topk, const float* weights);
  Status PublishAll();
  void WriteMessage(uint8_t* m, int t, uint32_t mask) const;
  StatusOr<const uint8_t*> PayloadOf(const uint8_t* m, int src, int token) const;
  // What this rank expects of the messages from node `from_node`'s RDMA ring or forwarder `from_local`.
  DispatchMsgExpect Expect(int from_node, int from_local) const {
    return {.rank = st_.rank,
            .channel = c_,
            .num_ranks = P_.R,
            .local_size = L_,
            .local = st_.local,
            .from_node = from_node,
            .from_local = from_local,
            .rank_prefix = h_.rank_prefix,
            .via = st_.via_here};
  }
  std::string Diagnose() const;

  int t0_ = 0, t1_ = 0;  // this channel's tokens
  // Send streams: cursor per destination local rank (own node) and per remote node; ordinals of the
  // next token for each destination rank.
  int own_cursor_[kMaxLocalRanks] = {};
  int node_cursor_[kMaxNodes] = {};
  int32_t next_ordinal_[kMaxNodes * kMaxLocalRanks] = {};
  int forwarded_[kMaxNodes] = {}, to_forward_[kMaxNodes] = {};
  int received_[kMaxLocalRanks] = {}, to_receive_[kMaxLocalRanks] = {};
  // Relays: the node each node peer l is relayed into by this rank (-1: none), and its messages.
  int relay_node_[kMaxLocalRanks] = {}, relayed_[kMaxLocalRanks] = {}, to_relay_[kMaxLocalRanks] = {};
};

void DispatchChannel::WriteMessage(uint8_t* m, int t, uint32_t mask) const {
  const DispatchInput& in = *job_.in;
  const DispatchMsgLayout& ml = job_.msg;
  auto* hdr = reinterpret_cast<MsgHeader*>(m);
  hdr->src_rank = st_.rank;
  hdr->src_token = t;
  hdr->local_mask = mask;
  hdr->reserved = ml.pull ? kDispatchPull : 0;
  if (!ml.pull)  // zero-copy: the receiver copies the row from our DispatchInputBuffer (= in.x)
    std::memcpy(m + ml.payload_off, in.x.data() + static_cast<size_t>(t) * ml.payload_bytes,
                ml.payload_bytes);
  if (ml.scales_bytes)
    std::memcpy(m + ml.scales_off, in.x_scales.data() + static_cast<size_t>(t) * (ml.scales_bytes / 4),
                ml.scales_bytes);
  if (ml.topk) {
    const size_t k0 = static_cast<size_t>(t) * ml.topk;
    std::memcpy(m + ml.topk_off, in.topk_idx.data() + k0, 8 * static_cast<size_t>(ml.topk));
    float* w = reinterpret_cast<float*>(m + ml.weights_off);
    if (!in.topk_weights.empty())
      std::memcpy(w, in.topk_weights.data() + k0, 4 * static_cast<size_t>(ml.topk));
  }
}

// Sends this channel's tokens wanted by the local ranks `filter` of node n through `ring`, from the
// stream's cursor as far as the ring has room. Own node: one stream per local rank (filter = its bit)
// into its node ring. Remote node: one stream for the node (all bits) into the RDMA ring to its
// same-index forwarder. Each message carries the wanted local ranks and their ordinals.
Status DispatchChannel::SendStream(int n, uint32_t filter, RingSender& ring, int chunk, int* cursor,
                                   bool* progressed) {
  int& t = *cursor;
  for (; t < t1_; ++t) {
    uint32_t mask = 0;
    for (int l = 0; l < L_; ++l)
      if ((filter >> l & 1) && h_.InRank(t, n * L_ + l)) mask |= 1u << l;
    if (mask == 0) continue;
    EPX_ASSIGN_OR_RETURN(bool room, ring.HasRoom());
    if (!room) break;
    uint8_t* m = ring.NextSlot();
    WriteMessage(m, t, mask);
    int32_t* ord = MsgOrdinals(m);
    for (int l = 0; l < L_; ++l)
      if (mask >> l & 1) ord[l] = next_ordinal_[n * L_ + l]++;
    ring.Push();
    *progressed = true;
    EPX_FAULT_POINT(kNormalDispatchSend);
    if (ring.unpublished() >= static_cast<uint64_t>(chunk)) EPX_RETURN_IF_ERROR(ring.Publish(job_.msg.bytes));
  }
  return Status::Ok();
}

// This rank's tokens for itself, placed directly; at most a ring's worth per pass so that the other
// streams keep moving.
Status DispatchChannel::SendSelf(bool* progressed) {
  const DispatchInput& in = *job_.in;
  const DispatchMsgLayout& ml = job_.msg;
  const size_t nb = ml.scales_bytes / 4;
  int& t = own_cursor_[st_.local];
  for (int budget = P_.cfg.node_slots; t < t1_ && budget > 0; ++t) {
    if (!h_.InRank(t, st_.rank)) continue;
    const size_t k0 = static_cast<size_t>(t) * ml.topk;
    EPX_RETURN_IF_ERROR(PlaceRow(
        st_.rank, t, next_ordinal_[st_.rank]++, in.x.data() + static_cast<size_t>(t) * ml.payload_bytes,
        in.x_scales.data() + t * nb, in.topk_idx.data() + k0, in.topk_weights.data() + k0));
    --budget;
    *progressed = true;
  }
  return Status::Ok();
}

Status DispatchChannel::Relay(int n, bool* progressed) {
  if (node_cursor_[n] < t1_) return Status::Ok();  // our own stream goes first
  RingSender& out = rings_.rd_send[n];
  for (int l = 0; l < L_; ++l) {
    if (relay_node_[l] != n) continue;
    RingReceiver& in = rings_.nc_recv[l * NN_ + n];
    // Unchecked here: the forwarder checks them like our own messages (it knows l is routed through us).
    EPX_ASSIGN_OR_RETURN(
        int moved, MoveMessages(in, out, to_relay_[l] - relayed_[l], job_.msg.bytes, P_.cfg.rdma_chunk));
    relayed_[l] += moved;
    *progressed |= moved > 0;
    EPX_RETURN_IF_ERROR(in.Release());
    if (relayed_[l] < to_relay_[l]) break;  // the next peer's stream follows this one's
  }
  return Status::Ok();
}

Status DispatchChannel::Forward(int a, bool* progressed) {
  RingReceiver& in = rings_.rd_recv[a];
  int& done = forwarded_[a];
  while (done < to_forward_[a]) {
    EPX_ASSIGN_OR_RETURN(uint64_t avail, in.Available());
    if (avail == 0) break;
    const uint8_t* m = in.Slot(0);
    // Written by node a's same-index rank (its own tokens, then those it relays): checked before its mask
    // and ordinal are used (normal_wire.h).
    const DispatchMsgExpect want = Expect(a, -1);
    StatusOr<DispatchMsgInfo> info = DecodeDispatchMsg({m, job_.msg.bytes}, want);
    if (!info.ok()) [[unlikely]]
      return internal::MakeError(info.status().code(), __FILE__, __LINE__, info.status().message());
    const uint32_t mask = info->mask;
    bool room = true;
    for (int l = 0; l < L_ && room; ++l) {
      if (!(mask >> l & 1) || l == st_.local) continue;
      EPX_ASSIGN_OR_RETURN(room, rings_.nd_send[l].HasRoom());
    }
    if (!room) break;
    for (int l = 0; l < L_; ++l) {
      if (!(mask >> l & 1)) continue;
      if (l == st_.local) {
        const DispatchMsgLayout& ml = job_.msg;
        EPX_RETURN_IF_ERROR(PlaceRow(info->src_rank, info->src_token, info->ordinal, m + ml.payload_off,
                                     reinterpret_cast<const float*>(m + ml.scales_off),
                                     reinterpret_cast<const int64_t*>(m + ml.topk_off),
                                     reinterpret_cast<const float*>(m + ml.weights_off)));
        continue;
      }
      RingSender& out = rings_.nd_send[l];
      std::memcpy(out.NextSlot(), m, job_.msg.bytes);
      out.Push();
      if (out.unpublished() >= static_cast<uint64_t>(P_.cfg.node_chunk))
        EPX_RETURN_IF_ERROR(out.Publish(job_.msg.bytes));
    }
    const size_t at = h_.fwd_prefix[static_cast<size_t>(c_) * (NN_ + 1) + a] + done;
    if (job_.record) {
      job_.record->fwd_masks[at] = mask;
    } else if (h_.fwd_masks[at] != mask) {
      return EPX_ERROR(
          kInvalidArgument,
          "cached dispatch: rank {} forwarded a token from node {} (channel {}, #{}) with local mask "
          "{:#x}, but the handle recorded {:#x}: the routing differs from the handle's",
          st_.rank, a, c_, done, mask, h_.fwd_masks[at]);
    }
    in.Consume(1);
    EPX_FAULT_POINT(kNormalDispatchForward);
    ++done;
    *progressed = true;
  }
  return in.Release();
}

Status DispatchChannel::PlaceRow(int s, int token, int ord, const uint8_t* payload, const float* scales,
                                 const int64_t* topk, const float* weights) {
  const DispatchMsgLayout& ml = job_.msg;
  DispatchOutput& out = *job_.out;
  if (s < 0 || s >= P_.R || ord < 0 || ord >= h_.rank_prefix[s + 1] - h_.rank_prefix[s])
    return EPX_ERROR(kInternal,
                     "dispatch receive: rank {} channel {} got token {} of source {} for row {} (the source "
                     "sends {} rows)",
                     st_.rank, c_, token, s, ord,
                     s >= 0 && s < P_.R ? h_.rank_prefix[s + 1] - h_.rank_prefix[s] : -1);
  const size_t row = static_cast<size_t>(h_.rank_prefix[s] + ord), nb = ml.scales_bytes / 4;
  // The output (every received token) is far larger than the cache and read only after the call:
  // streaming stores, fenced before Receive returns (kernels/stream_copy.h).
  StreamCopy(out.x.data() + row * ml.payload_bytes, payload, ml.payload_bytes);
  if (nb) std::memcpy(out.x_scales.data() + row * nb, scales, ml.scales_bytes);
  out.src_idx[row] = token;
  const int epr = h_.num_experts / P_.R, K = ml.topk;
  const int64_t first_expert = static_cast<int64_t>(st_.rank) * epr;
  for (int k = 0; k < K; ++k) {
    const int64_t local = topk[k] - first_expert;
    const bool mine = topk[k] >= 0 && local >= 0 && local < epr;
    out.topk_idx[row * K + k] = mine ? local : -1;
    out.topk_weights[row * K + k] = mine ? weights[k] : 0.0f;
  }
  return Status::Ok();
}

// Where the payload of message m is: in the message, or (zero-copy, one node) in the source's
// DispatchInputBuffer at the token's row, which stays valid until the node barrier that ends the call.
StatusOr<const uint8_t*> DispatchChannel::PayloadOf(const uint8_t* m, int src, int token) const {
  const DispatchMsgLayout& ml = job_.msg;
  const int32_t mode = reinterpret_cast<const MsgHeader*>(m)->reserved;
  if (mode != (ml.pull ? kDispatchPull : 0))
    return EPX_ERROR(
        kInvalidArgument,
        "normal dispatch: rank {} got a message from rank {} {} its rows, but dispatches {}: all ranks "
        "must pass the same DispatchInput::zero_copy",
        st_.rank, src, mode == kDispatchPull ? "referencing" : "carrying",
        ml.pull ? "zero-copy" : "with copies");
  if (!ml.pull) return m + ml.payload_off;
  if ((static_cast<size_t>(token) + 1) * ml.payload_bytes > P_.ZcXBytes())
    return EPX_ERROR(kInternal,
                     "normal dispatch: rank {} got token {} of rank {}, past its DispatchInputBuffer",
                     st_.rank, token, src);
  return st_.ctx.node().Address(src, P_.ZcX()) + static_cast<size_t>(token) * ml.payload_bytes;
}

Status DispatchChannel::Receive(int g, bool* progressed) {
  RingReceiver& ring = rings_.nd_recv[g];
  const DispatchMsgLayout& ml = job_.msg;
  // Messages come from the sources routed through forwarder g ((a, g) of any node a, and those it relays):
  // checked before their source,
  // token and ordinal are used (normal_wire.h).
  const DispatchMsgExpect want = Expect(-1, g);
  while (received_[g] < to_receive_[g]) {
    EPX_ASSIGN_OR_RETURN(uint64_t avail, ring.Available());
    if (avail == 0) break;
    const uint64_t n = std::min<uint64_t>(avail, to_receive_[g] - received_[g]);
    for (uint64_t i = 0; i < n; ++i) {
      const uint8_t* m = ring.Slot(i);
      StatusOr<DispatchMsgInfo> info = DecodeDispatchMsg({m, ml.bytes}, want);
      if (!info.ok()) [[unlikely]]
        return internal::MakeError(info.status().code(), __FILE__, __LINE__, info.status().message());
      EPX_ASSIGN_OR_RETURN(const uint8_t* payload, PayloadOf(m, info->src_rank, info->src_token));
      EPX_RETURN_IF_ERROR(PlaceRow(info->src_rank, info->src_token, info->ordinal, payload,
                                   reinterpret_cast<const float*>(m + ml.scales_off),
                                   reinterpret_cast<const int64_t*>(m + ml.topk_off),
                                   reinterpret_cast<const float*>(m + ml.weights_off)));
    }
    ring.Consume(n);
    EPX_FAULT_POINT(kNormalDispatchRecv);
    received_[g] += static_cast<int>(n);
    *progressed = true;
  }
  StreamFence();  // PlaceRow's rows before the channel can report them (it returns to its loop from here)
  return ring.Release();
}

Status DispatchChannel::PublishAll() {
  for (int l = 0; l < L_; ++l) EPX_RETURN_IF_ERROR(rings_.nd_send[l].Publish(job_.msg.bytes));
  if (NN_ == 1) return Status::Ok();
  for (int n = 0; n < NN_; ++n) {
    if (n == st_.node) continue;
    EPX_RETURN_IF_ERROR(rings_.rd_send[n].Publish(job_.msg.bytes));
    const int via = st_.Via(st_.rank, n);
    if (via != st_.local) EPX_RETURN_IF_ERROR(rings_.nc_send[via * NN_ + n].Publish(job_.msg.bytes));
  }
  return st_.rdma->Flush(c_);  // also moves the credit fetch-adds of Forward
}

std::string DispatchChannel::Diagnose() const {
  std::string s = fmt::format("normal dispatch: rank {} channel {} stuck;", st_.rank, c_);
  for (int l = 0; l < L_; ++l) {
    if (own_cursor_[l] < t1_)
      s += fmt::format(" send to local {} at token {} of [{}, {}) ({});", l, own_cursor_[l], t0_, t1_,
                       rings_.nd_send[l].Describe());
    if (received_[l] < to_receive_[l])
      s += fmt::format(" receive from forwarder {}: {} of {} ({});", l, received_[l], to_receive_[l],
                       rings_.nd_recv[l].Describe());
  }
  for (int n = 0; n < NN_; ++n) {
    if (n == st_.node) continue;
    if (node_cursor_[n] < t1_)
      s +=
          fmt::format(" send to node {} at token {} ({});", n, node_cursor_[n], rings_.rd_send[n].Describe());
    for (int l = 0; l < L_; ++l)
      if (relay_node_[l] == n && relayed_[l] < to_relay_[l])
        s += fmt::format(" relay rank {} into node {}: {} of {} ({});", st_.RankOf(st_.node, l), n,
                         relayed_[l], to_relay_[l], rings_.nc_recv[l * NN_ + n].Describe());
    if (forwarded_[n] < to_forward_[n])
      s += fmt::format(" forward from node {}: {} of {} ({});", n, forwarded_[n], to_forward_[n],
                       rings_.rd_recv[n].Describe());
  }
  return s;
}

Status DispatchChannel::Run() {
  ChannelRange(h_.num_tokens, P_.C, c_, &t0_, &t1_);
  for (int r = 0; r < P_.R; ++r) next_ordinal_[r] = h_.send_prefix[static_cast<size_t>(c_) * P_.R + r];
  for (int l = 0; l < L_; ++l) {
    own_cursor_[l] = t0_;
    // Nothing comes through our own node ring: what we send or forward to ourselves is placed directly.
    to_receive_[l] = l == st_.local ? 0 : ExpectedFromForwarder(st_, h_, l, c_);
  }
  EPX_RETURN_IF_ERROR(RelayPlanOf(st_, h_, c_, relay_node_, to_relay_));
  for (int n = 0; n < NN_; ++n) {
    node_cursor_[n] = n == st_.node ? t1_ : t0_;  // own node: sent through the node rings directly
    const int* fp = &h_.fwd_prefix[static_cast<size_t>(c_) * (NN_ + 1)];
    to_forward_[n] = fp[n + 1] - fp[n];
  }
  return RunProgressLoop(
      st_, c_, job_.abort, [&](bool* progressed) { return Pass(progressed); }, [&] { return Diagnose(); });
}

StatusOr<bool> DispatchChannel::Pass(bool* progressed) {
  bool done = true;
  for (int i = 0; i < L_; ++i) {
    // Start at our own index so that ranks do not all serve the same peer first.
    const int l = (st_.local + i) % L_;
    if (l == st_.local) {
      EPX_RETURN_IF_ERROR(SendSelf(progressed));
    } else {
      EPX_RETURN_IF_ERROR(
          SendStream(st_.node, 1u << l, rings_.nd_send[l], P_.cfg.node_chunk, &own_cursor_[l], progressed));
    }
    done &= own_cursor_[l] == t1_;
  }
  for (int i = 1; i < NN_; ++i) {
    const int n = (st_.node + i) % NN_;
    const int via = st_.Via(st_.rank, n);
    if (via == st_.local)
      EPX_RETURN_IF_ERROR(
          SendStream(n, ~0u, rings_.rd_send[n], P_.cfg.rdma_chunk, &node_cursor_[n], progressed));
    else  // relayed: the stream goes to our relay, over the node combine ring for node n (idle in dispatch)
      EPX_RETURN_IF_ERROR(
          SendStream(n, ~0u, rings_.nc_send[via * NN_ + n], P_.cfg.node_chunk, &node_cursor_[n], progressed));
    EPX_RETURN_IF_ERROR(Relay(n, progressed));
    EPX_RETURN_IF_ERROR(Forward(n, progressed));
    done &= node_cursor_[n] == t1_ && forwarded_[n] == to_forward_[n];
  }
  for (int l = 0; l < L_; ++l) done &= relayed_[l] == to_relay_[l];
  for (int g = 0; g < L_; ++g) {
    EPX_RETURN_IF_ERROR(Receive(g, progressed));
    done &= received_[g] == to_receive_[g];
  }
  EPX_RETURN_IF_ERROR(PublishAll());
  return done;
}

}  // namespace

Status RunDispatchChannel(NormalState& st, DispatchJob& job, int c) {
  return DispatchChannel(st, job, c).Run();
}

}  // namespace epx
