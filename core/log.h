// core/log.h: leveled logging to stderr, one write(2) per line so lines from many threads and rank
// processes never interleave mid-line. Level from EPX_LOG_LEVEL (error|warn|info|debug|trace).
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace epx {

enum class LogLevel : int { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3, kTrace = 4 };

// Current threshold (read once from EPX_LOG_LEVEL, default warn).
LogLevel CurrentLogLevel();
void SetLogLevel(LogLevel level);
// Every line carries "epx[r<rank>]" once the rank is known (-1: unknown, prints "epx").
void SetLogRank(int rank);
void Log(LogLevel level, std::string_view line);
// Where finished lines go (default: one write(2) to stderr); nullptr restores the default. For tests
// and fuzz targets, which create errors (each logged once where it starts) by the million. Set it
// before other threads log: it is read without ordering against them.
using LogSink = void (*)(std::string_view line);
void SetLogSink(LogSink sink);
inline bool LogEnabled(LogLevel level) { return static_cast<int>(level) <= static_cast<int>(CurrentLogLevel()); }

}  // namespace epx

#define EPX_LOG(level, ...)                                                       \
  do {                                                                            \
    if (::epx::LogEnabled(::epx::LogLevel::level))                                \
      ::epx::Log(::epx::LogLevel::level, ::fmt::format(__VA_ARGS__));             \
  } while (0)
#define EPX_WARN(...) EPX_LOG(kWarn, __VA_ARGS__)
#define EPX_INFO(...) EPX_LOG(kInfo, __VA_ARGS__)
#define EPX_DEBUG(...) EPX_LOG(kDebug, __VA_ARGS__)
