#include "kernels/ring.h"

#include <fmt/format.h>

#include <cstring>

namespace epx {
namespace {

// A 64-bit word of a mapped heap (same reasoning as ShmTransport::Word: lock-free, layout of uint64_t).
std::atomic<uint64_t>* WordAt(uint8_t* p) {
  return reinterpret_cast<std::atomic<uint64_t>*>(p);
}

}  // namespace

void RingEnd::InitShm(ShmTransport& shm, const RingSpec& spec) {
  spec_ = spec;
  rdma_ = false;
  slots_ = shm.Address(spec.receiver, spec.slots_off);
  tail_word_ = WordAt(shm.Address(spec.receiver, spec.tail_off));
  credit_word_ = WordAt(shm.Address(spec.sender, spec.credit_off));
}

void RingEnd::InitRdmaAt(RdmaDomain& rdma, int channel, uint8_t* slots, const RingSpec& spec, uint64_t base) {
  spec_ = spec;
  rdma_ = true;
  rdma_dom_ = &rdma;
  channel_ = channel;
  slots_ = slots;
  base_ = base;
}

StatusOr<uint64_t> RingEnd::ReadOwn(const std::atomic<uint64_t>* word, size_t counter_off) const {
  // Acquire: what the peer wrote before moving the word (slot bytes, or its reads of our slots) is
  // visible once we see the new value.
  if (!rdma_) return word->load(std::memory_order_acquire);
  EPX_ASSIGN_OR_RETURN(uint64_t v, rdma_dom_->ReadCounter(counter_off));
  return v - base_;
}

Status RingEnd::BadCounter(const char* what, uint64_t value, uint64_t own) const {
  return EPX_ERROR(kInternal, "{}: rank {} moved the {} to {}, impossible against this end's {} of {} slots",
                   Name(), what[0] == 'c' ? spec_.receiver : spec_.sender, what, value, own, spec_.num_slots);
}

std::string RingEnd::Name() const {
  return fmt::format("{} ring {}->{}", rdma_ ? "rdma" : "shm", spec_.sender, spec_.receiver);
}

Status RingSender::Publish(uint32_t msg_bytes) {
  if (written_ == published_) return Status::Ok();
  if (!rdma_) {
    // Release: the slot bytes written before this store are visible to whoever acquires the tail.
    tail_word_->store(written_, std::memory_order_release);
    published_ = written_;
    return Status::Ok();
  }
  // One write per message (only its bytes move), the last one carrying the tail increment.
  const uint64_t n = written_ - published_;
  for (uint64_t seq = published_; seq < written_; ++seq) {
    const size_t at = (seq % spec_.num_slots) * spec_.slot_bytes;
    const size_t local = spec_.staging_off + at, remote = spec_.slots_off + at;
    if (seq + 1 < written_) {
      EPX_RETURN_IF_ERROR(rdma_dom_->Write(channel_, spec_.receiver, local, remote, msg_bytes));
    } else {
      EPX_RETURN_IF_ERROR(
          rdma_dom_->Signal(channel_, spec_.receiver, local, remote, msg_bytes, spec_.tail_off, n));
    }
  }
  published_ = written_;
  return Status::Ok();
}

// Diagnostics re-read the peer-moved counter: the cached value is what the loop last acted on, the
// fresh one tells a lost update (e.g. a credit that never arrived) from a peer that is behind.
std::string RingEnd::Fresh(const std::atomic<uint64_t>* word, size_t counter_off) const {
  StatusOr<uint64_t> v = ReadOwn(word, counter_off);
  return v.ok() ? std::to_string(*v) : "?";
}

std::string RingSender::Describe() const {
  return fmt::format("{}: written {} published {} credit {} (now {}) of {} slots", Name(), written_,
                     published_, credit_, Fresh(credit_word_, spec_.credit_off), spec_.num_slots);
}

Status RingReceiver::Release() {
  if (head_ == released_) return Status::Ok();
  if (!rdma_) {
    // Release: our reads of the consumed slots happen-before the sender's reuse of them.
    credit_word_->store(head_, std::memory_order_release);
  } else {
    EPX_RETURN_IF_ERROR(rdma_dom_->FetchAdd(channel_, spec_.sender, spec_.credit_off, head_ - released_));
  }
  released_ = head_;
  return Status::Ok();
}

std::string RingReceiver::Describe() const {
  return fmt::format("{}: head {} tail {} (now {}) released {} of {} slots", Name(), head_, tail_,
                     Fresh(tail_word_, spec_.tail_off), released_, spec_.num_slots);
}

StatusOr<int> MoveMessages(RingReceiver& in, RingSender& out, int max, uint32_t msg_bytes, int chunk) {
  int moved = 0;
  while (moved < max) {
    EPX_ASSIGN_OR_RETURN(uint64_t avail, in.Available());
    if (avail == 0) break;
    EPX_ASSIGN_OR_RETURN(bool room, out.HasRoom());
    if (!room) break;
    std::memcpy(out.NextSlot(), in.Slot(0), msg_bytes);
    out.Push();
    in.Consume(1);
    ++moved;
    if (out.unpublished() >= static_cast<uint64_t>(chunk)) EPX_RETURN_IF_ERROR(out.Publish(msg_bytes));
  }
  return moved;
}

}  // namespace epx
