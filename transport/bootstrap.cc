#include "transport/bootstrap.h"

#include <fmt/ranges.h>

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <thread>

#include "core/log.h"
#include "core/sys.h"
#include "core/tunables.h"
#include "core/wait.h"
#include "transport/bootstrap_wire.h"

namespace epx {
namespace {

using bootstrap_wire::GenerationVerdict;
using bootstrap_wire::Hello;
using bootstrap_wire::KindName;
using bootstrap_wire::kMagic;
using bootstrap_wire::kMaxBlob;
using bootstrap_wire::kMaxPhase;
using bootstrap_wire::MsgHeader;
using bootstrap_wire::ReplyHeader;

std::string RankList(const std::vector<int>& r) {
  return fmt::format("{}", fmt::join(r, ","));
}

// Waits for `events` on fd until the deadline. kTimeout / kSystem; POLLHUP is left to the read.
Status PollOne(int fd, short events, const Deadline& d, std::string_view what) {
  for (;;) {
    pollfd p{fd, events, 0};
    int ms = static_cast<int>(std::min<int64_t>(d.RemainingMs(), 1 << 30));
    int rc = ::poll(&p, 1, ms);
    if (rc > 0) return Status::Ok();
    if (rc == 0) return EPX_ERROR(kTimeout, "{}: no progress before the deadline", what);
    if (errno != EINTR) return SysError("poll", errno, what);
  }
}

Status SendAll(int fd, const void* buf, size_t n, const Deadline& d, std::string_view what) {
  auto* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      p += w, n -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      EPX_RETURN_IF_ERROR(PollOne(fd, POLLOUT, d, what));
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
      return EPX_ERROR(kPeerFailure, "{}: connection closed by the peer (it died or failed)", what);
    return SysError("send", errno, what);
  }
  return Status::Ok();
}

Status RecvAll(int fd, void* buf, size_t n, const Deadline& d, std::string_view what) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, MSG_DONTWAIT);
    if (r > 0) {
      p += r, n -= static_cast<size_t>(r);
      continue;
    }
    if (r == 0 || (r < 0 && errno == ECONNRESET))
      return EPX_ERROR(kPeerFailure, "{}: connection closed by the peer (it died or failed)", what);
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      EPX_RETURN_IF_ERROR(PollOne(fd, POLLIN, d, what));
      continue;
    }
    if (errno == EINTR) continue;
    return SysError("recv", errno, what);
  }
  return Status::Ok();
}

StatusOr<addrinfo*> Resolve(const std::string& host, int port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0) return EPX_ERROR(kInvalidArgument, "bootstrap: cannot resolve master '{}': {}", host, gai_strerror(rc));
  return res;
}

void SetNoDelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// The last generation this process joined, per (job hash, rank) ("Generations" in bootstrap.h). Keyed by
// rank as well so that several ranks of one job may run as threads of one process (unit tests).
std::mutex g_generation_mu;
std::map<std::pair<uint64_t, int>, uint64_t> g_last_generation;

// What this process's next hello as `rank` of job `job` asks for: 0 if it never joined one (fresh).
uint64_t NextGeneration(uint64_t job, int rank) {
  std::lock_guard<std::mutex> g(g_generation_mu);
  auto it = g_last_generation.find({job, rank});
  return it == g_last_generation.end() ? 0 : it->second + 1;
}

void JoinedGeneration(uint64_t job, int rank, uint64_t generation) {
  std::lock_guard<std::mutex> g(g_generation_mu);
  g_last_generation[{job, rank}] = generation;
}

Status StaleRank(int rank, uint64_t asked, uint64_t forming) {
  return Status(
      Code::kFailedPrecondition,
      fmt::format("bootstrap root refused rank {}: it asks to join generation {} of this job (it last "
                  "joined generation {}) but generation {} is forming: the process is stale (an older "
                  "incarnation of a rank restarted since, or one that missed a re-creation of the "
                  "Context)",
                  rank, asked, asked - 1, forming));
}

Status SendReply(int fd, const Status& st, std::span<const uint8_t> blob, const Deadline& d, std::string_view what) {
  ReplyHeader h{kMagic, static_cast<uint32_t>(st.code()), st.ok() ? blob.size() : st.message().size()};
  EPX_RETURN_IF_ERROR(SendAll(fd, &h, sizeof(h), d, what));
  if (st.ok()) return SendAll(fd, blob.data(), blob.size(), d, what);
  return SendAll(fd, st.message().data(), st.message().size(), d, what);
}

}  // namespace

StatusOr<std::unique_ptr<Bootstrap>> Bootstrap::Create(const Placement& p) {
  EPX_ASSIGN_OR_RETURN(int64_t ms, TunableMs("EPX_BOOTSTRAP_TIMEOUT"));
  return Create(p, std::chrono::milliseconds(ms));
}

StatusOr<std::unique_ptr<Bootstrap>> Bootstrap::Create(const Placement& p, std::chrono::milliseconds timeout) {
  std::unique_ptr<Bootstrap> b(new Bootstrap(p.rank, p.world_size, timeout));
  const uint64_t job = bootstrap_wire::JobHash(p.job_id);
  if (p.world_size == 1) {
    b->generation_ = std::max<uint64_t>(NextGeneration(job, 0), 1);
    JoinedGeneration(job, 0, b->generation_);
    return b;
  }
  const Deadline d = Deadline::After(timeout);
  EPX_ASSIGN_OR_RETURN(addrinfo * ai, Resolve(p.master_addr, p.master_port, p.rank == 0));
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> ai_owner(ai, freeaddrinfo);
  const std::string where = fmt::format("{}:{}", p.master_addr, p.master_port);

  if (p.rank == 0) {
    EPX_SYS(lfd, ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "bootstrap listen socket");
    b->listen_fd_ = static_cast<int>(lfd);
    int one = 1;
    ::setsockopt(b->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    EPX_SYS(brc, ::bind(b->listen_fd_, ai->ai_addr, ai->ai_addrlen), "bootstrap root on {}", where);
    EPX_SYS(lrc, ::listen(b->listen_fd_, 1024), "bootstrap root on {}", where);
    b->fds_.assign(p.world_size, -1);
    const uint64_t own = NextGeneration(job, 0);  // 0: a fresh root takes the newest it is asked for
    uint64_t forming = own;
    std::vector<uint64_t> asked(p.world_size, 0);    // what each joined rank's hello asked for
    std::vector<std::string> refused(p.world_size);  // why a rank's last connection was refused
    auto refuse = [&](int fd, int rank, const Status& why) {
      (void)SendReply(fd, why, {}, Deadline::After(std::chrono::seconds(1)), "refuse");
      ::close(fd);
      EPX_WARN("bootstrap: {}", why.message());
      refused[rank] = why.message();
    };
    int joined = 1;
    while (joined < p.world_size) {
      pollfd pf{b->listen_fd_, POLLIN, 0};
      int rc = ::poll(&pf, 1, static_cast<int>(std::min<int64_t>(d.RemainingMs(), 1 << 30)));
      if (rc < 0 && errno == EINTR) continue;
      if (rc < 0) return SysError("poll", errno, "bootstrap accept");
      if (rc == 0) {
        std::vector<int> missing;
        std::string why;
        for (int r = 1; r < p.world_size; ++r) {
          if (b->fds_[r] >= 0) continue;
          missing.push_back(r);
          if (!refused[r].empty()) why += "; " + refused[r];
        }
        Status st = EPX_ERROR(kTimeout, "bootstrap connect at {}: ranks {} did not arrive within {} ms{}",
                              where, RankList(missing), timeout.count(), why);
        for (int r = 1; r < p.world_size; ++r)
          if (b->fds_[r] >= 0) (void)SendReply(b->fds_[r], st, {}, Deadline::After(std::chrono::seconds(1)), "abort");
        return st;
      }
      EPX_SYS(fd, ::accept4(b->listen_fd_, nullptr, nullptr, SOCK_CLOEXEC), "bootstrap accept");
      SetNoDelay(static_cast<int>(fd));
      uint8_t hb[sizeof(Hello)] = {};
      // A stray connection (port scanner, wrong job) must not stall the root: short per-peer deadline.
      Status st =
          RecvAll(static_cast<int>(fd), hb, sizeof(hb), Deadline::After(std::chrono::seconds(5)), "hello");
      StatusOr<Hello> h = st.ok() ? bootstrap_wire::DecodeHello(hb) : StatusOr<Hello>(std::move(st));
      Status verdict = h.ok() ? bootstrap_wire::CheckHello(*h, job, p.world_size, b->fds_)
                              : Status(Code::kInvalidArgument, "not an epx bootstrap peer");
      if (!verdict.ok()) {
        const std::string& bad = verdict.message();
        Status rej(Code::kInvalidArgument, "bootstrap root rejected this rank: " + bad);
        (void)SendReply(static_cast<int>(fd), rej, {}, Deadline::After(std::chrono::seconds(1)), "reject");
        ::close(static_cast<int>(fd));
        EPX_WARN("bootstrap: rejected a connection: {}", bad);
        if (h.ok() && h->job_hash == job) return EPX_ERROR(kInvalidArgument, "bootstrap: {}", bad);
        continue;
      }
      const int r = h->rank;
      switch (bootstrap_wire::JudgeGeneration(h->generation, forming)) {
        case GenerationVerdict::kStale:
          // Not fatal: the rank's current incarnation may still come.
          refuse(static_cast<int>(fd), r, StaleRank(r, h->generation, forming));
          continue;
        case GenerationVerdict::kNewer:
          if (own != 0) {  // the root's own history fixed `forming`: the root is the one behind
            Status st =
                EPX_ERROR(kFailedPrecondition,
                          "bootstrap at {}: rank {} asks to join generation {} of this job but this root "
                          "(rank 0) last joined generation {}: the root process is stale (an older "
                          "incarnation of rank 0, or one that missed a re-creation of the Context)",
                          where, r, h->generation, own - 1);
            (void)SendReply(static_cast<int>(fd), st, {}, Deadline::After(std::chrono::seconds(1)), "abort");
            ::close(static_cast<int>(fd));
            for (int q = 1; q < p.world_size; ++q)
              if (b->fds_[q] >= 0)
                (void)SendReply(b->fds_[q], st, {}, Deadline::After(std::chrono::seconds(1)), "abort");
            return st;
          }
          // A fresh root took an older generation from an earlier hello: those ranks are the stale ones.
          for (int q = 1; q < p.world_size; ++q) {
            if (b->fds_[q] < 0 || asked[q] == 0 || asked[q] >= h->generation) continue;
            refuse(b->fds_[q], q, StaleRank(q, asked[q], h->generation));
            b->fds_[q] = -1;
            --joined;
          }
          forming = h->generation;
          break;
        case GenerationVerdict::kJoin:
          if (forming == 0) forming = h->generation;  // stays 0 while every hello is fresh
          break;
      }
      b->fds_[r] = static_cast<int>(fd);
      asked[r] = h->generation;
      refused[r].clear();
      ++joined;
    }
    // Everyone is here: stop listening, so that a process connecting while this generation runs (a
    // restarted rank, early) is refused by the kernel and retries, instead of sitting in a backlog that
    // nobody accepts from. The next generation listens on the same port again (SO_REUSEADDR).
    ::close(b->listen_fd_);
    b->listen_fd_ = -1;
    b->generation_ = forming != 0 ? forming : 1;  // all fresh: the job's first generation
    JoinedGeneration(job, 0, b->generation_);
    const std::span<const uint8_t> welcome(reinterpret_cast<const uint8_t*>(&b->generation_),
                                           sizeof(b->generation_));
    for (int r = 1; r < p.world_size; ++r)
      EPX_RETURN_IF_ERROR(SendReply(b->fds_[r], Status::Ok(), welcome, d, "welcome"));
    return b;
  }

  // Non-root: retry until rank 0 listens. Backoff keeps this polite on 2 cores.
  Backoff backoff;
  for (;;) {
    EPX_SYS(fd, ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), "bootstrap socket");
    if (::connect(static_cast<int>(fd), ai->ai_addr, ai->ai_addrlen) == 0) {
      b->fds_.assign(1, static_cast<int>(fd));
      break;
    }
    int err = errno;
    ::close(static_cast<int>(fd));
    if (err != ECONNREFUSED && err != EINTR && err != ETIMEDOUT && err != EHOSTUNREACH && err != ENETUNREACH)
      return SysError("connect", err, fmt::format("bootstrap root {}", where));
    if (d.Expired())
      return EPX_ERROR(kTimeout, "bootstrap connect: rank 0 (root) not reachable at {} within {} ms", where,
                       timeout.count());
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    backoff.Pause();
  }
  SetNoDelay(b->fds_[0]);
  const uint64_t ask = NextGeneration(job, p.rank);
  Hello h{kMagic, bootstrap_wire::kVersion, p.rank, p.world_size, job, ask};
  EPX_RETURN_IF_ERROR(SendAll(b->fds_[0], &h, sizeof(h), d, "bootstrap hello to rank 0"));
  uint8_t rb[sizeof(ReplyHeader)] = {};
  // Rank 0 enforces the connect deadline and names the missing ranks; wait a little longer than it
  // so that its explanation, not our own bare timeout, is what this rank reports.
  const Deadline dw = Deadline::After(timeout + std::chrono::seconds(2));
  EPX_RETURN_IF_ERROR(RecvAll(b->fds_[0], rb, sizeof(rb), dw, "bootstrap connect: waiting for all ranks"));
  auto rh = bootstrap_wire::DecodeReplyHeader(rb, Kind::kConnect, p.world_size, 0);
  if (!rh.ok())
    return EPX_ERROR(kInternal, "bootstrap connect: corrupt reply from rank 0 at {}: {}", where,
                     rh.status().message());
  if (rh->code != 0) {
    std::string msg(rh->len, '\0');  // at most kMaxErrorText
    (void)RecvAll(b->fds_[0], msg.data(), msg.size(), Deadline::After(std::chrono::seconds(2)),
                  "bootstrap error text");
    Status e = bootstrap_wire::ReplyError(*rh, msg);
    return internal::MakeError(e.code(), __FILE__, __LINE__, e.message());
  }
  uint64_t gen = 0;
  EPX_RETURN_IF_ERROR(RecvAll(b->fds_[0], &gen, sizeof(gen), dw, "bootstrap welcome"));
  // The root refuses a hello of another generation, so a welcome into one is a bug of either side.
  if (gen == 0 || (ask != 0 && gen != ask))
    return EPX_ERROR(kInternal,
                     "bootstrap connect: rank 0 welcomed rank {} into generation {}; it asked for {}", p.rank,
                     gen, ask);
  b->generation_ = gen;
  JoinedGeneration(job, p.rank, gen);
  return b;
}

Bootstrap::~Bootstrap() {
  for (int fd : fds_)
    if (fd >= 0) ::close(fd);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

StatusOr<std::vector<uint8_t>> Bootstrap::RootRound(Kind kind, std::string_view phase, int root,
                                                    std::span<const uint8_t> mine) {
  const Deadline d = Deadline::After(timeout_);
  const std::string what = fmt::format("bootstrap {} '{}' (#{})", KindName(static_cast<uint32_t>(kind)), phase, seq_);
  std::vector<std::vector<uint8_t>> blobs(world_);
  blobs[0].assign(mine.begin(), mine.end());
  std::vector<bool> got(world_, false);
  got[0] = true;
  int pending = world_ - 1;
  Status st;
  // Rank 0's own blob obeys the bound it enforces on the others (whose decoders check the result).
  if (mine.size() > kMaxBlob)
    st = EPX_ERROR(kInvalidArgument, "{}: rank 0's blob of {} bytes exceeds the {}-byte bootstrap limit",
                   what, mine.size(), kMaxBlob);
  std::vector<pollfd> pfds;
  while (pending > 0 && st.ok()) {
    pfds.clear();
    for (int r = 1; r < world_; ++r)
      if (!got[r]) pfds.push_back({fds_[r], POLLIN, 0});
    int rc = ::poll(pfds.data(), pfds.size(), static_cast<int>(std::min<int64_t>(d.RemainingMs(), 1 << 30)));
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) {
      st = SysError("poll", errno, what);
      break;
    }
    if (rc == 0) {
      std::vector<int> missing;
      for (int r = 1; r < world_; ++r)
        if (!got[r]) missing.push_back(r);
      st = EPX_ERROR(kTimeout, "{}: ranks {} did not arrive within {} ms", what, RankList(missing), timeout_.count());
      break;
    }
    for (const auto& pf : pfds) {
      if (pf.revents == 0) continue;
      int r = static_cast<int>(std::find(fds_.begin(), fds_.end(), pf.fd) - fds_.begin());
      uint8_t hb[sizeof(MsgHeader)] = {};
      Status rs = RecvAll(pf.fd, hb, sizeof(hb), d, fmt::format("{}: rank {}", what, r));
      MsgHeader h{};
      if (rs.ok()) {
        auto dh = bootstrap_wire::DecodeMsgHeader(hb);
        if (dh.ok())
          h = *dh;
        else
          rs = EPX_ERROR(kInternal, "{}: corrupt message from rank {}: {}", what, r, dh.status().message());
      }
      std::string ph(h.phase_len, '\0');  // at most kMaxPhase, as checked by the decoder
      if (rs.ok()) rs = RecvAll(pf.fd, ph.data(), ph.size(), d, what);
      if (rs.ok()) {
        blobs[r].resize(h.blob_len);
        rs = RecvAll(pf.fd, blobs[r].data(), h.blob_len, d, what);
      }
      if (!rs.ok()) {
        st = rs.code() == Code::kPeerFailure
                 ? EPX_ERROR(kPeerFailure, "{}: rank {} disconnected (died or failed) before joining", what, r)
                 : std::move(rs);
        break;
      }
      if (!bootstrap_wire::SameCollective(h, ph, kind, seq_, root, phase)) {
        st = EPX_ERROR(kFailedPrecondition,
                       "{}: rank {} is in a different collective: {} '{}' (#{}, root {}); ranks must call "
                       "bootstrap collectives in the same order",
                       what, r, KindName(h.kind), ph, h.seq, h.root);
        break;
      }
      got[r] = true;
      --pending;
    }
  }

  std::vector<uint8_t> out;
  if (st.ok()) {
    if (kind == Kind::kAllGather) {
      for (int r = 1; r < world_ && st.ok(); ++r)
        if (blobs[r].size() != blobs[0].size())
          st = EPX_ERROR(kInvalidArgument, "{}: rank {} sent {} bytes, rank 0 sent {}", what, r, blobs[r].size(),
                         blobs[0].size());
      for (auto& b : blobs) out.insert(out.end(), b.begin(), b.end());
    } else if (kind == Kind::kAllGatherV) {
      out = bootstrap_wire::EncodeAllGatherV(blobs);
    } else if (kind == Kind::kBroadcast) {
      out = blobs[root];
    }
  }
  // Answer everyone still connected, with the result or the failure, so every rank reports the cause.
  for (int r = 1; r < world_; ++r) {
    Status ss = SendReply(fds_[r], st, out, st.ok() ? d : Deadline::After(std::chrono::seconds(1)), what);
    if (st.ok() && !ss.ok()) st = std::move(ss).With(fmt::format("sending to rank {}", r));
  }
  if (!st.ok()) return st;
  return out;
}

StatusOr<std::vector<uint8_t>> Bootstrap::Round(Kind kind, std::string_view phase, int root,
                                                std::span<const uint8_t> mine) {
  if (phase.size() > kMaxPhase) return EPX_ERROR(kInvalidArgument, "bootstrap phase name '{}' too long", phase);
  if (root < 0 || root >= world_)
    return EPX_ERROR(kInvalidArgument, "bootstrap {} '{}': root {} not in 0..{}", KindName(uint32_t(kind)), phase,
                     root, world_ - 1);
  ++seq_;
  if (world_ == 1) {
    std::vector<uint8_t> out(mine.begin(), mine.end());
    if (kind == Kind::kAllGatherV) return bootstrap_wire::EncodeAllGatherV({&out, 1});
    return out;
  }
  if (rank_ == 0) return RootRound(kind, phase, root, mine);

  const Deadline d = Deadline::After(timeout_);
  const std::string what = fmt::format("bootstrap {} '{}' (#{})", KindName(uint32_t(kind)), phase, seq_);
  MsgHeader h{kMagic, static_cast<uint32_t>(kind), seq_, root, static_cast<uint32_t>(phase.size()), mine.size()};
  const int fd = fds_[0];
  EPX_RETURN_IF_ERROR(SendAll(fd, &h, sizeof(h), d, what));
  EPX_RETURN_IF_ERROR(SendAll(fd, phase.data(), phase.size(), d, what));
  // Rank 0 refuses an oversized blob from the header alone and answers every rank with that error; the
  // blob itself is not sent, or this rank would block on a socket that rank 0 no longer reads.
  if (mine.size() <= kMaxBlob) EPX_RETURN_IF_ERROR(SendAll(fd, mine.data(), mine.size(), d, what));
  uint8_t rb[sizeof(ReplyHeader)] = {};
  // Rank 0 enforces the deadline and tells us who is missing; our own wait gets a little slack so
  // that the root's explanation (rather than our bare timeout) normally wins.
  const Deadline dr = Deadline::After(timeout_ + std::chrono::seconds(2));
  Status st = RecvAll(fd, rb, sizeof(rb), dr, what);
  if (!st.ok()) {
    if (st.code() == Code::kPeerFailure)
      return EPX_ERROR(kPeerFailure, "{}: rank 0 (bootstrap root) closed the connection (it died or failed)", what);
    return st;
  }
  // The length is checked against what this collective can produce before anything is allocated.
  auto rh = bootstrap_wire::DecodeReplyHeader(rb, kind, world_, mine.size());
  if (!rh.ok()) return EPX_ERROR(kInternal, "{}: corrupt reply from rank 0: {}", what, rh.status().message());
  std::vector<uint8_t> out(rh->len);
  EPX_RETURN_IF_ERROR(RecvAll(fd, out.data(), out.size(), dr, what));
  if (rh->code != 0) {
    Status e = bootstrap_wire::ReplyError(
        *rh, std::string_view(reinterpret_cast<const char*>(out.data()), out.size()));
    return internal::MakeError(e.code(), __FILE__, __LINE__, e.message());
  }
  return out;
}

StatusOr<std::vector<uint8_t>> Bootstrap::AllGather(std::string_view phase, std::span<const uint8_t> mine) {
  return Round(Kind::kAllGather, phase, 0, mine);
}

StatusOr<std::vector<std::vector<uint8_t>>> Bootstrap::AllGatherV(std::string_view phase,
                                                                 std::span<const uint8_t> mine) {
  EPX_ASSIGN_OR_RETURN(auto raw, Round(Kind::kAllGatherV, phase, 0, mine));
  auto out = bootstrap_wire::DecodeAllGatherV(raw, world_);
  if (!out.ok()) return EPX_ERROR(kInternal, "allgatherv '{}': {}", phase, out.status().message());
  return out;
}

StatusOr<std::vector<uint8_t>> Bootstrap::Broadcast(std::string_view phase, int root, std::span<const uint8_t> data) {
  return Round(Kind::kBroadcast, phase, root, rank_ == root ? data : std::span<const uint8_t>());
}

Status Bootstrap::Barrier(std::string_view phase) { return Round(Kind::kBarrier, phase, 0, {}).status(); }

}  // namespace epx
