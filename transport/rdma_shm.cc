// The shm-emulated RDMA domain. Semantics follow transport/rdma.h exactly, with stronger timing:
// a post executes immediately (memcpy / CPU atomic on the peer's mapped heap), so Flush and Quiet
// have nothing to wait for. Ordering: Write data is copied before the release-ordered counter
// update or immediate enqueue that follows it, and receivers read counters/immediates with acquire,
// which gives the data-then-flag guarantee of the verbs path.
#include "transport/rdma_shm.h"

#include <atomic>
#include <cstring>

#include "core/wait.h"
#include "transport/context.h"

namespace epx {
namespace {

// One slot of a receiver's immediate queue (Vyukov bounded MPMC queue, used MPSC): `seq` tells
// producers and the consumer whose turn the slot is.
struct ImmSlot {
  std::atomic<uint64_t> seq;
  uint32_t src;
  uint32_t imm;
};
static_assert(sizeof(ImmSlot) == 16);

class ShmRdmaDomain final : public RdmaDomain {
 public:
  ShmRdmaDomain(Context& ctx, const RdmaOptions& o) : ctx_(ctx), heap_(ctx.heap()), opts_(o) {
    caps_.kind = "shm";
    caps_.device = "shared memory (emulated RDMA domain)";
    caps_.native_atomics = true;
    caps_.max_inline = 1 << 30;
    caps_.max_msg = heap_.size();
    connected_.assign(ctx.world_size(), false);
    for (int p : o.peers) connected_[p] = true;
  }

  Status Init() {
    for (int p : opts_.peers)
      if (!heap_.IsMapped(p))
        return EPX_ERROR(kFailedPrecondition,
                         "EPX_RDMA=shm: rank {} runs on another host; the shm-emulated RDMA domain needs all "
                         "ranks on one host (use EPX_RDMA=verbs across hosts)",
                         p);
    // Our own queue must be initialised before any peer enqueues: init, then a bootstrap barrier.
    uint8_t* b = heap_.base();
    Word(b, ctl::kImmEnqueue).store(0, std::memory_order_relaxed);
    Word(b, ctl::kImmDequeue).store(0, std::memory_order_relaxed);
    for (size_t i = 0; i < ctl::kImmSlots; ++i) Slot(b, i).seq.store(i, std::memory_order_relaxed);
    return ctx_.bootstrap().Barrier("rdma-shm-init");
  }

  const RdmaCaps& caps() const override { return caps_; }
  int num_channels() const override { return opts_.channels; }
  bool Connected(int peer) const override {
    return peer >= 0 && peer < static_cast<int>(connected_.size()) && connected_[peer];
  }

  Status Write(int ch, int peer, size_t local_off, size_t remote_off, size_t len) override {
    EPX_RETURN_IF_ERROR(Check(ch, peer, local_off, remote_off, len, "write"));
    std::memcpy(heap_.PeerBase(peer) + remote_off, heap_.base() + local_off, len);
    return Status::Ok();
  }

  Status WriteImm(int ch, int peer, size_t local_off, size_t remote_off, size_t len, uint32_t imm) override {
    EPX_RETURN_IF_ERROR(Write(ch, peer, local_off, remote_off, len));
    return Enqueue(peer, imm);
  }

  Status FetchAdd(int ch, int peer, size_t remote_off, uint64_t add) override {
    EPX_RETURN_IF_ERROR(CheckCounter(ch, peer, remote_off, "fetch_add"));
    Word(heap_.PeerBase(peer), remote_off).fetch_add(add, std::memory_order_acq_rel);
    return Status::Ok();
  }

  Status Signal(int ch, int peer, size_t local_off, size_t remote_off, size_t len, size_t flag_off,
                uint64_t add) override {
    EPX_RETURN_IF_ERROR(Write(ch, peer, local_off, remote_off, len));
    return FetchAdd(ch, peer, flag_off, add);  // release: the copy above happens-before the flag
  }

  Status Flush(int ch) override { return CheckChannel(ch); }
  Status Quiet(int ch) override { return CheckChannel(ch); }
  Status Poll(int ch) override { return CheckChannel(ch); }

  StatusOr<uint64_t> ReadCounter(size_t local_off) override {
    EPX_RETURN_IF_ERROR(CheckCounter(0, ctx_.rank(), local_off, "read_counter"));
    return Word(heap_.base(), local_off).load(std::memory_order_acquire);
  }

  Status WaitCounter(size_t local_off, uint64_t target, std::string_view what,
                     const uint8_t* cancel = nullptr,
                     int /*writer: the liveness watch names every dead rank*/ = -1) override {
    EPX_RETURN_IF_ERROR(CheckCounter(0, ctx_.rank(), local_off, "wait_counter"));
    auto& w = Word(heap_.base(), local_off);
    const auto cancelled = [&] { return cancel != nullptr && __atomic_load_n(cancel, __ATOMIC_ACQUIRE) != 0; };
    // The writers are processes of this host: a dead one is named by the Context's liveness watch.
    EPX_RETURN_IF_ERROR(WaitUntil([&] { return w.load(std::memory_order_acquire) >= target || cancelled(); },
                     Deadline::After(std::chrono::milliseconds(opts_.timeout_ms)),
                     [&](int64_t ms) {
                       return fmt::format(
                           "{}: rank {} waited {} ms for counter at offset {} to reach {} (at {})", what,
                           ctx_.rank(), ms, local_off, target, w.load(std::memory_order_acquire));
                     },
                     &ctx_.liveness(), what));
    if (w.load(std::memory_order_acquire) < target) return Status(Code::kFailedPrecondition, "cancelled");
    return Status::Ok();
  }

  // Every peer is a process of this host: the Context's liveness watch, which every wait consults,
  // names a dead one. Nothing of the domain itself can fail a peer.
  WaitHealth& health() override { return no_failure_; }
  // Puts complete synchronously (nothing for Quiet to skip) and dead peers are named by the process
  // scan, which the masking kernel acknowledges itself (PeerLiveness::Acknowledge).
  void MaskPeer(int /*peer*/, bool /*masked*/) override {}
  std::vector<int> FailedPeers() override { return {}; }

  StatusOr<size_t> PollImm(std::span<ImmEvent> out) override {
    uint8_t* b = heap_.base();
    auto& deq = Word(b, ctl::kImmDequeue);
    size_t n = 0;
    uint64_t pos = deq.load(std::memory_order_relaxed);  // single consumer: only this rank moves it
    while (n < out.size()) {
      ImmSlot& s = Slot(b, pos % ctl::kImmSlots);
      if (s.seq.load(std::memory_order_acquire) != pos + 1) break;  // not yet published
      out[n++] = ImmEvent{static_cast<int>(s.src), s.imm};
      s.seq.store(pos + ctl::kImmSlots, std::memory_order_release);  // hand the slot back to producers
      ++pos;
    }
    deq.store(pos, std::memory_order_relaxed);
    return n;
  }

 private:
  static std::atomic<uint64_t>& Word(uint8_t* base, size_t off) {
    return *reinterpret_cast<std::atomic<uint64_t>*>(base + off);
  }
  static ImmSlot& Slot(uint8_t* base, size_t i) {
    return *reinterpret_cast<ImmSlot*>(base + ctl::kImmSlots0 + i * sizeof(ImmSlot));
  }

  Status Enqueue(int peer, uint32_t imm) {
    uint8_t* b = heap_.PeerBase(peer);
    auto& enq = Word(b, ctl::kImmEnqueue);
    Backoff backoff;
    const Deadline d = Deadline::After(std::chrono::milliseconds(opts_.timeout_ms));
    uint64_t pos = enq.load(std::memory_order_relaxed);
    for (uint32_t i = 0;; ++i) {
      ImmSlot& s = Slot(b, pos % ctl::kImmSlots);
      const uint64_t seq = s.seq.load(std::memory_order_acquire);
      const int64_t dif = static_cast<int64_t>(seq - pos);
      if (dif == 0) {
        if (enq.compare_exchange_weak(pos, pos + 1, std::memory_order_relaxed)) {
          s.src = static_cast<uint32_t>(ctx_.rank());
          s.imm = imm;
          s.seq.store(pos + 1, std::memory_order_release);  // publishes src/imm and the data before it
          return Status::Ok();
        }
      } else if (dif < 0) {
        // Queue full: the receiver has not drained. Like an RNR NAK: back off until the deadline, or
        // until the receiver is known dead (liveness, slow path only).
        if ((i & 63) == 63 && d.Expired())
          return EPX_ERROR(kTimeout, "write_imm to rank {}: its immediate queue ({} entries) stayed full for {} ms",
                           peer, ctl::kImmSlots, opts_.timeout_ms);
        if ((i & 63) == 63 && backoff.sleeping() && ctx_.liveness().PeerDead()) [[unlikely]]
          return ctx_.liveness().PeerFailure(
              "an RDMA write-with-immediate (shm emulation)",
              fmt::format("write_imm to rank {}: its immediate queue ({} entries) is full", peer,
                          ctl::kImmSlots));
        backoff.Pause();
        pos = enq.load(std::memory_order_relaxed);
      } else {
        pos = enq.load(std::memory_order_relaxed);
      }
    }
  }

  Status CheckChannel(int ch) const {
    if (ch < 0 || ch >= opts_.channels) [[unlikely]]
      return EPX_ERROR(kInvalidArgument, "rdma(shm): channel {} not in 0..{}", ch, opts_.channels - 1);
    return Status::Ok();
  }
  Status Check(int ch, int peer, size_t lo, size_t ro, size_t len, const char* op) const {
    EPX_RETURN_IF_ERROR(CheckChannel(ch));
    if (!Connected(peer)) [[unlikely]]
      return EPX_ERROR(kInvalidArgument, "rdma(shm) {}: rank {} is not a connected peer of rank {}", op, peer,
                       ctx_.rank());
    if (lo > heap_.size() || len > heap_.size() - lo || ro > heap_.PeerSize(peer) || len > heap_.PeerSize(peer) - ro)
      [[unlikely]]
      return EPX_ERROR(kInvalidArgument, "rdma(shm) {} to rank {}: local [{}, +{}) or remote [{}, +{}) outside the "
                       "{}-byte heap", op, peer, lo, len, ro, len, heap_.size());
    return Status::Ok();
  }
  Status CheckCounter(int ch, int peer, size_t off, const char* op) const {
    EPX_RETURN_IF_ERROR(CheckChannel(ch));
    if (peer != ctx_.rank() && !Connected(peer)) [[unlikely]]
      return EPX_ERROR(kInvalidArgument, "rdma(shm) {}: rank {} is not a connected peer", op, peer);
    if (off % 8 != 0 || off < opts_.counter_off || off + 8 > opts_.counter_off + opts_.counter_bytes) [[unlikely]]
      return EPX_ERROR(kInvalidArgument, "rdma(shm) {} on rank {}: offset {} is not an aligned word of the counter "
                       "area [{}, +{})", op, peer, off, opts_.counter_off, opts_.counter_bytes);
    return Status::Ok();
  }

  struct NoFailure final : WaitHealth {
    bool PeerDead() override { return false; }
    Status PeerFailure(std::string_view what, std::string_view waiting) override {
      return Status(Code::kInternal, fmt::format("{}: {}: rdma(shm) knows no failed peer", what, waiting));
    }
  };

  Context& ctx_;
  SymmetricHeap& heap_;
  NoFailure no_failure_;
  RdmaOptions opts_;
  RdmaCaps caps_;
  std::vector<bool> connected_;
};

}  // namespace

StatusOr<std::unique_ptr<RdmaDomain>> CreateShmRdmaDomain(Context& ctx, const RdmaOptions& opts) {
  auto d = std::make_unique<ShmRdmaDomain>(ctx, opts);
  EPX_RETURN_IF_ERROR(d->Init());
  return std::unique_ptr<RdmaDomain>(std::move(d));
}

}  // namespace epx
