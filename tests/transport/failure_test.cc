// Failure suite for bootstrap and heap: missing or mismatched ranks give errors that name them within
// the deadline, and no shared-memory object survives a normal exit, a kill -9 or a Ctrl-C.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>

#include <gtest/gtest.h>

#include "tests/support/subprocess.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace epx::test;  // NOLINT: test helpers
using Clock = std::chrono::steady_clock;

Env RankEnv(int rank, int world, int port, const std::string& job) {
  return {{"EPX_RANK", std::to_string(rank)}, {"EPX_WORLD_SIZE", std::to_string(world)},
          {"EPX_LOCAL_RANK", std::to_string(rank)}, {"EPX_LOCAL_SIZE", std::to_string(world)},
          {"EPX_MASTER_ADDR", "127.0.0.1"}, {"EPX_MASTER_PORT", std::to_string(port)},
          {"EPX_JOB_ID", job}, {"EPX_HEAP_SIZE", "4M"}};
}

std::set<std::string> DevShm() {
  std::set<std::string> s;
  for (auto& e : std::filesystem::directory_iterator("/dev/shm")) s.insert(e.path().filename());
  return s;
}

bool Alive(pid_t pid) { return kill(pid, 0) == 0; }

std::vector<pid_t> ReadyPids(const std::string& out) {
  std::vector<pid_t> pids;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    auto at = line.find("ready rank ");
    auto pp = line.find(" pid ");
    if (at != std::string::npos && pp != std::string::npos) pids.push_back(std::stoi(line.substr(pp + 5)));
  }
  return pids;
}

TEST(BootstrapFailure, MissingRankIsNamedWithinTheDeadline) {
  const int port = FreePort();
  const std::string job = "miss-" + std::to_string(getpid());
  std::vector<Proc> ps;
  auto t0 = Clock::now();
  for (int r = 0; r < 3; ++r) {  // rank 3 of 4 never starts
    Env e = RankEnv(r, 4, port, job);
    e["EPX_BOOTSTRAP_TIMEOUT"] = "1500ms";
    e["EPX_TEST_MODE"] = "setup-only";
    ps.push_back(Spawn({EPX_MR_BINARY}, e));
  }
  for (auto& p : ps) {
    int st = WaitExit(p, 10);
    ASSERT_NE(st, -1) << "rank hung past 10 s:\n" << p.Output();
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) != 0) << p.Output();
    EXPECT_NE(p.Output().find("ranks 3 did not arrive within 1500 ms"), std::string::npos) << p.Output();
  }
  auto secs = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_LT(secs, 6.0);
}

TEST(BootstrapFailure, WorldSizeMismatchIsExplained) {
  const int port = FreePort();
  const std::string job = "mismatch-" + std::to_string(getpid());
  Env e0 = RankEnv(0, 2, port, job), e1 = RankEnv(1, 3, port, job);
  for (Env* e : {&e0, &e1}) (*e)["EPX_BOOTSTRAP_TIMEOUT"] = "3s", (*e)["EPX_TEST_MODE"] = "setup-only";
  e1["EPX_LOCAL_SIZE"] = "3";
  Proc p0 = Spawn({EPX_MR_BINARY}, e0), p1 = Spawn({EPX_MR_BINARY}, e1);
  int s0 = WaitExit(p0, 10), s1 = WaitExit(p1, 10);
  ASSERT_NE(s0, -1);
  ASSERT_NE(s1, -1);
  EXPECT_NE(s0, 0);
  EXPECT_NE(s1, 0);
  EXPECT_NE(p1.Output().find("world size 3 (root has 2)"), std::string::npos) << p1.Output();
}

TEST(BootstrapFailure, UnreachableRootTimesOut) {
  Env e = RankEnv(1, 2, FreePort(), "noroot");
  e["EPX_BOOTSTRAP_TIMEOUT"] = "1s";
  e["EPX_TEST_MODE"] = "setup-only";
  Proc p = Spawn({EPX_MR_BINARY}, e);
  int st = WaitExit(p, 8);
  ASSERT_NE(st, -1);
  EXPECT_NE(p.Output().find("rank 0 (root) not reachable"), std::string::npos) << p.Output();
}

TEST(HeapCleanup, NothingLeftAfterNormalExit) {
  auto before = DevShm();
  Proc p = Spawn({EPX_RUN_BINARY, "-n", "4", "--", EPX_MR_BINARY}, {{"EPX_TEST_MODE", "setup-only"},
                                                                    {"EPX_HEAP_SIZE", "4M"}});
  int st = WaitExit(p, 60);
  ASSERT_TRUE(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << p.Output();
  EXPECT_EQ(DevShm(), before);
}

TEST(HeapCleanup, NothingLeftAfterKill9OfOneRank) {
  auto before = DevShm();
  const int port = FreePort();
  const std::string job = "kill9-" + std::to_string(getpid());
  std::vector<Proc> ps;
  for (int r = 0; r < 4; ++r) {
    Env e = RankEnv(r, 4, port, job);
    e["EPX_TEST_MODE"] = "hold";
    ps.push_back(Spawn({EPX_MR_BINARY}, e));
  }
  for (auto& p : ps) ASSERT_TRUE(WaitForText(p, "ready rank", 1, 30)) << p.Output();
  // The heaps are memfds: they exist only as open fds/mappings of the rank processes.
  EXPECT_EQ(DevShm(), before);
  kill(ps[2].pid, SIGKILL);
  EXPECT_NE(WaitExit(ps[2], 5), -1);
  for (int r : {0, 1, 3}) {
    kill(ps[r].pid, SIGKILL);
    WaitExit(ps[r], 5);
  }
  EXPECT_EQ(DevShm(), before);
}

TEST(HeapCleanup, CtrlCOfTheLauncherLeavesNothing) {
  auto before = DevShm();
  Proc p = Spawn({EPX_RUN_BINARY, "-n", "4", "--", EPX_MR_BINARY}, {{"EPX_TEST_MODE", "hold"}, {"EPX_HEAP_SIZE", "4M"}});
  ASSERT_TRUE(WaitForText(p, "ready rank", 4, 60)) << p.Output();
  auto pids = ReadyPids(p.Output());
  ASSERT_EQ(pids.size(), 4u) << p.Output();
  auto t0 = Clock::now();
  kill(p.pid, SIGINT);
  int st = WaitExit(p, 10);
  ASSERT_NE(st, -1) << "launcher did not stop after SIGINT:\n" << p.Output();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 5.0);
  EXPECT_NE(st, 0);
  for (pid_t r : pids) EXPECT_FALSE(Alive(r)) << "rank pid " << r << " survived";
  EXPECT_EQ(DevShm(), before);
}

}  // namespace
