#include "core/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace epx {
namespace {

LogLevel ParseLevel(const char* s) {
  if (s == nullptr || *s == '\0') return LogLevel::kWarn;
  std::string v(s);
  if (v == "error") return LogLevel::kError;
  if (v == "warn" || v == "warning") return LogLevel::kWarn;
  if (v == "info") return LogLevel::kInfo;
  if (v == "debug") return LogLevel::kDebug;
  if (v == "trace") return LogLevel::kTrace;
  return LogLevel::kWarn;  // the tunables table validates and reports bad values
}

std::atomic<int>& LevelSlot() {
  static std::atomic<int> level{static_cast<int>(ParseLevel(std::getenv("EPX_LOG_LEVEL")))};
  return level;
}
std::atomic<int> g_rank{-1};
std::atomic<LogSink> g_sink{nullptr};

}  // namespace

LogLevel CurrentLogLevel() { return static_cast<LogLevel>(LevelSlot().load(std::memory_order_relaxed)); }
void SetLogLevel(LogLevel level) { LevelSlot().store(static_cast<int>(level), std::memory_order_relaxed); }
void SetLogRank(int rank) { g_rank.store(rank, std::memory_order_relaxed); }
void SetLogSink(LogSink sink) { g_sink.store(sink, std::memory_order_relaxed); }

void Log(LogLevel level, std::string_view line) {
  static constexpr const char kTag[] = {'E', 'W', 'I', 'D', 'T'};
  const int rank = g_rank.load(std::memory_order_relaxed);
  std::string out = rank >= 0 ? fmt::format("epx[r{}] {} ", rank, kTag[static_cast<int>(level)])
                              : fmt::format("epx {} ", kTag[static_cast<int>(level)]);
  out.append(line);
  out.push_back('\n');
  if (LogSink sink = g_sink.load(std::memory_order_relaxed)) {
    sink(out);
    return;
  }
  // One write per line: atomic for pipes up to PIPE_BUF, and never torn by other threads' lines.
  ssize_t rc = ::write(STDERR_FILENO, out.data(), out.size());
  (void)rc;
}

}  // namespace epx
