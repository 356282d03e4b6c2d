// transport/shm.h: the shared-memory transport, the epx stand-in for NVLink between the ranks of one
// node. Peers' heaps are mapped (transport/heap.h), so a put is a memcpy into the peer's arena and an
// atomic is a CPU atomic on the peer's memory.
//
// Memory ordering contract (what later kernels build on):
//   * Put/Get are plain copies: no ordering by themselves.
//   * AtomicStore / AtomicAdd are `release`: every Put this thread issued before them is visible to a
//     peer that observed the new value with an `acquire` load (AtomicLoad / WaitGE). This is the
//     data-then-flag pattern: Put(payload); AtomicStore(flag) on the sender, WaitGE(flag); read on the
//     receiver. x86-TSO gives this in hardware; the C++ orders make it portable and TSan-checkable.
//   * A 64-bit word updated by peers with AtomicAdd must be 8-byte aligned.
//
// Hot-path rules: no allocation, no locks, no syscalls in Put/Get/atomics; waits back off
// (core/wait.h) and have deadlines.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/wait.h"
#include "transport/heap.h"

namespace epx {

class ShmTransport {
 public:
  // `peers`: ranks reachable through shared memory (mapped in `heap`), including self.
  // `barrier_off`: 8-byte slot in the control block used by Barrier (same offset on all ranks).
  ShmTransport(SymmetricHeap& heap, std::vector<int> peers, size_t barrier_off, int64_t timeout_ms);

  bool Reaches(int peer) const { return peer >= 0 && peer < static_cast<int>(reach_.size()) && reach_[peer]; }
  uint8_t* Address(int peer, size_t off) const { return heap_.PeerBase(peer) + off; }

  // Copies len bytes from src to (peer, remote_off). Bounds are checked (cheap) and reported.
  Status Put(int peer, size_t remote_off, const void* src, size_t len) {
    if (!InBounds(peer, remote_off, len)) [[unlikely]]
      return BoundsError("put", peer, remote_off, len);
    std::memcpy(Address(peer, remote_off), src, len);
    return Status::Ok();
  }
  Status Get(int peer, size_t remote_off, void* dst, size_t len) const {
    if (!InBounds(peer, remote_off, len)) [[unlikely]]
      return BoundsError("get", peer, remote_off, len);
    std::memcpy(dst, Address(peer, remote_off), len);
    return Status::Ok();
  }

  // 64-bit atomics on (peer, off); off must be 8-byte aligned (checked by the *Checked variants in
  // setup code; the fast ones trust the caller's layout).
  uint64_t AtomicAdd(int peer, size_t off, uint64_t v) {
    return Word(peer, off).fetch_add(v, std::memory_order_acq_rel);
  }
  void AtomicStore(int peer, size_t off, uint64_t v) { Word(peer, off).store(v, std::memory_order_release); }
  uint64_t AtomicLoad(int peer, size_t off) const { return Word(peer, off).load(std::memory_order_acquire); }
  Status CheckWord(int peer, size_t off, std::string_view what) const;

  // Waits until the word at (peer, off) is >= target (acquire). Deadline: the transport timeout.
  // On timeout the error names `what`, the peer, the offset and the last value seen.
  Status WaitGE(int peer, size_t off, uint64_t target, std::string_view what) const;

  // Barrier of all `peers` (the node). Monotonic per-rank epochs: each rank publishes its epoch in its
  // own control block and waits for every peer's to reach it, so no reset step and no counter shared
  // by writers is needed. Reports the peers that did not arrive.
  Status Barrier(std::string_view phase);

  const std::vector<int>& peers() const { return peers_; }
  // Asked on the slow path of WaitGE/Barrier whether a peer died (Context passes its PeerLiveness);
  // null: deadline only.
  void SetHealth(WaitHealth* h) { health_ = h; }

 private:
  std::atomic<uint64_t>& Word(int peer, size_t off) const {
    // The heap is shared memory of lock-free 64-bit words: std::atomic<uint64_t> has the layout of
    // uint64_t on every supported ABI (static_assert below), so viewing the slot as one is sound.
    return *reinterpret_cast<std::atomic<uint64_t>*>(Address(peer, off));
  }
  static_assert(sizeof(std::atomic<uint64_t>) == 8 && std::atomic<uint64_t>::is_always_lock_free);
  bool InBounds(int peer, size_t off, size_t len) const {
    return Reaches(peer) && off <= heap_.PeerSize(peer) && len <= heap_.PeerSize(peer) - off;
  }
  Status BoundsError(const char* op, int peer, size_t off, size_t len) const;

  SymmetricHeap& heap_;
  std::vector<int> peers_;
  std::vector<bool> reach_;
  size_t barrier_off_;
  uint64_t epoch_ = 0;
  int64_t timeout_ms_;
  WaitHealth* health_ = nullptr;
};

}  // namespace epx
