#include "transport/heap.h"

#include <fcntl.h>
#include <linux/memfd.h>
#include <numa.h>
#include <numaif.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <thread>

#include "core/log.h"
#include "core/sys.h"
#include "core/tunables.h"
#include "core/wait.h"
#include "transport/bootstrap.h"

namespace epx {
namespace {

constexpr size_t kHuge = 2ull << 20;
constexpr size_t kSmallPage = 4096;

std::string ReadLine(const char* path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

// EPX_NUMA_NODE (set by epx-run, or by hand): -1 or unset = not chosen, else a node of this host. Strict,
// with the tunables' integer rules: atoi read "x", "" or an overflow as node 0 and bound the heap there
// without a word. Not a row of the tunables table (like EPX_RANK it comes from the launcher), so the row
// is made here, with the range of this host.
StatusOr<int> NumaNodeFromEnv() {
  const char* e = std::getenv("EPX_NUMA_NODE");
  if (e == nullptr) return -1;
  const int max_node = numa_max_node();
  const std::string range = fmt::format("-1..{}", max_node);
  const TunableDef row{"EPX_NUMA_NODE", TunableType::kInt, "-1", "", range.c_str(), "NUMA node of the heap"};
  EPX_RETURN_IF_ERROR(ValidateTunableValue(row, e));
  const int n = static_cast<int>(std::strtol(e, nullptr, 10));  // validated: an integer in -1..max_node
  // Node ids may have holes (offline or memory-less nodes): the node must be one the kernel knows.
  if (n >= 0 && !numa_bitmask_isbitset(numa_nodes_ptr, static_cast<unsigned>(n)))
    return EPX_ERROR(kInvalidArgument,
                     "EPX_NUMA_NODE='{}': no such NUMA node on this host (nodes 0..{} with holes)", e, max_node);
  return n;
}

// NUMA node for the heap: explicit, else the launcher's EPX_NUMA_NODE, else where our CPUs are.
StatusOr<int> ChooseNode(int requested) {
  if (requested >= 0) return requested;
  EPX_ASSIGN_OR_RETURN(const int env, NumaNodeFromEnv());
  if (env >= 0) return env;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) return std::max(numa_node_of_cpu(c), 0);  // -1: unknown, as with no CPU
  return 0;
}

// Identity of "this host" as seen by the memfd exchange: abstract unix sockets are scoped by the
// network namespace and memfds by the kernel instance, so both go into the key.
struct HostKey {
  char boot_id[40];
  uint64_t netns_ino;
  int32_t pid;
  int32_t pad;
  uint64_t heap_size;
  bool operator==(const HostKey& o) const {
    return std::memcmp(boot_id, o.boot_id, sizeof(boot_id)) == 0 && netns_ino == o.netns_ino;
  }
};

std::string SocketName(const std::string& job_id, int rank) { return fmt::format("epx-heap-{}-r{}", job_id, rank); }

sockaddr_un AbstractAddr(const std::string& name, socklen_t* len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  // Leading NUL = abstract namespace: the name vanishes with the socket, no file to clean up.
  size_t n = std::min(name.size(), sizeof(a.sun_path) - 2);
  std::memcpy(a.sun_path + 1, name.data(), n);
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
  return a;
}

Status SendFd(int sock, int fd_to_send, int32_t rank) {
  char cbuf[CMSG_SPACE(sizeof(int))] = {};
  iovec iov{&rank, sizeof(rank)};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = sizeof(cbuf);
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd_to_send, sizeof(int));
  EPX_SYS(rc, ::sendmsg(sock, &m, MSG_NOSIGNAL), "passing heap fd of rank {}", rank);
  return Status::Ok();
}

StatusOr<int> RecvFd(int sock, int expect_rank) {
  char cbuf[CMSG_SPACE(sizeof(int))] = {};
  int32_t rank = -1;
  iovec iov{&rank, sizeof(rank)};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = sizeof(cbuf);
  EPX_SYS(rc, ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC), "receiving heap fd of rank {}", expect_rank);
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  if (rc != sizeof(rank) || c == nullptr || c->cmsg_type != SCM_RIGHTS || rank != expect_rank)
    return EPX_ERROR(kPeerFailure, "heap exchange: rank {} sent no memfd (got rank {}, {} bytes)", expect_rank, rank,
                     rc);
  int fd;
  std::memcpy(&fd, CMSG_DATA(c), sizeof(int));
  return fd;
}

}  // namespace

const char* PageKindName(PageKind k) {
  switch (k) {
    case PageKind::kHugeTlb2M: return "hugetlb-2M";
    case PageKind::kSmallThp: return "4K+THP";
    case PageKind::kSmall: return "4K";
  }
  return "?";
}

StatusOr<HeapOptions> HeapOptions::FromEnv() {
  HeapOptions o;
  EPX_ASSIGN_OR_RETURN(o.size, TunableSize("EPX_HEAP_SIZE"));
  EPX_ASSIGN_OR_RETURN(o.hugepages, TunableStr("EPX_HUGEPAGES"));
  auto bind = TunableStr("EPX_NUMA_BIND");
  if (!bind.ok()) return bind.status();
  o.numa_bind = bind.value() == "on";
  return o;
}

StatusOr<std::unique_ptr<SymmetricHeap>> SymmetricHeap::Create(const HeapOptions& opts, int rank, int world_size) {
  if (opts.size <= kHeapControlBytes)
    return EPX_ERROR(kInvalidArgument, "heap size {} bytes is not above the {}-byte control block (EPX_HEAP_SIZE)",
                     opts.size, kHeapControlBytes);
  std::unique_ptr<SymmetricHeap> h(new SymmetricHeap());
  h->rank_ = rank;
  h->peer_base_.assign(world_size, nullptr);
  h->peer_size_.assign(world_size, 0);
  const std::string name = fmt::format("epx-heap-r{}", rank);

  // 1. hugetlb memfd when asked/allowed. The pool must hold enough free pages: a hugetlb mapping with
  //    too few pages fails at mmap (reservation), which is where we notice and fall back.
  if (opts.hugepages != "off") {
    size_t sz = (opts.size + kHuge - 1) & ~(kHuge - 1);
    int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB);
    void* p = MAP_FAILED;
    int err = errno;
    if (fd >= 0 && ::ftruncate(fd, static_cast<off_t>(sz)) == 0) {
      p = ::mmap(nullptr, sz, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      err = errno;
    }
    if (p != MAP_FAILED) {
      h->fd_ = fd, h->base_ = static_cast<uint8_t*>(p), h->size_ = sz;
      h->page_kind_ = PageKind::kHugeTlb2M;
      h->page_note_ = "hugetlb 2 MiB pages";
    } else {
      if (fd >= 0) ::close(fd);
      std::string why = fmt::format("{} (free 2M hugepages: {})", std::strerror(err),
                                    ReadLine("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"));
      if (opts.hugepages == "on")
        return EPX_ERROR(kResource, "EPX_HUGEPAGES=on but a {}-byte hugetlb heap failed: {}", sz, why);
      h->page_note_ = "no hugetlb pages: " + why;
    }
  }
  // 2. Fallback: normal shmem pages; ask for THP (effective only if shmem_enabled allows it).
  if (h->base_ == nullptr) {
    size_t sz = (opts.size + kSmallPage - 1) & ~(kSmallPage - 1);
    EPX_SYS(fd, ::memfd_create(name.c_str(), MFD_CLOEXEC), "heap of rank {}", rank);
    h->fd_ = static_cast<int>(fd);
    EPX_SYS(trc, ::ftruncate(h->fd_, static_cast<off_t>(sz)), "heap of {} bytes", sz);
    void* p = ::mmap(nullptr, sz, PROT_READ | PROT_WRITE, MAP_SHARED, h->fd_, 0);
    if (p == MAP_FAILED) return SysError("mmap", errno, fmt::format("heap of {} bytes", sz));
    h->base_ = static_cast<uint8_t*>(p), h->size_ = sz;
    std::string shmem_thp = ReadLine("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    bool thp = ::madvise(p, sz, MADV_HUGEPAGE) == 0 && shmem_thp.find("[never]") == std::string::npos &&
               shmem_thp.find("[deny]") == std::string::npos;
    h->page_kind_ = thp ? PageKind::kSmallThp : PageKind::kSmall;
    h->page_note_ += (h->page_note_.empty() ? "" : "; ") +
                     fmt::format("4 KiB pages, THP advice {} (shmem_enabled: {})", thp ? "on" : "ineffective",
                                 shmem_thp.empty() ? "unknown" : shmem_thp);
  }
  h->peer_base_[rank] = h->base_;
  h->peer_size_[rank] = h->size_;

  // 3. NUMA binding before the first touch, so every page is allocated on the rank's node.
  if (opts.numa_bind && numa_available() >= 0) {
    EPX_ASSIGN_OR_RETURN(h->numa_node_, ChooseNode(opts.numa_node));
    if (h->numa_node_ > numa_max_node())
      return EPX_ERROR(kInvalidArgument, "NUMA node {} does not exist (max {})", h->numa_node_, numa_max_node());
    unsigned long mask[16] = {};
    mask[h->numa_node_ / 64] |= 1ul << (h->numa_node_ % 64);
    EPX_SYS(mrc, ::mbind(h->base_, h->size_, MPOL_BIND, mask, sizeof(mask) * 8, MPOL_MF_STRICT),
            "binding the heap to NUMA node {}", h->numa_node_);
  }
  // 4. Pre-fault (and zero) the arena now: page faults must not land on the data path, and the RDMA
  //    registration later pins what is there. MADV_POPULATE_WRITE faults without a CPU pass over it.
  if (::madvise(h->base_, h->size_, 23 /* MADV_POPULATE_WRITE */) != 0) {
    for (size_t off = 0; off < h->size_; off += kSmallPage) h->base_[off] = 0;
  }
  EPX_INFO("heap: {} MiB, {}, NUMA node {} ({})", h->size_ >> 20, PageKindName(h->page_kind_), h->numa_node_,
           h->page_note_);
  return h;
}

SymmetricHeap::~SymmetricHeap() {
  for (size_t r = 0; r < peer_base_.size(); ++r)
    if (peer_base_[r] != nullptr && peer_base_[r] != base_) ::munmap(peer_base_[r], peer_size_[r]);
  if (base_ != nullptr) ::munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
}

Status SymmetricHeap::MapHostPeers(Bootstrap& boot, const std::string& job_id) {
  const int world = boot.world_size();
  HostKey me{};
  std::string boot_id = ReadLine("/proc/sys/kernel/random/boot_id");
  std::memcpy(me.boot_id, boot_id.data(), std::min(boot_id.size(), sizeof(me.boot_id)));
  struct stat ns {};
  if (::stat("/proc/self/ns/net", &ns) == 0) me.netns_ino = ns.st_ino;
  me.pid = ::getpid();
  me.heap_size = size_;
  EPX_ASSIGN_OR_RETURN(auto keys, boot.AllGatherPod("heap-hosts", me));
  host_peers_.clear();
  for (int r = 0; r < world; ++r) {
    if (!(keys[r] == me)) continue;
    host_peers_.push_back(r);
    if (keys[r].heap_size != size_)
      return EPX_ERROR(kInvalidArgument, "heap size differs: rank {} has {} bytes, rank {} has {} (EPX_HEAP_SIZE must "
                       "be equal on all ranks)", r, keys[r].heap_size, rank_, size_);
  }
  const int n_peers = static_cast<int>(host_peers_.size()) - 1;
  if (n_peers == 0) return boot.Barrier("heap-mapped");

  // Listener first, then a barrier, so every connect below finds its peer listening.
  EPX_SYS(lfd, ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), "heap exchange listener");
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } lclose{static_cast<int>(lfd)};
  socklen_t alen;
  sockaddr_un addr = AbstractAddr(SocketName(job_id, rank_), &alen);
  EPX_SYS(brc, ::bind(lclose.fd, reinterpret_cast<sockaddr*>(&addr), alen),
          "heap exchange socket '@{}' (another job with the same EPX_JOB_ID?)", SocketName(job_id, rank_));
  EPX_SYS(lrc, ::listen(lclose.fd, 64), "heap exchange listener");
  EPX_RETURN_IF_ERROR(boot.Barrier("heap-listen"));

  // Serve our fd to each host peer from a helper thread while this thread collects theirs; doing
  // both in one thread could deadlock two ranks connecting to each other.
  Status serve_status;
  std::thread server([&] {
    const Deadline d = Deadline::After(boot.timeout());
    for (int served = 0; served < n_peers; ++served) {
      pollfd pf{lclose.fd, POLLIN, 0};
      int rc = ::poll(&pf, 1, static_cast<int>(d.RemainingMs()));
      if (rc <= 0) {
        serve_status = EPX_ERROR(kTimeout, "heap exchange: only {} of {} host peers fetched rank {}'s heap", served,
                                 n_peers, rank_);
        return;
      }
      int c = ::accept4(lclose.fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        serve_status = SysError("accept4", errno, "heap exchange");
        return;
      }
      // Only the processes of this job that the bootstrap told us about may take the fd.
      ucred cred{};
      socklen_t cl = sizeof(cred);
      bool known = ::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0;
      bool ok = false;
      for (int r : host_peers_) ok |= known && keys[r].pid == cred.pid;
      if (ok) {
        serve_status = SendFd(c, fd_, rank_);
      } else {
        --served;
        EPX_WARN("heap exchange: refused a connection from unknown pid {}", cred.pid);
      }
      ::close(c);
      if (!serve_status.ok()) return;
    }
  });
  Status st;
  for (int r : host_peers_) {
    if (r == rank_) continue;
    int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0) {
      st = SysError("socket", errno, "heap exchange");
      break;
    }
    sockaddr_un pa = AbstractAddr(SocketName(job_id, r), &alen);
    if (::connect(s, reinterpret_cast<sockaddr*>(&pa), alen) != 0) {
      st = SysError("connect", errno, fmt::format("heap exchange with rank {}", r));
      ::close(s);
      break;
    }
    auto fd = RecvFd(s, r);
    ::close(s);
    if (!fd.ok()) {
      st = fd.status();
      break;
    }
    // MAP_POPULATE: the page-table entries of the peer's (already faulted, step 4 above) pages are filled
    // now. Without it every first access to a page of a peer's heap is a minor fault on the data path: a
    // normal-mode call with a few tokens advances its rings by a few pages, and until they have wrapped once
    // such calls took 10x longer (epx-bench normal --tokens 4 --iters 20: ~350 us instead of ~25 us).
    void* p = ::mmap(nullptr, keys[r].heap_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, *fd, 0);
    int err = errno;
    ::close(*fd);  // the mapping keeps the memory alive; the fd is not needed any more
    if (p == MAP_FAILED) {
      st = SysError("mmap", err, fmt::format("heap of rank {}", r));
      break;
    }
    peer_base_[r] = static_cast<uint8_t*>(p);
    peer_size_[r] = keys[r].heap_size;
  }
  if (!st.ok()) ::shutdown(lclose.fd, SHUT_RDWR);  // unblock the server thread's poll
  server.join();
  if (st.ok()) st = serve_status;
  EPX_RETURN_IF_ERROR(st);
  return boot.Barrier("heap-mapped");
}

StatusOr<size_t> HeapAllocator::Allocate(size_t bytes, size_t align, std::string_view what) {
  if (align == 0 || (align & (align - 1)) != 0)
    return EPX_ERROR(kInvalidArgument, "heap allocation '{}': alignment {} is not a power of two", what, align);
  size_t off = (next_ + align - 1) & ~(align - 1);
  if (off + bytes > end_ || off + bytes < off)
    return EPX_ERROR(kResource, "heap allocation '{}' of {} bytes does not fit: {} of {} bytes used (raise "
                     "EPX_HEAP_SIZE)", what, bytes, next_, end_);
  next_ = off + bytes;
  return off;
}

}  // namespace epx
