#include "core/tunables.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/fault.h"
#include "core/log.h"
#include "core/wait.h"

extern char** environ;

namespace epx {
namespace {

using T = TunableType;

// The table. Placement variables (EPX_RANK, EPX_WORLD_SIZE, ...) are not tunables; they are read by
// transport/topology and documented there.
constexpr TunableDef kTable[] = {
    {"EPX_LOG_LEVEL", T::kEnum, "warn", "", "error|warn|info|debug|trace", "log threshold (stderr)"},
    {"EPX_HEAP_SIZE", T::kSize, "64M", "bytes", "", "symmetric heap (\"HBM\") per rank"},
    {"EPX_HUGEPAGES", T::kEnum, "auto", "", "auto|on|off",
     "heap on hugetlb pages: auto = try, fall back to 4K pages + THP advice; on = fail if none"},
    {"EPX_NUMA_BIND", T::kEnum, "on", "", "on|off", "bind the heap to the rank's NUMA node"},
    {"EPX_KERNEL_ISA", T::kEnum, "auto", "", "auto|avx512|avx2|baseline",
     "most the hand-written row kernels may use (auto: the best the CPU has; never more than it has)"},
    {"EPX_BOOTSTRAP_TIMEOUT", T::kDuration, "60s", "ms", "", "deadline of each bootstrap call"},
    {"EPX_TIMEOUT", T::kDuration, "60s", "ms", "", "deadline of each data-path wait"},
    {"EPX_SPIN_ITERS", T::kInt, "256", "polls", "0..1000000",
     "busy polls before yielding (unset: at most 16 where a host's ranks have more busy threads than cpus)"},
    {"EPX_YIELD_ITERS", T::kInt, "64", "polls", "0..1000000", "sched_yield polls before sleeping"},
    {"EPX_MAX_SLEEP", T::kDuration, "1ms", "ms", "",
     "cap of the exponential sleep in waits (0 = 1 us; at most 60s)"},
    {"EPX_RDMA", T::kEnum, "auto", "", "auto|verbs|shm",
     "inter-node domain: verbs, or shm emulation; auto = verbs when a device exists"},
    {"EPX_IB_DEVICE", T::kString, "", "", "", "RDMA device name (default: nearest to the rank's NUMA node)"},
    {"EPX_IB_GID_INDEX", T::kInt, "-1", "", "-1..1023", "GID index (-1: auto, RoCE v2 IPv4-mapped)"},
    {"EPX_QPS_PER_PEER", T::kInt, "1", "QPs", "1..64", "RC QPs per connected peer"},
    {"EPX_IB_TIMEOUT", T::kInt, "14", "4.096us*2^n", "14..31", "QP local ack timeout exponent"},
    {"EPX_IB_RETRY_CNT", T::kInt, "7", "", "1..7", "QP transport retry count"},
    {"EPX_CONNECT", T::kEnum, "auto", "", "auto|rdmacm|oob",
     "QP connection method: rdma_cm, or out-of-band via the bootstrap; auto = oob (works on every netdev, "
     "rdma_cm cannot resolve routes on lo)"},
    {"EPX_NORMAL_CHANNELS", T::kInt, "0", "threads", "0..64",
     "normal dispatch/combine: channels (worker threads, RDMA posting contexts) per rank; 0 = the CPUs a "
     "rank may run on (min over ranks, at most 8)"},
    {"EPX_NORMAL_NODE_SLOTS", T::kInt, "64", "slots", "2..65535",
     "normal kernels: slots per node (shm) ring"},
    {"EPX_NORMAL_NODE_CHUNK", T::kInt, "4", "slots", "1..65535",
     "normal kernels: a node-ring sender publishes its tail at least every this many slots"},
    {"EPX_NORMAL_RDMA_SLOTS", T::kInt, "64", "slots", "2..65535", "normal kernels: slots per RDMA ring"},
    {"EPX_NORMAL_RDMA_CHUNK", T::kInt, "8", "slots", "1..65535",
     "normal kernels: an RDMA-ring sender signals at least every this many slots"},
    {"EPX_NORMAL_YIELD_ITERS", T::kInt, "16384", "polls", "0..100000000",
     "normal kernels: sched_yield polls of an idle channel thread before it sleeps"},
    {"EPX_LL_CHANNELS", T::kInt, "0", "threads", "0..64",
     "low-latency dispatch/combine: channels (worker threads, RDMA posting contexts) per rank; 0 = the CPUs "
     "a "
     "rank may run on (min over ranks, at most 4; one channel runs on the calling thread)"},
    {"EPX_IB_FORCE_EMULATED_ATOMICS", T::kEnum, "0", "", "0|1",
     "TEST ONLY: emulate fetch-add with send-with-immediate even when the device has native atomics"},
    {"EPX_FAULT", T::kString, "", "", "",
     "TEST ONLY: fault injection, \"rank=R,point=P[,after=N]\": rank R SIGKILLs itself the N-th time "
     "(default 1) it reaches point P, one of normal.layout, normal.dispatch.{send,forward,recv}, "
     "normal.combine.{send,forward,reduce}, ll.dispatch.{send,recv}, ll.combine.{send,recv} "
     "(core/fault.h); empty = off; never armed in a restarted process (EPX_RESTART_COUNT > 0)"},
};

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// Leading unsigned integer and the rest.
bool SplitNumber(std::string_view s, uint64_t& num, std::string_view& suffix) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), num);
  if (ec != std::errc() || p == s.data()) return false;
  suffix = Trim(std::string_view(p, s.data() + s.size() - p));
  return true;
}

const char* RawValue(const TunableDef& d, bool* from_env) {
  const char* v = std::getenv(d.name);
  if (from_env) *from_env = v != nullptr;
  return v ? v : d.def;
}

Status BadValue(const TunableDef& d, std::string_view v, std::string_view why) {
  return EPX_ERROR(kInvalidArgument, "{}='{}': {} (expected {}{}{})", d.name, v, why,
                   d.type == T::kEnum ? "one of " : "", *d.choices ? d.choices : d.unit,
                   d.type == T::kSize ? ", e.g. 64M" : d.type == T::kDuration ? ", e.g. 500ms or 30s" : "");
}

StatusOr<const TunableDef*> Lookup(std::string_view name, T type) {
  const TunableDef* d = FindTunable(name);
  if (d == nullptr) return EPX_ERROR(kInternal, "tunable {} is not in the table", name);
  bool ok = d->type == type || (type == T::kString && d->type == T::kEnum);
  if (!ok) return EPX_ERROR(kInternal, "tunable {} read with the wrong type", name);
  return d;
}

}  // namespace

Status ValidateTunableValue(const TunableDef& d, std::string_view v) {
  switch (d.type) {
    case T::kInt: {
      int64_t x = 0;
      auto t = Trim(v);
      auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), x);
      if (ec != std::errc() || p != t.data() + t.size()) return BadValue(d, v, "not an integer");
      int64_t lo = 0, hi = 0;
      if (std::sscanf(d.choices, "%ld..%ld", &lo, &hi) == 2 && (x < lo || x > hi))
        return BadValue(d, v, "out of range");
      return Status::Ok();
    }
    case T::kSize: {
      auto r = ParseSize(v);
      return r.ok() ? Status::Ok() : BadValue(d, v, "not a size");
    }
    case T::kDuration: {
      auto r = ParseDurationMs(v);
      return r.ok() ? Status::Ok() : BadValue(d, v, "not a duration");
    }
    case T::kEnum: {
      std::string_view c = d.choices;
      while (!c.empty()) {
        auto bar = c.find('|');
        if (c.substr(0, bar) == Trim(v)) return Status::Ok();
        if (bar == std::string_view::npos) break;
        c.remove_prefix(bar + 1);
      }
      return BadValue(d, v, "not an allowed value");
    }
    case T::kString: {
      // A string row with a syntax of its own is parsed here, so that every getter and
      // ValidateTunableEnv() reject a bad value the same way.
      if (std::string_view(d.name) == "EPX_FAULT") {
        auto f = ParseFaultSpec(v);
        if (!f.ok()) return EPX_ERROR(kInvalidArgument, "{}='{}': {}", d.name, v, f.status().message());
      }
      return Status::Ok();
    }
  }
  return Status::Ok();
}

std::span<const TunableDef> AllTunables() { return kTable; }

const TunableDef* FindTunable(std::string_view name) {
  for (const auto& d : kTable)
    if (name == d.name) return &d;
  return nullptr;
}

StatusOr<uint64_t> ParseSize(std::string_view text) {
  uint64_t n = 0;
  std::string_view suf;
  if (!SplitNumber(Trim(text), n, suf)) return Status(Code::kInvalidArgument, "not a size");
  uint64_t mul = 1;
  if (suf.empty() || suf == "B" || suf == "b") mul = 1;
  else if (suf == "K" || suf == "k" || suf == "KiB" || suf == "KB") mul = 1ull << 10;
  else if (suf == "M" || suf == "m" || suf == "MiB" || suf == "MB") mul = 1ull << 20;
  else if (suf == "G" || suf == "g" || suf == "GiB" || suf == "GB") mul = 1ull << 30;
  else return Status(Code::kInvalidArgument, fmt::format("unknown size unit '{}'", suf));
  if (n > (~0ull) / mul) return Status(Code::kInvalidArgument, "size overflows");
  return n * mul;
}

StatusOr<int64_t> ParseDurationMs(std::string_view text) {
  uint64_t n = 0;
  std::string_view suf;
  if (!SplitNumber(Trim(text), n, suf)) return Status(Code::kInvalidArgument, "not a duration");
  // Milliseconds must fit an int64_t: a wrapped value would be a negative (already expired) deadline.
  constexpr uint64_t kMaxMs = static_cast<uint64_t>(INT64_MAX);
  uint64_t ms = 0;
  if (suf.empty() || suf == "ms") {
    ms = n;
  } else if (suf == "us") {
    ms = n / 1000 + (n % 1000 != 0);  // rounded up; n + 999 could wrap
  } else if (suf == "s") {
    ms = n <= kMaxMs / 1000 ? n * 1000 : ~0ull;
  } else if (suf == "m" || suf == "min") {
    ms = n <= kMaxMs / 60000 ? n * 60000 : ~0ull;
  } else {
    return Status(Code::kInvalidArgument, fmt::format("unknown duration unit '{}'", suf));
  }
  if (ms > kMaxMs) return Status(Code::kInvalidArgument, "duration overflows");
  return static_cast<int64_t>(ms);
}

std::string FormatSize(uint64_t n) {
  if (n != 0) {
    if (n % (1ull << 30) == 0) return fmt::format("{}G", n >> 30);
    if (n % (1ull << 20) == 0) return fmt::format("{}M", n >> 20);
    if (n % (1ull << 10) == 0) return fmt::format("{}K", n >> 10);
  }
  return fmt::format("{}", n);
}

std::string FormatDurationMs(int64_t ms) {
  if (ms != 0) {
    if (ms % 60000 == 0) return fmt::format("{}m", ms / 60000);
    if (ms % 1000 == 0) return fmt::format("{}s", ms / 1000);
  }
  return fmt::format("{}ms", ms);
}

StatusOr<int64_t> TunableInt(std::string_view name) {
  EPX_ASSIGN_OR_RETURN(const TunableDef* d, Lookup(name, T::kInt));
  const char* v = RawValue(*d, nullptr);
  EPX_RETURN_IF_ERROR(ValidateTunableValue(*d, v));
  return std::strtoll(v, nullptr, 10);
}

StatusOr<uint64_t> TunableSize(std::string_view name) {
  EPX_ASSIGN_OR_RETURN(const TunableDef* d, Lookup(name, T::kSize));
  const char* v = RawValue(*d, nullptr);
  EPX_RETURN_IF_ERROR(ValidateTunableValue(*d, v));
  return ParseSize(v);
}

StatusOr<int64_t> TunableMs(std::string_view name) {
  EPX_ASSIGN_OR_RETURN(const TunableDef* d, Lookup(name, T::kDuration));
  const char* v = RawValue(*d, nullptr);
  EPX_RETURN_IF_ERROR(ValidateTunableValue(*d, v));
  return ParseDurationMs(v);
}

StatusOr<std::string> TunableStr(std::string_view name) {
  EPX_ASSIGN_OR_RETURN(const TunableDef* d, Lookup(name, T::kString));
  const char* v = RawValue(*d, nullptr);
  EPX_RETURN_IF_ERROR(ValidateTunableValue(*d, v));
  return std::string(Trim(v));
}

Status ValidateTunableEnv() {
  for (const auto& d : kTable) EPX_RETURN_IF_ERROR(ValidateTunableValue(d, RawValue(d, nullptr)));
  return Status::Ok();
}

std::string FormatTunables() {
  std::string out = fmt::format("{:<22} {:<10} {:<8} {:<12} {}\n", "VARIABLE", "VALUE", "SOURCE", "UNIT",
                                "DESCRIPTION");
  for (const auto& d : kTable) {
    bool env = false;
    const char* v = RawValue(d, &env);
    std::string shown = *v ? v : "\"\"";
    std::string doc = d.doc;
    if (d.type == T::kEnum) doc += fmt::format(" [{}]", d.choices);
    out += fmt::format("{:<22} {:<10} {:<8} {:<12} {}\n", d.name, shown, env ? "env" : "default", d.unit, doc);
  }
  return out;
}

BackoffPolicy BackoffPolicy::FromTunables() {
  // Bad values were reported by ValidateTunableEnv at context setup; here we keep the defaults.
  BackoffPolicy b;
  if (auto v = TunableInt("EPX_SPIN_ITERS"); v.ok()) b.spin_iters = static_cast<uint32_t>(*v);
  if (auto v = TunableInt("EPX_YIELD_ITERS"); v.ok()) b.yield_iters = static_cast<uint32_t>(*v);
  if (auto v = TunableMs("EPX_MAX_SLEEP"); v.ok()) {
    // Clamped in milliseconds first: *v * 1000 overflows an int64_t for durations of ~292k years.
    const int64_t ms = std::min<int64_t>(*v, BackoffPolicy::kMaxSleepCapUs / 1000);
    b.max_sleep_us = static_cast<uint32_t>(std::max<int64_t>(ms * 1000, 1));
  }
  return b;
}

const BackoffPolicy& BackoffPolicy::Default() {
  static const BackoffPolicy p = FromTunables();  // read once
  return p;
}

BackoffPolicy BackoffPolicy::ForCpus(bool threads_share_cpus) {
  BackoffPolicy b = Default();
  // An explicit EPX_SPIN_ITERS wins: it is how the choice is measured (bench/results/README.md).
  if (threads_share_cpus && std::getenv("EPX_SPIN_ITERS") == nullptr)
    b.spin_iters = std::min(b.spin_iters, kSharedCpuSpinIters);
  return b;
}

}  // namespace epx
