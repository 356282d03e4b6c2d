// tests/launcher/respawn_test.cc: epx-run --respawn (tools/epx-run/process_group.h "Restarts"): a rank
// that fails is started again as the same rank, the same way, with EPX_RESTART_COUNT=k; that failure is
// not the job's; restarts are bounded per rank; --grace applies only to the failure that is the job's;
// and no process of any incarnation outlives the launcher.
//
// The ranks are /bin/sh scripts: each prints "pid $$" first (Launch::Pids() collects them) and decides
// by EPX_RANK and EPX_RESTART_COUNT what to do.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <string>
#include <vector>

#include "tests/launcher/launch.h"

namespace epx {
namespace {

using namespace std::chrono_literals;
using test::LastLine;
using test::Launch;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;

std::vector<std::string> Script(std::vector<std::string> launcher_args, const std::string& script) {
  launcher_args.insert(launcher_args.end(), {"--", "/bin/sh", "-c", "echo pid $$; " + script});
  return launcher_args;
}

// "[rR] key value" lines of stdout: rank -> values in order (one per incarnation that printed it).
std::map<int, std::vector<std::string>> Values(const std::string& out, const std::string& key) {
  std::map<int, std::vector<std::string>> m;
  const std::regex re(R"(^\[r(\d+)\] )" + key + R"( (.*)$)");
  for (const auto& l : Launch::Lines(out)) {
    std::smatch s;
    if (std::regex_match(l, s, re)) m[std::stoi(s[1])].push_back(s[2]);
  }
  return m;
}

TEST(LauncherRespawn, AKilledRankIsRestartedTheSameWayAndTheJobSucceeds) {
  // Rank 1's first process kills itself; its restart and the other ranks finish normally.
  const std::string script =
      "echo env $EPX_RANK $EPX_WORLD_SIZE $EPX_LOCAL_RANK $EPX_JOB_ID $EPX_MASTER_PORT $EPX_CPUS "
      "$EPX_NUMA_NODE; "
      "echo restart $EPX_RESTART_COUNT; "
      "if [ $EPX_RANK = 1 ] && [ $EPX_RESTART_COUNT = 0 ]; then sleep 0.2; kill -9 $$; fi; sleep 1";
  Launch l(Script({"-n", "3", "--respawn", "1"}, script));
  EXPECT_EQ(l.Wait(15s), 0) << l.err();
  std::smatch m;
  const std::string err = l.err();
  ASSERT_TRUE(
      std::regex_search(err, m,
                        std::regex(R"(epx-run: rank 1 \(pid (\d+)\) killed by SIGKILL \(signal 9, Killed\); )"
                                   R"(restarting it \(1 of 1\) as pid ([0-9]+))")))
      << err;
  const auto pids = Values(l.out(), "pid");
  ASSERT_EQ(pids.at(1), (std::vector<std::string>{m[1], m[2]})) << l.out();
  EXPECT_EQ(pids.at(0).size(), 1u);
  EXPECT_EQ(pids.at(2).size(), 1u);
  // Same rank, placement and pinning; only the restart count differs.
  const auto env = Values(l.out(), "env"), restart = Values(l.out(), "restart");
  ASSERT_EQ(env.at(1).size(), 2u);
  EXPECT_EQ(env.at(1)[0], env.at(1)[1]);
  EXPECT_EQ(restart.at(1), (std::vector<std::string>{"0", "1"}));
  EXPECT_EQ(restart.at(0), (std::vector<std::string>{"0"}));
  // Not the job's failure: nobody was stopped, no --grace, and the last line names the restart.
  EXPECT_THAT(err, Not(HasSubstr("terminating")));
  EXPECT_THAT(err, Not(HasSubstr("first rank to fail")));
  EXPECT_EQ(LastLine(err),
            fmt::format("epx-run: exit code 0: every rank's last process exited 0, after 1 restart "
                        "(--respawn 1): rank 1 (pid {} killed by SIGKILL (signal 9, Killed)) as pid {}",
                        m[1].str(), m[2].str()));
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherRespawn, RestartsAreBoundedPerRankAndTheLastFailureIsTheJobs) {
  Launch l(
      Script({"-n", "3", "--respawn", "2"}, "if [ $EPX_RANK = 1 ]; then sleep 0.1; exit 5; fi; sleep 30"));
  EXPECT_EQ(l.Wait(15s), 5) << l.err();
  EXPECT_LT(l.seconds(), 5.0) << l.err();
  EXPECT_THAT(
      l.err(),
      ContainsRegex(R"(rank 1 \(pid [0-9]+\) exited with code 5; restarting it \(1 of 2\) as pid [0-9]+)"));
  EXPECT_THAT(
      l.err(),
      ContainsRegex(R"(rank 1 \(pid [0-9]+\) exited with code 5; restarting it \(2 of 2\) as pid [0-9]+)"));
  EXPECT_THAT(l.err(), Not(HasSubstr("(3 of 2)")));
  EXPECT_THAT(l.err(), HasSubstr("terminating 2 other ranks (0,2)"));
  EXPECT_THAT(
      LastLine(l.err()),
      MatchesRegex(
          R"(epx-run: exit code 5: rank 1 \(pid [0-9]+\) exited with code 5 \(the first rank to )"
          R"(fail\); before it, 2 restarts \(--respawn 2\): rank 1 \(pid [0-9]+ exited with code 5\) )"
          R"(as pid [0-9]+, rank 1 \(pid [0-9]+ exited with code 5\) as pid [0-9]+)"));
  EXPECT_EQ(Values(l.out(), "pid").at(1).size(), 3u);  // the first process and two restarts
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherRespawn, GraceAppliesOnlyToTheFailureThatIsTheJobs) {
  // Rank 1 is killed (restarted at once, the others run on), then its restart exits 3 with no restart left:
  // that is the job's failure, and the others get the --grace to end on their own (they do, after 1.5 s).
  const std::string script =
      "case $EPX_RANK.$EPX_RESTART_COUNT in 1.0) sleep 0.2; kill -9 $$;; 1.1) sleep 0.3; exit 3;; esac; "
      "sleep 1.5";
  Launch l(Script({"-n", "3", "--respawn", "1", "--grace", "10"}, script));
  EXPECT_EQ(l.Wait(20s), 3) << l.err();
  EXPECT_LT(l.seconds(), 6.0) << "the survivors ended on their own within the grace";
  const std::string err = l.err();
  const size_t restart = err.find("restarting it (1 of 1)");
  const size_t grace = err.find("letting 2 other ranks (0,2) run up to 10 s to report the failure (--grace)");
  ASSERT_NE(restart, std::string::npos) << err;
  ASSERT_NE(grace, std::string::npos) << err;
  EXPECT_LT(restart, grace) << err;
  EXPECT_EQ(err.find("--grace"), err.rfind("--grace")) << "--grace named before the job's failure:\n" << err;
  EXPECT_THAT(LastLine(err),
              ContainsRegex(R"(exit code 3: rank 1 \(pid [0-9]+\) exited with code 3 \(the first rank )"
                            R"(to fail\); before it, 1 restart)"));
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherRespawn, NoOrphansOfARestartedRankWhenTheLauncherIsKilled) {
  // The restarted rank forks a sleeper (outside PDEATHSIG's reach): only the watchdog, told of the new
  // process group, can take it down when the launcher is SIGKILLed.
  const std::string script =
      "if [ $EPX_RANK = 1 ] && [ $EPX_RESTART_COUNT = 0 ]; then kill -9 $$; fi; "
      "if [ $EPX_RANK = 1 ]; then sleep 60 & echo sleeper $!; fi; sleep 60";
  Launch l(Script({"-n", "2", "--respawn", "1"}, script));
  ASSERT_TRUE(l.PumpUntil([&] { return l.out().find("sleeper ") != std::string::npos; }, 15s))
      << l.out() << l.err();
  EXPECT_EQ(l.Pids().size(), 4u) << l.out();  // rank 0, rank 1 twice, the sleeper
  l.Signal(SIGKILL);
  EXPECT_EQ(l.Wait(5s), 128 + SIGKILL);
  EXPECT_TRUE(l.AllGone(3s)) << "orphans left behind:\n" << l.out();
}

TEST(LauncherRespawn, FirstProcessesSeeRestartCountZeroAndBadValuesAreRejected) {
  Launch ok(Script({"-n", "2"}, "echo restart $EPX_RESTART_COUNT"));
  EXPECT_EQ(ok.Wait(), 0) << ok.err();
  EXPECT_EQ(Values(ok.out(), "restart"), (std::map<int, std::vector<std::string>>{{0, {"0"}}, {1, {"0"}}}));
  for (const char* v : {"-1", "x", "1001"}) {
    Launch l({"-n", "2", "--respawn", v, "--", "true"});
    EXPECT_EQ(l.Wait(), 2) << v << ": " << l.err();
    EXPECT_THAT(l.err(), HasSubstr("--respawn")) << v;
  }
}

}  // namespace
}  // namespace epx
