// tests/fault/rxe_fault_two_hosts_test.cc: kill -9 and a cut link across two soft-RoCE hosts (issue 7,
// ctest rxe_fault_two_hosts, labels rxe;fault).
//
// One run of tools/rxe-vm/rxe-run --two-hosts boots two guests joined by a (QEMU UDP) link; in both,
// rxe_fault_two_hosts.sh runs the same cells in lockstep, each host starting its half of 2 nodes x 2 ranks
// (ranks 0,1 on host 0 = 10.99.1.1, ranks 2,3 on host 1) of fault_worker with EPX_RDMA=verbs under
//   epx-run -n 4 --nodes 2 --nnodes 2 --node-rank H --master 10.99.1.1:PORT --grace 12
// The guests' clocks differ, so every time here is the HOST's: this driver reads rxe-run's output line by
// line ("[h0] ..." / "[h1] ...") and stamps each line with its steady clock on arrival.
//
// Kill cells (EPX_FAULT=rank=V,point=P,after=K, victims on both hosts). Per cell:
//   * the victim died at P (its "fault injection" line: the moment of the death);
//   * every survivor, on both hosts, failed a call with a peer failure (not a timeout) within EPX_TIMEOUT +
//     1 s of the death, naming rank V: on the victim's host by the process scan ("rank V (pid P, node n)
//     died"); on the other host by the death notice that scan sends over RDMA before any survivor of the
//     victim's host can fail and exit ("rank V died on its host (death notice ...)",
//     transport/verbs/domain.h), else by a failed verbs liveness probe ("rank V is unreachable") or work
//     request ("... to rank V failed", "(rank V -> rank R, ...)"). Naming a survivor that failed and exited
//     first (a cascade) does not count;
//   * the victim's epx-run exits 137 naming it, the other host's epx-run exits non-zero;
//   * each guest printed "cell N clean": no fault_worker / epx-run left, no new /dev/shm entry.
// Masked kill cells (fault_worker --mask: low-latency rounds on an LlBuffer with mask_on_failure): every
// survivor masks the victim within EPX_TIMEOUT + 1 s of the death (its "mask notice" line naming it; the
// other host learns of the death from the network: the death notice, QP errors and probes), runs 3 more
// rounds whose results equal the reference without the victim, bitwise, then goes on in normal mode without
// it (fault_worker.cc RunNormalPhase): 2 rounds checked bitwise (4 nodes x 1: the victim is a whole logical
// node; 2 x 2: the victim leaves a live rank on its host, and its same-index rank on the other host is
// relayed by a node peer over the other QP between the hosts); and exits 0 (no FAILED line, no check
// failure, no wait that ran into its deadline); the victim's epx-run exits 137 naming it, the other host's
// exits 0; both guests clean. Link cut (last cell): no fault; once the ranks run rounds, host 1 takes eth0
// down. Every rank on both hosts must fail a call made during the rounds with a peer failure naming a rank of
// the OTHER host (or a cascade), within EPX_TIMEOUT + 1 s of host 1's "link down" line; both epx-runs exit
// non-zero; both guests clean. At the end a Markdown table lists per cell and rank the seconds from the event
// to the error and what named whom (died / notice / probe / QP; TIMEOUT = the wait ran into its deadline).
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "tests/fault/fault_driver.h"

namespace {

using namespace epx::test;  // NOLINT: test helpers
using Clock = std::chrono::steady_clock;

constexpr int kRanks = 4;
constexpr int kTimeoutS = 10;  // EPX_TIMEOUT of the ranks
constexpr double kBound = kTimeoutS + 1.0;
constexpr int kBasePort = 29640;        // cell n: master port kBasePort + n (in the guests' own network)
constexpr int kRxeTimeoutS = 300;       // rxe-run --timeout (boot included)
constexpr int kLinkcutRounds = 100000;  // ended by the cut, long before

struct Cell {
  int victim;  // -1: the link cut
  const char* point;
  int after;
  bool mask = false;  // fault_worker --mask: the survivors go on without the victim
  int nodes = 2;      // logical nodes of the 4 ranks (2 per host: 2 x 2, or 4 x 1)
};

// Victims on both hosts, in both modes, at a sender, a forwarder, a receiver and a reducer; rank 0 (the
// bootstrap root) among them.
std::vector<Cell> MakeCells() {
  return {{1, "normal.dispatch.forward", 1},   {2, "normal.combine.reduce", 1},
          {0, "ll.dispatch.recv", 2},          {3, "ll.combine.send", 1},
          {1, "ll.dispatch.recv", 2, true},    {2, "ll.combine.send", 1, true},
          {2, "ll.dispatch.recv", 2, true, 4}, {-1, "link cut", 0}};
}

std::string CellArg(const Cell& c) {
  return c.victim < 0 ? fmt::format("linkcut:{}", kLinkcutRounds)
                      : fmt::format("{}{}:{}:{}", c.mask ? (c.nodes == 4 ? "mask4:" : "mask:") : "", c.victim,
                                    c.point, c.after);
}
std::string CellName(const Cell& c) {
  return c.victim < 0 ? "link cut: host 1 takes eth0 down during rounds"
                      : fmt::format("{}{} after={} victim=r{} (host {}{})", c.mask ? "masked: " : "", c.point,
                                    c.after, c.victim, c.victim / 2, c.nodes == 4 ? ", 4 nodes x 1" : "");
}

struct Line {
  double t = 0;   // host steady clock, seconds since the start of rxe-run
  int host = -1;  // 0, 1, or -1 for rxe-run's own lines
  std::string text;
};

struct GuestRun {
  int status = -1;  // wait status of rxe-run; -1 if it had to be killed
  double seconds = 0;
  std::vector<Line> lines;
};

// Starts rxe-run --two-hosts with the cells, echoes and stamps every output line as it arrives. Bounded:
// SIGTERM at kRxeTimeoutS + 30 s (rxe-run then stops its guests), SIGKILL 20 s later.
GuestRun RunGuests(const std::vector<Cell>& cells) {
  std::vector<std::string> argv = {
      EPX_RXE_RUN,          "--two-hosts", "--timeout",          std::to_string(kRxeTimeoutS), "--",
      EPX_RXE_FAULT_SCRIPT, EPX_RUN_BIN,   EPX_FAULT_WORKER_BIN, std::to_string(kBasePort)};
  for (const Cell& c : cells) argv.push_back(CellArg(c));
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return {};
  const auto t0 = Clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    for (auto [k, v] : std::vector<std::pair<const char*, const char*>>{{"EPX_RDMA", "verbs"},
                                                                        {"EPX_TIMEOUT", "10s"},
                                                                        {"EPX_BOOTSTRAP_TIMEOUT", "90s"},
                                                                        {"EPX_HEAP_SIZE", "32M"},
                                                                        {"EPX_LOG_LEVEL", "warn"},
                                                                        {"EPX_FAULT_GRACE", "12"}})
      ::setenv(k, v, 1);
    ::unsetenv("EPX_FAULT");
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    ::execv(a[0], a.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  GuestRun run;
  auto since = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  static const std::regex host(R"(^\[h([01])\] (.*)$)");
  std::string buf;
  bool termed = false, killed = false;
  for (;;) {
    const double now = since();
    if (!termed && now > kRxeTimeoutS + 30) {
      std::printf("+%.3f driver: rxe-run still running after %d s: SIGTERM\n", now, kRxeTimeoutS + 30);
      ::kill(pid, SIGTERM);
      termed = true;
    } else if (!killed && now > kRxeTimeoutS + 50) {
      ::kill(pid, SIGKILL);
      killed = true;
    }
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, 500) < 0 && errno != EINTR) break;
    if ((p.revents & (POLLIN | POLLHUP)) == 0) continue;
    char chunk[8192];
    const ssize_t n = ::read(fds[0], chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    const double t = since();  // the arrival of everything in this chunk
    if (n > 0) buf.append(chunk, static_cast<size_t>(n));
    for (size_t nl; (nl = buf.find('\n')) != std::string::npos; buf.erase(0, nl + 1)) {
      Line l{t, -1, buf.substr(0, nl)};
      std::printf("+%.3f %s\n", t, l.text.c_str());
      std::smatch m;
      if (std::regex_match(l.text, m, host)) {
        l.host = std::stoi(m[1]);
        l.text = m[2];
      }
      run.lines.push_back(std::move(l));
    }
    if (n <= 0) break;  // EOF: rxe-run (and everything holding the pipe) is gone
  }
  std::fflush(stdout);
  ::close(fds[0]);
  int st = 0;
  if (::waitpid(pid, &st, 0) == pid && !killed) run.status = st;
  run.seconds = since();
  std::printf("+%.3f driver: rxe-run exit status %d after %.1f s\n", run.seconds, run.status, run.seconds);
  return run;
}

// EPX_RXE_FAULT_REPLAY=FILE: judge a saved transcript (this test's stdout: "+SECONDS LINE") instead of
// booting guests: for checking the checks (edit a line, see the cell fail) and for looking at a CI run.
GuestRun Replay(const char* path) {
  GuestRun run;
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) {
    std::printf("driver: cannot open EPX_RXE_FAULT_REPLAY=%s\n", path);
    return run;
  }
  static const std::regex line(R"(^(?:\d+: )?\+(\d+\.\d+) (.*)$)");  // ctest -V prefixes "N: "
  static const std::regex host(R"(^\[h([01])\] (.*)$)");
  static const std::regex end(R"(^driver: rxe-run exit status (-?\d+) after)");
  char* buf = nullptr;
  size_t cap = 0;
  for (ssize_t n; (n = ::getline(&buf, &cap, f)) > 0;) {
    std::string s(buf, static_cast<size_t>(n));
    if (!s.empty() && s.back() == '\n') s.pop_back();
    std::smatch m;
    if (!std::regex_match(s, m, line)) continue;
    Line l{std::stod(m[1]), -1, m[2]};
    if (std::regex_search(l.text, m, end)) {
      run.status = std::stoi(m[1]);
      run.seconds = l.t;
      continue;
    }
    if (std::regex_match(l.text, m, host)) {
      l.host = std::stoi(m[1]);
      l.text = m[2];
    }
    run.lines.push_back(std::move(l));
  }
  std::free(buf);
  std::fclose(f);
  return run;
}

const GuestRun& TheRun() {
  static const GuestRun run = [] {
    const char* replay = std::getenv("EPX_RXE_FAULT_REPLAY");
    return replay != nullptr && *replay != '\0' ? Replay(replay) : RunGuests(MakeCells());
  }();
  return run;
}

// What one cell produced, from both hosts' lines between its "start" marker and the next one.
struct CellOut {
  std::map<int, int> pid;  // rank -> pid ("ready")
  int victim = -1, victim_pid = -1, victim_host = -1;
  std::string victim_point;
  double t_event = -1;  // the victim's death line, or host 1's "link down" line
  struct Failed {
    double t;
    int host;
    std::string text;
  };
  std::map<int, Failed> failed;        // rank -> its FAILED line
  std::map<int, int> rc;               // host -> epx-run's exit code
  std::map<int, std::string> clean;    // host -> "clean" or the LEFTOVER text
  std::map<int, std::string> verdict;  // host -> epx-run's last line ("epx-run: exit code ...")
  std::vector<std::string> notes;      // e.g. "link NOT cut"
  // Masked cells.
  std::map<int, std::pair<int, double>> notice;       // rank -> (rank it masked first, arrival)
  std::map<int, std::pair<std::string, int>> masked;  // rank -> (final MaskedRanks, rounds after the death)
  std::map<int, double> masked_t;                     // rank -> arrival of that line (it was done)
  std::map<int, int> exit_code;                       // rank -> code (epx-run's "exited with code")
  std::map<int, std::string> normal;                  // rank -> its normal phase: "checked N" / "refused"
  std::vector<std::string> bad;                       // check failures and waits that hit their deadline
};

CellOut Collect(const GuestRun& run, int n) {
  static const std::regex start(R"(^rxe-fault: cell (\d+) start host \d)");
  static const std::regex rc(R"(^rxe-fault: cell (\d+) epx-run rc=(\d+) host (\d))");
  static const std::regex clean(R"(^rxe-fault: cell (\d+) (clean|LEFTOVER) host (\d)(.*)$)");
  static const std::regex down(R"(^rxe-fault: cell (\d+) link down host 1$)");
  static const std::regex other(R"(^rxe-fault: cell (\d+) (link NOT cut|'ip link set .* FAILED).*$)");
  static const std::regex notice(R"(^\[r\d+\] fault-worker: rank (\d+) mask notice: masks rank (\d+) )");
  static const std::regex masked(
      R"(^\[r\d+\] fault-worker: rank (\d+) masked \[([\d,]*)\], (\d+) rounds checked after the death)");
  static const std::regex exited(R"(epx-run: rank (\d+) \(pid \d+\) exited with code (\d+))");
  static const std::regex normal(
      R"(^\[r\d+\] fault-worker: rank (\d+) normal mode without \[[\d,]*\]: ((\d+) rounds checked|refused as expected))");
  static const std::regex timeout(R"(^\[r\d+\] epx\[r\d+\] \w error at \S+: timeout: )");
  CellOut o;
  int cur[2] = {0, 0};
  for (const Line& l : run.lines) {
    if (l.host < 0) continue;
    std::smatch m;
    if (std::regex_search(l.text, m, start)) {
      cur[l.host] = std::stoi(m[1]);
      continue;
    }
    if (cur[l.host] != n) continue;
    if (const auto r = ParseReady(l.text)) {
      o.pid[r->rank] = r->pid;
    } else if (const auto d = ParseDeath(l.text)) {
      // The time of the death is the line's arrival, not its t_mono_ns: the guests' clocks differ.
      o.victim = d->rank;
      o.victim_pid = d->pid;
      o.victim_point = d->point;
      o.victim_host = l.host;
      o.t_event = l.t;
    } else if (const auto f = ParseFailure(l.text)) {
      o.failed.emplace(f->rank, CellOut::Failed{l.t, l.host, l.text});
    } else if (std::regex_search(l.text, m, rc)) {
      o.rc[std::stoi(m[3])] = std::stoi(m[2]);
    } else if (std::regex_search(l.text, m, clean)) {
      o.clean[std::stoi(m[3])] = m[2] == "clean" ? "clean" : "LEFTOVER" + std::string(m[4]);
    } else if (std::regex_search(l.text, m, down)) {
      o.t_event = l.t;
    } else if (std::regex_search(l.text, m, other)) {
      o.notes.push_back(l.text);
    } else if (l.text.starts_with("epx-run: exit code ")) {
      o.verdict[l.host] = l.text;
    } else if (std::regex_search(l.text, m, notice)) {
      o.notice.emplace(std::stoi(m[1]), std::pair{std::stoi(m[2]), l.t});  // keeps the first
    } else if (std::regex_search(l.text, m, masked)) {
      o.masked[std::stoi(m[1])] = {m[2], std::stoi(m[3])};
      o.masked_t[std::stoi(m[1])] = l.t;
    } else if (std::regex_search(l.text, m, normal)) {
      o.normal[std::stoi(m[1])] = m[3].matched ? "checked " + m[3].str() : "refused";
    } else if (l.text.find("CHECK FAILED") != std::string::npos ||
               l.text.find("check(s) failed") != std::string::npos || std::regex_search(l.text, m, timeout)) {
      o.bad.push_back(l.text);
    }
    if (std::regex_search(l.text, m, exited)) o.exit_code[std::stoi(m[1])] = std::stoi(m[2]);
  }
  return o;
}

// The status class of a FAILED line: what follows "(round N): ".
std::string StatusClass(const std::string& text) {
  static const std::regex cls(R"(\(round -?\d+\): ([a-z ]+): )");
  std::smatch m;
  return std::regex_search(text, m, cls) ? std::string(m[1]) : "?";
}

struct Row {
  std::string cell;
  int victim = -1;  // -1: link cut
  std::map<int, std::string> col;
  double worst = 0;
  std::string launchers, clean, verdict = "FAIL";
};
std::vector<Row>& Rows() {
  static std::vector<Row> rows;
  return rows;
}

TEST(RxeFaultTwoHosts, GuestsRanEveryCell) {
  const GuestRun& run = TheRun();
  std::string tail;
  for (size_t i = run.lines.size() > 30 ? run.lines.size() - 30 : 0; i < run.lines.size(); ++i)
    tail += run.lines[i].text + "\n";
  ASSERT_NE(run.status, -1) << "rxe-run did not end and was killed; last lines:\n" << tail;
  EXPECT_TRUE(WIFEXITED(run.status) && WEXITSTATUS(run.status) == 0)
      << "rxe-run failed (its reason is above: guest boot, soft-RoCE device, peer guest, timeout); last "
         "lines:\n"
      << tail;
  const std::string all = fmt::format("rxe-fault: all {} cells run host ", MakeCells().size());
  for (int h = 0; h < 2; ++h) {
    bool seen = false;
    for (const Line& l : run.lines) seen = seen || (l.host == h && l.text == all + std::to_string(h));
    EXPECT_TRUE(seen) << "host " << h << " did not run every cell; last lines:\n" << tail;
  }
  std::printf("rxe-run --two-hosts: %.1f s for %zu cells incl. boot\n", run.seconds, MakeCells().size());
}

// A masked cell's survivors (see the header). Fills the row; true if every check held.
bool CheckMasked(const Cell& c, const CellOut& o, Row& row) {
  bool all_ok = true;
  EXPECT_TRUE(o.failed.empty()) << "a call failed although mask_on_failure is on: "
                                << o.failed.begin()->second.text;
  EXPECT_TRUE(o.bad.empty()) << ::testing::PrintToString(o.bad);
  all_ok = o.failed.empty() && o.bad.empty();
  for (int r = 0; r < kRanks; ++r) {
    if (r == c.victim) {
      row.col[r] = fmt::format("killed (h{})", r / 2);
      continue;
    }
    bool ok = true;
    auto n = o.notice.find(r);
    if (n == o.notice.end()) {
      ADD_FAILURE() << "rank " << r << " (host " << r / 2 << ") logged no mask notice";
      row.col[r] = "none";
      all_ok = false;
      continue;
    }
    const double secs = n->second.second - o.t_event;
    row.worst = std::max(row.worst, secs);
    EXPECT_EQ(n->second.first, c.victim) << "rank " << r << " masked another rank first";
    EXPECT_TRUE(secs >= -0.5 && secs <= kBound)
        << "rank " << r << " masked the victim " << secs << " s after its death (bound " << kBound << " s)";
    ok = n->second.first == c.victim && secs >= -0.5 && secs <= kBound;
    auto m = o.masked.find(r);
    const bool finished =
        m != o.masked.end() && m->second.first == std::to_string(c.victim) && m->second.second == 3;
    EXPECT_TRUE(finished) << "rank " << r << " did not finish 3 checked rounds with only the victim masked: "
                          << (m == o.masked.end()
                                  ? "no 'masked' line"
                                  : fmt::format("masked [{}], {} rounds", m->second.first, m->second.second));
    // epx-run names each rank's exit once a rank of its job failed (the victim's host); on the other host
    // its own exit code 0 says that every rank exited 0.
    auto code = o.exit_code.find(r);
    const bool exited0 = code != o.exit_code.end()
                             ? code->second == 0
                             : r / 2 != c.victim / 2 && o.rc.count(r / 2) && o.rc.at(r / 2) == 0;
    EXPECT_TRUE(exited0) << "rank " << r << " did not exit 0";
    const std::string normal = o.normal.count(r) ? o.normal.at(r) : "none";
    const std::string normal_want = "checked 2";
    EXPECT_EQ(normal, normal_want) << "rank " << r << "'s normal phase after the mask";
    ok = ok && finished && exited0 && normal == normal_want;
    row.col[r] =
        fmt::format("{:.2f} masked{}, done {:.2f}, normal {}", secs, r / 2 == c.victim / 2 ? "" : " (remote)",
                    o.masked_t.count(r) ? o.masked_t.at(r) - o.t_event : -1.0,
                    normal == "checked 2" ? "2 rounds" : normal);
    all_ok = all_ok && ok;
  }
  return all_ok;
}

class RxeFaultCell : public ::testing::TestWithParam<int> {};

TEST_P(RxeFaultCell, EveryRankReportsTheFailureInTime) {
  const int n = GetParam() + 1;  // cells are numbered from 1 in the guests
  const Cell c = MakeCells()[static_cast<size_t>(GetParam())];
  const bool cut = c.victim < 0;
  SCOPED_TRACE(fmt::format("cell {}: {}", n, CellName(c)));
  const GuestRun& run = TheRun();
  const CellOut o = Collect(run, n);
  Row row{CellName(c), c.victim, {}, 0, "", "", "FAIL"};
  const RecordRow record(row, Rows());
  for (int h = 0; h < 2; ++h) {
    row.launchers += fmt::format("{}{}", h ? " / " : "", o.rc.count(h) ? std::to_string(o.rc.at(h)) : "?");
    row.clean += fmt::format("{}{}", h ? " / " : "", o.clean.count(h) ? o.clean.at(h).substr(0, 8) : "?");
  }
  for (const std::string& note : o.notes) ADD_FAILURE() << note;
  ASSERT_EQ(o.pid.size(), static_cast<size_t>(kRanks)) << "not every rank came up";
  if (cut) {
    ASSERT_GE(o.t_event, 0) << "host 1 never took its link down";
  } else {
    ASSERT_EQ(o.victim, c.victim) << "the victim did not die at " << c.point;
    EXPECT_EQ(o.victim_point, c.point);
    EXPECT_EQ(o.victim_host, c.victim / 2);
    EXPECT_EQ(o.victim_pid, o.pid.at(c.victim));
  }

  // The launchers: the victim's one exits 137 naming it; the other host's (and both, for the cut) non-zero,
  // or 0 in a masked cell (its ranks went on without the victim).
  bool launchers_ok = true;
  for (int h = 0; h < 2; ++h) {
    auto it = o.rc.find(h);
    const bool victims = !cut && h == c.victim / 2;
    const bool ok = it != o.rc.end() && (victims  ? it->second == 137
                                         : c.mask ? it->second == 0
                                                  : it->second != 0);
    EXPECT_TRUE(ok) << "host " << h << "'s epx-run exited " << (it == o.rc.end() ? -1 : it->second)
                    << (victims  ? ", expected 137"
                        : c.mask ? ", expected 0"
                                 : ", expected non-zero");
    if (victims) {
      const std::string want =
          fmt::format("epx-run: exit code 137: rank {} (pid {}) killed by SIGKILL", c.victim, o.victim_pid);
      const bool named = o.verdict.count(h) && o.verdict.at(h).starts_with(want);
      EXPECT_TRUE(named) << "host " << h
                         << "'s epx-run verdict: " << (o.verdict.count(h) ? o.verdict.at(h) : "none")
                         << "; expected " << want;
      launchers_ok = launchers_ok && named;
    }
    launchers_ok = launchers_ok && ok;
    EXPECT_EQ(o.clean.count(h) ? o.clean.at(h) : "no clean/LEFTOVER line", "clean") << "host " << h;
  }

  const bool clean =
      o.clean.count(0) && o.clean.at(0) == "clean" && o.clean.count(1) && o.clean.at(1) == "clean";
  if (c.mask) {
    const bool ranks_ok = CheckMasked(c, o, row);
    row.verdict = ranks_ok && launchers_ok && clean && o.notes.empty() ? "ok" : "FAIL";
    std::printf("cell %d, %s: every survivor masked the victim %.2f s max after the death\n", n,
                row.cell.c_str(), row.worst);
    return;
  }

  // Every rank that was not killed: a peer failure naming the right rank, in time.
  static const std::regex in_round(
      R"(^\[r\d+\] fault-worker: rank \d+ FAILED t_mono_ns=\d+ in .* \(round (\d+)\): )");
  bool ranks_ok = true;
  for (int r = 0; r < kRanks; ++r) {
    if (r == c.victim) {
      row.col[r] = fmt::format("killed (h{})", r / 2);
      continue;
    }
    auto it = o.failed.find(r);
    if (it == o.failed.end()) {
      ADD_FAILURE() << "rank " << r << " (host " << r / 2 << ") reported no error";
      row.col[r] = "none";
      ranks_ok = false;
      continue;
    }
    const std::string& text = it->second.text;
    const double secs = it->second.t - o.t_event;
    // Whom it must name as failed. Kill: the victim, on both hosts (its host's process scan sees it; the
    // other host hears of it by the death notice that scan sends before any survivor can fail and exit,
    // transport/verbs/domain.h). Cut: a rank of the other host, or a cascade (the process scan may name a
    // rank of its own host that failed first; nobody sees a death to send a notice about).
    const std::vector<Naming> named = NamedIn(text);
    auto failed_before = [&](int x) {
      auto f = o.failed.find(x);
      return x != c.victim && f != o.failed.end() && f->second.t < it->second.t;
    };
    auto first_choice = [&](const Naming& x) { return cut ? x.rank / 2 != r / 2 : x.rank == c.victim; };
    auto hit = std::find_if(named.begin(), named.end(), first_choice);
    const bool cascade =
        hit == named.end() && cut && (hit = std::find_if(named.begin(), named.end(), [&](const Naming& x) {
                                        return failed_before(x.rank);
                                      })) != named.end();
    const bool right = hit != named.end();
    // A peer failure, not a timeout. One exception: on the host whose link went down, rxe fails the
    // rank's own work requests locally (IBV_WC_LOC_QP_OP_ERR, "transport error") naming the peer.
    const std::string cls = StatusClass(text);
    const bool local_qp = cut && r / 2 == 1 && cls == "transport error" && right && hit->how == "QP";
    const bool peer_failure = cls == "peer failure" || local_qp;
    std::smatch m;
    const bool during_rounds = !cut || std::regex_search(text, m, in_round);
    const Naming shown = right           ? *hit
                         : named.empty() ? Naming{-1, cls == "timeout" ? "TIMEOUT" : cls}
                                         : named[0];
    row.col[r] =
        fmt::format("{:.2f} {}{}{}{}", secs, shown.how, local_qp ? "(local)" : "",
                    shown.rank >= 0 && (cut || shown.rank != c.victim) ? fmt::format(" r{}", shown.rank) : "",
                    cascade                   ? " (cascade)"
                    : right || shown.rank < 0 ? ""
                                              : " (wrong)");
    row.worst = std::max(row.worst, secs);
    EXPECT_TRUE(peer_failure) << "rank " << r << "'s error is not a peer failure: " << text;
    EXPECT_TRUE(right) << "rank " << r << "'s error names "
                       << (named.empty() ? "no failed rank"
                                         : fmt::format("rank {} ({})", named[0].rank, named[0].how))
                       << ", expected "
                       << (cut ? "a rank of the other host" : fmt::format("rank {}", c.victim)) << ": "
                       << text;
    EXPECT_TRUE(secs >= -0.5 && secs <= kBound)
        << "rank " << r << " failed " << secs << " s after the " << (cut ? "cut" : "death") << " (bound "
        << kBound << " s): " << text;
    EXPECT_TRUE(during_rounds) << "rank " << r << " did not fail in a round: " << text;
    ranks_ok = ranks_ok && peer_failure && right && secs >= -0.5 && secs <= kBound && during_rounds;
  }
  row.verdict = ranks_ok && launchers_ok && clean && o.notes.empty() ? "ok" : "FAIL";
  std::printf("cell %d, %s: every rank failed %.2f s max after the %s\n", n, row.cell.c_str(), row.worst,
              cut ? "cut" : "death");
}

INSTANTIATE_TEST_SUITE_P(Cells, RxeFaultCell, ::testing::Range(0, static_cast<int>(MakeCells().size())),
                         [](const auto& info) {
                           const Cell c = MakeCells()[static_cast<size_t>(info.param)];
                           return c.victim < 0 ? "link_cut"
                                               : GtestName(fmt::format(
                                                     "{}{}_r{}_after{}{}", c.mask ? "masked_" : "", c.point,
                                                     c.victim, c.after, c.nodes == 4 ? "_4x1" : ""));
                         });

void PrintTable() {
  if (Rows().empty()) return;
  std::string t = fmt::format(
      "\nTwo hosts (two soft-RoCE guests, ranks 0,1 on host 0, 2,3 on host 1; EPX_RDMA=verbs, EPX_TIMEOUT={} "
      "s, bound {} s; times on the host's clock at the arrival of each line): seconds from the victim's "
      "SIGKILL (link cut: host 1's `ip link set eth0 down`) to each rank's error, and what it named: died = "
      "the process scan (\"rank V (pid P, node n) died\"), notice = the death notice of the victim's host "
      "(\"rank V died on its host\"), probe = a failed verbs liveness probe (\"rank V is unreachable\"), QP "
      "= a failed work request to or from it, TIMEOUT = the wait ran into its "
      "deadline; masked cells: seconds to each survivor's mask notice, then until it had checked 3 more "
      "rounds "
      "(remote = on the other host than the victim); \"probe r0\": it named rank 0, not the victim: "
      "\"(cascade)\" when rank 0 had failed before "
      "(a survivor exits once it failed; accepted in the link-cut cell only), \"(wrong)\" otherwise. "
      "epx-run: "
      "exit codes host 0 / host 1.\n\n",
      kTimeoutS, kBound);
  t += TableHead("cell", kRanks, {"max", "epx-run", "guests", "result"});
  for (const Row& row : Rows()) {
    t += "| " + row.cell + " |";
    for (int r = 0; r < kRanks; ++r) t += " " + (row.col.count(r) ? row.col.at(r) : "-") + " |";
    t += fmt::format(" {:.2f} | {} | {} | {} |\n", row.worst, row.launchers, row.clean, row.verdict);
  }
  std::fputs(t.c_str(), stdout);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  return RunAllThenPrint(argc, argv, PrintTable);
}
