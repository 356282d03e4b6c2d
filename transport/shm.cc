#include "transport/shm.h"

#include <algorithm>

namespace epx {

ShmTransport::ShmTransport(SymmetricHeap& heap, std::vector<int> peers, size_t barrier_off, int64_t timeout_ms)
    : heap_(heap), peers_(std::move(peers)), barrier_off_(barrier_off), timeout_ms_(timeout_ms) {
  reach_.assign(heap.world_size(), false);
  for (int p : peers_) reach_[p] = p >= 0 && p < heap.world_size() && heap.IsMapped(p);
  // Our own epoch slot may hold a stale value if the heap was reused; it starts from what is there.
  epoch_ = AtomicLoad(heap.rank(), barrier_off_);
}

Status ShmTransport::BoundsError(const char* op, int peer, size_t off, size_t len) const {
  if (!Reaches(peer))
    return EPX_ERROR(kInvalidArgument, "shm {}: rank {} is not reachable over shared memory from rank {}", op, peer,
                     heap_.rank());
  return EPX_ERROR(kInvalidArgument, "shm {} to rank {}: [{}, {}+{}) is outside its {}-byte heap", op, peer, off, off,
                   len, heap_.PeerSize(peer));
}

Status ShmTransport::CheckWord(int peer, size_t off, std::string_view what) const {
  if (!InBounds(peer, off, 8)) return BoundsError("atomic", peer, off, 8);
  if (off % 8 != 0)
    return EPX_ERROR(kInvalidArgument, "{}: atomic word at offset {} of rank {} is not 8-byte aligned", what, off,
                     peer);
  return Status::Ok();
}

Status ShmTransport::WaitGE(int peer, size_t off, uint64_t target, std::string_view what) const {
  const Deadline d = Deadline::After(std::chrono::milliseconds(timeout_ms_));
  return WaitUntil([&] { return AtomicLoad(peer, off) >= target; }, d,
                   [&](int64_t ms) {
                     return fmt::format("{}: rank {} waited {} ms for rank {} (word at offset {}: {} < {})",
                                        what, heap_.rank(), ms, peer, off, AtomicLoad(peer, off), target);
                   },
                   health_, what);
}

Status ShmTransport::Barrier(std::string_view phase) {
  const uint64_t e = ++epoch_;
  AtomicStore(heap_.rank(), barrier_off_, e);
  const Deadline d = Deadline::After(std::chrono::milliseconds(timeout_ms_));
  size_t next = 0;  // peers before `next` have arrived; resume from there after each back-off
  return WaitUntil(
      [&] {
        for (; next < peers_.size(); ++next)
          if (AtomicLoad(peers_[next], barrier_off_) < e) return false;
        return true;
      },
      d,
      [&](int64_t ms) {
        std::string missing;
        for (int p : peers_)
          if (uint64_t v = AtomicLoad(p, barrier_off_); v < e)
            missing += fmt::format(" {}(at epoch {})", p, v);
        return fmt::format("node barrier '{}' (epoch {}): rank {} waited {} ms; ranks not arrived:{}", phase,
                           e, heap_.rank(), ms, missing);
      },
      health_, "a node barrier");
}

}  // namespace epx
