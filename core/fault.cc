#include "core/fault.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>

#include "core/log.h"
#include "core/tunables.h"

namespace epx {
namespace {

constexpr const char* kNames[] = {
    "normal.layout",       "normal.dispatch.send",   "normal.dispatch.forward", "normal.dispatch.recv",
    "normal.combine.send", "normal.combine.forward", "normal.combine.reduce",   "ll.dispatch.send",
    "ll.dispatch.recv",    "ll.combine.send",        "ll.combine.recv",
};
static_assert(std::size(kNames) == static_cast<size_t>(FaultPoint::kCount));

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

template <typename T>
bool ParseNumber(std::string_view s, T* out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size() && !s.empty();
}

std::string PointList() {
  std::string s;
  for (const char* n : kNames) s += (s.empty() ? "" : ", ") + std::string(n);
  return s;
}

// Written by ArmFaultInjection before any thread that reaches a point exists; read by Hit.
uint64_t g_after = 1;
int g_rank = -1;
std::atomic<uint64_t> g_hits{0};

}  // namespace

namespace fault_internal {

std::atomic<int> g_armed{-1};

void Hit(FaultPoint p) {
  const uint64_t n = g_hits.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n != g_after) return;
  // The line goes out with one write(2) before the kill, so the test that injected the fault knows
  // when it happened (CLOCK_MONOTONIC is the same clock in every process of the host). Nothing else
  // is flushed: that is the point of a kill -9.
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const long long mono_ns = static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
  char line[256];
  const int len = std::snprintf(line, sizeof(line),
                                "epx[r%d] fault injection (EPX_FAULT): rank %d (pid %d) kills itself with "
                                "SIGKILL at %s (hit %llu) t_mono_ns=%lld\n",
                                g_rank, g_rank, static_cast<int>(::getpid()), FaultPointName(p),
                                static_cast<unsigned long long>(n), mono_ns);
  if (len > 0)
    (void)!::write(STDERR_FILENO, line, static_cast<size_t>(len) < sizeof(line) ? len : sizeof(line) - 1);
  ::kill(::getpid(), SIGKILL);
  for (;;) ::pause();  // SIGKILL is on its way; this thread must not go on meanwhile
}

}  // namespace fault_internal

const char* FaultPointName(FaultPoint p) {
  const auto i = static_cast<size_t>(p);
  return i < std::size(kNames) ? kNames[i] : "?";
}

std::span<const char* const> FaultPointNames() {
  return kNames;
}

StatusOr<FaultSpec> ParseFaultSpec(std::string_view text) {
  FaultSpec f;
  text = Trim(text);
  if (text.empty()) return f;
  bool have_rank = false, have_point = false, have_after = false;
  auto bad = [&](std::string why) {
    return Status(Code::kInvalidArgument,
                  why + " (expected rank=R,point=P[,after=N] with P one of " + PointList() + ")");
  };
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view item = Trim(text.substr(0, comma));
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos) return bad("'" + std::string(item) + "' is not key=value");
    const std::string_view key = Trim(item.substr(0, eq)), value = Trim(item.substr(eq + 1));
    if (key == "rank") {
      if (have_rank) return bad("rank given twice");
      if (!ParseNumber(value, &f.rank) || f.rank < 0)
        return bad("rank '" + std::string(value) + "' is not a rank >= 0");
      have_rank = true;
    } else if (key == "point") {
      if (have_point) return bad("point given twice");
      size_t i = 0;
      while (i < std::size(kNames) && value != kNames[i]) ++i;
      if (i == std::size(kNames)) return bad("unknown point '" + std::string(value) + "'");
      f.point = static_cast<FaultPoint>(i);
      have_point = true;
    } else if (key == "after") {
      if (have_after) return bad("after given twice");
      if (!ParseNumber(value, &f.after) || f.after < 1)
        return bad("after '" + std::string(value) + "' is not a count >= 1");
      have_after = true;
    } else {
      return bad("unknown key '" + std::string(key) + "'");
    }
  }
  if (!have_rank || !have_point) return bad(!have_rank ? "rank missing" : "point missing");
  return f;
}

Status ArmFaultInjection(int rank, int world_size, int restart_count) {
  EPX_ASSIGN_OR_RETURN(std::string text, TunableStr("EPX_FAULT"));  // validated there: parses below
  auto spec = ParseFaultSpec(text);
  if (!spec.ok()) return EPX_ERROR(kInvalidArgument, "EPX_FAULT='{}': {}", text, spec.status().message());
  if (!spec->enabled()) return Status::Ok();
  if (spec->rank >= world_size)
    return EPX_ERROR(kInvalidArgument, "EPX_FAULT='{}': rank {} is not a rank of this job (0..{})", text,
                     spec->rank, world_size - 1);
  if (spec->rank != rank) return Status::Ok();
  if (restart_count > 0) {
    EPX_INFO(
        "fault injection (EPX_FAULT) not armed: rank {} is restart {} of the rank it names (only the "
        "first incarnation dies)",
        rank, restart_count);
    return Status::Ok();
  }
  g_rank = rank;
  g_after = spec->after;
  g_hits.store(0, std::memory_order_relaxed);
  fault_internal::g_armed.store(static_cast<int>(spec->point), std::memory_order_relaxed);
  EPX_WARN("fault injection armed (EPX_FAULT): rank {} will SIGKILL itself at {} (hit {})", rank,
           FaultPointName(spec->point), spec->after);
  return Status::Ok();
}

}  // namespace epx
