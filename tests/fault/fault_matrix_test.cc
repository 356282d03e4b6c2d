// tests/fault/fault_matrix_test.cc: the fault-injection matrix (issue 7, ctest label `fault`).
//
// Each cell runs fault_worker (normal + low-latency rounds) as 4 ranks under
//   epx-run -n 4 --nodes N --grace 12 -- fault_worker --rounds 4
// with EPX_RDMA=shm (2 logical nodes x 2 ranks: senders, forwarders and receivers all exist), EPX_TIMEOUT=10s
// and EPX_FAULT=rank=V,point=P,after=K, so rank V SIGKILLs itself at point P (core/fault.h). Asserted per
// cell:
//   * the victim died at that point (its own "fault injection" line, with its CLOCK_MONOTONIC time);
//   * every survivor failed a call with an error that names the dead rank ("rank V (pid P, node n) died"),
//     within EPX_TIMEOUT + 1 s of the death (printed; observed well under 0.2 s: the liveness scan interval
//     plus back-off, not the deadline);
//   * epx-run exits 137 (128 + SIGKILL) and its last line names the victim and the signal;
//   * no process of the job is left and no new /dev/shm entry exists.
// At the end the matrix is printed as a Markdown table (seconds from the victim's death to each
// survivor's error) for the issue note. Cells: every point x every victim rank on 2 nodes x 2, and every
// point that exists on 1 node x 4 (no RDMA domain, no forwarders) once (MakeCells).
//
// EPX_FAULT_MATRIX_RDMA=verbs (ctest rxe_fault_matrix: in one soft-RoCE guest, tools/rxe-vm/rxe-run) runs
// the ranks with EPX_RDMA=verbs instead, and a smaller set, since code under TCG runs 10-50x slower: every
// point once on 2 nodes x 2 with the victims in turn, the baselines on 2 nodes x 2 (and 4 x 1 for --mask),
// and five masked cells. All ranks share the guest's kernel, so the survivors still see the death by the
// process scan; what changes is the data path they are caught in (RC QPs, the verbs domain's waits). Deaths
// seen only over the network are tests/fault/rxe_fault_two_hosts_test.cc.
//
// Masked cells (FaultMatrixMasked, issue 7: "with masking on, survivors continue and their results equal
// the reference computed without the dead rank"): fault_worker --mask runs low-latency rounds only, on
// an LlBuffer with mask_on_failure, and checks every result of every rank bitwise against the reference
// (with the victim before its death, without it after; fault_worker.cc MaskWant() says exactly which
// call must equal which). The victim dies at each LL point, every rank in turn on 2 nodes x 2, two ranks on
// 1 node x 4 and one on 4 nodes x 1, with one or two LL channels (MakeMaskCells). Then the survivors go on
// in normal mode without the victim (NormalBuffer::MaskRank): 2 rounds checked bitwise, on every topology
// (on 2 x 2 the victim's same-index rank on the other node is relayed by its node peer). Asserted per cell:
// the victim died at the point; epx-run exits 137 naming it; every survivor logged the library's mask warning
// for the victim within EPX_TIMEOUT + 1 s of the death (printed: seconds from the death to that warning),
// printed "masked [V], 3 rounds checked after the death", no check failed, and exited 0 -- and went on at
// once: no wait of a survivor ran into its deadline and every survivor was done within EPX_TIMEOUT / 2 of the
// death (a survivor stuck in a wait for the dead rank until the deadline would pass every other check);
// nothing left behind. A second table lists the times.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
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
constexpr int kTimeoutMs = 10000;  // EPX_TIMEOUT of the ranks
constexpr const char* kGrace =
    "12";  // epx-run --grace: longer than EPX_TIMEOUT, so a survivor can always report

// The RDMA domain of the 2-node cells: EPX_FAULT_MATRIX_RDMA (shm, the default, or verbs). main() rejects
// any other value before a test runs.
std::string Rdma() {
  const char* v = std::getenv("EPX_FAULT_MATRIX_RDMA");
  return v == nullptr || *v == '\0' ? "shm" : v;
}
bool Verbs() {
  return Rdma() == "verbs";
}
std::string Topology(int nodes) {
  return nodes == 1 ? "1x4" : fmt::format("{}x{} {}", nodes, kRanks / nodes, Rdma());
}
// For gtest names: the native matrix keeps its names ("2x2"), the verbs cells say so ("2x2_verbs").
std::string TopologyTag(int nodes) {
  return nodes == 1 ? "1x4" : fmt::format("{}x{}{}", nodes, kRanks / nodes, Verbs() ? "_verbs" : "");
}

struct Cell {
  const char* point;
  int victim;
  int after;
  int nodes;  // logical nodes of the 4 ranks
};

// 2 nodes x 2 ranks: every point with every rank as the victim (each rank is a sender, a forwarder and a
// receiver there, on either node; rank 0 is also the bootstrap root). 1 node x 4 ranks (no RDMA domain,
// so no forwarding): every point that exists there, victims in turn. `after` (1..3) moves the death to
// a later hit: further into a phase, or into a later round, so survivors are caught in other states.
std::vector<Cell> MakeCells() {
  std::vector<Cell> cells;
  int k = 0;
  if (Verbs()) {  // one guest under TCG: every point once, the victims in turn
    for (const char* point :
         {"normal.layout", "normal.dispatch.send", "normal.dispatch.forward", "normal.dispatch.recv",
          "normal.combine.send", "normal.combine.forward", "normal.combine.reduce", "ll.dispatch.send",
          "ll.dispatch.recv", "ll.combine.send", "ll.combine.recv"}) {
      cells.push_back({point, k % kRanks, 1 + k % 3, 2});
      ++k;
    }
    return cells;
  }
  for (const char* point :
       {"normal.layout", "normal.dispatch.send", "normal.dispatch.forward", "normal.dispatch.recv",
        "normal.combine.send", "normal.combine.forward", "normal.combine.reduce", "ll.dispatch.send",
        "ll.dispatch.recv", "ll.combine.send", "ll.combine.recv"}) {
    for (int victim = 0; victim < kRanks; ++victim) cells.push_back({point, victim, 1 + (k++ % 3), 2});
  }
  int victim = 0;
  for (const char* point : {"normal.layout", "normal.dispatch.send", "normal.dispatch.recv",
                            "normal.combine.send", "normal.combine.reduce", "ll.dispatch.send",
                            "ll.dispatch.recv", "ll.combine.send", "ll.combine.recv"}) {
    cells.push_back({point, victim, 1 + victim % 2, 1});
    victim = (victim + 1) % kRanks;
  }
  return cells;
}

std::string CellName(const Cell& c) {
  return fmt::format("{} after={} victim=r{} ({})", c.point, c.after, c.victim, Topology(c.nodes));
}

struct Row {
  std::string cell;
  int victim = -1;
  std::map<int, double> secs;      // survivor -> seconds from the death to its error
  std::map<int, std::string> how;  // survivor -> how its error named the dead rank (NamingOf)
  std::string verdict;
};

// How a survivor's error names the victim (fault_driver.h NamedIn) if it does, else the first rank it names
// as failed; rank -1: none.
Naming NamingOf(const std::string& line, int victim) {
  const std::vector<Naming> named = NamedIn(line);
  auto it = std::find_if(named.begin(), named.end(), [&](const Naming& n) { return n.rank == victim; });
  return it != named.end() ? *it : named.empty() ? Naming{} : named[0];
}

std::vector<Row>& Rows() {
  static std::vector<Row> rows;
  return rows;
}

struct Parsed {
  std::map<int, int> pid;  // rank -> pid (ready lines)
  int victim = -1, victim_pid = -1;
  std::string victim_point;
  long long victim_ns = -1;
  std::map<int, std::pair<long long, std::string>> failed;  // rank -> (t_mono_ns, whole line)
  std::set<int> done;
  // --mask
  struct Masked {
    std::string ranks;     // its final MaskedRanks, e.g. "2"
    int rounds_after = 0;  // rounds checked after the death
    long long t_ns = 0;    // when it was done
  };
  std::map<int, Masked> masked;
  std::map<int, std::pair<int, long long>> notice;  // rank -> (rank it masked, t_mono_ns): the first
  std::vector<std::string> check_failed;            // whole lines
  std::vector<std::string> timeouts;                // a wait that ran into its deadline (whole lines)
  std::map<std::string, int> either;                // outcome of a call that may go either way -> count
  std::map<int, int> exit_code;                     // rank -> code, from epx-run's lines
  std::map<int, std::string> normal;                // rank -> its normal phase: "checked N" or "refused"
};

Parsed Parse(const std::string& out) {
  static const std::regex done(R"(^\[r(\d+)\] fault-worker: rank (\d+) done)");
  static const std::regex masked(
      R"(^\[r(\d+)\] fault-worker: rank (\d+) masked \[([\d,]*)\], (\d+) rounds checked after the death .* )"
      R"(t_mono_ns=(\d+)$)");
  static const std::regex timeout(R"(^\[r\d+\] epx\[r\d+\] \w error at \S+: timeout: )");
  static const std::regex notice(
      R"(^\[r(\d+)\] fault-worker: rank (\d+) mask notice: masks rank (\d+) t_mono_ns=(\d+)$)");
  static const std::regex either(
      R"(^\[r\d+\] fault-worker: rank \d+ round \d+ .*, the victim dies in call \d+\): (.*)$)");
  static const std::regex exited(R"(epx-run: rank (\d+) \(pid \d+\) exited with code (\d+))");
  static const std::regex normal(
      R"(^\[r\d+\] fault-worker: rank (\d+) normal mode without \[[\d,]*\]: ((\d+) rounds checked|refused as expected))");
  Parsed p;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (const auto r = ParseReady(line)) {
      p.pid[r->rank] = r->pid;
    } else if (const auto d = ParseDeath(line); d && d->t_ns >= 0) {
      p.victim = d->rank;
      p.victim_pid = d->pid;
      p.victim_point = d->point;
      p.victim_ns = d->t_ns;
    } else if (const auto f = ParseFailure(line)) {
      p.failed[f->rank] = {f->t_ns, line};
    } else if (std::regex_search(line, m, done)) {
      p.done.insert(std::stoi(m[2]));
    } else if (std::regex_search(line, m, masked)) {
      p.masked[std::stoi(m[2])] = {m[3], std::stoi(m[4]), std::stoll(m[5])};
    } else if (std::regex_match(line, m, notice)) {
      p.notice.emplace(std::stoi(m[2]), std::pair{std::stoi(m[3]), std::stoll(m[4])});  // keeps the first
    } else if (line.find("CHECK FAILED") != std::string::npos ||
               line.find("check(s) failed") != std::string::npos) {
      p.check_failed.push_back(line);
    } else if (std::regex_search(line, m, timeout)) {
      p.timeouts.push_back(line);
    } else if (std::regex_match(line, m, either)) {
      ++p.either[m[1]];
    } else if (std::regex_search(line, m, exited)) {
      p.exit_code[std::stoi(m[1])] = std::stoi(m[2]);
    } else if (std::regex_search(line, m, normal)) {
      p.normal[std::stoi(m[1])] = m[3].matched ? "checked " + m[3].str() : "refused";
    }
  }
  return p;
}

Finished RunJob(int nodes, const std::string& fault, int rounds, const std::vector<std::string>& extra = {}) {
  Env env = {{"EPX_RDMA", Rdma()},
             {"EPX_TIMEOUT", std::to_string(kTimeoutMs) + "ms"},
             {"EPX_HEAP_SIZE", "32M"},
             {"EPX_LOG_LEVEL", "warn"},
             {"EPX_FAULT", fault}};
  std::vector<std::string> argv = {
      EPX_RUN_BIN, "-n", std::to_string(kRanks), "--nodes",  std::to_string(nodes), "--grace",
      kGrace,      "--", EPX_FAULT_WORKER_BIN,   "--rounds", std::to_string(rounds)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return RunToEnd(argv, env, 90);
}

// What every cell's job must show, whatever the survivors do: it ended, every rank came up, the victim died
// at the point as the process it reported ready, and epx-run exits 137 naming that death last (the victim's
// death is the job's failure). Fatal failures where the survivors' checks would have nothing to go on.
void CheckTheDeath(const Finished& l, int victim, const char* point, Parsed* parsed) {
  ASSERT_NE(l.status, -1) << "the job did not end within 90 s:\n" << l.out;
  const Parsed& p = *parsed = Parse(l.out);
  ASSERT_EQ(p.pid.size(), static_cast<size_t>(kRanks)) << "not every rank came up:\n" << l.out;
  ASSERT_EQ(p.victim, victim) << "the victim did not die at " << point << ":\n" << l.out;
  EXPECT_EQ(p.victim_point, point);
  EXPECT_EQ(p.victim_pid, p.pid.at(victim));
  EXPECT_TRUE(WIFEXITED(l.status) && WEXITSTATUS(l.status) == 128 + SIGKILL) << l.out;
  EXPECT_NE(l.out.find(fmt::format("epx-run: exit code 137: rank {} (pid {}) killed by SIGKILL (signal 9",
                                   victim, p.victim_pid)),
            std::string::npos)
      << l.out;
}

// Nothing of the job is left: no rank process 3 s after epx-run's exit, no new /dev/shm entry. True if so.
bool NothingLeft(const Parsed& p, const std::set<std::string>& shm_before) {
  std::vector<int> pids;
  for (auto [rank, pid] : p.pid) pids.push_back(pid);
  const bool gone = AllPidsGone(pids, std::chrono::seconds(3));
  EXPECT_TRUE(gone) << "a rank process outlived the launcher";
  const auto added = NewShm(shm_before);
  EXPECT_TRUE(added.empty()) << "new /dev/shm entries: " << ::testing::PrintToString(added);
  return gone && added.empty();
}

TEST(FaultMatrixBaseline, WithoutAFaultEveryRankFinishes) {
  // The worker itself is sound: without EPX_FAULT every round passes on both topologies, so an error in
  // a cell below is the injected death's doing.
  for (int nodes : {2, 1}) {
    if (nodes == 1 && Verbs()) continue;  // no RDMA domain on one node: the native matrix covers it
    const Finished l = RunJob(nodes, "", 2);
    ASSERT_NE(l.status, -1) << "hung:\n" << l.out;
    EXPECT_TRUE(WIFEXITED(l.status) && WEXITSTATUS(l.status) == 0) << l.out;
    Parsed p = Parse(l.out);
    EXPECT_EQ(p.done.size(), static_cast<size_t>(kRanks)) << l.out;
    EXPECT_TRUE(p.failed.empty()) << l.out;
    std::printf("baseline %s: %.1f s for 2 rounds incl. setup\n", Topology(nodes).c_str(), l.seconds);
  }
}

TEST(FaultMatrixBaseline, WithoutAFaultMaskModeChecksEveryRound) {
  // fault_worker --mask without a victim: every low-latency result equals the full reference and nobody
  // is masked, on every topology and with 1 and 2 channels, so a check that fails in a masked cell below
  // is about the death, not about the checker. The normal phase after the rounds runs too (nobody masked):
  // every rank reports its rounds checked.
  for (int nodes : {2, 1, 4}) {
    if (nodes == 1 && Verbs()) continue;
    for (int channels : {1, 2}) {
      const Finished l = RunJob(nodes, "", 4, {"--mask", "--ll-channels", std::to_string(channels)});
      ASSERT_NE(l.status, -1) << "hung:\n" << l.out;
      EXPECT_TRUE(WIFEXITED(l.status) && WEXITSTATUS(l.status) == 0) << l.out;
      Parsed p = Parse(l.out);
      EXPECT_EQ(p.done.size(), static_cast<size_t>(kRanks)) << l.out;
      EXPECT_TRUE(p.check_failed.empty()) << l.out;
      EXPECT_TRUE(p.failed.empty()) << l.out;
      for (int r = 0; r < kRanks; ++r)
        EXPECT_EQ(p.normal.count(r) ? p.normal[r] : "none", "checked 2") << "rank " << r << ":\n" << l.out;
      std::printf("baseline --mask %s, %d LL channel(s): %.1f s for 4 checked rounds incl. setup\n",
                  Topology(nodes).c_str(), channels, l.seconds);
    }
  }
}

// A rank that exits between calls (no EPX_FAULT, no low-latency buffer that would have masked it): the
// survivors mask it with NormalBuffer::MaskRank alone and go on (fault_worker --exit-between). Their
// staggered start makes the others wait in the first call without it long enough for the liveness scan to see
// the exit, so a mask that left the death unacknowledged would fail that call. On 2 x 2 the exited rank
// leaves a live rank on its node: its same-index rank on the other node is relayed.
TEST(FaultMatrixNormalMask, SurvivorsMaskARankThatExitedBetweenCallsAndGoOn) {
  constexpr int kGone = 2;
  for (int nodes : {1, 4, 2}) {
    if (nodes == 1 && Verbs()) continue;
    const auto before = DevShm();
    const Finished l = RunJob(nodes, "", 0, {"--exit-between", std::to_string(kGone)});
    ASSERT_NE(l.status, -1) << "hung:\n" << l.out;
    EXPECT_TRUE(WIFEXITED(l.status) && WEXITSTATUS(l.status) == 0) << l.out;
    const Parsed p = Parse(l.out);
    EXPECT_TRUE(p.failed.empty()) << l.out;
    EXPECT_TRUE(p.check_failed.empty()) << l.out;
    EXPECT_NE(l.out.find(fmt::format("fault-worker: rank {} exits between calls", kGone)), std::string::npos)
        << l.out;
    for (int r = 0; r < kRanks; ++r) {
      EXPECT_NE(l.out.find(fmt::format("fault-worker: rank {} normal mode without []: 2 rounds checked", r)),
                std::string::npos)
          << "rank " << r << " before the exit:\n"
          << l.out;
      if (r == kGone) continue;
      const std::string want =
          fmt::format("fault-worker: rank {} normal mode without [{}]: 2 rounds checked", r, kGone);
      EXPECT_NE(l.out.find(want), std::string::npos) << "no '" << want << "':\n" << l.out;
    }
    NothingLeft(p, before);
    std::printf("normal mask after an exit between calls, %s: %.1f s\n", Topology(nodes).c_str(), l.seconds);
  }
}

class FaultMatrix : public ::testing::TestWithParam<Cell> {};

TEST_P(FaultMatrix, EverySurvivorNamesTheDeadRank) {
  const Cell c = GetParam();
  const std::string spec = fmt::format("rank={},point={},after={}", c.victim, c.point, c.after);
  SCOPED_TRACE("EPX_FAULT=" + spec + " on " + Topology(c.nodes));
  const auto before = DevShm();
  // after <= 3 and one hit per call or more: the death comes before the 4th round, which the survivors
  // cannot finish without the victim (were it in the last one, they might all be done and only the final
  // bootstrap barrier would notice: "rank V disconnected", also a peer failure, but not this one).
  const Finished l = RunJob(c.nodes, spec, 4);
  Row row{CellName(c), c.victim, {}, {}, "FAIL"};
  const RecordRow record(row, Rows());
  Parsed p;
  CheckTheDeath(l, c.victim, c.point, &p);
  if (HasFatalFailure()) return;

  // Every survivor: a peer failure naming the dead rank, well before the deadline. On shm the process
  // scan names it ("rank V (pid P, node n) died"); on verbs a survivor may also learn it from the verbs
  // domain first (a failed liveness probe or work request naming rank V), which counts if it names V.
  const std::string named =
      fmt::format("rank {} (pid {}, node {}) died", c.victim, p.victim_pid, c.victim / (kRanks / c.nodes));
  double worst = 0;
  bool all_named = true;
  for (int r = 0; r < kRanks; ++r) {
    if (r == c.victim) continue;
    auto it = p.failed.find(r);
    if (it == p.failed.end()) {
      ADD_FAILURE() << "rank " << r << " reported no error:\n" << l.out;
      all_named = false;
      continue;
    }
    const double secs = static_cast<double>(it->second.first - p.victim_ns) / 1e9;
    row.secs[r] = secs;
    worst = std::max(worst, secs);
    const Naming n = NamingOf(it->second.second, c.victim);
    const bool ok = it->second.second.find(named) != std::string::npos || (Verbs() && n.rank == c.victim);
    row.how[r] = n.how.empty() ? "?" : n.rank == c.victim ? n.how : fmt::format("{} r{}", n.how, n.rank);
    EXPECT_TRUE(ok) << "rank " << r << "'s error does not name " << (Verbs() ? "rank V: " : "") << named
                    << (n.rank >= 0 ? fmt::format(" (it names rank {}, by {})", n.rank, n.how) : "") << ":\n"
                    << it->second.second;
    const bool peer_failure = it->second.second.find("): peer failure: ") != std::string::npos;
    EXPECT_TRUE(peer_failure) << "not a peer failure: " << it->second.second;
    all_named = all_named && ok && peer_failure;
    EXPECT_LE(secs, kTimeoutMs / 1000.0 + 1.0)
        << "rank " << r << " reported the death after " << secs << " s";
  }

  const bool left_nothing = NothingLeft(p, before);
  const bool pass = all_named && worst <= kTimeoutMs / 1000.0 + 1.0 && left_nothing && WIFEXITED(l.status) &&
                    WEXITSTATUS(l.status) == 137;
  row.verdict = pass ? "ok" : "FAIL";
  std::printf("%s: survivors failed %.2f s max after the death; job %.1f s\n", row.cell.c_str(), worst,
              l.seconds);
}

INSTANTIATE_TEST_SUITE_P(Cells, FaultMatrix, ::testing::ValuesIn(MakeCells()), [](const auto& info) {
  return GtestName(fmt::format("{}_r{}_after{}_{}", info.param.point, info.param.victim, info.param.after,
                               TopologyTag(info.param.nodes)));
});

// ---- Masked cells ----------------------------------------------------------------------------------

struct MaskCell {
  const char* point;
  int victim;
  int after;
  int nodes;
  int channels;  // LL channels of the worker's buffer: with 2, a .send point kills the victim while its
                 // other channel may already have posted part of the call
};

// Every LL point x every victim rank on 2 nodes x 2 (shm RDMA between the nodes; each rank is a remote
// peer of two ranks and a node-local one of one), and every LL point with two victims in turn on 1 node x
// 4 (all peers node-local; 24 cells of ~1 s). `after` (1..3) puts the death into the first, second or
// third round (with 2 channels a .send point is hit twice per call: then after=2 kills the victim on its
// second channel while the first one posts), and the channels alternate so that each point gets both.
std::vector<MaskCell> MakeMaskCells() {
  static constexpr const char* kPoints[] = {"ll.dispatch.send", "ll.dispatch.recv", "ll.combine.send",
                                            "ll.combine.recv"};
  std::vector<MaskCell> cells;
  if (Verbs()) {  // one guest under TCG: every point once, victims on both nodes, 1 and 2 channels
    cells.push_back({kPoints[0], 1, 2, 2, 1});
    cells.push_back({kPoints[1], 3, 2, 2, 2});
    cells.push_back(
        {kPoints[2], 0, 1, 2, 1});  // 1 channel: the one .send cell whose call must drop the victim
    cells.push_back({kPoints[3], 2, 1, 2, 2});
    cells.push_back({kPoints[1], 2, 2, 4, 1});  // 4 nodes x 1: the normal phase masks a whole node over verbs
    return cells;
  }
  int k = 0;
  for (int i = 0; i < 4; ++i)
    for (int victim = 0; victim < kRanks; ++victim, ++k)
      cells.push_back({kPoints[i], victim, 1 + k % 3, 2, 1 + (i + victim) % 2});
  for (int i = 0; i < 4; ++i)
    for (int victim : {i % kRanks, (i + 2) % kRanks}) {
      cells.push_back({kPoints[i], victim, 1 + k % 3, 1, 1 + k % 2});
      ++k;
    }
  // 4 nodes x 1 (every peer behind the RDMA domain; the victim is a whole node, so the normal phase
  // after the mask runs checked rounds across nodes): every point once, victims in turn.
  for (int i = 0; i < 4; ++i, ++k) cells.push_back({kPoints[i], (i + 1) % kRanks, 1 + k % 3, 4, 1 + k % 2});
  return cells;
}

std::string MaskCellName(const MaskCell& c) {
  return fmt::format("{} after={} victim=r{} ({}, {} ch)", c.point, c.after, c.victim, Topology(c.nodes),
                     c.channels);
}

struct MaskRow {
  std::string cell;
  int victim = -1;
  std::map<int, double> secs;  // survivor -> seconds from the death to its mask warning
  double done = 0;             // seconds from the death until the last survivor was done
  std::string either;          // outcomes of the calls that may go either way
  std::string normal;          // the survivors' normal phase: "2 rounds" / "refused" (all agreed) or a mix
  std::string verdict;
};
std::vector<MaskRow>& MaskRows() {
  static std::vector<MaskRow> rows;
  return rows;
}

class FaultMatrixMasked : public ::testing::TestWithParam<MaskCell> {};

TEST_P(FaultMatrixMasked, SurvivorsMaskTheDeadRankAndMatchTheReferenceWithoutIt) {
  const MaskCell c = GetParam();
  const std::string spec = fmt::format("rank={},point={},after={}", c.victim, c.point, c.after);
  SCOPED_TRACE("EPX_FAULT=" + spec + " on " + Topology(c.nodes) +
               fmt::format(", fault_worker --mask --ll-channels {}", c.channels));
  const auto before = DevShm();
  // --rounds is ignored with a victim: the worker runs up to the round of the death and 3 more.
  const Finished l = RunJob(c.nodes, spec, 0, {"--mask", "--ll-channels", std::to_string(c.channels)});
  MaskRow row{MaskCellName(c), c.victim, {}, 0, "", "", "FAIL"};
  // Then normal mode without the victim (fault_worker.cc RunNormalPhase): 2 checked rounds.
  const std::string normal_want = "checked 2";
  std::set<std::string> normal_seen;
  const RecordRow record(row, MaskRows());
  Parsed p;
  CheckTheDeath(l, c.victim, c.point, &p);
  if (HasFatalFailure()) return;

  // Every survivor: masked the victim (the library's warning, timed), checked every result, exited 0.
  // And it went on at once: the death is seen by the liveness scan (~0.1 s), so no wait may run into its
  // deadline (a "timeout" error line), and every survivor is done well before EPX_TIMEOUT after the death
  // (a survivor stuck in a wait for the dead rank until the deadline would still pass every other check).
  EXPECT_TRUE(p.check_failed.empty()) << ::testing::PrintToString(p.check_failed) << "\n" << l.out;
  EXPECT_TRUE(p.failed.empty()) << "a call failed although mask_on_failure is on:\n" << l.out;
  EXPECT_TRUE(p.timeouts.empty()) << "a survivor waited for the dead rank until its deadline: "
                                  << ::testing::PrintToString(p.timeouts) << "\n"
                                  << l.out;
  const double bound = kTimeoutMs / 1000.0 + 1.0, done_bound = kTimeoutMs / 2000.0;
  double worst = 0;
  bool survivors_ok = true;
  for (int r = 0; r < kRanks; ++r) {
    if (r == c.victim) continue;
    bool ok = true;
    auto m = p.masked.find(r);
    if (m == p.masked.end()) {
      ADD_FAILURE() << "rank " << r << " did not finish with the victim masked:\n" << l.out;
      ok = false;
    } else {
      EXPECT_EQ(m->second.ranks, std::to_string(c.victim)) << "rank " << r << "'s final MaskedRanks";
      EXPECT_EQ(m->second.rounds_after, 3) << "rank " << r << "'s rounds checked after the death";
      const double done = static_cast<double>(m->second.t_ns - p.victim_ns) / 1e9;
      row.done = std::max(row.done, done);
      EXPECT_LE(done, done_bound) << "rank " << r << " was done only " << done << " s after the death";
      ok = ok && m->second.ranks == std::to_string(c.victim) && m->second.rounds_after == 3 &&
           done <= done_bound;
    }
    const auto nm = p.normal.find(r);
    const std::string normal_got = nm == p.normal.end() ? "none" : nm->second;
    normal_seen.insert(normal_got);
    EXPECT_EQ(normal_got, normal_want) << "rank " << r << "'s normal phase after the mask:\n" << l.out;
    ok = ok && normal_got == normal_want;
    auto code = p.exit_code.find(r);
    EXPECT_TRUE(code != p.exit_code.end() && code->second == 0) << "rank " << r << " did not exit 0:\n"
                                                                << l.out;
    ok = ok && code != p.exit_code.end() && code->second == 0;
    auto n = p.notice.find(r);
    if (n == p.notice.end()) {
      ADD_FAILURE() << "rank " << r << " logged no mask warning:\n" << l.out;
      ok = false;
    } else {
      EXPECT_EQ(n->second.first, c.victim) << "rank " << r << " masked another rank first:\n" << l.out;
      const double secs = static_cast<double>(n->second.second - p.victim_ns) / 1e9;
      row.secs[r] = secs;
      worst = std::max(worst, secs);
      EXPECT_LE(secs, bound) << "rank " << r << " masked the victim " << secs << " s after its death";
      ok = ok && n->second.first == c.victim && secs <= bound;
    }
    survivors_ok = survivors_ok && ok;
  }
  for (const std::string& n : normal_seen)
    row.normal += (row.normal.empty() ? "" : " / ") + (n == "checked 2" ? std::string("2 rounds") : n);
  for (const auto& [outcome, count] : p.either)
    row.either += fmt::format("{}{} {}", row.either.empty() ? "" : "; ", count,
                              outcome.starts_with("with ")      ? "with"
                              : outcome.starts_with("without ") ? "without"
                                                                : "same");

  const bool left_nothing = NothingLeft(p, before);
  const bool pass = survivors_ok && p.check_failed.empty() && p.failed.empty() && p.timeouts.empty() &&
                    left_nothing && WIFEXITED(l.status) && WEXITSTATUS(l.status) == 137;
  row.verdict = pass ? "ok" : "FAIL";
  std::printf(
      "%s: survivors masked the victim %.2f s max after its death, all done after %.2f s; either-way calls: "
      "%s; job %.1f s\n",
      row.cell.c_str(), worst, row.done, row.either.empty() ? "-" : row.either.c_str(), l.seconds);
}

INSTANTIATE_TEST_SUITE_P(Cells, FaultMatrixMasked, ::testing::ValuesIn(MakeMaskCells()),
                         [](const auto& info) {
                           return GtestName(fmt::format("{}_r{}_after{}_{}_ch{}", info.param.point,
                                                        info.param.victim, info.param.after,
                                                        TopologyTag(info.param.nodes), info.param.channels));
                         });

// A row's cells of the ranks: "killed" for the victim, a survivor's seconds as `cell` writes them, "none"
// for a survivor without; `worst` gets the largest of the seconds.
std::string RankCells(int victim, const std::map<int, double>& secs,
                      const std::function<std::string(int, double)>& cell, double* worst) {
  std::string t;
  *worst = 0;
  for (int r = 0; r < kRanks; ++r) {
    if (r == victim) {
      t += " killed |";
    } else if (auto it = secs.find(r); it != secs.end()) {
      t += cell(r, it->second);
      *worst = std::max(*worst, it->second);
    } else {
      t += " none |";
    }
  }
  return t;
}

void PrintMasked() {
  if (MaskRows().empty()) return;
  std::string t = fmt::format(
      "\nMasked fault matrix (fault_worker --mask, LlBuffer mask_on_failure): seconds from the victim's "
      "SIGKILL to each survivor's mask warning (bound {} s); every survivor then ran 3 more rounds, each "
      "result bitwise equal to the reference without the victim, and exited 0; \"done\": seconds from the "
      "death until the last survivor finished them (bound {} s). \"either-way calls\": (survivor, call) "
      "pairs that could legitimately keep or drop the victim's part (fault_worker.cc MaskWant) and what "
      "they did. \"normal after\": then the survivors' NormalBuffer without the victim (MaskRank): 2 rounds "
      "checked bitwise against the reference without it (on 2x2 through a relay: the victim's same-index "
      "rank on the other node sends through a node peer).\n\n",
      kTimeoutMs / 1000 + 1, kTimeoutMs / 2000.0);
  t += TableHead("cell (EPX_FAULT point, hit, victim, topology, LL channels)", kRanks,
                 {"max", "done", "either-way calls", "normal after", "result"});
  for (const MaskRow& row : MaskRows()) {
    double worst = 0;
    const auto secs_cell = [](int, double secs) { return fmt::format(" {:.3f} |", secs); };
    t += "| " + row.cell + " |" + RankCells(row.victim, row.secs, secs_cell, &worst);
    t += fmt::format(" {:.3f} | {:.2f} | {} | {} | {} |\n", worst, row.done,
                     row.either.empty() ? "-" : row.either, row.normal, row.verdict);
  }
  std::fputs(t.c_str(), stdout);
}

// The matrix, then the masked one, once every cell ran.
void PrintTables() {
  if (!Rows().empty()) {
    std::string t = fmt::format(
        "\nFault matrix: seconds from the victim's SIGKILL to each survivor's error (EPX_TIMEOUT={} s, bound "
        "{} s; epx-run --grace {} s; 4 ranks; 2-node cells with EPX_RDMA={}){}\n\n",
        kTimeoutMs / 1000, kTimeoutMs / 1000 + 1, kGrace, Rdma(),
        Verbs()
            ? "; after the time, what named the dead rank: died = the process scan (\"rank V (pid P, node "
              "n) died\"), probe = a failed verbs liveness probe (\"rank V is unreachable\"), QP = a failed "
              "work request to or from it; \"probe r0\": the error names rank 0, not the victim"
            : "");
    t += TableHead("cell (EPX_FAULT point, hit, victim, topology)", kRanks, {"max", "result"});
    for (const Row& row : Rows()) {
      double worst = 0;
      const auto secs_cell = [&](int r, double secs) {
        auto how = row.how.find(r);
        return Verbs() && how != row.how.end() ? fmt::format(" {:.2f} {} |", secs, how->second)
                                               : fmt::format(" {:.2f} |", secs);
      };
      t += "| " + row.cell + " |" + RankCells(row.victim, row.secs, secs_cell, &worst);
      t += fmt::format(" {:.2f} | {} |\n", worst, row.verdict);
    }
    std::fputs(t.c_str(), stdout);
  }
  PrintMasked();
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (const std::string r = Rdma(); r != "shm" && r != "verbs") {
    std::fprintf(stderr, "fault_matrix_test: EPX_FAULT_MATRIX_RDMA='%s': expected shm or verbs\n", r.c_str());
    return 2;
  }
  return RunAllThenPrint(argc, argv, PrintTables);
}
