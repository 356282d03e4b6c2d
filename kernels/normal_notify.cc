// The count exchange of a (non-cached) Dispatch (DeepEP's notify_dispatch).
//
// Every rank needs, for each source rank s: how many tokens s sends it, per channel, and per local
// expert. Source s builds one count row per destination rank. Rows reach a destination's count table
// (in its heap, one row per source) in one hop inside the node (shared-memory put) and in two hops
// across nodes: (a,g) RDMA-writes the block of rows for node b's ranks to its same-index rank (b,g)
// (RDMA only flows between same-local-index ranks), which relays each row over shared memory. The
// block also carries a node row: (a,g)'s per-channel count of tokens with any expert in node b, which
// is what forwarder (b,g) will receive from it.
//
// Visibility: a row's body is put first, then its 8-byte stamp (= the exchange's epoch) with a release
// store; a reader acquire-loads the stamp. RDMA blocks are signalled (write, then a fetch-add of the
// receiver's arrival counter on the same QP), and the arrival counter is cumulative: each exchange adds
// one per live remote node (NormalState::notify_target keeps the sum).
//
// Masked ranks (NormalBuffer::MaskRank): no block goes to a wholly masked node and none is awaited from a
// masked source; its inbox block here is zeroed, so its node row reads "no tokens to forward", and its
// rows are the zero rows written below for every masked source. A live source (a, l) whose same-index
// rank (b, l) is masked is relayed (NormalState::via): it puts its block for node b into the heap of its
// relay (a, g) (body, then the stamp with a release store), and (a, g) RDMA-writes it into (b, g)'s inbox
// slot for source (a, l), which relays its rows like those of (a, g)'s own block. Inbox blocks are per
// source (node a, local k) for this reason.
//
// Reuse without barriers: tables, inboxes and outboxes have two copies, chosen by the epoch's parity.
// A writer fills copy p in exchange e+2 only after finishing exchange e+1, which needed a row from
// every rank of exchange e+1 (directly, or relayed by a rank that had received that rank's block);
// every rank writes its e+1 rows after it has read everything of exchange e. So copy p is never
// overwritten while a reader still needs it. Waiting for all R stamps is itself the barrier that makes
// a later dispatch's data land in rings whose readers know the counts.
#include <cstring>

#include "core/fault.h"
#include "kernels/normal_state.h"
#include "kernels/normal_wire.h"  // CountRowRef: the layout of a count row, and its decoders

namespace epx {

Status ExchangeCounts(NormalState& st, const std::vector<int>& tokens_per_expert, uint32_t shape,
                      NormalHandle* h) {
  const NormalPlan& P = st.plan;
  const int R = P.R, L = P.L, NN = P.NN, C = P.C, me = st.rank, b = st.node, g = st.local;
  const int epr = h->num_experts / R;
  const size_t body = 8 + 4 * static_cast<size_t>(C + epr);  // bytes after the stamp
  ShmTransport& shm = st.ctx.node();

  // This rank's tokens per (channel, destination rank) and per (channel, destination node).
  std::vector<int> chan(static_cast<size_t>(C) * R, 0), node_chan(static_cast<size_t>(C) * NN, 0);
  for (int c = 0; c < C; ++c) {
    int t0, t1;
    ChannelRange(h->num_tokens, C, c, &t0, &t1);
    for (int t = t0; t < t1; ++t)
      for (int n = 0; n < NN; ++n) {
        bool any = false;
        for (int l = 0; l < L; ++l)
          if (h->InRank(t, n * L + l)) chan[c * R + n * L + l]++, any = true;
        if (any) node_chan[c * NN + n]++;
      }
  }
  h->send_prefix.assign(static_cast<size_t>(C) * R, 0);
  for (int c = 1; c < C; ++c)
    for (int r = 0; r < R; ++r)
      h->send_prefix[c * R + r] = h->send_prefix[(c - 1) * R + r] + chan[(c - 1) * R + r];

  const uint64_t e = ++st.epoch;
  const int p = static_cast<int>(e & 1);
  auto fill_row = [&](uint8_t* at, int r) {
    CountRowRef row{at, C};
    int total = 0;
    for (int c = 0; c < C; ++c) total += row.chan()[c] = chan[c * R + r];
    row.total() = total;
    row.shape() = shape;
    std::memcpy(row.expert(), &tokens_per_expert[static_cast<size_t>(r) * epr], 4 * static_cast<size_t>(epr));
  };
  auto put_row = [&](int dst, int src, const uint8_t* row) -> Status {
    EPX_RETURN_IF_ERROR(shm.Put(dst, P.CountRow(p, src) + 8, row + 8, body));
    shm.AtomicStore(dst, P.CountRow(p, src), e);  // release: the body above is visible first
    return Status::Ok();
  };

  EPX_FAULT_POINT(kNormalLayout);  // before any row leaves: every peer waits for this rank's counts
  for (int n = 0; n < NN; ++n) {
    uint8_t* box = st.heap() + P.Outbox(p, n);  // own node's outbox is just the staging of these rows
    for (int l = 0; l < L; ++l) fill_row(box + l * P.count_row, n * L + l);
    CountRowRef node_row{box + L * P.count_row, C};
    for (int c = 0; c < C; ++c) node_row.chan()[c] = node_chan[c * NN + n];
    if (n == b) {
      for (int l = 0; l < L; ++l)
        if (!st.masked[st.RankOf(b, l)])
          EPX_RETURN_IF_ERROR(put_row(st.RankOf(b, l), me, box + l * P.count_row));
    } else if (!st.NodeMasked(n)) {
      const int via = st.Via(me, n);
      if (via == g) {
        EPX_RETURN_IF_ERROR(st.rdma->Signal(0, st.RankOf(n, g), P.Outbox(p, n), P.Inbox(p, b, g),
                                            (L + 1) * P.count_row, P.NotifyCounter(), 1));
      } else {  // relayed (NormalState::via): the relay sends the block on; the stamp goes last (release)
        EPX_RETURN_IF_ERROR(shm.Put(st.RankOf(b, via), P.Relay(p, g) + 64, box, (L + 1) * P.count_row));
        shm.AtomicStore(st.RankOf(b, via), P.Relay(p, g), e);
      }
    }
  }
  h->relay.clear();
  if (NN > 1) {
    EPX_RETURN_IF_ERROR(st.rdma->Flush(0));  // our own blocks move while we wait for the ones we relay
    // The blocks this rank relays, once their ranks have handed them over (they do so first thing in
    // their exchange, waiting for nothing). Their node rows are what this rank will relay per channel.
    for (int l = 0; l < L; ++l)
      for (int n = 0; n < NN; ++n) {
        if (!st.Relays(l, n)) continue;
        const int src = st.RankOf(b, l);
        EPX_RETURN_IF_ERROR(WaitUntil(
            [&] { return shm.AtomicLoad(me, P.Relay(p, l)) >= e; },
            Deadline::After(std::chrono::milliseconds(st.timeout_ms)),
            [&](int64_t ms) {
              return fmt::format(
                  "normal dispatch count exchange #{} on rank {}: rank {} did not hand over its counts for "
                  "node {} (this rank relays them) after {} ms",
                  e, me, src, n, ms);
            },
            &st.ctx.liveness(), "the count exchange of a normal dispatch", st.wait));
        EPX_RETURN_IF_ERROR(st.rdma->Signal(0, st.RankOf(n, g), P.Relay(p, l) + 64, P.Inbox(p, b, l),
                                            (L + 1) * P.count_row, P.NotifyCounter(), 1));
        if (h->relay.empty()) h->relay.assign(static_cast<size_t>(C) * L, 0);
        const CountRowRef node_row{st.heap() + P.Relay(p, l) + 64 + L * P.count_row, C};
        for (int c = 0; c < C; ++c) {
          const int32_t v = node_row.chan()[c];
          if (v < 0)
            return EPX_ERROR(
                kInternal,
                "normal dispatch count exchange: rank {} relays {} tokens of rank {} on channel {}", me, v,
                src, c);
          h->relay[static_cast<size_t>(c) * L + l] = v;
        }
      }
    EPX_RETURN_IF_ERROR(st.rdma->Flush(0));
    // One block from every live source routed through this rank (its own index, and those relayed to it).
    for (int s = 0; s < R; ++s)
      if (s / L != b && st.Via(s, b) == g) ++st.notify_target;
    EPX_RETURN_IF_ERROR(st.rdma->WaitCounter(P.NotifyCounter(), st.notify_target,
                                             "normal dispatch count exchange (blocks from other nodes)"));
    for (int a = 0; a < NN; ++a) {
      if (a == b) continue;
      for (int k = 0; k < L; ++k) {
        const int src = st.RankOf(a, k);
        uint8_t* box = st.heap() + P.Inbox(p, a, k);
        if (st.Via(src, b) != g) {  // no block (masked source, or routed elsewhere): it reads "no tokens"
          std::memset(box, 0, (L + 1) * P.count_row);
          continue;
        }
        for (int l = 0; l < L; ++l)
          if (!st.masked[st.RankOf(b, l)])
            EPX_RETURN_IF_ERROR(put_row(st.RankOf(b, l), src, box + l * P.count_row));
      }
    }
    EPX_RETURN_IF_ERROR(st.rdma->Quiet(0));  // outbox and relay copies p are rewritten two exchanges later
  }

  // A masked source sends nothing (NormalBuffer::MaskRank): its row here reads "no tokens",
  // written by this rank itself (the masked rank makes no calls, so nobody else writes it).
  for (int s = 0; s < R; ++s) {
    if (!st.masked[s]) continue;
    uint8_t* at = st.heap() + P.CountRow(p, s);
    std::memset(at + 8, 0, body);
    CountRowRef{at, C}.shape() = shape;
    shm.AtomicStore(me, P.CountRow(p, s), e);
  }
  // Wait for a row from every source (the acquire loads make their bodies visible).
  int next = 0;
  EPX_RETURN_IF_ERROR(WaitUntil(
      [&] {
        for (; next < R; ++next)
          if (shm.AtomicLoad(me, P.CountRow(p, next)) < e) return false;
        return true;
      },
      Deadline::After(std::chrono::milliseconds(st.timeout_ms)),
      [&](int64_t ms) {
        std::string missing;
        for (int s = 0; s < R; ++s)
          if (shm.AtomicLoad(me, P.CountRow(p, s)) < e) missing += fmt::format(" {}", s);
        return fmt::format(
            "normal dispatch count exchange #{} on rank {}: no counts from ranks{} after {} ms", e, me,
            missing, ms);
      },
      &st.ctx.liveness(), "the count exchange of a normal dispatch", st.wait));

  // The rows and node rows were written by peers: decoded and checked before they size anything
  // (kernels/normal_wire.h). A shape mismatch stays kInvalidArgument (the buffer remains usable).
  const Status rows = DecodeCountRows({st.heap() + P.CountRow(p, 0), P.count_row * R}, P.count_row,
                                      CountRowsExpect{me, R, C, epr, P.lim.max_topk, shape}, h);
  if (!rows.ok()) return internal::MakeError(rows.code(), __FILE__, __LINE__, rows.message());
  const Status fwd = DecodeNodeRows({st.heap() + P.Inbox(p, 0, 0), P.InboxBytes()}, P.count_row,
                                    NodeRowsExpect{me, b, NN, L, C, L}, h);
  if (!fwd.ok()) return internal::MakeError(fwd.code(), __FILE__, __LINE__, fwd.message());
  h->fwd_masks.assign(h->fwd_prefix.empty() ? 0 : h->fwd_prefix.back(), 0);
  return Status::Ok();
}

}  // namespace epx
