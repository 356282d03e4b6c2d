// Fuzz target: the EPX_* tunable parsers (core/tunables.h). Each input is parsed three ways:
//   * ParseSize / ParseDurationMs on the whole input, checked against an independent reference parser
//     (128-bit arithmetic, so an overflow in the real one shows up as a mismatch) and round-tripped
//     through FormatSize / FormatDurationMs;
//   * the first byte picks a row of the table, the rest is its value: ValidateTunableValue, then the
//     value goes into the environment and the typed getter must agree with the validation and return
//     a value inside the row's domain; BackoffPolicy::FromTunables must stay within its bounds.
#include <stdlib.h>

#include <cctype>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/tunables.h"
#include "core/wait.h"
#include "tests/fuzz/fuzz_util.h"

namespace epx {
namespace {

using u128 = unsigned __int128;
constexpr u128 kU64Max = ~uint64_t{0};
constexpr u128 kI64Max = static_cast<uint64_t>(INT64_MAX);

std::string_view TrimRef(std::string_view s) {
  auto sp = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r'); };
  while (!s.empty() && sp(s.front())) s.remove_prefix(1);
  while (!s.empty() && sp(s.back())) s.remove_suffix(1);
  return s;
}

// Reference: leading decimal digits (saturating above 2^64) and the trimmed rest; nullopt if no digit.
std::optional<std::pair<u128, std::string_view>> SplitRef(std::string_view text) {
  std::string_view s = TrimRef(text);
  size_t i = 0;
  u128 n = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
    n = n * 10 + static_cast<unsigned>(s[i] - '0');
    if (n > kU64Max) n = kU64Max + 1;  // saturate: "does not fit" is all that matters
    ++i;
  }
  if (i == 0) return std::nullopt;
  return std::make_pair(n, TrimRef(s.substr(i)));
}

std::optional<uint64_t> SizeRef(std::string_view text) {
  auto r = SplitRef(text);
  if (!r || r->first > kU64Max) return std::nullopt;
  const std::string_view u = r->second;
  u128 mul = 0;
  if (u.empty() || u == "B" || u == "b") mul = 1;
  for (auto [unit, m] :
       {std::pair<std::string_view, u128>{"K", 1u << 10}, {"M", 1u << 20}, {"G", 1u << 30}}) {
    const char lower = static_cast<char>(std::tolower(static_cast<unsigned char>(unit[0])));
    if (u == unit || u == std::string_view(&lower, 1) || u == std::string(unit) + "iB" ||
        u == std::string(unit) + "B")
      mul = m;
  }
  if (mul == 0 || r->first * mul > kU64Max) return std::nullopt;
  return static_cast<uint64_t>(r->first * mul);
}

std::optional<int64_t> DurationRef(std::string_view text) {
  auto r = SplitRef(text);
  if (!r || r->first > kU64Max) return std::nullopt;
  const u128 n = r->first;
  const std::string_view u = r->second;
  u128 ms = 0;
  if (u.empty() || u == "ms")
    ms = n;
  else if (u == "us")
    ms = (n + 999) / 1000;
  else if (u == "s")
    ms = n * 1000;
  else if (u == "m" || u == "min")
    ms = n * 60000;
  else
    return std::nullopt;
  if (ms > kI64Max) return std::nullopt;  // a duration is an int64_t of milliseconds
  return static_cast<int64_t>(ms);
}

void FuzzParsers(std::string_view text) {
  auto size = ParseSize(text);
  auto size_ref = SizeRef(text);
  FUZZ_CHECK(size.ok() == size_ref.has_value(), "ParseSize('{}') ok={} but the reference says {}", text,
             size.ok(), size_ref ? std::to_string(*size_ref) : "error");
  if (size.ok()) {
    FUZZ_CHECK(*size == *size_ref, "ParseSize('{}') = {}, reference {}", text, *size, *size_ref);
    const std::string f = FormatSize(*size);
    auto back = ParseSize(f);
    FUZZ_CHECK(back.ok() && *back == *size, "FormatSize({}) = '{}' does not parse back", *size, f);
  }

  auto ms = ParseDurationMs(text);
  auto ms_ref = DurationRef(text);
  FUZZ_CHECK(ms.ok() == ms_ref.has_value(), "ParseDurationMs('{}') ok={} but the reference says {}", text,
             ms.ok(), ms_ref ? std::to_string(*ms_ref) : "error");
  if (ms.ok()) {
    FUZZ_CHECK(*ms == *ms_ref, "ParseDurationMs('{}') = {}, reference {}", text, *ms, *ms_ref);
    const std::string f = FormatDurationMs(*ms);
    auto back = ParseDurationMs(f);
    FUZZ_CHECK(back.ok() && *back == *ms, "FormatDurationMs({}) = '{}' does not parse back", *ms, f);
  }
}

bool InChoices(std::string_view choices, std::string_view v) {
  while (true) {
    const size_t bar = choices.find('|');
    if (choices.substr(0, bar) == v) return true;
    if (bar == std::string_view::npos) return false;
    choices.remove_prefix(bar + 1);
  }
}

void FuzzRow(const TunableDef& d, std::string_view value) {
  const Status valid = ValidateTunableValue(d, value);
  if (!valid.ok()) {
    FUZZ_CHECK(valid.code() == Code::kInvalidArgument, "{}: {}", d.name, valid.ToString());
    FUZZ_CHECK(valid.message().find(d.name) != std::string::npos, "error does not name {}: {}", d.name,
               valid.message());
  }
  // The environment cannot hold a NUL: what a process would see is the value up to the first one.
  if (value.find('\0') != std::string_view::npos) return;
  const std::string v(value);
  ::setenv(d.name, v.c_str(), 1);
  switch (d.type) {
    case TunableType::kInt: {
      auto x = TunableInt(d.name);
      FUZZ_CHECK(x.ok() == valid.ok(), "{}='{}': getter and validation disagree", d.name, v);
      int64_t lo = 0, hi = 0;
      if (x.ok() && std::sscanf(d.choices, "%ld..%ld", &lo, &hi) == 2)
        FUZZ_CHECK(*x >= lo && *x <= hi, "{}='{}' -> {} outside {}", d.name, v, *x, d.choices);
      break;
    }
    case TunableType::kSize: {
      auto x = TunableSize(d.name);
      FUZZ_CHECK(x.ok() == valid.ok(), "{}='{}': getter and validation disagree", d.name, v);
      if (x.ok()) FUZZ_CHECK(*x == *ParseSize(v), "{}='{}'", d.name, v);
      break;
    }
    case TunableType::kDuration: {
      auto x = TunableMs(d.name);
      FUZZ_CHECK(x.ok() == valid.ok(), "{}='{}': getter and validation disagree", d.name, v);
      if (x.ok()) FUZZ_CHECK(*x >= 0, "{}='{}' -> negative duration {} ms", d.name, v, *x);
      break;
    }
    case TunableType::kEnum:
    case TunableType::kString: {
      auto x = TunableStr(d.name);
      FUZZ_CHECK(x.ok() == valid.ok(), "{}='{}': getter and validation disagree", d.name, v);
      if (x.ok() && d.type == TunableType::kEnum)
        FUZZ_CHECK(InChoices(d.choices, *x), "{}='{}' -> '{}' not in {}", d.name, v, *x, d.choices);
      break;
    }
  }
  FUZZ_CHECK(ValidateTunableEnv().ok() == valid.ok(), "ValidateTunableEnv disagrees on {}='{}'", d.name, v);
  // What the waits of epx use: whatever the environment says, the back-off stays sane.
  const BackoffPolicy b = BackoffPolicy::FromTunables();
  FUZZ_CHECK(b.max_sleep_us >= 1, "max_sleep_us {}", b.max_sleep_us);
  FUZZ_CHECK(b.spin_iters <= 1000000 && b.yield_iters <= 1000000, "spin {} yield {}", b.spin_iters,
             b.yield_iters);
  if (std::string_view(d.name) == "EPX_MAX_SLEEP" && valid.ok()) {
    // Documented: the sleep cap is the value, at least 1 us and at most kMaxSleepCapUs.
    const u128 us = static_cast<u128>(*ParseDurationMs(v)) * 1000;
    const u128 want = us == 0 ? 1 : us > BackoffPolicy::kMaxSleepCapUs ? BackoffPolicy::kMaxSleepCapUs : us;
    FUZZ_CHECK(b.max_sleep_us == want, "EPX_MAX_SLEEP='{}' -> max_sleep_us {}", v, b.max_sleep_us);
  }
  (void)FormatTunables();
  ::unsetenv(d.name);
}

}  // namespace
}  // namespace epx

// The checks compare against a clean environment: drop whatever EPX_* tunables the caller's had.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (const auto& d : epx::AllTunables()) ::unsetenv(d.name);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  epx::FuzzParsers(text);
  if (size >= 1) {
    const auto rows = epx::AllTunables();
    epx::FuzzRow(rows[data[0] % rows.size()], text.substr(1));
  }
  return 0;
}
