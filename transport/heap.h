// transport/heap.h: the rank's symmetric heap, the epx stand-in for GPU HBM.
//
// One arena per rank: a memfd (hugetlb 2 MiB pages when available, else 4 KiB pages with THP advice),
// bound to the rank's NUMA node, pre-faulted, mapped MAP_SHARED. Ranks on the same host map each
// other's arenas (the NVLink/CUDA-IPC stand-in): the memfd is passed over an abstract-namespace unix
// socket (SCM_RIGHTS), so no name exists in /dev/shm or any file system and nothing can outlive the
// processes. Every rank lays out its heap identically, so a buffer is one (rank, offset) pair. The
// RDMA transport registers `region()` as one memory region with the NIC.
//
// Layout: [0, kHeapControlBytes) is the runtime's control block (barrier counters, ...); user
// allocations come after it from `HeapAllocator`, which is deterministic: ranks that allocate the same
// sizes in the same order get the same offsets.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace epx {

class Bootstrap;
struct Placement;

constexpr size_t kHeapControlBytes = 64 * 1024;

enum class PageKind : uint8_t { kHugeTlb2M, kSmallThp, kSmall };
const char* PageKindName(PageKind k);

struct HeapOptions {
  size_t size = 64ull << 20;       // usable bytes incl. the control block; rounded up to the page size
  std::string hugepages = "auto";  // auto | on | off
  bool numa_bind = true;
  int numa_node = -1;  // -1: EPX_NUMA_NODE if set, else the node of the first CPU we may run on
  // From EPX_HEAP_SIZE / EPX_HUGEPAGES / EPX_NUMA_BIND.
  static StatusOr<HeapOptions> FromEnv();
};

// A contiguous range to register with a NIC (later: ibv_reg_mr over exactly this).
struct HeapRegion {
  void* base;
  size_t size;
};

class SymmetricHeap {
 public:
  static StatusOr<std::unique_ptr<SymmetricHeap>> Create(const HeapOptions& opts, int rank, int world_size);
  ~SymmetricHeap();
  SymmetricHeap(const SymmetricHeap&) = delete;
  SymmetricHeap& operator=(const SymmetricHeap&) = delete;

  // Exchanges arenas with every rank on this host (same boot id, network namespace). Collective over
  // all ranks of the bootstrap (ranks on other hosts take part in the all-gather and map nothing).
  Status MapHostPeers(Bootstrap& boot, const std::string& job_id);

  uint8_t* base() const { return base_; }
  size_t size() const { return size_; }
  HeapRegion region() const { return {base_, size_}; }
  PageKind page_kind() const { return page_kind_; }
  const std::string& page_note() const { return page_note_; }  // why this page kind, for logs
  int numa_node() const { return numa_node_; }                 // -1 if not bound
  int rank() const { return rank_; }
  int world_size() const { return static_cast<int>(peer_base_.size()); }

  // Address of (rank, offset) if that rank's arena is mapped here (self or a host peer), else nullptr.
  uint8_t* PeerBase(int r) const { return peer_base_[r]; }
  bool IsMapped(int r) const { return peer_base_[r] != nullptr; }
  size_t PeerSize(int r) const { return peer_size_[r]; }
  const std::vector<int>& host_peers() const { return host_peers_; }  // ranks on this host, incl. self

 private:
  SymmetricHeap() = default;
  int rank_ = 0;
  int fd_ = -1;
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
  PageKind page_kind_ = PageKind::kSmall;
  std::string page_note_;
  int numa_node_ = -1;
  std::vector<uint8_t*> peer_base_;
  std::vector<size_t> peer_size_;
  std::vector<int> host_peers_;
};

// Deterministic bump allocator over the heap after the control block.
class HeapAllocator {
 public:
  explicit HeapAllocator(size_t heap_size) : end_(heap_size) {}
  // Offset of `bytes` aligned to `align` (power of two); kResource naming the request when full.
  StatusOr<size_t> Allocate(size_t bytes, size_t align, std::string_view what);
  size_t used() const { return next_; }
  void Reset() { next_ = kHeapControlBytes; }

 private:
  size_t next_ = kHeapControlBytes;
  size_t end_;
};

}  // namespace epx
