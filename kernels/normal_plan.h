// kernels/normal_plan.h: where every ring, word and count table of a NormalBuffer lives in the
// symmetric heap. All ranks build the same plan from the same (config, limits, R, L, base), so an
// offset names the same object in every rank's heap; which rank's heap holds the live copy is part of
// each accessor's contract below.
//
// Indices: c channel, l/g/h local rank, a/b node, s source rank, p parity (0/1) of a count exchange.
#pragma once

#include <cstddef>

#include "core/status.h"
#include "kernels/normal_config.h"

namespace epx {

struct NormalPlan {
  NormalConfig cfg;
  NormalLimits lim;
  int R = 1, L = 1, NN = 1, C = 1;
  size_t slot = 0;            // ring slot bytes
  size_t count_row = 0;       // bytes of one count row (CountRow layout in normal_notify.h)
  size_t begin = 0, end = 0;  // the whole block [begin, end) in the heap

  // Builds the plan of a block starting at `base` (64-aligned).
  static StatusOr<NormalPlan> Make(const NormalConfig& cfg, const NormalLimits& lim, int num_ranks,
                                   int local_size, size_t base);

  // --- shared-memory ring words (64 B each; written with release stores by one rank only) ---
  // Tail of the node dispatch ring from local g, in the receiver's heap (written by g).
  size_t NdTail(int c, int g) const { return words_ + 64 * (c * L + g); }
  // Credit (receiver head) of the node dispatch ring to local h, in the sender's heap (written by h).
  size_t NdCredit(int c, int h) const { return words_ + 64 * (C * L + c * L + h); }
  // Tail of the node combine ring from local h for source node a, in the forwarder's heap.
  size_t NcTail(int c, int h, int a) const { return words_ + 64 * (2 * C * L + (c * L + h) * NN + a); }
  // Credit of the node combine ring to forwarder g for source node a, in the sender's heap.
  size_t NcCredit(int c, int g, int a) const {
    return words_ + 64 * (2 * C * L + C * L * NN + (c * L + g) * NN + a);
  }

  // --- RDMA counters (the domain's counter area; only peers' fetch-adds change them) ---
  size_t counters_begin() const { return counters_; }
  size_t counters_bytes() const { return NN > 1 ? 64 * (4 * C * NN + 1) : 0; }
  size_t RdTail(int c, int a) const { return counters_ + 64 * (c * NN + a); }             // at (b,g), from a
  size_t RdCredit(int c, int b) const { return counters_ + 64 * (C * NN + c * NN + b); }  // at (a,g), from b
  size_t RcTail(int c, int b) const {
    return counters_ + 64 * (2 * C * NN + c * NN + b);
  }  // at (a,g), from b
  size_t RcCredit(int c, int a) const {
    return counters_ + 64 * (3 * C * NN + c * NN + a);
  }                                                                       // at (b,g), from a
  size_t NotifyCounter() const { return counters_ + 64 * (4 * C * NN); }  // count-exchange arrivals

  // --- ring slots ---
  size_t NdSlots(int c, int g) const { return nd_ + slot * cfg.node_slots * (c * L + g); }
  size_t NcSlots(int c, int h, int a) const { return nc_ + slot * cfg.node_slots * ((c * L + h) * NN + a); }
  size_t RdRecv(int c, int a) const { return rd_recv_ + slot * cfg.rdma_slots * (c * NN + a); }
  size_t RdStage(int c, int b) const { return rd_stage_ + slot * cfg.rdma_slots * (c * NN + b); }
  size_t RcRecv(int c, int b) const { return rc_recv_ + slot * cfg.rdma_slots * (c * NN + b); }
  size_t RcStage(int c, int a) const { return rc_stage_ + slot * cfg.rdma_slots * (c * NN + a); }

  // --- count exchange ---
  // Row that source s writes (directly or through its forwarder) into this rank's table.
  size_t CountRow(int p, int s) const { return counts_ + count_row * (p * R + s); }
  // Block of L rows + one node row that source (a, k) RDMA-writes into this rank: k is this rank's own
  // local index, or a node peer of (a, k)'s that relays for it (NormalState::via).
  size_t Inbox(int p, int a, int k) const { return inbox_ + count_row * (L + 1) * ((p * NN + a) * L + k); }
  size_t InboxBytes() const { return count_row * (L + 1) * NN * L; }  // all blocks of one parity
  // The local staging copy of the block for destination node b.
  size_t Outbox(int p, int b) const { return outbox_ + count_row * (L + 1) * (p * NN + b); }
  // In the heap of relay g: a 64-byte stamp (the exchange's epoch, release-stored last) and the block that
  // node peer l hands to g for the one node g relays it to (NormalState::via).
  size_t Relay(int p, int l) const { return relay_ + (64 + count_row * (L + 1)) * (p * L + l); }

  // --- zero-copy inputs (NormalLimits::max_zero_copy_tokens; empty when 0) ---
  // Rows x the user writes for a zero-copy dispatch: node peers copy them from here.
  size_t ZcX() const { return zc_x_; }
  size_t ZcXBytes() const { return zc_x_bytes_; }
  // Expert outputs y the user writes for a zero-copy combine: node peers reduce straight from here.
  size_t ZcY() const { return zc_y_; }
  size_t ZcYBytes() const { return zc_y_bytes_; }

  // Byte ranges this rank zeroes at creation (its own words and count tables).
  // RDMA counters are not in it: their owner never writes them (transport/rdma.h), it re-bases.
  size_t zero_begin() const { return words_; }
  size_t zero_end() const { return counters_; }

 private:
  size_t words_ = 0, counters_ = 0, counts_ = 0, inbox_ = 0, outbox_ = 0, relay_ = 0;
  size_t nd_ = 0, nc_ = 0, rd_recv_ = 0, rd_stage_ = 0, rc_recv_ = 0, rc_stage_ = 0;
  size_t zc_x_ = 0, zc_x_bytes_ = 0, zc_y_ = 0, zc_y_bytes_ = 0;
};

}  // namespace epx
