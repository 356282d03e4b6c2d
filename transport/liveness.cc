#include "transport/liveness.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "transport/bootstrap.h"

namespace epx {
namespace {

// State letter and starttime (field 22) from the text of /proc/<pid>/stat. The command name (field 2)
// may hold spaces and parentheses, so fields are counted from the last ')'.
bool ParseStat(const char* text, size_t len, char* state, uint64_t* start_ticks) {
  const char* end = text + len;
  const char* p = end;
  while (p > text && p[-1] != ')') --p;
  if (p == text) return false;
  // p points after ')': " S ppid pgrp ..."; the state is field 3, starttime field 22.
  int field = 2;
  while (p < end && field < 22) {
    while (p < end && *p == ' ') ++p;
    if (p == end) return false;
    ++field;
    if (field == 3) *state = *p;
    if (field == 22) {
      char* num_end = nullptr;
      *start_ticks = std::strtoull(p, &num_end, 10);
      return num_end != p;
    }
    while (p < end && *p != ' ') ++p;
  }
  return false;
}

// Reads /proc/<pid>/stat (pid 0: self) into buf; returns bytes read, or -errno.
ssize_t ReadStat(int32_t pid, char* buf, size_t size) {
  char path[40];
  if (pid == 0)
    std::snprintf(path, sizeof(path), "/proc/self/stat");
  else
    std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  int fd;
  do {
    fd = ::open(path, O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return -errno;
  ssize_t n;
  do {
    n = ::read(fd, buf, size - 1);
  } while (n < 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  if (n < 0) return -err;
  buf[n] = '\0';
  return n;
}

}  // namespace

ProcessIdentity ProcessIdentity::Self(int node) {
  ProcessIdentity id;
  id.pid = static_cast<int32_t>(::getpid());
  id.node = node;
  char buf[1024];
  const ssize_t n = ReadStat(0, buf, sizeof(buf));
  char state = 0;
  if (n > 0 && !ParseStat(buf, static_cast<size_t>(n), &state, &id.start_ticks)) id.start_ticks = 0;
  struct stat ns {};
  if (::stat("/proc/self/ns/pid", &ns) == 0) id.pidns = ns.st_ino;
  return id;
}

const char* ProcessStateText(ProcessState s) {
  switch (s) {
    case ProcessState::kAlive:
      return "running";
    case ProcessState::kGone:
      return "no longer running";
    case ProcessState::kZombie:
      return "exited or killed, not yet reaped";
    case ProcessState::kReplaced:
      return "its pid now belongs to another process: it exited";
  }
  return "?";
}

ProcessState ProbeProcess(const ProcessIdentity& id) {
  char buf[1024];
  const ssize_t n = ReadStat(id.pid, buf, sizeof(buf));
  if (n == -ENOENT || n == -ESRCH) return ProcessState::kGone;
  char state = 0;
  uint64_t start = 0;
  if (n <= 0 || !ParseStat(buf, static_cast<size_t>(n), &state, &start)) {
    // /proc could not tell (not mounted, no permission): the signal-0 probe still sees a missing pid.
    return ::kill(id.pid, 0) == -1 && errno == ESRCH ? ProcessState::kGone : ProcessState::kAlive;
  }
  if (state == 'Z' || state == 'X' || state == 'x') return ProcessState::kZombie;
  if (id.start_ticks != 0 && start != id.start_ticks) return ProcessState::kReplaced;
  return ProcessState::kAlive;
}

StatusOr<std::unique_ptr<PeerLiveness>> PeerLiveness::Create(Bootstrap& boot, int node,
                                                             const std::vector<int>& host_peers) {
  const ProcessIdentity me = ProcessIdentity::Self(node);
  EPX_ASSIGN_OR_RETURN(std::vector<ProcessIdentity> ids, boot.AllGatherPod("liveness-identities", me));
  std::vector<int> watched;
  for (int r : host_peers) {
    if (r == boot.rank() || r < 0 || r >= static_cast<int>(ids.size())) continue;
    // A pid is only meaningful inside its pid namespace; without one to compare, do not guess.
    if (ids[r].pid <= 0 || me.pidns == 0 || ids[r].pidns != me.pidns) continue;
    watched.push_back(r);
  }
  return std::make_unique<PeerLiveness>(boot.rank(), std::move(ids), std::move(watched));
}

PeerLiveness::PeerLiveness(int rank, std::vector<ProcessIdentity> ids, std::vector<int> watched)
    : rank_(rank),
      ids_(std::move(ids)),
      watched_(std::move(watched)),
      state_(ids_.size(), ProcessState::kAlive),
      acked_(ids_.size(), 0),
      reporting_(ids_.size(), 0) {}

bool PeerLiveness::Scan(int64_t now) {
  int64_t due = next_scan_.load(std::memory_order_relaxed);
  const int64_t interval = std::chrono::duration_cast<Clock::duration>(kScanInterval).count();
  // One scanner per interval: the others go back to waiting and see its verdict through unacked_.
  if (now < due || !next_scan_.compare_exchange_strong(due, now + interval, std::memory_order_relaxed))
    return unacked_.load(std::memory_order_acquire) > 0;
  // Deaths found in this scan: the listeners hear of them before they are published (state_, unacked_),
  // so no wait of this process fails, and its process exits, before they are done. (Allocation here is
  // fine: this is a wait's slow path, at most once per interval.)
  std::vector<std::pair<int, ProcessState>> found;
  for (int r : watched_) {
    const auto i = static_cast<size_t>(r);
    {
      std::lock_guard<std::mutex> g(mu_);
      // A death stays: no need to look again (nor while an earlier scan's listeners hear of it).
      if (state_[i] != ProcessState::kAlive || reporting_[i]) continue;
    }
    const ProcessState s = ProbeProcess(ids_[i]);
    if (s == ProcessState::kAlive) continue;
    std::lock_guard<std::mutex> g(mu_);
    if (reporting_[i]) continue;
    reporting_[i] = 1;
    found.emplace_back(r, s);
  }
  if (!found.empty()) {
    std::lock_guard<std::mutex> g(listen_mu_);
    for (const auto& [r, s] : found)
      for (auto& [id, fn] : listeners_) fn(r);
  }
  for (const auto& [r, s] : found) {
    const auto i = static_cast<size_t>(r);
    std::lock_guard<std::mutex> g(mu_);
    state_[i] = s;
    if (!acked_[i]) unacked_.fetch_add(1, std::memory_order_release);  // after state_: readers lock mu_
  }
  return unacked_.load(std::memory_order_acquire) > 0;
}

int PeerLiveness::AddDeathListener(DeathListener fn) {
  std::lock_guard<std::mutex> g(listen_mu_);
  listeners_.emplace_back(++next_listener_, std::move(fn));
  return next_listener_;
}

int PeerLiveness::AddCauseSource(CauseSource fn) {
  std::lock_guard<std::mutex> g(listen_mu_);
  causes_.emplace_back(++next_listener_, std::move(fn));
  return next_listener_;
}

void PeerLiveness::RemoveDeathListener(int id) {
  std::lock_guard<std::mutex> g(listen_mu_);
  std::erase_if(listeners_, [&](const auto& l) { return l.first == id; });
  std::erase_if(causes_, [&](const auto& l) { return l.first == id; });
}

bool PeerLiveness::IsDead(int rank) const {
  if (rank < 0 || rank >= static_cast<int>(state_.size())) return false;
  std::lock_guard<std::mutex> g(mu_);
  return state_[static_cast<size_t>(rank)] != ProcessState::kAlive;
}

void PeerLiveness::Acknowledge(int rank) {
  if (rank < 0 || rank >= static_cast<int>(acked_.size())) return;
  std::lock_guard<std::mutex> g(mu_);
  const auto i = static_cast<size_t>(rank);
  if (acked_[i]) return;
  acked_[i] = 1;
  if (state_[i] != ProcessState::kAlive) unacked_.fetch_sub(1, std::memory_order_release);
}

std::string PeerLiveness::DeadPeers() const {
  std::lock_guard<std::mutex> g(mu_);
  std::string s;
  for (int r : watched_) {
    const auto i = static_cast<size_t>(r);
    if (state_[i] == ProcessState::kAlive || acked_[i]) continue;
    s += fmt::format("{}rank {} (pid {}, node {}) died ({})", s.empty() ? "" : ", ", r, ids_[i].pid,
                     ids_[i].node, ProcessStateText(state_[i]));
  }
  return s;
}

std::vector<int> PeerLiveness::dead_ranks() const {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<int> v;
  for (size_t i = 0; i < state_.size(); ++i)
    if (state_[i] != ProcessState::kAlive) v.push_back(static_cast<int>(i));
  return v;
}

Status PeerLiveness::PeerFailure(std::string_view what, std::string_view waiting) {
  std::string dead = DeadPeers();
  if (dead.empty()) dead = "a peer died";
  std::string cause;
  {
    std::lock_guard<std::mutex> g(listen_mu_);
    for (auto& [id, fn] : causes_)
      if (!(cause = fn()).empty()) break;
  }
  if (!cause.empty()) dead = fmt::format("{}; then on this host: {}", cause, dead);
  std::string msg = fmt::format(
      "{} during {}; rank {} was waiting: {}. The Context and every buffer made from it are not usable any "
      "more "
      "(peers may hold part of a call): destroy them and create a new Context",
      dead, what, rank_, waiting);
  // One root cause, many waits (channel threads, later calls): logged once, where it was first reported.
  if (!reported_.exchange(true, std::memory_order_relaxed))
    return internal::MakeError(Code::kPeerFailure, __FILE__, __LINE__, std::move(msg));
  return Status(Code::kPeerFailure, std::move(msg));
}

}  // namespace epx
