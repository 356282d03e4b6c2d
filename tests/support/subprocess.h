// tests/support/subprocess.h: helpers for failure suites that start rank processes themselves
// (fork/exec with an environment, output captured, bounded waits, checks that no process is left).
// Header-only, test code only.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace epx::test {

using Env = std::map<std::string, std::string>;
using SteadyClock = std::chrono::steady_clock;

// A free TCP port on 127.0.0.1 (bind to 0, read it back). Racy by nature, fine for tests.
inline int FreePort() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t l = sizeof(a);
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
  close(s);
  return ntohs(a.sin_port);
}

// A started process whose stdout+stderr go to an unlinked temp file (nothing left in /tmp).
class Proc {
 public:
  Proc() = default;
  Proc(Proc&& o) noexcept : pid(std::exchange(o.pid, -1)), fd_(std::exchange(o.fd_, -1)) {}
  Proc& operator=(Proc&& o) noexcept {
    std::swap(pid, o.pid);
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Proc() {
    if (fd_ >= 0) close(fd_);
  }
  std::string Output() const {
    std::string out;
    char buf[65536];
    for (off_t off = 0;;) {
      ssize_t n = pread(fd_, buf, sizeof(buf), off);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
      off += n;
    }
    return out;
  }

  pid_t pid = -1;

 private:
  friend Proc Spawn(const std::vector<std::string>& argv, const Env& env);
  int fd_ = -1;
};

// fork + execv(argv[0]) with `env` added to this process's environment.
inline Proc Spawn(const std::vector<std::string>& argv, const Env& env) {
  Proc p;
  char tmpl[] = "/tmp/epx-test-out-XXXXXX";
  p.fd_ = mkstemp(tmpl);
  unlink(tmpl);
  p.pid = fork();
  if (p.pid == 0) {
    dup2(p.fd_, 1);
    dup2(p.fd_, 2);
    for (auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    execv(a[0], a.data());
    _exit(127);
  }
  return p;
}

// Wait status, or -1 after `secs` (the process is then SIGKILLed and reaped).
inline int WaitExit(const Proc& p, double secs) {
  const auto end = SteadyClock::now() + std::chrono::milliseconds(static_cast<int>(secs * 1000));
  while (SteadyClock::now() < end) {
    int st = 0;
    if (waitpid(p.pid, &st, WNOHANG) == p.pid) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(p.pid, SIGKILL);
  waitpid(p.pid, nullptr, 0);
  return -1;
}

// A process run to its end: wait status (-1: still running at the limit, then killed), seconds from its
// start, and everything it wrote.
struct Finished {
  int status = -1;
  double seconds = 0;
  std::string out;
};

// Spawn, then WaitExit(secs): for a job whose output is judged once it is over.
inline Finished RunToEnd(const std::vector<std::string>& argv, const Env& env, double secs) {
  const auto t0 = SteadyClock::now();
  Proc p = Spawn(argv, env);
  Finished f;
  f.status = WaitExit(p, secs);
  f.seconds = std::chrono::duration<double>(SteadyClock::now() - t0).count();
  f.out = p.Output();
  return f;
}

// Gone = no such process, or a zombie nobody reaped yet (orphans are reaped by init eventually, and a
// zombie holds nothing a later test could trip over).
inline bool PidGone(int pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) return true;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  // The state follows the last ')': the command name before it may contain spaces and parentheses.
  size_t paren = s.rfind(')');
  return paren == std::string::npos || paren + 2 >= s.size() || s[paren + 2] == 'Z' || s[paren + 2] == 'X';
}

// True once every pid is gone (PidGone), false if one is still there after `limit`: a launcher's children
// need a moment after it exited, but none may outlive it for long.
inline bool AllPidsGone(const std::vector<int>& pids, std::chrono::milliseconds limit) {
  const auto end = SteadyClock::now() + limit;
  for (;;) {
    bool all = true;
    for (int pid : pids) all = all && PidGone(pid);
    if (all) return true;
    if (SteadyClock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// True once `text` occurs `count` times in p's output, false after `secs`.
inline bool WaitForText(const Proc& p, const std::string& text, int count, double secs) {
  const auto end = SteadyClock::now() + std::chrono::milliseconds(static_cast<int>(secs * 1000));
  while (SteadyClock::now() < end) {
    const std::string o = p.Output();
    int n = 0;
    for (size_t pos = 0; (pos = o.find(text, pos)) != std::string::npos; ++pos) ++n;
    if (n >= count) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

}  // namespace epx::test
