// tests/launcher/launcher_test.cc: the pinning plan (pure, on synthetic and hand-built topologies)
// and the epx-run binary driven end to end with rank_probe: exit codes, failure propagation and
// timing, output prefixing, the environment contract, signals, orphans, multi-host arguments.
//
// EPX_RUN_BIN and EPX_PROBE_BIN are injected by CMake. Every run checks afterwards that each process
// the probe reported ("pid N", "sleeper N") is gone: the launcher must never leave orphans.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/launcher/launch.h"
#include "transport/host_topology.h"

extern char** environ;

namespace epx {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using test::ExitCode;
using test::LastLine;
using test::Launch;
using test::PidGone;
using test::Probe;
using ::testing::HasSubstr;

// ---------------------------------------------------------------------------------------------------
// PlanPinning

// n_nodes NUMA nodes of cores_per_node[i] single-PU cores, cpus numbered consecutively.
HostTopology MakeTopo(const std::vector<int>& cores_per_node, int pus_per_core = 1) {
  HostTopology t;
  int pu = 0;
  for (size_t n = 0; n < cores_per_node.size(); ++n) {
    TopoNumaNode node;
    node.os_index = static_cast<int>(n);
    for (int c = 0; c < cores_per_node[n]; ++c) {
      TopoCore core;
      core.numa_node = node.os_index;
      for (int p = 0; p < pus_per_core; ++p) core.pus.push_back(pu), node.cpus.push_back(pu++);
      node.cores.push_back(static_cast<int>(t.cores.size()));
      t.cores.push_back(core);
    }
    t.numa_nodes.push_back(node);
  }
  return t;
}

std::vector<int> NodesOf(const PinPlan& p) {
  std::vector<int> v;
  for (const auto& r : p.ranks) v.push_back(r.numa_node);
  return v;
}

TEST(LauncherPinPlan, SyntheticTwoPackagesDisjointWholeCores) {
  auto topo = HostTopology::FromSynthetic("pack:2 [numa] core:4 pu:2");
  ASSERT_TRUE(topo.ok()) << topo.status().ToString();
  ASSERT_EQ(topo->numa_nodes.size(), 2u);
  EXPECT_EQ(topo->NumCores(), 8);
  EXPECT_EQ(topo->NumPus(), 16);
  EXPECT_EQ(FormatCpuList(topo->numa_nodes[1].cpus), "8-15");

  PinPlan p = PlanPinning(*topo, 4);
  ASSERT_EQ(p.ranks.size(), 4u);
  EXPECT_FALSE(p.oversubscribed);
  EXPECT_EQ(p.OversubscriptionNote(), "");
  EXPECT_EQ(NodesOf(p), (std::vector<int>{0, 0, 1, 1}));
  // Two whole cores (both hyperthreads) per rank, disjoint, in order.
  EXPECT_EQ(FormatCpuList(p.ranks[0].cpus), "0-3");
  EXPECT_EQ(FormatCpuList(p.ranks[1].cpus), "4-7");
  EXPECT_EQ(FormatCpuList(p.ranks[2].cpus), "8-11");
  EXPECT_EQ(FormatCpuList(p.ranks[3].cpus), "12-15");
}

TEST(LauncherPinPlan, DisjointWhenCoresSuffice) {
  for (int ranks = 1; ranks <= 8; ++ranks) {
    PinPlan p = PlanPinning(MakeTopo({4, 4}), ranks);
    ASSERT_EQ(static_cast<int>(p.ranks.size()), ranks);
    EXPECT_FALSE(p.oversubscribed);
    std::set<int> seen;
    int prev_node = 0;
    for (const auto& r : p.ranks) {
      EXPECT_FALSE(r.cpus.empty());
      EXPECT_GE(r.numa_node, prev_node) << "NUMA blocks must be contiguous";
      prev_node = r.numa_node;
      for (int c : r.cpus) {
        EXPECT_TRUE(seen.insert(c).second) << "cpu " << c << " given twice with " << ranks << " ranks";
        EXPECT_EQ(c / 4, r.numa_node) << "cpu outside the rank's node";
      }
    }
  }
}

// What the buffers decide their waits' spinning from (BackoffPolicy::ForCpus): threads of the ranks on one
// host (boot id) against the cpus in the union of their masks.
RankCpus Cpus(const char* host, std::initializer_list<int> cpus, int threads) {
  RankCpus r;
  std::snprintf(r.host, sizeof(r.host), "%s", host);
  for (int c : cpus) r.mask[c / 64] |= uint64_t{1} << (c % 64);
  r.threads = threads;
  return r;
}

TEST(LauncherPinPlan, HostThreadsOutnumberCpus) {
  // 2 ranks pinned to a core each, one thread each (epx-run -n 2 on 2 cores): no sharing.
  std::vector<RankCpus> two{Cpus("a", {0}, 1), Cpus("a", {1}, 1)};
  EXPECT_FALSE(HostThreadsOutnumberCpus(two, 0));
  EXPECT_FALSE(HostThreadsOutnumberCpus(two, 1));
  // 4 ranks round-robin on 2 cores (epx-run -n 4 there): every rank shares.
  std::vector<RankCpus> four{Cpus("a", {0}, 1), Cpus("a", {1}, 1), Cpus("a", {0}, 1), Cpus("a", {1}, 1)};
  for (int r = 0; r < 4; ++r) EXPECT_TRUE(HostThreadsOutnumberCpus(four, r)) << r;
  // Unpinned ranks, 2 channel threads each on 2 cpus: 4 threads on 2 cpus.
  std::vector<RankCpus> threads{Cpus("a", {0, 1}, 2), Cpus("a", {0, 1}, 2)};
  EXPECT_TRUE(HostThreadsOutnumberCpus(threads, 0));
  threads[1].threads = 0;  // a rank whose affinity was unknown counts nothing
  EXPECT_FALSE(HostThreadsOutnumberCpus(threads, 0));
  // Two hosts (two guests) of 2 ranks on 2 cpus each, with the same cpu numbers: no sharing.
  std::vector<RankCpus> hosts{Cpus("a", {0}, 1), Cpus("a", {1}, 1), Cpus("b", {0}, 1), Cpus("b", {1}, 1)};
  for (int r = 0; r < 4; ++r) EXPECT_FALSE(HostThreadsOutnumberCpus(hosts, r)) << r;
  // High cpu numbers count (mask words past the first).
  std::vector<RankCpus> high{Cpus("a", {100}, 1), Cpus("a", {1000}, 1), Cpus("a", {1000}, 1)};
  EXPECT_TRUE(HostThreadsOutnumberCpus(high, 0));
  // No boot id: every rank is its own host.
  std::vector<RankCpus> anon{Cpus("", {0}, 1), Cpus("", {0}, 1)};
  EXPECT_FALSE(HostThreadsOutnumberCpus(anon, 0));
  // This process: a host id and at least one cpu.
  const RankCpus me = ThisRankCpus(1);
  EXPECT_NE(me.host[0], '\0');
  EXPECT_EQ(me.threads, 1);
  std::vector<RankCpus> self{me, me, me};
  ASSERT_TRUE(CurrentAffinity().ok());
  EXPECT_EQ(HostThreadsOutnumberCpus(self, 0), CurrentAffinity()->size() < 3u);
}

TEST(LauncherPinPlan, OversubscribedSharesRoundRobinWithinNode) {
  PinPlan p = PlanPinning(MakeTopo({4, 4}), 16);
  ASSERT_EQ(p.ranks.size(), 16u);
  EXPECT_TRUE(p.oversubscribed);
  EXPECT_EQ(p.OversubscriptionNote(), "epx-run: 16 ranks on 8 cores: sharing cores round-robin");
  std::map<int, int> load;
  for (size_t i = 0; i < p.ranks.size(); ++i) {
    ASSERT_EQ(p.ranks[i].cpus.size(), 1u);
    EXPECT_EQ(p.ranks[i].numa_node, i < 8 ? 0 : 1);
    ++load[p.ranks[i].cpus[0]];
  }
  EXPECT_EQ(p.ranks[0].cpus[0], 0);
  EXPECT_EQ(p.ranks[1].cpus[0], 1);
  EXPECT_EQ(p.ranks[4].cpus[0], 0);  // local block index 4 wraps to the node's first core
  for (auto [cpu, n] : load) EXPECT_EQ(n, 2) << "cpu " << cpu;

  PinPlan small = PlanPinning(MakeTopo({2}), 8);
  EXPECT_EQ(small.OversubscriptionNote(), "epx-run: 8 ranks on 2 cores: sharing cores round-robin");
  for (size_t i = 0; i < small.ranks.size(); ++i)
    EXPECT_EQ(small.ranks[i].cpus, std::vector<int>{int(i % 2)});
}

TEST(LauncherPinPlan, UnevenNodesGetProportionalBlocksAndMemoryOnlyNodesNone) {
  HostTopology t = MakeTopo({2, 6});
  TopoNumaNode hbm;  // memory-only node (HBM/CXL): never a rank's home
  hbm.os_index = 7;
  t.numa_nodes.push_back(hbm);
  PinPlan p = PlanPinning(t, 4);
  EXPECT_EQ(NodesOf(p), (std::vector<int>{0, 1, 1, 1}));
  EXPECT_EQ(FormatCpuList(p.ranks[0].cpus), "0-1");
  EXPECT_EQ(FormatCpuList(p.ranks[1].cpus), "2-3");
  EXPECT_EQ(FormatCpuList(p.ranks[3].cpus), "6-7");
}

TEST(LauncherPinPlan, EmptyCases) {
  EXPECT_TRUE(PlanPinning(MakeTopo({4}), 0).ranks.empty());
  EXPECT_TRUE(PlanPinning(HostTopology{}, 3).ranks.empty());
}

TEST(LauncherPinPlan, ThisHostAndCpuLists) {
  auto topo = HostTopology::Discover();
  ASSERT_TRUE(topo.ok()) << topo.status().ToString();
  EXPECT_GE(topo->NumCores(), 1);
  EXPECT_GE(topo->NumPus(), topo->NumCores());
  PinPlan p = PlanPinning(*topo, 1);
  ASSERT_EQ(p.ranks.size(), 1u);
  auto mine = CurrentAffinity();
  ASSERT_TRUE(mine.ok());
  for (int c : p.ranks[0].cpus) EXPECT_THAT(*mine, ::testing::Contains(c));
  EXPECT_THAT(topo->ToString(), HasSubstr("NUMA node"));

  EXPECT_EQ(FormatCpuList({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(FormatCpuList({0, 1, 2}, /*ranges=*/false), "0,1,2");
  auto parsed = ParseCpuList("10-11,0-3,8");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, (std::vector<int>{0, 1, 2, 3, 8, 10, 11}));
  EXPECT_FALSE(ParseCpuList("3-1").ok());
  EXPECT_FALSE(ParseCpuList("x").ok());
  // Found by tests/fuzz/cpu_list_fuzz: a huge range allocated 4 bytes per cpu (8 GiB for this one, and
  // the loop counter overflowed at INT_MAX); overlapping ranges cost their sum.
  EXPECT_FALSE(ParseCpuList("0-2147483647").ok());
  EXPECT_EQ(ParseCpuList("0-1048575")->size(), 1u << 20);
  EXPECT_EQ(*ParseCpuList("4-7,0-5,6"), (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));

  EXPECT_EQ(DeviceNumaNode("no-such-device0"), -1);
  EXPECT_EQ(DeviceNumaNode("../../etc"), -1);
  EXPECT_GE(DeviceNumaNode("lo"), -1);  // loopback has no device: -1, but must not fail
}

// ---------------------------------------------------------------------------------------------------
// epx-run end to end

// Per rank: KEY -> value from the env probe ("EPX_X=v", "affinity v", "mempolicy v").
std::map<int, std::map<std::string, std::string>> ParseEnv(const std::string& out) {
  std::map<int, std::map<std::string, std::string>> m;
  static const std::regex re(R"(^\[r(\d+)\] ([A-Z_a-z]+)[= ](.*)$)");
  for (const auto& l : Launch::Lines(out)) {
    std::smatch s;
    if (std::regex_match(l, s, re)) m[std::stoi(s[1])][s[2]] = s[3];
  }
  return m;
}

TEST(LauncherCli, BadArgumentsAreRejectedClearly) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"-n", "0", "--", "true"}, "at least 1 rank"},
      {{"-n", "6", "--nodes", "4", "--", "true"}, "6 ranks do not split evenly over --nodes 4"},
      {{"-n", "4", "--nodes", "3", "--nnodes", "2", "--master", "h:1", "--", "true"}, "--nnodes 2"},
      {{"-n", "2"}, "PROGRAM"},
      {{"-n", "4", "--nnodes", "2", "--", "true"}, "--master"},
      {{"-n", "4", "--nnodes", "2", "--node-rank", "2", "--master", "h:1", "--", "true"}, "--node-rank"},
      {{"-n", "4", "--nnodes", "2", "--node-rank", "1", "--master", "nohostport", "--", "true"}, "HOST:PORT"},
      {{"-n", "x", "--", "true"}, "-n"},
  };
  for (const auto& c : cases) {
    Launch l(c.args);
    EXPECT_EQ(l.Wait(), 2) << l.err();
    EXPECT_THAT(l.err(), HasSubstr(c.message));
  }
}

TEST(LauncherCli, PrintConfigShowsTunablesAndPlan) {
  Launch l({"-n", "4", "--nodes", "2", "--print-config"});
  EXPECT_EQ(l.Wait(), 0) << l.err();
  EXPECT_THAT(l.out(), HasSubstr("EPX_HEAP_SIZE"));
  EXPECT_THAT(l.out(), HasSubstr("world 4 ranks = 2 logical nodes x 2 local ranks"));
  EXPECT_THAT(l.out(), HasSubstr("cpus"));
}

TEST(LauncherRun, ExitCodesPropagate) {
  {
    Launch l(Probe({"exit", "0"}, {"-n", "2"}));
    EXPECT_EQ(l.Wait(), 0) << l.err();
    EXPECT_EQ(l.Pids().size(), 2u);
    EXPECT_TRUE(l.AllGone());
  }
  {
    Launch l(Probe({"exit", "3"}, {"-n", "2"}));
    EXPECT_EQ(l.Wait(), 3) << l.err();
    EXPECT_THAT(l.err(), ::testing::ContainsRegex(R"(epx-run: rank [01] \(pid [0-9]+\) exited with code 3)"));
    EXPECT_TRUE(l.AllGone());
  }
}

TEST(LauncherRun, MissingProgramExits127) {
  Launch l({"-n", "2", "--", "/nonexistent/program"});
  EXPECT_EQ(l.Wait(), 127);
  EXPECT_THAT(l.err(), HasSubstr("No such file or directory"));
}

void ExpectCrashOfRank1(const char* mode, int sig, const char* text) {
  Launch l(Probe({mode, "1"}, {"-n", "3"}));
  EXPECT_EQ(l.Wait(), 128 + sig) << l.err();
  // The probe dies 200 ms after start; the other ranks must be gone well within the grace period.
  EXPECT_LT(l.seconds(), 2.5) << l.err();
  EXPECT_THAT(l.err(), ::testing::ContainsRegex(fmt::format(
                           R"(epx-run: rank 1 \(pid [0-9]+\) killed by signal {} \({})", sig, text)));
  EXPECT_EQ(l.Pids().size(), 3u);
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherRun, AbortOfOneRankNamesItAndExits134) {
  ExpectCrashOfRank1("abort", SIGABRT, "Aborted");
}
TEST(LauncherRun, SegvOfOneRankNamesItAndExits139) {
  ExpectCrashOfRank1("segv", SIGSEGV, "Segmentation fault");
}

TEST(LauncherRun, FailingRankTakesDownTheOthers) {
  Launch l(Probe({"rank-exit", "1", "7"}, {"-n", "4"}));
  EXPECT_EQ(l.Wait(), 7) << l.err();
  EXPECT_LT(l.seconds(), 3.0);
  EXPECT_THAT(l.err(), ::testing::ContainsRegex(R"(epx-run: rank 1 \(pid [0-9]+\) exited with code 7)"));
  EXPECT_THAT(l.err(), HasSubstr("terminating 3 other ranks (0,2-3)"));
  EXPECT_EQ(l.Pids().size(), 4u);
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherRun, EveryLinePrefixedAndComplete) {
  constexpr int kRanks = 4, kLines = 1000;
  Launch l(Probe({"lines", std::to_string(kLines)}, {"-n", std::to_string(kRanks)}));
  ASSERT_EQ(l.Wait(), 0) << l.err();
  for (bool is_out : {true, false}) {
    const std::regex re(is_out ? R"(^\[r(\d+)\] (out (\d+) (\d+)|pid \d+|end (\d+))$)"
                               : R"(^\[r(\d+)\] err (\d+) (\d+)$)");
    std::map<int, int> next;  // rank -> next expected line number
    std::map<int, bool> ended;
    for (const auto& line : Launch::Lines(is_out ? l.out() : l.err())) {
      if (!is_out && line.rfind("epx-run: ", 0) == 0) continue;  // e.g. the oversubscription note
      std::smatch m;
      ASSERT_TRUE(std::regex_match(line, m, re)) << "malformed line: '" << line << "'";
      const int r = std::stoi(m[1]);
      if (is_out && m[5].matched) {
        EXPECT_EQ(std::stoi(m[5]), r);
        ended[r] = true;
        continue;
      }
      if (is_out && !m[3].matched) continue;  // pid line
      EXPECT_FALSE(ended[r]) << "line after the partial last line";
      EXPECT_EQ(std::stoi(m[is_out ? 3 : 2]), r) << "line of another rank under [r" << r << "]";
      EXPECT_EQ(std::stoi(m[is_out ? 4 : 3]), next[r]) << "lost or reordered line of rank " << r;
      ++next[r];
    }
    ASSERT_EQ(next.size(), static_cast<size_t>(kRanks));
    for (auto [r, n] : next) EXPECT_EQ(n, kLines) << (is_out ? "stdout" : "stderr") << " of rank " << r;
    for (int r = 0; r < kRanks && is_out; ++r) {
      EXPECT_TRUE(ended[r]) << "partial last line of rank " << r << " lost";
    }
  }
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherRun, NoTagPassesOutputThrough) {
  Launch l(Probe({"exit", "0"}, {"-n", "1", "--no-tag"}));
  EXPECT_EQ(l.Wait(), 0);
  EXPECT_THAT(l.out(), ::testing::StartsWith("pid "));
}

TEST(LauncherRun, EnvironmentContract) {
  std::string first_job;
  for (int launch = 0; launch < 2; ++launch) {
    Launch l(Probe({"env"}, {"-n", "4", "--nodes", "2"}));
    ASSERT_EQ(l.Wait(), 0) << l.err();
    auto env = ParseEnv(l.out());
    ASSERT_EQ(env.size(), 4u) << l.out();
    const std::string job = env[0]["EPX_JOB_ID"], port = env[0]["EPX_MASTER_PORT"];
    EXPECT_FALSE(job.empty());
    EXPECT_GT(std::stoi(port), 0);
    for (auto& [rank, e] : env) {
      SCOPED_TRACE("rank " + std::to_string(rank));
      EXPECT_EQ(e["EPX_RANK"], std::to_string(rank));
      EXPECT_EQ(e["EPX_WORLD_SIZE"], "4");
      EXPECT_EQ(e["EPX_LOCAL_RANK"], std::to_string(rank % 2));
      EXPECT_EQ(e["EPX_LOCAL_SIZE"], "2");
      EXPECT_EQ(e["EPX_MASTER_ADDR"], "127.0.0.1");
      EXPECT_EQ(e["EPX_MASTER_PORT"], port);
      EXPECT_EQ(e["EPX_JOB_ID"], job);
      EXPECT_EQ(e["EPX_LAUNCHER"], "epx-run");
      // The pin took effect: the affinity is exactly EPX_CPUS, the preferred node EPX_NUMA_NODE
      // (unless the kernel refuses memory policies here, which ApplyPin tolerates).
      EXPECT_EQ(e["affinity"], e["EPX_CPUS"]);
      EXPECT_NE(e["EPX_NUMA_NODE"], "-1");
      if (e["mempolicy"] != "default") {
        EXPECT_EQ(e["mempolicy"], "preferred " + e["EPX_NUMA_NODE"]);
      }
    }
    if (launch == 0) first_job = job;
    if (launch == 1) {
      EXPECT_NE(job, first_job) << "job ids must differ between launches";
    }
    EXPECT_TRUE(l.AllGone());
  }
}

TEST(LauncherRun, NoBindLeavesAffinityAlone) {
  Launch l(Probe({"env"}, {"-n", "2", "--no-bind"}));
  ASSERT_EQ(l.Wait(), 0) << l.err();
  auto env = ParseEnv(l.out());
  auto mine = CurrentAffinity();
  ASSERT_TRUE(mine.ok());
  for (auto& [rank, e] : env) {
    EXPECT_EQ(e["EPX_NUMA_NODE"], "-1");
    EXPECT_EQ(e["affinity"], FormatCpuList(*mine, false));
    EXPECT_EQ(e["mempolicy"], "default");
  }
}

TEST(LauncherRun, OversubscriptionSaidOnce) {
  auto topo = HostTopology::Discover();
  ASSERT_TRUE(topo.ok());
  const int ranks = topo->NumCores() * 2;
  Launch l(Probe({"exit", "0"}, {"-n", std::to_string(ranks)}));
  ASSERT_EQ(l.Wait(), 0) << l.err();
  const std::string note =
      fmt::format("epx-run: {} ranks on {} cores: sharing cores round-robin", ranks, topo->NumCores());
  auto first = l.err().find(note);
  EXPECT_NE(first, std::string::npos) << l.err();
  EXPECT_EQ(l.err().find(note, first + 1), std::string::npos);
}

TEST(LauncherSignals, SigintReachesRanksAndTheirChildren) {
  Launch l(Probe({"spawn-sleeper"}, {"-n", "2"}));
  ASSERT_TRUE(l.WaitForPids(4)) << l.out() << l.err();  // 2 ranks + 2 sleepers
  const auto t0 = Clock::now();
  l.Signal(SIGINT);
  EXPECT_EQ(l.Wait(5s), 128 + SIGINT) << l.err();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 3.0);
  EXPECT_THAT(l.err(), HasSubstr("got SIGINT"));
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherSignals, SigkillOfLauncherLeavesNoOrphans) {
  Launch l(Probe({"spawn-sleeper"}, {"-n", "2"}));
  ASSERT_TRUE(l.WaitForPids(4)) << l.out() << l.err();
  l.Signal(SIGKILL);
  EXPECT_EQ(l.Wait(5s), 128 + SIGKILL);
  // Ranks die of PDEATHSIG, the sleepers (outside PDEATHSIG's reach) of the watchdog's group kill.
  EXPECT_TRUE(l.AllGone(3s)) << "orphans left behind";
}

TEST(LauncherSignals, RanksIgnoringSigtermAreKilledAfterTheGracePeriod) {
  Launch l(Probe({"termproof", "0", "5"}, {"-n", "3"}));
  EXPECT_EQ(l.Wait(10s), 5) << l.err();
  // 1 s until rank 0 fails (termproof), then the 2 s grace period before SIGKILL.
  EXPECT_GE(l.seconds(), 3.0);
  EXPECT_LT(l.seconds(), 4.5);
  EXPECT_THAT(l.err(), HasSubstr("grace period over: killing 2 ranks (1-2)"));
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherSignals, SecondSigintSkipsTheGracePeriod) {
  Launch l(Probe({"termproof", "-1", "0"}, {"-n", "2"}));
  ASSERT_TRUE(l.PumpUntil(
      [&] {
        return l.out().find("[r1] ignoring SIGTERM") != std::string::npos &&
               l.out().find("[r0] ignoring SIGTERM") != std::string::npos;
      },
      10s));
  const auto t0 = Clock::now();
  l.Signal(SIGINT);
  ASSERT_TRUE(l.PumpUntil([&] { return l.err().find("got SIGINT") != std::string::npos; }, 5s));
  l.Signal(SIGINT);
  EXPECT_EQ(l.Wait(5s), 128 + SIGINT) << l.err();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 1.5) << l.err();
  EXPECT_THAT(l.err(), HasSubstr("got SIGINT while stopping: killing 2 ranks now"));
  EXPECT_TRUE(l.AllGone());
}

// Children of `pid` named `comm` (needs /proc/<pid>/task/<pid>/children); -1 if none or unknown.
int ChildNamed(pid_t pid, const std::string& comm) {
  std::ifstream f(fmt::format("/proc/{}/task/{}/children", pid, pid));
  for (int child; f >> child;) {
    std::ifstream c(fmt::format("/proc/{}/comm", child));
    std::string name;
    if (std::getline(c, name) && name == comm) return child;
  }
  return -1;
}

TEST(LauncherSignals, PdeathsigAloneKillsRanksOfAKilledLauncher) {
  Launch l(Probe({"sleep", "60"}, {"-n", "2"}));
  ASSERT_TRUE(l.WaitForPids(2)) << l.out() << l.err();
  const int watchdog = ChildNamed(l.pid(), "epx-run-watch");
  if (watchdog < 0) GTEST_SKIP() << "no /proc/<pid>/task/<pid>/children here";
  // Without the watchdog only PR_SET_PDEATHSIG stands between a SIGKILLed launcher and orphans.
  ASSERT_EQ(::kill(watchdog, SIGKILL), 0);
  std::this_thread::sleep_for(100ms);
  l.Signal(SIGKILL);
  EXPECT_EQ(l.Wait(5s), 128 + SIGKILL);
  EXPECT_TRUE(l.AllGone(3s)) << "ranks outlived their launcher";
}

TEST(LauncherSignals, TimeoutKillsEverythingWith124) {
  Launch l(Probe({"sleep", "60"}, {"-n", "2", "--timeout", "1"}));
  EXPECT_EQ(l.Wait(10s), 124) << l.err();
  EXPECT_GE(l.seconds(), 0.9);
  EXPECT_LT(l.seconds(), 4.0);
  EXPECT_THAT(l.err(), HasSubstr("timeout after 1 s"));
  EXPECT_TRUE(l.AllGone());
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

TEST(LauncherMultiHost, TwoHostsSplitRanksAndAgreeOnJobId) {
  const std::string master = "127.0.0.1:" + std::to_string(FreePort());
  Launch h0(Probe({"env"}, {"-n", "4", "--nnodes", "2", "--node-rank", "0", "--master", master}));
  Launch h1(Probe({"env"}, {"-n", "4", "--nnodes", "2", "--node-rank", "1", "--master", master}));
  ASSERT_EQ(h0.Wait(), 0) << h0.err();
  ASSERT_EQ(h1.Wait(), 0) << h1.err();
  auto e0 = ParseEnv(h0.out()), e1 = ParseEnv(h1.out());
  ASSERT_EQ(e0.size(), 2u);
  ASSERT_EQ(e1.size(), 2u);
  EXPECT_TRUE(e0.count(0) && e0.count(1)) << h0.out();
  EXPECT_TRUE(e1.count(2) && e1.count(3)) << h1.out();
  const std::string job = e0[0]["EPX_JOB_ID"];
  EXPECT_FALSE(job.empty());
  for (auto* env : {&e0, &e1}) {
    for (auto& [rank, e] : *env) {
      SCOPED_TRACE("rank " + std::to_string(rank));
      EXPECT_EQ(e["EPX_RANK"], std::to_string(rank));
      EXPECT_EQ(e["EPX_WORLD_SIZE"], "4");
      EXPECT_EQ(e["EPX_LOCAL_SIZE"], "2");  // --nodes defaults to --nnodes
      EXPECT_EQ(e["EPX_LOCAL_RANK"], std::to_string(rank % 2));
      EXPECT_EQ(e["EPX_JOB_ID"], job);
      EXPECT_EQ(e["EPX_MASTER_ADDR"] + ":" + e["EPX_MASTER_PORT"], master);
    }
  }
  EXPECT_TRUE(h0.AllGone());
  EXPECT_TRUE(h1.AllGone());
}

// ---------------------------------------------------------------------------------------------------
// --grace: after a rank failed, the others may run on for a while to report it themselves.

TEST(LauncherGrace, SurvivorsReportTheFailureThemselvesWithinTheGrace) {
  // Rank 1 is killed with SIGKILL; the others notice (here: after 0.6 s), say so and exit with 3.
  const std::string script =
      "echo pid $$; if [ \"$EPX_RANK\" = 1 ]; then sleep 0.2; kill -9 $$; fi; "
      "sleep 0.8; echo \"rank $EPX_RANK saw it\"; exit 3";
  Launch l({"-n", "3", "--grace", "5", "--", "/bin/sh", "-c", script});
  EXPECT_EQ(l.Wait(10s), 128 + SIGKILL) << l.err();
  EXPECT_LT(l.seconds(), 3.0) << "the survivors ended on their own: no need to wait for the grace to end";
  EXPECT_THAT(l.out(), HasSubstr("[r0] rank 0 saw it"));
  EXPECT_THAT(l.out(), HasSubstr("[r2] rank 2 saw it"));
  EXPECT_THAT(l.err(),
              ::testing::ContainsRegex(R"(epx-run: rank 1 \(pid [0-9]+\) killed by signal 9 \(Killed\))"));
  EXPECT_THAT(l.err(),
              HasSubstr("letting 2 other ranks (0,2) run up to 5 s to report the failure (--grace)"));
  EXPECT_THAT(l.err(),
              ::testing::ContainsRegex(
                  R"(epx-run: rank 0 \(pid [0-9]+\) exited with code 3, [0-9.]+ s after rank 1 failed)"));
  EXPECT_THAT(LastLine(l.err()),
              ::testing::MatchesRegex(
                  R"(epx-run: exit code 137: rank 1 \(pid [0-9]+\) killed by SIGKILL \(signal 9, )"
                  R"(Killed\) \(the first rank to fail\))"));
  EXPECT_THAT(l.err(), ::testing::Not(HasSubstr("terminating")));
  EXPECT_EQ(l.Pids().size(), 3u);
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherGrace, RanksStillRunningWhenTheGraceEndsAreTerminated) {
  Launch l(Probe({"segv", "1"}, {"-n", "3", "--grace", "1"}));
  EXPECT_EQ(l.Wait(10s), 128 + SIGSEGV) << l.err();
  // 200 ms until rank 1 dies, then 1 s of grace; the sleepers go at SIGTERM.
  EXPECT_GE(l.seconds(), 1.1) << l.err();
  EXPECT_LT(l.seconds(), 3.5) << l.err();
  EXPECT_THAT(l.err(),
              HasSubstr("epx-run: --grace of 1 s after rank 1 failed is over: terminating 2 ranks still "
                        "running (0,2)"));
  EXPECT_THAT(LastLine(l.err()),
              ::testing::MatchesRegex(R"(epx-run: exit code 139: rank 1 \(pid [0-9]+\) killed by )"
                                      R"(SIGSEGV \(signal 11, Segmentation fault\).*)"));
  EXPECT_EQ(l.Pids().size(), 3u);
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherGrace, DefaultStopsTheOthersAtOnceAndStillNamesTheCauseLast) {
  Launch l(Probe({"rank-exit", "1", "7"}, {"-n", "3"}));
  EXPECT_EQ(l.Wait(), 7) << l.err();
  EXPECT_LT(l.seconds(), 2.5) << l.err();
  EXPECT_THAT(l.err(), HasSubstr("terminating 2 other ranks (0,2)"));
  EXPECT_THAT(l.err(), ::testing::Not(HasSubstr("--grace")));
  EXPECT_THAT(
      LastLine(l.err()),
      ::testing::MatchesRegex(R"(epx-run: exit code 7: rank 1 \(pid [0-9]+\) exited with code 7 \(the first )"
                              R"(rank to fail\))"));
  EXPECT_TRUE(l.AllGone());
}

TEST(LauncherGrace, BadValuesAreRejected) {
  for (const char* v : {"-1", "x", "1e9"}) {
    Launch l({"-n", "2", "--grace", v, "--", "true"});
    EXPECT_EQ(l.Wait(), 2) << v << ": " << l.err();
    EXPECT_THAT(l.err(), HasSubstr("--grace")) << v;
  }
}

TEST(LauncherGrace, AKilledRankIsNamedBeforeOneThatExitedInTheSameReap) {
  // Rank 2 is killed, then rank 1 (spawned first, so waitid returns it first) exits with 3, as a survivor
  // reporting the death would. The launcher is stopped meanwhile, so one reap finds both: the verdict must
  // still name the killed rank.
  const std::string script =
      "echo pid $$; case $EPX_RANK in 1) sleep 0.6; exit 3;; 2) sleep 0.3; kill -9 $$;; *) sleep 30;; esac";
  Launch l({"-n", "3", "--", "/bin/sh", "-c", script});
  ASSERT_TRUE(l.WaitForPids(3)) << l.err();
  l.Signal(SIGSTOP);
  std::this_thread::sleep_for(1500ms);
  l.Signal(SIGCONT);
  EXPECT_EQ(l.Wait(10s), 128 + SIGKILL) << l.err();
  EXPECT_THAT(LastLine(l.err()),
              ::testing::MatchesRegex(R"(epx-run: exit code 137: rank 2 \(pid [0-9]+\) killed by )"
                                      R"(SIGKILL \(signal 9, Killed\).*)"))
      << l.err();
  EXPECT_TRUE(l.AllGone());
}

}  // namespace
}  // namespace epx
