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
// point once on 2 nodes x 2 with the victims in turn, the baselines on 2 nodes x 2 only, and two masked
// cells. All ranks share the guest's kernel, so the survivors still see the death by the process scan;
// what changes is the data path they are caught in (RC QPs, the verbs domain's waits). Deaths seen only
// over the network are tests/fault/rxe_fault_two_hosts_test.cc.
//
// Masked cells (FaultMatrixMasked, issue 7: "with masking on, survivors continue and their results equal
// the reference computed without the dead rank"): fault_worker --mask runs low-latency rounds only, on
// an LlBuffer with mask_on_failure, and checks every result of every rank bitwise against the reference
// (with the victim before its death, without it after; fault_worker.cc MaskWant() says exactly which
// call must equal which). The victim dies at each LL point, every rank in turn on 2 nodes x 2 and two
// ranks on 1 node x 4, with one or two LL channels (MakeMaskCells). Asserted per cell: the victim died at the
// point; epx-run exits 137 naming it; every survivor logged the library's mask warning for the victim within
// EPX_TIMEOUT + 1 s of the death (printed: seconds from the death to that warning), printed "masked [V], 3
// rounds checked after the death", no check failed, and exited 0 -- and went on at once: no wait of a
// survivor ran into its deadline and every survivor was done within EPX_TIMEOUT / 2 of the death (a survivor
// stuck in a wait for the dead rank until the deadline would pass every other check); nothing left behind. A
// second table lists the times.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/subprocess.h"

namespace {

using namespace epx::test;  // NOLINT: test helpers
using Clock = std::chrono::steady_clock;

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
// Masked cells on verbs only with EPX_FAULT_MATRIX_VERBS_MASKED=1: they fail today (the survivors mask the
// victim, but a later call fails on the dead rank's QP; see the issue note), so rxe_fault_matrix leaves
// them out until the library handles it.
bool VerbsMasked() {
  const char* v = std::getenv("EPX_FAULT_MATRIX_VERBS_MASKED");
  return v != nullptr && std::string(v) == "1";
}
std::string Topology(int nodes) {
  return nodes == 2 ? "2x2 " + Rdma() : "1x4";
}
// For gtest names: the native matrix keeps its names ("2x2"), the verbs cells say so ("2x2_verbs").
std::string TopologyTag(int nodes) {
  return nodes == 2 ? (Verbs() ? "2x2_verbs" : "2x2") : "1x4";
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
  std::map<int, std::string> how;  // survivor -> how its error named the dead rank (NamedIn)
  std::string verdict;
};

// A rank a survivor's error names as failed, and how: "died" (the process scan, transport/liveness.h, which
// lists every dead rank), "probe" (a verbs liveness probe got no acknowledgement), "QP" (a work request to
// or from it failed). `victim` if the error names it so, else the first rank it names; rank -1: none.
struct Naming {
  int rank = -1;
  std::string how;
};
Naming NamedIn(const std::string& line, int victim) {
  static const std::pair<std::regex, const char*> kForms[] = {
      {std::regex(R"(rank (\d+) \(pid \d+, node \d+\) died)"), "died"},
      {std::regex(R"(rank (\d+) is unreachable: liveness probe)"), "probe"},
      {std::regex(R"( to rank (\d+) failed on channel|\(rank (\d+) -> rank \d+, channel)"), "QP"}};
  Naming first;
  for (const auto& [re, how] : kForms)
    for (std::sregex_iterator it(line.begin(), line.end(), re), end; it != end; ++it) {
      const Naming n{std::stoi((*it)[1].matched ? (*it)[1] : (*it)[2]), how};
      if (n.rank == victim) return n;
      if (first.rank < 0) first = n;
    }
  return first;
}
std::vector<Row>& Rows() {
  static std::vector<Row> rows;
  return rows;
}

std::set<std::string> DevShm() {
  std::set<std::string> s;
  for (auto& e : std::filesystem::directory_iterator("/dev/shm")) s.insert(e.path().filename());
  return s;
}

// Gone = no such process, or a zombie nobody reaped yet.
bool PidGone(int pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t paren = s.rfind(')');
  return paren == std::string::npos || paren + 2 >= s.size() || s[paren + 2] == 'Z' || s[paren + 2] == 'X';
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
};

Parsed Parse(const std::string& out) {
  static const std::regex ready(R"(^\[r(\d+)\] fault-worker: ready rank (\d+) pid (\d+)$)");
  static const std::regex death(
      R"(^\[r(\d+)\] epx\[r\d+\] fault injection \(EPX_FAULT\): rank (\d+) \(pid (\d+)\) )"
      R"(kills itself with SIGKILL at (\S+) \(hit \d+\) t_mono_ns=(\d+)$)");
  static const std::regex failed(R"(^\[r(\d+)\] fault-worker: rank (\d+) FAILED t_mono_ns=(\d+) in (.*)$)");
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
  Parsed p;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_match(line, m, ready)) {
      p.pid[std::stoi(m[2])] = std::stoi(m[3]);
    } else if (std::regex_match(line, m, death)) {
      p.victim = std::stoi(m[2]);
      p.victim_pid = std::stoi(m[3]);
      p.victim_point = m[4];
      p.victim_ns = std::stoll(m[5]);
    } else if (std::regex_match(line, m, failed)) {
      p.failed[std::stoi(m[2])] = {std::stoll(m[3]), line};
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
    }
  }
  return p;
}

struct Launch {
  int status = -1;
  std::string out;
  double seconds = 0;
};

Launch RunJob(int nodes, const std::string& fault, int rounds, const std::vector<std::string>& extra = {}) {
  Env env = {{"EPX_RDMA", Rdma()},
             {"EPX_TIMEOUT", std::to_string(kTimeoutMs) + "ms"},
             {"EPX_HEAP_SIZE", "32M"},
             {"EPX_LOG_LEVEL", "warn"},
             {"EPX_FAULT", fault}};
  const auto t0 = Clock::now();
  std::vector<std::string> argv = {
      EPX_RUN_BIN, "-n", std::to_string(kRanks), "--nodes",  std::to_string(nodes), "--grace",
      kGrace,      "--", EPX_FAULT_WORKER_BIN,   "--rounds", std::to_string(rounds)};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Proc p = Spawn(argv, env);
  Launch l;
  l.status = WaitExit(p, 90);
  l.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  l.out = p.Output();
  return l;
}

// Every pid gone within `secs` (the launcher has exited: nothing may outlive it for long).
bool AllGone(const std::map<int, int>& pids, double secs) {
  const auto end = Clock::now() + std::chrono::milliseconds(static_cast<int>(secs * 1000));
  for (;;) {
    bool all = true;
    for (auto [rank, pid] : pids) all = all && PidGone(pid);
    if (all) return true;
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// New /dev/shm entries that stay (a concurrent unrelated program's short-lived segment gets 2 s to go).
std::vector<std::string> NewShm(const std::set<std::string>& before) {
  std::vector<std::string> added;
  for (int attempt = 0; attempt < 20; ++attempt) {
    added.clear();
    for (const auto& n : DevShm())
      if (!before.count(n)) added.push_back(n);
    if (added.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return added;
}

TEST(FaultMatrixBaseline, WithoutAFaultEveryRankFinishes) {
  // The worker itself is sound: without EPX_FAULT every round passes on both topologies, so an error in
  // a cell below is the injected death's doing.
  for (int nodes : {2, 1}) {
    if (nodes == 1 && Verbs()) continue;  // no RDMA domain on one node: the native matrix covers it
    Launch l = RunJob(nodes, "", 2);
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
  // is masked, on both topologies and with 1 and 2 channels, so a check that fails in a masked cell below
  // is about the death, not about the checker.
  if (Verbs() && !VerbsMasked()) GTEST_SKIP() << "no masked cells on verbs (EPX_FAULT_MATRIX_VERBS_MASKED=1)";
  for (int nodes : {2, 1}) {
    if (nodes == 1 && Verbs()) continue;
    for (int channels : {1, 2}) {
      if (channels == 2 && Verbs()) continue;  // the verbs masked cells are 1-channel ones
      Launch l = RunJob(nodes, "", 4, {"--mask", "--ll-channels", std::to_string(channels)});
      ASSERT_NE(l.status, -1) << "hung:\n" << l.out;
      EXPECT_TRUE(WIFEXITED(l.status) && WEXITSTATUS(l.status) == 0) << l.out;
      Parsed p = Parse(l.out);
      EXPECT_EQ(p.done.size(), static_cast<size_t>(kRanks)) << l.out;
      EXPECT_TRUE(p.check_failed.empty()) << l.out;
      EXPECT_TRUE(p.failed.empty()) << l.out;
      std::printf("baseline --mask %s, %d LL channel(s): %.1f s for 4 checked rounds incl. setup\n",
                  Topology(nodes).c_str(), channels, l.seconds);
    }
  }
}

class FaultMatrix : public ::testing::TestWithParam<Cell> {};

TEST_P(FaultMatrix, EverySurvivorNamesTheDeadRank) {
  const Cell c = GetParam();
  const std::string spec = fmt::format("rank={},point={},after={}", c.victim, c.point, c.after);
  SCOPED_TRACE("EPX_FAULT=" + spec +
               (c.nodes == 2 ? " on 2 nodes x 2, EPX_RDMA=" + Rdma() : " on 1 node x 4"));
  const auto before = DevShm();
  // after <= 3 and one hit per call or more: the death comes before the 4th round, which the survivors
  // cannot finish without the victim (were it in the last one, they might all be done and only the final
  // bootstrap barrier would notice: "rank V disconnected", also a peer failure, but not this one).
  Launch l = RunJob(c.nodes, spec, 4);
  Row row{CellName(c), c.victim, {}, {}, "FAIL"};
  struct Record {  // the row goes into the table whatever the assertions say
    Row& r;
    ~Record() { Rows().push_back(r); }
  } record{row};

  ASSERT_NE(l.status, -1) << "the job did not end within 90 s:\n" << l.out;
  const Parsed p = Parse(l.out);
  ASSERT_EQ(p.pid.size(), static_cast<size_t>(kRanks)) << "not every rank came up:\n" << l.out;
  ASSERT_EQ(p.victim, c.victim) << "the victim did not die at " << c.point << ":\n" << l.out;
  EXPECT_EQ(p.victim_point, c.point);
  EXPECT_EQ(p.victim_pid, p.pid.at(c.victim));

  // The launcher: non-zero, naming the cause last.
  EXPECT_TRUE(WIFEXITED(l.status) && WEXITSTATUS(l.status) == 128 + SIGKILL) << l.out;
  EXPECT_NE(l.out.find(fmt::format("epx-run: exit code 137: rank {} (pid {}) killed by SIGKILL (signal 9",
                                   c.victim, p.victim_pid)),
            std::string::npos)
      << l.out;

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
    const Naming n = NamedIn(it->second.second, c.victim);
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

  // Nothing left behind.
  const bool gone = AllGone(p.pid, 3);
  EXPECT_TRUE(gone) << "a rank process outlived the launcher";
  const auto added = NewShm(before);
  EXPECT_TRUE(added.empty()) << "new /dev/shm entries: " << ::testing::PrintToString(added);
  const bool pass = all_named && worst <= kTimeoutMs / 1000.0 + 1.0 && gone && added.empty() &&
                    WIFEXITED(l.status) && WEXITSTATUS(l.status) == 137;
  row.verdict = pass ? "ok" : "FAIL";
  std::printf("%s: survivors failed %.2f s max after the death; job %.1f s\n", row.cell.c_str(), worst,
              l.seconds);
}

INSTANTIATE_TEST_SUITE_P(Cells, FaultMatrix, ::testing::ValuesIn(MakeCells()), [](const auto& info) {
  std::string n = fmt::format("{}_r{}_after{}_{}", info.param.point, info.param.victim, info.param.after,
                              TopologyTag(info.param.nodes));
  for (char& ch : n)
    if (ch == '.') ch = '_';
  return n;
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
  if (Verbs()) {  // one guest under TCG: two cells, a send point and a receive point, both nodes' ranks
    if (VerbsMasked()) {
      cells.push_back({kPoints[0], 1, 2, 2, 1});
      cells.push_back({kPoints[3], 2, 1, 2, 1});
    }
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
  SCOPED_TRACE("EPX_FAULT=" + spec +
               (c.nodes == 2 ? " on 2 nodes x 2, EPX_RDMA=" + Rdma() : " on 1 node x 4") +
               fmt::format(", fault_worker --mask --ll-channels {}", c.channels));
  const auto before = DevShm();
  // --rounds is ignored with a victim: the worker runs up to the round of the death and 3 more.
  Launch l = RunJob(c.nodes, spec, 0, {"--mask", "--ll-channels", std::to_string(c.channels)});
  MaskRow row{MaskCellName(c), c.victim, {}, 0, "", "FAIL"};
  struct Record {  // the row goes into the table whatever the assertions say
    MaskRow& r;
    ~Record() { MaskRows().push_back(r); }
  } record{row};

  ASSERT_NE(l.status, -1) << "the job did not end within 90 s:\n" << l.out;
  const Parsed p = Parse(l.out);
  ASSERT_EQ(p.pid.size(), static_cast<size_t>(kRanks)) << "not every rank came up:\n" << l.out;
  ASSERT_EQ(p.victim, c.victim) << "the victim did not die at " << c.point << ":\n" << l.out;
  EXPECT_EQ(p.victim_point, c.point);
  EXPECT_EQ(p.victim_pid, p.pid.at(c.victim));

  // The launcher: the victim's death is the job's failure, named last.
  EXPECT_TRUE(WIFEXITED(l.status) && WEXITSTATUS(l.status) == 128 + SIGKILL) << l.out;
  EXPECT_NE(l.out.find(fmt::format("epx-run: exit code 137: rank {} (pid {}) killed by SIGKILL (signal 9",
                                   c.victim, p.victim_pid)),
            std::string::npos)
      << l.out;

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
  for (const auto& [outcome, count] : p.either)
    row.either += fmt::format("{}{} {}", row.either.empty() ? "" : "; ", count,
                              outcome.starts_with("with ")      ? "with"
                              : outcome.starts_with("without ") ? "without"
                                                                : "same");

  // Nothing left behind.
  const bool gone = AllGone(p.pid, 3);
  EXPECT_TRUE(gone) << "a rank process outlived the launcher";
  const auto added = NewShm(before);
  EXPECT_TRUE(added.empty()) << "new /dev/shm entries: " << ::testing::PrintToString(added);
  const bool pass = survivors_ok && p.check_failed.empty() && p.failed.empty() && p.timeouts.empty() &&
                    gone && added.empty() && WIFEXITED(l.status) && WEXITSTATUS(l.status) == 137;
  row.verdict = pass ? "ok" : "FAIL";
  std::printf(
      "%s: survivors masked the victim %.2f s max after its death, all done after %.2f s; either-way calls: "
      "%s; job %.1f s\n",
      row.cell.c_str(), worst, row.done, row.either.empty() ? "-" : row.either.c_str(), l.seconds);
}

GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(FaultMatrixMasked);  // no masked cells on verbs by default
INSTANTIATE_TEST_SUITE_P(Cells, FaultMatrixMasked, ::testing::ValuesIn(MakeMaskCells()),
                         [](const auto& info) {
                           std::string n = fmt::format("{}_r{}_after{}_{}_ch{}", info.param.point,
                                                       info.param.victim, info.param.after,
                                                       TopologyTag(info.param.nodes), info.param.channels);
                           for (char& ch : n)
                             if (ch == '.') ch = '_';
                           return n;
                         });

// Prints the matrix once every cell ran (gtest environments tear down after all tests).
class PrintMatrix : public ::testing::Environment {
 public:
  void TearDown() override {
    if (Rows().empty()) {
      PrintMasked();
      return;
    }
    std::string t = fmt::format(
        "\nFault matrix: seconds from the victim's SIGKILL to each survivor's error (EPX_TIMEOUT={} s, bound "
        "{} s; epx-run --grace {} s; 4 ranks; 2-node cells with EPX_RDMA={}){}\n\n| cell (EPX_FAULT point, "
        "hit, "
        "victim, topology) |",
        kTimeoutMs / 1000, kTimeoutMs / 1000 + 1, kGrace, Rdma(),
        Verbs()
            ? "; after the time, what named the dead rank: died = the process scan (\"rank V (pid P, node n) "
              "died\"), probe = a failed verbs liveness probe (\"rank V is unreachable\"), QP = a failed "
              "work "
              "request to or from it; \"probe r0\": the error names rank 0, not the victim"
            : "");
    for (int r = 0; r < kRanks; ++r) t += fmt::format(" r{} |", r);
    t += " max | result |\n|---|";
    for (int r = 0; r <= kRanks + 1; ++r) t += "---|";
    t += "\n";
    for (const Row& row : Rows()) {
      t += "| " + row.cell + " |";
      double worst = 0;
      for (int r = 0; r < kRanks; ++r) {
        if (r == row.victim) {
          t += " killed |";
        } else if (auto it = row.secs.find(r); it != row.secs.end()) {
          auto how = row.how.find(r);
          t += Verbs() && how != row.how.end() ? fmt::format(" {:.2f} {} |", it->second, how->second)
                                               : fmt::format(" {:.2f} |", it->second);
          worst = std::max(worst, it->second);
        } else {
          t += " none |";
        }
      }
      t += fmt::format(" {:.2f} | {} |\n", worst, row.verdict);
    }
    std::fputs(t.c_str(), stdout);
    PrintMasked();
    std::fflush(stdout);
  }

 private:
  static void PrintMasked() {
    if (MaskRows().empty()) return;
    std::string t = fmt::format(
        "\nMasked fault matrix (fault_worker --mask, LlBuffer mask_on_failure): seconds from the victim's "
        "SIGKILL to each survivor's mask warning (bound {} s); every survivor then ran 3 more rounds, each "
        "result bitwise equal to the reference without the victim, and exited 0; \"done\": seconds from the "
        "death until the last survivor finished them (bound {} s). \"either-way calls\": (survivor, call) "
        "pairs that could legitimately keep or drop the victim's part (fault_worker.cc MaskWant) and what "
        "they did.\n\n| cell (EPX_FAULT point, hit, victim, topology, LL channels) |",
        kTimeoutMs / 1000 + 1, kTimeoutMs / 2000.0);
    for (int r = 0; r < kRanks; ++r) t += fmt::format(" r{} |", r);
    t += " max | done | either-way calls | result |\n|---|";
    for (int r = 0; r <= kRanks + 3; ++r) t += "---|";
    t += "\n";
    for (const MaskRow& row : MaskRows()) {
      t += "| " + row.cell + " |";
      double worst = 0;
      for (int r = 0; r < kRanks; ++r) {
        if (r == row.victim) {
          t += " killed |";
        } else if (auto it = row.secs.find(r); it != row.secs.end()) {
          t += fmt::format(" {:.3f} |", it->second);
          worst = std::max(worst, it->second);
        } else {
          t += " none |";
        }
      }
      t += fmt::format(" {:.3f} | {:.2f} | {} | {} |\n", worst, row.done,
                       row.either.empty() ? "-" : row.either, row.verdict);
    }
    std::fputs(t.c_str(), stdout);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (const std::string r = Rdma(); r != "shm" && r != "verbs") {
    std::fprintf(stderr, "fault_matrix_test: EPX_FAULT_MATRIX_RDMA='%s': expected shm or verbs\n", r.c_str());
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new PrintMatrix);
  return RUN_ALL_TESTS();
}
