// tests/fault/readmit_test.cc: re-admission of a restarted rank (issue 7, "a masked rank can be re-admitted
// after it restarts and reconnects"; ctest fault_readmit, label fault).
//
// Each cell runs fault_worker --readmit (readmit_worker.cc) as 4 ranks under
//   epx-run -n 4 --nodes N --respawn 1 -- fault_worker --readmit --rounds 3
// with EPX_RDMA=shm and EPX_FAULT naming the victim V and a low-latency point. V kills itself there; the
// survivors mask it and go on without it; epx-run starts V again (EPX_RESTART_COUNT=1); every rank creates a
// new Context (generation 2) and all 4 run low-latency and normal rounds checked against the full reference.
// Asserted per cell: epx-run exits 0, its restart line names V's two pids and its last line the restart;
// the victim died at the point; every survivor masked it, checked its rounds without it, destroyed its
// first Context leaving no fd and no heap mapping behind; every rank came up in generation 2 knowing V by
// its new pid, then passed every check; no process is left and no /dev/shm entry is new. Cells: V a
// non-root rank and the root (rank 0, whose restart becomes the bootstrap root again), on 1 node x 4 and
// 2 nodes x 2. Printed: seconds from V's death to each rank's new Context.
//
// Negative cells: without --respawn (and with --grace, so the survivors run on), nobody restarts V, and
// the survivors' re-creation fails with a bootstrap error naming V within EPX_BOOTSTRAP_TIMEOUT (3 s).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/fault/fault_driver.h"
#include "tests/support/subprocess.h"

namespace {

using namespace epx::test;  // NOLINT: test helpers

constexpr int kRanks = 4;
constexpr int kBootstrapTimeoutMs = 3000;  // negative cells: how long the survivors wait for V

struct Cell {
  int nodes;
  int victim;
  const char* point;
  int after;
  bool respawn = true;
};

std::string CellName(const Cell& c) {
  return fmt::format("{}victim=r{} at {} after={} ({})", c.respawn ? "" : "no respawn: ", c.victim, c.point,
                     c.after, c.nodes == 2 ? "2x2 shm" : "1x4");
}

void PrintTo(const Cell& c, std::ostream* os) {
  *os << CellName(c);
}

// What the lines of one run say.
struct Parsed {
  std::map<int, int> ready_pid;  // rank -> pid of its first process
  int victim = -1, victim_pid = -1;
  long long death_ns = -1;
  int restarted_pid = -1;                                   // V's restarted process
  std::set<int> masked;                                     // survivors that masked V and checked rounds
  std::map<int, std::string> destroyed;                     // rank -> "fds F (F0 before it), heap mappings M"
  std::map<int, long long> recreate_ns;                     // rank -> re-creating the Context
  std::map<int, std::pair<long long, std::string>> up;      // rank -> (t, "generation G ... pid P (watched)")
  std::set<int> done, passed;                               // LL rounds checked; everything passed
  std::map<int, std::pair<long long, std::string>> failed;  // rank -> (t, line)
  std::vector<std::string> check_failed;
  int restart_old = -1, restart_new = -1;  // epx-run's restart line
  std::string last;                        // epx-run's last line
};

Parsed Parse(const std::string& out) {
  Parsed p;
  static const std::regex ready(R"(^\[r(\d+)\] fault-worker: rank \d+ ready \(generation 1\) pid (\d+)$)");
  static const std::regex restarted(
      R"(^\[r(\d+)\] fault-worker: rank \d+ restarted \(restart 1\) pid (\d+) )");
  static const std::regex masked(
      R"(^\[r(\d+)\] fault-worker: rank \d+ masked \[(\d+)\], \d+ rounds checked )");
  static const std::regex destroyed(
      R"(^\[r(\d+)\] fault-worker: rank \d+ destroyed generation 1 in .*: (.*)$)");
  static const std::regex recreate(
      R"(^\[r(\d+)\] fault-worker: rank \d+ re-creating the Context t_mono_ns=(\d+)$)");
  static const std::regex up(
      R"(^\[r(\d+)\] fault-worker: rank \d+ re-admitted: (generation \d+) up t_mono_ns=(\d+); )"
      R"((.*)$)");
  static const std::regex done(
      R"(^\[r(\d+)\] fault-worker: rank \d+ done \(\d+ rounds, every result checked\)$)");
  static const std::regex passed(R"(^\[r(\d+)\] fault-worker: rank \d+ readmit passed: .*\(generation 2\) )");
  static const std::regex restart(
      R"(^epx-run: rank \d+ \(pid (\d+)\) killed by SIGKILL \(signal 9, Killed\); )"
      R"(restarting it \(1 of 1\) as pid (\d+)$)");
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (line.rfind("epx-run: ", 0) == 0) p.last = line;
    if (std::regex_search(line, m, ready)) {
      p.ready_pid[std::stoi(m[1])] = std::stoi(m[2]);
    } else if (const auto d = ParseDeath(line); d && d->t_ns >= 0) {
      p.victim = d->rank, p.victim_pid = d->pid, p.death_ns = d->t_ns;
    } else if (std::regex_search(line, m, restarted)) {
      p.restarted_pid = std::stoi(m[2]);
    } else if (std::regex_search(line, m, masked)) {
      p.masked.insert(std::stoi(m[1]));
    } else if (std::regex_search(line, m, destroyed)) {
      p.destroyed[std::stoi(m[1])] = m[2];
    } else if (std::regex_search(line, m, recreate)) {
      p.recreate_ns[std::stoi(m[1])] = std::stoll(m[2]);
    } else if (std::regex_search(line, m, up)) {
      p.up[std::stoi(m[1])] = {std::stoll(m[3]), m[2].str() + "; " + m[4].str()};
    } else if (std::regex_search(line, m, done)) {
      p.done.insert(std::stoi(m[1]));
    } else if (std::regex_search(line, m, passed)) {
      p.passed.insert(std::stoi(m[1]));
    } else if (const auto f = ParseFailure(line)) {
      p.failed[f->rank] = {f->t_ns, line};
    } else if (std::regex_search(line, m, restart)) {
      p.restart_old = std::stoi(m[1]), p.restart_new = std::stoi(m[2]);
    } else if (line.find("CHECK FAILED") != std::string::npos) {
      p.check_failed.push_back(line);
    }
  }
  return p;
}

Finished RunJob(const Cell& c) {
  Env env = {{"EPX_RDMA", "shm"},
             {"EPX_TIMEOUT", "10s"},
             {"EPX_HEAP_SIZE", "32M"},
             {"EPX_LOG_LEVEL", "warn"},
             {"EPX_BOOTSTRAP_TIMEOUT", c.respawn ? "20s" : std::to_string(kBootstrapTimeoutMs) + "ms"},
             {"EPX_FAULT", fmt::format("rank={},point={},after={}", c.victim, c.point, c.after)}};
  std::vector<std::string> argv = {EPX_RUN_BIN, "-n", std::to_string(kRanks), "--nodes",
                                   std::to_string(c.nodes)};
  if (c.respawn)
    argv.insert(argv.end(), {"--respawn", "1"});
  else
    argv.insert(argv.end(), {"--grace", "30"});  // the survivors run on without a restart
  argv.insert(argv.end(), {"--", EPX_FAULT_WORKER_BIN, "--readmit", "--rounds", "3"});
  return RunToEnd(argv, env, 120);
}

// A cell's job and what its lines say, with /dev/shm as it was before the job.
struct CellRun {
  std::set<std::string> shm_before;
  Finished run;
  Parsed p;
};
CellRun RunCell(const Cell& c) {
  CellRun r;
  r.shm_before = DevShm();
  r.run = RunJob(c);
  r.p = Parse(r.run.out);
  return r;
}

// Nothing of the job is left: every process (first processes and V's restart) gone within 3 s of
// epx-run's exit, /dev/shm as before it.
void ExpectNothingLeft(const Parsed& p, const std::string& out, const std::set<std::string>& shm_before) {
  std::vector<int> pids;
  for (auto [rank, pid] : p.ready_pid) pids.push_back(pid);
  if (p.restarted_pid > 0) pids.push_back(p.restarted_pid);
  if (!AllPidsGone(pids, std::chrono::seconds(3))) {
    for (int pid : pids) {
      EXPECT_TRUE(PidGone(pid)) << "pid " << pid << " outlived the job:\n" << out;
    }
  }
  EXPECT_EQ(DevShm(), shm_before);
}

// "1x4_victim0": gtest names of the cells.
std::string CellTestName(const ::testing::TestParamInfo<Cell>& info) {
  return fmt::format("{}x{}_victim{}", info.param.nodes, kRanks / info.param.nodes, info.param.victim);
}

std::vector<std::string>& Table() {
  static std::vector<std::string> rows;
  return rows;
}

class Readmit : public ::testing::TestWithParam<Cell> {};

TEST_P(Readmit, RestartedRankRejoinsAndEveryRankMatchesTheFullReference) {
  const Cell c = GetParam();
  SCOPED_TRACE(CellName(c));
  const auto [shm_before, run, p] = RunCell(c);
  ASSERT_NE(run.status, -1) << "the job did not end within 120 s:\n" << run.out;
  EXPECT_TRUE(WIFEXITED(run.status) && WEXITSTATUS(run.status) == 0) << run.out;
  ASSERT_EQ(p.ready_pid.size(), static_cast<size_t>(kRanks)) << "not every rank came up:\n" << run.out;
  ASSERT_EQ(p.victim, c.victim) << "the victim did not die at " << c.point << ":\n" << run.out;
  // epx-run restarted exactly the victim, said so, and still names the restart last.
  EXPECT_EQ(p.restart_old, p.victim_pid) << run.out;
  EXPECT_EQ(p.restart_new, p.restarted_pid) << run.out;
  EXPECT_NE(p.last.find("every rank's last process exited 0, after 1 restart (--respawn 1): rank " +
                        std::to_string(c.victim)),
            std::string::npos)
      << run.out;
  EXPECT_TRUE(p.failed.empty()) << run.out;
  EXPECT_TRUE(p.check_failed.empty()) << run.out;
  std::string times;
  for (int r = 0; r < kRanks; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    if (r != c.victim) {
      EXPECT_TRUE(p.masked.count(r)) << "did not mask the victim and check its rounds:\n" << run.out;
      auto d = p.destroyed.find(r);
      ASSERT_NE(d, p.destroyed.end()) << run.out;
      // Nothing of generation 1 is left in the survivor: as many fds as before it, no heap mapping.
      std::smatch m;
      ASSERT_TRUE(
          std::regex_match(d->second, m, std::regex(R"(fds (\d+) \((\d+) before it\), heap mappings (\d+))")))
          << d->second;
      EXPECT_EQ(m[1], m[2]) << "fds leaked by the destroyed Context: " << d->second;
      EXPECT_EQ(m[3], "0") << "heap mappings left: " << d->second;
    }
    auto u = p.up.find(r);
    ASSERT_NE(u, p.up.end()) << "no new Context:\n" << run.out;
    // The new generation knows the victim by its new pid, and its survivors watch that process.
    const std::string want = fmt::format("generation 2; rank {} is pid {} ({})", c.victim, p.restarted_pid,
                                         r == c.victim ? "not watched" : "watched");
    EXPECT_EQ(u->second.second, want);
    EXPECT_TRUE(p.done.count(r)) << "low-latency rounds after re-admission not all checked:\n" << run.out;
    EXPECT_TRUE(p.passed.count(r)) << "did not pass every check after re-admission:\n" << run.out;
    const double secs = (u->second.first - p.death_ns) / 1e9;
    EXPECT_GT(secs, 0);
    EXPECT_LT(secs, 20.0) << "re-admitted only after the bootstrap deadline";
    times += fmt::format(" {:.3f} |", secs);
  }
  ExpectNothingLeft(p, run.out, shm_before);
  Table().push_back(fmt::format("| {} |{} {:.1f} |", CellName(c), times, run.seconds));
}

INSTANTIATE_TEST_SUITE_P(Cells, Readmit,
                         ::testing::Values(Cell{1, 1, "ll.dispatch.send", 2},
                                           Cell{1, 0, "ll.combine.recv", 2},
                                           Cell{2, 3, "ll.dispatch.recv", 1},
                                           Cell{2, 0, "ll.combine.send", 3}),
                         CellTestName);

class ReadmitWithoutRestart : public ::testing::TestWithParam<Cell> {};

TEST_P(ReadmitWithoutRestart, SurvivorsFailWithABootstrapErrorNamingTheMissingRank) {
  const Cell c = GetParam();
  SCOPED_TRACE(CellName(c));
  const auto [shm_before, run, p] = RunCell(c);
  ASSERT_NE(run.status, -1) << "the job did not end within 120 s:\n" << run.out;
  EXPECT_TRUE(WIFEXITED(run.status) && WEXITSTATUS(run.status) == 128 + SIGKILL) << run.out;
  ASSERT_EQ(p.victim, c.victim) << run.out;
  EXPECT_EQ(p.restarted_pid, -1) << run.out;
  // The root names the missing rank (and the others relay it); with the root itself missing, each survivor
  // says it could not reach it.
  const std::string why =
      c.victim == 0 ? fmt::format("rank 0 (root) not reachable at 127.0.0.1:")
                    : fmt::format("ranks {} did not arrive within {} ms", c.victim, kBootstrapTimeoutMs);
  for (int r = 0; r < kRanks; ++r) {
    if (r == c.victim) continue;
    SCOPED_TRACE("rank " + std::to_string(r));
    EXPECT_TRUE(p.masked.count(r)) << run.out;
    auto f = p.failed.find(r);
    ASSERT_NE(f, p.failed.end()) << "the re-creation did not fail:\n" << run.out;
    EXPECT_NE(f->second.second.find("in re-create Context (round -1): "), std::string::npos)
        << f->second.second;
    EXPECT_NE(f->second.second.find(why), std::string::npos) << f->second.second;
    // Within the deadline: the root gives up at EPX_BOOTSTRAP_TIMEOUT and tells the others at once.
    auto t = p.recreate_ns.find(r);
    ASSERT_NE(t, p.recreate_ns.end()) << run.out;
    const double secs = (f->second.first - t->second) / 1e9;
    EXPECT_GE(secs, kBootstrapTimeoutMs / 1000.0 - 0.5) << f->second.second;
    EXPECT_LE(secs, kBootstrapTimeoutMs / 1000.0 + 1.5) << f->second.second;
    EXPECT_TRUE(p.up.find(r) == p.up.end()) << run.out;
  }
  ExpectNothingLeft(p, run.out, shm_before);
}

INSTANTIATE_TEST_SUITE_P(Cells, ReadmitWithoutRestart,
                         ::testing::Values(Cell{1, 2, "ll.dispatch.send", 1, false},
                                           Cell{2, 0, "ll.combine.recv", 1, false}),
                         CellTestName);

void PrintTable() {
  if (Table().empty()) return;
  std::string t =
      "\nRe-admission (fault_worker --readmit under epx-run --respawn 1): seconds from the victim's SIGKILL "
      "to each rank's new Context (generation 2, the restarted victim included); then 3 low-latency and 3 "
      "normal rounds, all checked against the full reference\n\n" +
      TableHead("cell", kRanks, {"job s"});
  for (const auto& row : Table()) t += row + "\n";
  std::fputs(t.c_str(), stdout);
}

}  // namespace

int main(int argc, char** argv) {
  return RunAllThenPrint(argc, argv, PrintTable);
}
