// kernels/ring.h: the bounded credit ring every normal-mode message travels through.
//
// A ring joins one sender and one receiver. Its S slots of fixed size live in the RECEIVER's heap.
// Positions are monotonic 64-bit sequence numbers that are never reset (slot = seq % S), so a ring
// needs no zeroing or barrier between calls: the sender owns `tail` (messages published), the
// receiver owns `head` (messages consumed), and each end keeps its own copy of its counter across
// calls. The sender may write message `seq` once seq - head < S.
//
// How bytes and words move is the only difference between the two links:
//   shm   the sender writes the message straight into the receiver's mapped slot, then release-stores
//         `tail` into a word in the receiver's heap; the receiver acquire-loads it, reads the slot,
//         and release-stores `head` into a word in the sender's heap (the credit). Each word has one
//         writer; acquire/release make the slot bytes visible before the word that announces them.
//   rdma  the sender writes the message into its local staging copy of the slot, and `Publish` posts
//         RDMA writes of the new messages followed, on the same channel (QP), by a Signal whose
//         fetch-add raises `tail` in the receiver's counter area: RC in-order execution places the
//         data before the counter moves (transport/rdma.h). The receiver returns credits with a
//         fetch-add on the sender's credit counter. Counters are never written by their owner's CPU;
//         each end remembers the counter's value at creation (its base) instead of zeroing it.
//         A staging slot is rewritten only after its credit came back, i.e. after the receiver has
//         read the data, so the NIC has finished with it.
//
// Hot path: no allocation, lock or syscall (the RDMA doorbell aside); callers Flush the RDMA channel
// once per progress pass. One thread uses a ring end at a time.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/status.h"
#include "transport/rdma.h"
#include "transport/shm.h"

namespace epx {

// Geometry and words of one ring, as both ends see it (offsets are symmetric-heap offsets).
struct RingSpec {
  int sender = 0, receiver = 0;  // ranks
  size_t slots_off = 0;          // S slots in the receiver's heap
  uint32_t num_slots = 0;
  uint32_t slot_bytes = 0;
  size_t tail_off = 0;     // shm: word in the receiver's heap; rdma: counter in the receiver's counter area
  size_t credit_off = 0;   // shm: word in the sender's heap; rdma: counter in the sender's counter area
  size_t staging_off = 0;  // rdma only: the sender's local copy of the slots
};

// What both ends hold: the spec, how bytes move, where this end's slots are, and the shm words.
class RingEnd {
 public:
  // shm: both ends address the slots in the receiver's heap and the words where the spec puts them.
  // Ends start at sequence 0; the words must be zero (the buffer zeroes them before any use).
  void InitShm(ShmTransport& shm, const RingSpec& spec);

 protected:
  // rdma: `slots` is where this end reads or writes messages; `base` is the counter this end owns
  // (sender: credit, receiver: tail) at creation, read by this owning rank.
  void InitRdmaAt(RdmaDomain& rdma, int channel, uint8_t* slots, const RingSpec& spec, uint64_t base);
  uint8_t* SlotAt(uint64_t seq) const { return slots_ + (seq % spec_.num_slots) * spec_.slot_bytes; }
  // The counter this end owns, as the peer last moved it: shm word (acquire) or RDMA counter - base.
  StatusOr<uint64_t> ReadOwn(const std::atomic<uint64_t>* word, size_t counter_off) const;
  std::string Name() const;
  // kInternal naming the ring and the impossible value a peer left in `what` (out of line: cold).
  Status BadCounter(const char* what, uint64_t value, uint64_t own) const;
  std::string Fresh(const std::atomic<uint64_t>* word, size_t counter_off) const;  // ReadOwn for diagnostics

  RingSpec spec_;
  bool rdma_ = false;
  RdmaDomain* rdma_dom_ = nullptr;
  int channel_ = 0;
  uint8_t* slots_ = nullptr;
  std::atomic<uint64_t>* tail_word_ = nullptr;    // shm: in the receiver's heap
  std::atomic<uint64_t>* credit_word_ = nullptr;  // shm: in the sender's heap
  uint64_t base_ = 0;
};

class RingSender : public RingEnd {
 public:
  // `credit_base`: the credit counter at creation. Messages are written into the staging copy.
  void InitRdma(RdmaDomain& rdma, int channel, uint8_t* heap_base, const RingSpec& spec,
                uint64_t credit_base) {
    InitRdmaAt(rdma, channel, heap_base + spec.staging_off, spec, credit_base);
  }
  // Whether the next message has a free slot; reads the receiver's credit only when the cached view
  // says the ring is full.
  StatusOr<bool> HasRoom() {
    if (written_ - credit_ < spec_.num_slots) return true;
    EPX_ASSIGN_OR_RETURN(credit_, ReadOwn(credit_word_, spec_.credit_off));
    // The credit is the peer's word: more credit than messages written would make the unsigned
    // difference wrap and the ring look full for ever (or overwrite unread slots).
    if (credit_ > written_) [[unlikely]]
      return BadCounter("credit", credit_, written_);
    return written_ - credit_ < spec_.num_slots;
  }
  // Where the next message is written (valid after HasRoom() returned true): the receiver's slot
  // (shm) or the staging slot (rdma).
  uint8_t* NextSlot() const { return SlotAt(written_); }
  // The message in NextSlot() is complete; it becomes visible at the next Publish.
  void Push() { ++written_; }
  uint64_t unpublished() const { return written_ - published_; }
  // Makes every pushed message visible to the receiver (`msg_bytes` of each slot move over RDMA).
  Status Publish(uint32_t msg_bytes);
  std::string Describe() const;

 private:
  uint64_t written_ = 0, published_ = 0, credit_ = 0;
};

class RingReceiver : public RingEnd {
 public:
  // `tail_base`: the tail counter at creation.
  void InitRdma(RdmaDomain& rdma, int channel, uint8_t* heap_base, const RingSpec& spec, uint64_t tail_base) {
    InitRdmaAt(rdma, channel, heap_base + spec.slots_off, spec, tail_base);
  }
  // Messages arrived and not yet consumed; re-reads the sender's tail only when none are cached, so
  // a caller that consumes everything it sees pays one acquire load per batch.
  StatusOr<uint64_t> Available() {
    if (tail_ == head_) {
      EPX_ASSIGN_OR_RETURN(tail_, ReadOwn(tail_word_, spec_.tail_off));
      // The tail is the peer's word: it can never be behind what we consumed nor more than S ahead.
      if (tail_ < head_ || tail_ - head_ > spec_.num_slots) [[unlikely]]
        return BadCounter("tail", tail_, head_);
    }
    return tail_ - head_;
  }
  // The i-th unconsumed message (i < Available()).
  const uint8_t* Slot(uint64_t i) const { return SlotAt(head_ + i); }
  void Consume(uint64_t n) { head_ += n; }
  // Returns consumed slots to the sender (no-op when nothing was consumed since the last release).
  Status Release();
  std::string Describe() const;

 private:
  uint64_t head_ = 0, tail_ = 0, released_ = 0;
};

// Copies whole messages (`msg_bytes` each) from the head of `in` to `out`, at most `max`, as far as `in` has
// messages and `out` room; publishes `out` every `chunk` messages. Returns how many moved (`in` is released
// by the caller). Relays of normal mode pass a stream through unchanged this way.
StatusOr<int> MoveMessages(RingReceiver& in, RingSender& out, int max, uint32_t msg_bytes, int chunk);

}  // namespace epx
