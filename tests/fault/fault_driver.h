// tests/fault/fault_driver.h: what the drivers of the fault tests share (fault_matrix_test.cc,
// readmit_test.cc, rxe_fault_two_hosts_test.cc): reading the lines of fault_worker and of the library's
// fault injection, the /dev/shm check, and the Markdown tables they print once every cell ran.
// Header-only, test code only.
//
// Standard library, fmt and gtest only: rxe_fault_two_hosts_test is built without the source tree on its
// include path. Processes (start, wait, gone) are tests/support/subprocess.h's.
#pragma once

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace epx::test {

// ---- Lines -----------------------------------------------------------------------------------------
// As epx-run relays them: "[rR] " and the rank's line.

// fault_worker's "fault-worker: ready rank R pid P" (once set up, before any round).
struct Ready {
  int rank = -1;
  int pid = -1;
};
inline std::optional<Ready> ParseReady(const std::string& line) {
  static const std::regex re(R"(^\[r(\d+)\] fault-worker: ready rank (\d+) pid (\d+)$)");
  std::smatch m;
  if (!std::regex_match(line, m, re)) return std::nullopt;
  return Ready{std::stoi(m[2]), std::stoi(m[3])};
}

// The EPX_FAULT victim's own line (core/fault.cc): who died, where, and its CLOCK_MONOTONIC time. t_ns is -1
// when the line does not end in that time: the drivers that compare times need it and skip such a line, the
// two-hosts driver times lines on the host and takes the death line whatever follows its hit.
struct Death {
  int rank = -1;
  int pid = -1;
  std::string point;
  long long t_ns = -1;
};
inline std::optional<Death> ParseDeath(const std::string& line) {
  static const std::regex re(
      R"(^\[r(\d+)\] epx\[r\d+\] fault injection \(EPX_FAULT\): rank (\d+) \(pid (\d+)\) )"
      R"(kills itself with SIGKILL at (\S+) \(hit \d+\)(?: t_mono_ns=(\d+)$)?)");
  std::smatch m;
  if (!std::regex_search(line, m, re)) return std::nullopt;
  return Death{std::stoi(m[2]), std::stoi(m[3]), m[4], m[5].matched ? std::stoll(m[5]) : -1};
}

// A survivor's error as fault_worker.h Fail prints it: "fault-worker: rank R FAILED t_mono_ns=T in <call>
// (round N): <status>"; the drivers keep the whole line for what it names.
struct Failure {
  int rank = -1;
  long long t_ns = -1;
};
inline std::optional<Failure> ParseFailure(const std::string& line) {
  static const std::regex re(R"(^\[r(\d+)\] fault-worker: rank (\d+) FAILED t_mono_ns=(\d+) in (.*)$)");
  std::smatch m;
  if (!std::regex_match(line, m, re)) return std::nullopt;
  return Failure{std::stoi(m[2]), std::stoll(m[3])};
}

// A rank a survivor's error names as failed, and how: "died" (the process scan, transport/liveness.h, which
// lists every dead rank), "notice" (a verbs death notice from a rank of the dead one's host,
// transport/verbs/domain.h), "probe" (a verbs liveness probe or notice got no acknowledgement), "QP" (a work
// request to or from it failed).
struct Naming {
  int rank = -1;
  std::string how;
};
// Every rank `text` names as failed: the forms in the order above, each in the order of the text; empty when
// it names none (e.g. a timeout).
inline std::vector<Naming> NamedIn(const std::string& text) {
  static const std::pair<std::regex, const char*> kForms[] = {
      {std::regex(R"(rank (\d+) \(pid \d+, node \d+\) died)"), "died"},
      {std::regex(R"(rank (\d+) died on its host \(death notice)"), "notice"},
      {std::regex(R"(rank (\d+) is unreachable: (?:liveness probe|death notice))"), "probe"},
      {std::regex(R"( to rank (\d+) failed on channel|\(rank (\d+) -> rank \d+, channel)"), "QP"}};
  std::vector<Naming> out;
  for (const auto& [re, how] : kForms)
    for (std::sregex_iterator it(text.begin(), text.end(), re), end; it != end; ++it)
      out.push_back({std::stoi((*it)[1].matched ? (*it)[1] : (*it)[2]), how});
  return out;
}

// ---- What a job leaves behind ---------------------------------------------------------------------

// The names in /dev/shm: shared memory outlives the processes that made it, so a job must remove its own.
inline std::set<std::string> DevShm() {
  std::set<std::string> s;
  for (auto& e : std::filesystem::directory_iterator("/dev/shm")) s.insert(e.path().filename());
  return s;
}

// The /dev/shm entries not in `before` that stay: a concurrent unrelated program's short-lived segment gets
// 2 s to go.
inline std::vector<std::string> NewShm(const std::set<std::string>& before) {
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

// ---- Cells and tables -----------------------------------------------------------------------------

// `s` as a gtest name: gtest allows only letters, digits and '_', and fault points are dotted.
inline std::string GtestName(std::string s) {
  std::replace(s.begin(), s.end(), '.', '_');
  return s;
}

// Appends `row` to `rows` when it goes out of scope: a cell's row goes into the table whatever its
// assertions say (a failed ASSERT returns early).
template <typename Row>
class RecordRow {
 public:
  RecordRow(Row& row, std::vector<Row>& rows) : row_(row), rows_(rows) {}
  ~RecordRow() { rows_.push_back(row_); }
  RecordRow(const RecordRow&) = delete;
  RecordRow& operator=(const RecordRow&) = delete;

 private:
  Row& row_;
  std::vector<Row>& rows_;
};

// The head of a Markdown table with a column per rank: "| first | r0 | ... | r<ranks-1> | rest... |" and the
// rule under it.
inline std::string TableHead(const std::string& first, int ranks, const std::vector<std::string>& rest) {
  std::string t = "| " + first + " |";
  for (int r = 0; r < ranks; ++r) t += fmt::format(" r{} |", r);
  for (const std::string& c : rest) t += " " + c + " |";
  t += "\n|---|";
  for (size_t i = 0; i < static_cast<size_t>(ranks) + rest.size(); ++i) t += "---|";
  return t + "\n";
}

// gtest's main, then `print_tables`: from a global environment's TearDown, so the tables come out once every
// cell ran, whole even when cells failed. Returns RUN_ALL_TESTS()'s code.
inline int RunAllThenPrint(int argc, char** argv, std::function<void()> print_tables) {
  class Print : public ::testing::Environment {
   public:
    explicit Print(std::function<void()> print) : print_(std::move(print)) {}
    void TearDown() override { print_(); }

   private:
    std::function<void()> print_;
  };
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new Print(std::move(print_tables)));
  return RUN_ALL_TESTS();
}

}  // namespace epx::test
