// tests/launcher/launch.h: epx-run driven as a subprocess for the launcher tests (launcher_test.cc,
// respawn_test.cc): its stdout and stderr captured, bounded waits, the pids the probe reported, and a
// check that every one of them is gone afterwards (the launcher must never leave orphans; PidGone and
// AllPidsGone are tests/support/subprocess.h's). Not subprocess.h's Spawn: these tests read stdout and
// stderr apart and while epx-run still runs (pids, signals at a given moment), not one file at the end.
//
// EPX_RUN_BIN and EPX_PROBE_BIN are injected by CMake.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <initializer_list>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/subprocess.h"

extern char** environ;

namespace epx::test {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

inline int ExitCode(int status) {
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// One epx-run process with its stdout and stderr captured.
class Launch {
 public:
  explicit Launch(const std::vector<std::string>& args) {
    int out[2], err[2];
    EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(err, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    std::vector<std::string> full = {EPX_RUN_BIN};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    start_ = Clock::now();
    EXPECT_EQ(posix_spawn(&pid_, EPX_RUN_BIN, &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    ::close(out[1]);
    ::close(err[1]);
    fds_[0] = out[0];
    fds_[1] = err[0];
  }
  ~Launch() {
    if (!exited_) ::kill(pid_, SIGKILL), ::waitpid(pid_, nullptr, 0);
    for (int fd : fds_)
      if (fd >= 0) ::close(fd);
    for (int p : Pids())  // never leak into the next test, whatever this one asserted
      if (!PidGone(p)) ::kill(p, SIGKILL);
  }

  // Reads output until pred() holds, the launcher exits and its output ends, or `limit` passes.
  bool PumpUntil(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
    const auto deadline = Clock::now() + limit;
    while (!pred()) {
      if (exited_ && fds_[0] < 0 && fds_[1] < 0) return false;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p[2];
      int n = 0;
      for (int i = 0; i < 2; ++i)
        if (fds_[i] >= 0) p[n++] = pollfd{fds_[i], POLLIN, 0};
      ::poll(p, n, static_cast<int>(std::min<long>(left, 20)));
      for (int i = 0; i < n; ++i) {
        if (p[i].revents == 0) continue;
        char buf[65536];
        ssize_t r = ::read(p[i].fd, buf, sizeof(buf));
        int which = p[i].fd == fds_[0] ? 0 : 1;
        if (r > 0) (which == 0 ? out_ : err_).append(buf, static_cast<size_t>(r));
        if (r == 0) ::close(fds_[which]), fds_[which] = -1;
      }
      int status = 0;
      if (!exited_ && ::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        code_ = ExitCode(status);
        elapsed_ = Clock::now() - start_;
      }
    }
    return true;
  }
  // Exit code, or -1 if the launcher is still running after `limit`.
  int Wait(std::chrono::milliseconds limit = 30s) {
    PumpUntil([&] { return exited_ && fds_[0] < 0 && fds_[1] < 0; }, limit);
    return exited_ ? code_ : -1;
  }
  // Waits until the probe reported `n` "pid"/"sleeper" lines.
  bool WaitForPids(size_t n, std::chrono::milliseconds limit = 10s) {
    return PumpUntil([&] { return Pids().size() >= n; }, limit);
  }
  void Signal(int sig) { ::kill(pid_, sig); }

  std::vector<int> Pids() const {
    std::vector<int> v;
    static const std::regex re(R"(^\[r\d+\] (pid|sleeper) (\d+)$)");
    for (const auto& l : Lines(out_)) {
      std::smatch m;
      if (std::regex_match(l, m, re)) v.push_back(std::stoi(m[2]));
    }
    return v;
  }
  // True once every reported process is gone (waits up to `limit`).
  bool AllGone(std::chrono::milliseconds limit = 3s) const { return AllPidsGone(Pids(), limit); }
  static std::vector<std::string> Lines(const std::string& s) {
    std::vector<std::string> v;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);) v.push_back(l);
    return v;
  }

  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }
  double seconds() const { return std::chrono::duration<double>(elapsed_).count(); }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int fds_[2] = {-1, -1};
  std::string out_, err_;
  bool exited_ = false;
  int code_ = -1;
  Clock::time_point start_;
  Clock::duration elapsed_{};
};

inline std::vector<std::string> Probe(std::initializer_list<std::string> probe_args,
                                      std::initializer_list<std::string> launcher_args) {
  std::vector<std::string> v(launcher_args);
  v.push_back("--");
  v.push_back(EPX_PROBE_BIN);
  v.insert(v.end(), probe_args);
  return v;
}

// The last non-empty line of `s`.
inline std::string LastLine(const std::string& s) {
  auto lines = Launch::Lines(s);
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines.empty() ? std::string() : lines.back();
}

}  // namespace epx::test
