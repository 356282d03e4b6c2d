#include "tools/epx-run/process_group.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "core/sys.h"

namespace epx::run {
namespace {

constexpr int kForwarded[] = {SIGINT, SIGTERM, SIGHUP};
constexpr size_t kReadChunk = 64 * 1024;
// After the last rank is reaped, how long its output pipes may stay open (held by a descendant that
// escaped its process group with setsid) before we stop waiting for their EOF.
constexpr std::chrono::milliseconds kDrainLimit{1000};

std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

// What a child that could not exec tells the parent through the close-on-exec pipe.
struct ChildError {
  int err;  // errno, 0 if `what` says it all
  char what[248];
};

[[noreturn]] void ChildFail(int fd, int err, std::string_view what) {
  ChildError e{};
  e.err = err;
  std::memcpy(e.what, what.data(), std::min(what.size(), sizeof(e.what) - 1));
  (void)!::write(fd, &e, sizeof(e));
  ::_exit(127);
}

// Whether `pid` (a child) is exiting: its thread-group leader is a zombie (state Z or X in
// /proc/<pid>/stat) while the rest of the group is still being torn down.
bool Dying(pid_t pid) {
  char path[40], buf[512];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  const char* paren = std::strrchr(buf, ')');
  return paren != nullptr && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X');
}

[[noreturn]] void WatchdogMain(int rfd) {
  // Survive what kills the launcher's job (Ctrl-C to its process group, a group SIGTERM): being
  // left alone is exactly when we are needed.
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP}) ::signal(sig, SIG_IGN);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  ::setpgid(0, 0);
  ::prctl(PR_SET_NAME, "epx-run-watch");
  // Hold no copy of anyone's pipes: a reader waiting for EOF on the launcher's stdout must see it
  // when the launcher exits.
  int null_fd = ::open("/dev/null", O_RDWR);
  for (int fd = 0; fd <= 2 && null_fd >= 0; ++fd) ::dup2(null_fd, fd);
  if (rfd > 3) ::close_range(3, rfd - 1, 0);
  ::close_range(rfd + 1, ~0U, 0);

  // Protocol: int32 pgid > 0 adds a rank group, < 0 removes one (reaped), 0 is a clean goodbye.
  std::vector<int32_t> groups;
  char buf[256];
  size_t have = 0;
  for (;;) {
    ssize_t n = ::read(rfd, buf + have, sizeof(buf) - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    have += static_cast<size_t>(n);
    size_t k = 0;
    for (; k + sizeof(int32_t) <= have; k += sizeof(int32_t)) {
      int32_t v;
      std::memcpy(&v, buf + k, sizeof(v));
      if (v == 0) ::_exit(0);
      if (v > 0) groups.push_back(v);
      if (v < 0) std::erase(groups, -v);
    }
    std::memmove(buf, buf + k, have - k);
    have -= k;
  }
  for (int32_t g : groups) ::kill(-g, SIGKILL);
  ::_exit(0);
}

}  // namespace

StatusOr<std::unique_ptr<Supervisor>> Supervisor::Create(SupervisorOptions opts) {
  std::unique_ptr<Supervisor> s(new Supervisor(std::move(opts)));
  EPX_RETURN_IF_ERROR(s->Init());
  return s;
}

Status Supervisor::Init() {
  self_ = ::getpid();
  buf_.resize(kReadChunk);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  for (int sig : kForwarded) sigaddset(&set, sig);
  EPX_SYS(rc, ::sigprocmask(SIG_BLOCK, &set, nullptr));
  (void)rc;
  // A vanished reader of our stdout must not kill the launcher (and orphan the job); see LineSink.
  ::signal(SIGPIPE, SIG_IGN);
  EPX_RETURN_IF_ERROR(StartWatchdog());
  EPX_SYS(fd, ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  sigfd_ = static_cast<int>(fd);
  if (opts_.timeout) timeout_at_ = Clock::now() + *opts_.timeout;
  return Status::Ok();
}

Status Supervisor::StartWatchdog() {
  int p[2];
  EPX_SYS(rc, ::pipe2(p, O_CLOEXEC));
  (void)rc;
  EPX_SYS(pid, ::fork());
  if (pid == 0) {
    ::close(p[1]);
    WatchdogMain(p[0]);
  }
  ::close(p[0]);
  watchdog_pid_ = static_cast<pid_t>(pid);
  watchdog_fd_ = p[1];
  return Status::Ok();
}

void Supervisor::TellWatchdog(pid_t value) {
  if (watchdog_fd_ < 0) return;
  int32_t v = value;
  // 4 bytes are written atomically to a pipe; a dead watchdog gives EPIPE, which we can ignore.
  (void)!::write(watchdog_fd_, &v, sizeof(v));
}

Supervisor::~Supervisor() {
  KillAll();
  for (auto& r : ranks_) {
    CloseStream(r.out_fd, r.out.get());
    CloseStream(r.err_fd, r.err.get());
  }
  if (watchdog_fd_ >= 0) {
    TellWatchdog(0);
    ::close(watchdog_fd_);
  }
  if (watchdog_pid_ > 0) ::waitpid(watchdog_pid_, nullptr, 0);
  if (sigfd_ >= 0) ::close(sigfd_);
}

Status Supervisor::Spawn(const RankLaunch& launch, const std::vector<std::string>& argv) {
  specs_[launch.rank] = RankSpec{launch, argv, 0};
  return Start(launch, argv, 0);
}

Status Supervisor::Start(const RankLaunch& launch, const std::vector<std::string>& argv, int incarnation) {
  // Everything the child needs is built before fork: the child only makes syscalls.
  std::vector<char*> args, envp;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const auto& e : launch.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  int out[2] = {-1, -1}, err[2] = {-1, -1}, exec_pipe[2] = {-1, -1};
  auto close_all = [&] {
    for (int* fd : {&out[0], &out[1], &err[0], &err[1], &exec_pipe[0], &exec_pipe[1]})
      if (*fd >= 0) ::close(*fd), *fd = -1;
  };
  auto make_pipe = [&](int* p) -> Status {
    EPX_SYS(rc, ::pipe2(p, O_CLOEXEC), "rank {}", launch.rank);
    (void)rc;
    return Status::Ok();
  };
  Status st = make_pipe(exec_pipe);
  if (st.ok() && opts_.tag_output) st = make_pipe(out);
  if (st.ok() && opts_.tag_output) st = make_pipe(err);
  if (!st.ok()) {
    close_all();
    return st;
  }

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    close_all();
    return SysError("fork", e, fmt::format("rank {}", launch.rank));
  }
  if (pid == 0) {
    // Blocked signals and ignored dispositions survive execve: give the program a clean slate.
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::setpgid(0, 0);
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) ChildFail(exec_pipe[1], errno, "prctl(PR_SET_PDEATHSIG)");
    // The launcher may have died before PDEATHSIG was armed; then nobody would ever kill us.
    if (::getppid() != parent) ::_exit(1);
    // Ranks read no stdin: several processes sharing a terminal's input (from background process
    // groups, which the tty would stop with SIGTTIN) is never what anyone wants.
    int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd < 0 || ::dup2(null_fd, 0) < 0) ChildFail(exec_pipe[1], errno, "open /dev/null as stdin");
    if (null_fd > 2) ::close(null_fd);
    // dup2 clears close-on-exec on the copies only; all our other pipe ends close at exec.
    if (opts_.tag_output && (::dup2(out[1], 1) < 0 || ::dup2(err[1], 2) < 0))
      ChildFail(exec_pipe[1], errno, "dup2 of the output pipes");
    if (launch.pin) {
      Status s = ApplyPin(*launch.pin);
      if (!s.ok()) ChildFail(exec_pipe[1], 0, s.ToString());
    }
    ::execvpe(args[0], args.data(), envp.data());
    ChildFail(exec_pipe[1], errno, fmt::format("exec '{}'", argv[0]));
  }

  // Both sides set the group: whichever runs first wins the race with our first kill(-pid).
  ::setpgid(pid, pid);
  for (int* fd : {&out[1], &err[1], &exec_pipe[1]})
    if (*fd >= 0) ::close(*fd), *fd = -1;
  ChildError ce{};
  ssize_t n;
  do {
    n = ::read(exec_pipe[0], &ce, sizeof(ce));
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
    ::waitpid(pid, nullptr, 0);
    close_all();
    ce.what[sizeof(ce.what) - 1] = '\0';
    std::string why = ce.err != 0 ? fmt::format("{}: {}", ce.what, std::strerror(ce.err)) : ce.what;
    if (ce.err == ENOENT) return EPX_ERROR(kNotFound, "cannot start rank {}: {}", launch.rank, why);
    return EPX_ERROR(kSystem, "cannot start rank {}: {}", launch.rank, why);
  }
  ::close(exec_pipe[0]);

  Rank r;
  r.rank = launch.rank;
  r.pid = pid;
  r.incarnation = incarnation;
  if (opts_.tag_output) {
    ::fcntl(out[0], F_SETFL, O_NONBLOCK);
    ::fcntl(err[0], F_SETFL, O_NONBLOCK);
    r.out_fd = out[0];
    r.err_fd = err[0];
    std::string prefix = fmt::format("[r{}] ", launch.rank);
    r.out = std::make_unique<LinePrefixer>(prefix, &out_sink_);
    r.err = std::make_unique<LinePrefixer>(prefix, &err_sink_);
  }
  ranks_.push_back(std::move(r));
  TellWatchdog(pid);
  return Status::Ok();
}

int Supervisor::AliveCount() const {
  return static_cast<int>(std::count_if(ranks_.begin(), ranks_.end(), [](const Rank& r) { return r.alive; }));
}

std::string Supervisor::AliveList() const {
  std::vector<int> alive;
  for (const auto& r : ranks_)
    if (r.alive) alive.push_back(r.rank);
  return FormatCpuList(alive);  // rank numbers compress the same way cpu numbers do: "0-3,6"
}

void Supervisor::Say(std::string_view line) {
  std::string l(line);
  l += '\n';
  err_sink_.Write(l);
}

void Supervisor::SignalAll(int sig) {
  // Only live ranks: a reaped rank's pid (= its pgid) may already belong to someone else.
  for (const auto& r : ranks_)
    if (r.alive) ::kill(-r.pid, sig);
}

void Supervisor::Stop(int sig, std::string_view why) {
  if (stopping_) return;
  stopping_ = true;
  if (!why.empty()) Say(why);
  SignalAll(sig);
  kill_at_ = Clock::now() + opts_.grace;
}

void Supervisor::CloseStream(int& fd, LinePrefixer* p) {
  if (fd < 0) return;
  if (p != nullptr) p->Finish();
  ::close(fd);
  fd = -1;
}

void Supervisor::Drain(Rank& r) {
  // A dead rank's output is all in the pipe already (unless a descendant still writes): print it
  // before the launcher's verdict about that rank, so the rank's last words come first.
  for (auto [fd, p] : {std::pair{&r.out_fd, r.out.get()}, std::pair{&r.err_fd, r.err.get()}}) {
    Pump res = Pump::kData;
    while (*fd >= 0 && res == Pump::kData) res = PumpOnce(*fd, *p, buf_.data(), buf_.size());
    if (res == Pump::kEnd) CloseStream(*fd, p);
  }
}

void Supervisor::OnRankExit(Rank& r, int status) {
  r.alive = false;
  Drain(r);
  const bool failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
  std::string how;
  int code = 0;
  if (WIFEXITED(status)) {
    code = WEXITSTATUS(status);
    how = fmt::format("exited with code {}", code);
  } else {
    const int sig = WTERMSIG(status);
    code = 128 + sig;
    how = fmt::format("killed by signal {} ({}){}", sig, strsignal(sig),
                      WCOREDUMP(status) ? ", core dumped" : "");
  }
  if (survive_until_ && !stopping_) {
    // A survivor of the first failure ended on its own within --grace (typically after reporting it).
    const double after = std::chrono::duration<double>(Clock::now() - failed_at_).count();
    Say(fmt::format("epx-run: rank {} (pid {}) {}, {:.2f} s after rank {} failed", r.rank, r.pid, how, after,
                    first_failed_rank_));
    return;
  }
  if (!failed || stopping_) return;  // once stopping, deaths are the ones we caused
  const std::string what = WIFEXITED(status)
                               ? fmt::format("exited with code {}", code)
                               : fmt::format("killed by {} (signal {}, {})", SignalName(WTERMSIG(status)),
                                             WTERMSIG(status), strsignal(WTERMSIG(status)));
  if (first_failure_.empty() && specs_[r.rank].restarts < opts_.respawn) {
    // Not the job's failure. Started again once the whole reap is done (RestartFailed): a later death of
    // the same batch may still make it the job's.
    to_restart_.push_back(Restart{r.rank, r.pid, code, how, what});
    return;
  }
  JobFailed(r.rank, r.pid, code, how, what);
}

void Supervisor::JobFailed(int rank, pid_t pid, int code, const std::string& how, const std::string& what) {
  exit_code_ = code;
  Say(fmt::format("epx-run: rank {} (pid {}) {}", rank, pid, how));
  first_failed_rank_ = rank;
  failed_at_ = Clock::now();
  first_failure_ = fmt::format("rank {} (pid {}) {}", rank, pid, what);
  const int others = AliveCount();
  if (others > 0 && opts_.failure_grace.count() > 0) {
    survive_until_ = failed_at_ + opts_.failure_grace;
    Say(fmt::format(
        "epx-run: letting {} other rank{} ({}) run up to {:.3g} s to report the failure (--grace)", others,
        others == 1 ? "" : "s", AliveList(), opts_.failure_grace.count() / 1000.0));
    return;
  }
  Stop(SIGTERM, others == 0 ? std::string()
                            : fmt::format("epx-run: terminating {} other rank{} ({})", others,
                                          others == 1 ? "" : "s", AliveList()));
}

void Supervisor::ReapExited() {
  // Every rank dead by now is reaped before any is reported: which of them died first is unknown (waitid
  // returns them in pid order, not death order), and it matters for the verdict. A rank killed by a
  // signal did not choose to end; a rank of the same batch that exited non-zero has most likely reported
  // that death itself (a survivor's "peer failure"), so the killed ones are reported first.
  std::vector<std::pair<Rank*, int>> batch;
  for (;;) {
    siginfo_t si{};
    // WNOWAIT first: while the rank is an unreaped zombie its pid cannot be reused, so the group
    // kill below can only reach what the rank left behind.
    if (::waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) != 0 || si.si_pid == 0) break;
    const pid_t pid = si.si_pid;
    auto it =
        std::find_if(ranks_.begin(), ranks_.end(), [&](const Rank& r) { return r.pid == pid && r.alive; });
    if (it != ranks_.end()) {
      ::kill(-pid, SIGKILL);
      TellWatchdog(-pid);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (pid == watchdog_pid_) {
      watchdog_pid_ = -1;  // it should never exit first; rank cleanup then rests on PDEATHSIG alone
      continue;
    }
    if (it == ranks_.end()) continue;
    it->alive = false;  // reaped: its pid may be reused, so no signal may reach it any more
    batch.emplace_back(&*it, status);
  }
  // A rank killed by a signal can be a zombie thread-group leader whose other threads are still being
  // torn down: the kernel makes it waitable only once they are gone, which may be after a rank that
  // reacted to its death exited and was reaped above. Before a verdict that would name a plain non-zero
  // exit, wait (briefly: teardown takes milliseconds) for ranks that are already dying.
  const bool verdict_pending = first_failure_.empty() && !stopping_;
  const bool only_exits =
      std::none_of(batch.begin(), batch.end(), [](const auto& b) { return WIFSIGNALED(b.second); });
  const bool failure = std::any_of(batch.begin(), batch.end(), [](const auto& b) { return b.second != 0; });
  if (verdict_pending && only_exits && failure) {
    for (auto& r : ranks_) {
      if (!r.alive || !Dying(r.pid)) continue;
      siginfo_t si{};
      for (int i = 0; i < 1000; ++i) {  // up to ~1 s
        si.si_pid = 0;
        if (::waitid(P_PID, static_cast<id_t>(r.pid), &si, WEXITED | WNOHANG | WNOWAIT) != 0 ||
            si.si_pid != 0)
          break;
        ::usleep(1000);
      }
      if (si.si_pid != r.pid) continue;
      ::kill(-r.pid, SIGKILL);
      TellWatchdog(-r.pid);
      int status = 0;
      ::waitpid(r.pid, &status, 0);
      r.alive = false;
      batch.emplace_back(&r, status);
    }
  }
  std::stable_partition(batch.begin(), batch.end(), [](const auto& b) { return WIFSIGNALED(b.second); });
  for (auto& [r, status] : batch) OnRankExit(*r, status);
  RestartFailed();
}

void Supervisor::RestartFailed() {
  std::vector<Restart> due;
  due.swap(to_restart_);
  for (const Restart& t : due) {
    if (!first_failure_.empty() || stopping_) {  // the job failed meanwhile: its ranks are going down
      Say(fmt::format("epx-run: rank {} (pid {}) {}; not restarted: the job is failing", t.rank, t.pid,
                      t.what));
      continue;
    }
    RankSpec& spec = specs_[t.rank];
    ++spec.restarts;
    RankLaunch launch = spec.launch;
    std::erase_if(launch.env, [](const std::string& e) { return e.rfind("EPX_RESTART_COUNT=", 0) == 0; });
    launch.env.push_back(fmt::format("EPX_RESTART_COUNT={}", spec.restarts));
    if (Status st = Start(launch, spec.argv, spec.restarts); !st.ok()) {
      Say(fmt::format("epx-run: rank {} (pid {}) {}; restarting it ({} of {}) failed: {}", t.rank, t.pid,
                      t.what, spec.restarts, opts_.respawn, st.message()));
      JobFailed(t.rank, t.pid, t.code, t.how, t.what);
      continue;
    }
    const pid_t now = ranks_.back().pid;
    Say(fmt::format("epx-run: rank {} (pid {}) {}; restarting it ({} of {}) as pid {}", t.rank, t.pid, t.what,
                    spec.restarts, opts_.respawn, now));
    restarts_.push_back(fmt::format("rank {} (pid {} {}) as pid {}", t.rank, t.pid, t.what, now));
  }
}

std::string Supervisor::RestartSummary() const {
  std::string list;
  for (const auto& r : restarts_) list += (list.empty() ? "" : ", ") + r;
  return fmt::format("{} restart{} (--respawn {}): {}", restarts_.size(), restarts_.size() == 1 ? "" : "s",
                     opts_.respawn, list);
}

void Supervisor::HandleSignals() {
  signalfd_siginfo si;
  bool reap = false;
  while (::read(sigfd_, &si, sizeof(si)) == static_cast<ssize_t>(sizeof(si))) {
    const int sig = static_cast<int>(si.ssi_signo);
    if (sig == SIGCHLD) {
      reap = true;
    } else if (!stopping_) {
      exit_code_ = 128 + sig;
      Stop(sig,
           fmt::format("epx-run: got {}: forwarding it to {} rank{} ({}), SIGKILL in {} ms", SignalName(sig),
                       AliveCount(), AliveCount() == 1 ? "" : "s", AliveList(), opts_.grace.count()));
    } else if (AliveCount() > 0) {
      // Impatient user (second Ctrl-C) or a supervisor escalating: skip the rest of the grace period.
      Say(fmt::format("epx-run: got {} while stopping: killing {} rank{} now", SignalName(sig), AliveCount(),
                      AliveCount() == 1 ? "" : "s"));
      SignalAll(SIGKILL);
      kill_at_.reset();
    }
  }
  if (reap) ReapExited();
}

int Supervisor::Run() {
  std::vector<pollfd> pfds;
  std::vector<std::pair<int*, LinePrefixer*>> streams;  // parallel to pfds[1..]
  // Ranks that died while later ones were being spawned left a pending SIGCHLD, which the signalfd
  // reports on the first poll; nothing is lost while SIGCHLD is blocked.
  for (;;) {
    const auto now = Clock::now();
    if (AliveCount() == 0 && !drain_until_) drain_until_ = now + kDrainLimit;
    pfds.assign(1, pollfd{sigfd_, POLLIN, 0});
    streams.clear();
    for (auto& r : ranks_) {
      for (auto [fd, p] : {std::pair{&r.out_fd, r.out.get()}, std::pair{&r.err_fd, r.err.get()}}) {
        if (*fd < 0) continue;
        pfds.push_back(pollfd{*fd, POLLIN, 0});
        streams.emplace_back(fd, p);
      }
    }
    if (AliveCount() == 0 && streams.empty()) break;

    int timeout_ms = -1;
    auto consider = [&](const std::optional<Clock::time_point>& at) {
      if (!at) return;
      auto ms = std::chrono::ceil<std::chrono::milliseconds>(*at - now).count();
      ms = std::max<int64_t>(ms, 0);
      if (timeout_ms < 0 || ms < timeout_ms) timeout_ms = static_cast<int>(ms);
    };
    consider(kill_at_);
    if (!stopping_) consider(timeout_at_);
    if (!stopping_) consider(survive_until_);
    consider(drain_until_);

    int n = ::poll(pfds.data(), pfds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) {
      Say(fmt::format("epx-run: poll failed: {}; killing all ranks", std::strerror(errno)));
      exit_code_ = exit_code_ != 0 ? exit_code_ : 1;
      break;
    }
    if (n > 0) {
      for (size_t i = 1; i < pfds.size(); ++i) {
        if ((pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        auto [fd, p] = streams[i - 1];
        if (*fd >= 0 && PumpOnce(*fd, *p, buf_.data(), buf_.size()) == Pump::kEnd) CloseStream(*fd, p);
      }
      // Signals after output, so a dying rank's buffered lines precede the launcher's verdict.
      if (pfds[0].revents & POLLIN) HandleSignals();
    }

    const auto t = Clock::now();
    if (timeout_at_ && !stopping_ && t >= *timeout_at_ && AliveCount() > 0) {
      exit_code_ = 124;
      Stop(SIGTERM, fmt::format("epx-run: timeout after {:.3g} s: terminating {} rank{} still running ({})",
                                opts_.timeout->count() / 1000.0, AliveCount(), AliveCount() == 1 ? "" : "s",
                                AliveList()));
    }
    if (survive_until_ && !stopping_ && t >= *survive_until_ && AliveCount() > 0) {
      Stop(SIGTERM,
           fmt::format("epx-run: --grace of {:.3g} s after rank {} failed is over: terminating {} rank{} "
                       "still running ({})",
                       opts_.failure_grace.count() / 1000.0, first_failed_rank_, AliveCount(),
                       AliveCount() == 1 ? "" : "s", AliveList()));
    }
    if (kill_at_ && t >= *kill_at_) {
      kill_at_.reset();
      if (AliveCount() > 0) {
        Say(fmt::format("epx-run: grace period over: killing {} rank{} ({})", AliveCount(),
                        AliveCount() == 1 ? "" : "s", AliveList()));
        SignalAll(SIGKILL);
      }
    }
    if (drain_until_ && t >= *drain_until_) break;
  }
  KillAll();
  for (auto& r : ranks_) {
    CloseStream(r.out_fd, r.out.get());
    CloseStream(r.err_fd, r.err.get());
  }
  // The cause last, after every rank's own words: what a reader of a long log looks for first.
  if (!first_failure_.empty())
    Say(fmt::format("epx-run: exit code {}: {} (the first rank to fail){}", exit_code_, first_failure_,
                    restarts_.empty() ? "" : "; before it, " + RestartSummary()));
  else if (!restarts_.empty())
    Say(fmt::format("epx-run: exit code {}: {}{}", exit_code_,
                    exit_code_ == 0 ? "every rank's last process exited 0, after " : "", RestartSummary()));
  return exit_code_;
}

void Supervisor::KillAll() {
  SignalAll(SIGKILL);
  for (auto& r : ranks_) {
    if (!r.alive) continue;
    ::waitpid(r.pid, nullptr, 0);
    TellWatchdog(-r.pid);
    r.alive = false;
  }
}

}  // namespace epx::run
