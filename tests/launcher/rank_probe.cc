// tests/launcher/rank_probe.cc: a rank program for the launcher tests. Every mode first prints
// "pid <pid>" (flushed) so the test knows which processes must be gone afterwards.
//
//   exit N            exit with code N
//   abort [R]         abort() (only rank R if given; the others sleep long)
//   segv [R]          die of SIGSEGV (only rank R if given; the others sleep long)
//   sleep S           sleep S seconds, then exit 0
//   lines K           K lines "out <rank> <i>" on stdout and "err <rank> <i>" on stderr, through stdio
//                     buffers (so writes split lines at arbitrary bytes), then "end <rank>" on stdout
//                     without a newline
//   env               EPX_* variables, then "affinity <cpus>" and "mempolicy <preferred N|other|default>"
//   rank-exit R N     rank R exits with N after 200 ms; the others sleep long
//   spawn-sleeper     forks a child that sleeps long ("sleeper <pid>"), then sleeps long itself
//   termproof R N      like rank-exit, but the other ranks ignore SIGTERM, SIGINT and SIGHUP (R = -1:
//                     no rank exits), so only the launcher's SIGKILL ends them
#include <numaif.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

namespace {

constexpr unsigned kLong = 120;  // "sleeps long": far beyond every test's deadline

int Rank() {
  const char* r = std::getenv("EPX_RANK");
  return r != nullptr ? std::atoi(r) : -1;
}

void SleepSeconds(double s) {
  timespec ts{static_cast<time_t>(s), static_cast<long>((s - static_cast<time_t>(s)) * 1e9)};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

// Dies of `sig` even under sanitizers, which install their own SIGSEGV handler and would turn the
// crash into exit(1).
[[noreturn]] void DieOf(int sig) {
  std::fflush(nullptr);
  if (sig == SIGABRT) std::abort();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
  std::_Exit(99);
}

// Rendezvous of the ranks of one job through files in /tmp (not /dev/shm: the tests check that stays
// clean): every rank marks itself started after printing its pid; AwaitAllStarted (the rank that is about
// to fail) waits up to 10 s until all have, then removes the marks. Without it a loaded machine could run
// the failure before a slow rank printed its pid, and the launcher would stop that rank unseen (a flaky
// Pids().size() check).
std::string StartDir() {
  const char* j = std::getenv("EPX_JOB_ID");
  return std::string("/tmp/epx-probe-") + (j != nullptr ? j : "nojob");
}
void MarkStarted(int rank) {
  const std::string d = StartDir();
  mkdir(d.c_str(), 0700);  // EEXIST from the other ranks is fine
  if (FILE* f = std::fopen((d + "/" + std::to_string(rank)).c_str(), "w")) std::fclose(f);
}
void AwaitAllStarted() {
  const char* w = std::getenv("EPX_WORLD_SIZE");
  const int world = w != nullptr ? std::atoi(w) : 1;
  const std::string d = StartDir();
  for (int i = 0; i < 1000; ++i) {
    int n = 0;
    for (int r = 0; r < world; ++r) n += access((d + "/" + std::to_string(r)).c_str(), F_OK) == 0;
    if (n == world) break;
    SleepSeconds(0.01);
  }
  for (int r = 0; r < world; ++r) unlink((d + "/" + std::to_string(r)).c_str());
  rmdir(d.c_str());
}

int Usage() {
  std::fprintf(stderr,
               "usage: rank_probe exit N | abort [R] | segv [R] | sleep S | lines K | env |"
               " rank-exit R N | spawn-sleeper | termproof R N\n");
  return 2;
}

void PrintEnv() {
  std::vector<std::string> vars;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::strncmp(*e, "EPX_", 4) == 0) vars.emplace_back(*e);
  for (const auto& v : vars) std::printf("%s\n", v.c_str());
  cpu_set_t set;
  CPU_ZERO(&set);
  std::string cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus += (cpus.empty() ? "" : ",") + std::to_string(c);
  std::printf("affinity %s\n", cpus.c_str());
  int mode = -1;
  unsigned long mask[16] = {};
  if (get_mempolicy(&mode, mask, sizeof(mask) * 8, nullptr, 0) != 0) {
    std::printf("mempolicy error %s\n", std::strerror(errno));
  } else if (mode == MPOL_PREFERRED) {
    int node = -1;
    for (int i = 0; i < static_cast<int>(sizeof(mask) * 8) && node < 0; ++i)
      if (mask[i / 64] & (1UL << (i % 64))) node = i;
    std::printf("mempolicy preferred %d\n", node);
  } else {
    std::printf("mempolicy %s\n", mode == MPOL_DEFAULT ? "default" : "other");
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage();
  const std::string mode = argv[1];
  const int rank = Rank();
  std::printf("pid %d\n", static_cast<int>(getpid()));
  std::fflush(stdout);
  auto arg = [&](int i) { return i < argc ? std::atoi(argv[i]) : -1; };
  // Modes where one given rank fails while the others run on.
  const bool one_fails = ((mode == "abort" || mode == "segv") && argc == 3) ||
                         ((mode == "rank-exit" || mode == "termproof") && argc == 4 && arg(2) >= 0);
  if (one_fails) MarkStarted(rank);

  if (mode == "exit" && argc == 3) return arg(2);
  if (mode == "abort" || mode == "segv") {
    if (argc == 2 || arg(2) == rank) {
      if (one_fails) AwaitAllStarted();
      SleepSeconds(0.2);
      DieOf(mode == "abort" ? SIGABRT : SIGSEGV);
    }
    SleepSeconds(kLong);
    return 0;
  }
  if (mode == "sleep" && argc == 3) {
    SleepSeconds(std::atof(argv[2]));
    return 0;
  }
  if (mode == "lines" && argc == 3) {
    for (int i = 0; i < arg(2); ++i) {
      std::printf("out %d %d\n", rank, i);
      std::fprintf(stderr, "err %d %d\n", rank, i);
    }
    std::printf("end %d", rank);
    return 0;
  }
  if (mode == "env") {
    PrintEnv();
    return 0;
  }
  if (mode == "termproof" && argc == 4 && rank != arg(2)) {
    for (int sig : {SIGTERM, SIGINT, SIGHUP}) std::signal(sig, SIG_IGN);
    std::printf("ignoring SIGTERM\n");
    std::fflush(stdout);
  }
  if ((mode == "rank-exit" || mode == "termproof") && argc == 4) {
    if (rank == arg(2)) {
      AwaitAllStarted();
      // termproof: long enough for the others to ignore SIGTERM first even on a loaded machine (with
      // 0.2 s, a rank not yet past its signal() calls died of the SIGTERM: a flaky grace-period test).
      SleepSeconds(mode == "termproof" ? 1.0 : 0.2);
      return arg(3);
    }
    SleepSeconds(kLong);
    return 0;
  }
  if (mode == "spawn-sleeper") {
    pid_t child = fork();
    if (child == 0) {
      SleepSeconds(kLong);
      _exit(0);
    }
    std::printf("sleeper %d\n", static_cast<int>(child));
    std::fflush(stdout);
    SleepSeconds(kLong);
    return 0;
  }
  return Usage();
}
