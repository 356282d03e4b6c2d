#include "core/tunables.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <set>

#include "core/wait.h"

namespace epx {
namespace {

struct EnvGuard {
  std::string name;
  EnvGuard(const char* n, const char* v) : name(n) { setenv(n, v, 1); }
  ~EnvGuard() { unsetenv(name.c_str()); }
};

TEST(Tunables, ParseSizeUnits) {
  EXPECT_EQ(*ParseSize("4096"), 4096u);
  EXPECT_EQ(*ParseSize("64K"), 64u << 10);
  EXPECT_EQ(*ParseSize("64M"), 64u << 20);
  EXPECT_EQ(*ParseSize("2G"), 2ull << 30);
  EXPECT_EQ(*ParseSize(" 3MiB "), 3u << 20);
  EXPECT_FALSE(ParseSize("").ok());
  EXPECT_FALSE(ParseSize("12Q").ok());
  EXPECT_FALSE(ParseSize("-1").ok());
  EXPECT_FALSE(ParseSize("99999999999G").ok());
}

TEST(Tunables, ParseDuration) {
  EXPECT_EQ(*ParseDurationMs("250ms"), 250);
  EXPECT_EQ(*ParseDurationMs("30s"), 30000);
  EXPECT_EQ(*ParseDurationMs("2m"), 120000);
  EXPECT_EQ(*ParseDurationMs("1500"), 1500);
  EXPECT_EQ(*ParseDurationMs("1us"), 1);
  EXPECT_FALSE(ParseDurationMs("soon").ok());
  EXPECT_FALSE(ParseDurationMs("5h").ok());
}

TEST(Tunables, TableIsWellFormed) {
  std::set<std::string> names;
  for (const auto& d : AllTunables()) {
    EXPECT_TRUE(std::string(d.name).rfind("EPX_", 0) == 0) << d.name;
    EXPECT_TRUE(names.insert(d.name).second) << "duplicate " << d.name;
    EXPECT_GT(std::string(d.doc).size(), 5u) << d.name;
    EXPECT_EQ(FindTunable(d.name), &d);
  }
  // Every default must pass its own validation.
  EXPECT_TRUE(ValidateTunableEnv().ok());
}

TEST(Tunables, DefaultsAndEnvOverride) {
  EXPECT_EQ(*TunableSize("EPX_HEAP_SIZE"), 64u << 20);
  EnvGuard g("EPX_HEAP_SIZE", "8M");
  EXPECT_EQ(*TunableSize("EPX_HEAP_SIZE"), 8u << 20);
}

TEST(Tunables, BadValuesNameTheVariable) {
  {
    EnvGuard g("EPX_QPS_PER_PEER", "0");
    auto r = TunableInt("EPX_QPS_PER_PEER");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find("EPX_QPS_PER_PEER='0': out of range"), std::string::npos)
        << r.status().message();
    EXPECT_FALSE(ValidateTunableEnv().ok());
  }
  {
    EnvGuard g("EPX_RDMA", "ib");
    auto r = TunableStr("EPX_RDMA");
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("auto|verbs|shm"), std::string::npos) << r.status().message();
  }
  {
    EnvGuard g("EPX_HEAP_SIZE", "lots");
    EXPECT_FALSE(TunableSize("EPX_HEAP_SIZE").ok());
  }
}

TEST(Tunables, FormatShowsValueAndSource) {
  EnvGuard g("EPX_TIMEOUT", "5s");
  std::string t = FormatTunables();
  EXPECT_NE(t.find("EPX_TIMEOUT"), std::string::npos);
  EXPECT_NE(t.find("5s"), std::string::npos);
  EXPECT_NE(t.find("env"), std::string::npos);
  EXPECT_NE(t.find("EPX_HEAP_SIZE"), std::string::npos);
}

// Found by tests/fuzz/tunables_fuzz: durations whose milliseconds do not fit an int64_t used to wrap
// (negative timeouts, i.e. deadlines already expired) instead of being rejected.
TEST(Tunables, DurationOverflowIsAnError) {
  EXPECT_EQ(*ParseDurationMs("9223372036854775807"), INT64_MAX);
  EXPECT_FALSE(ParseDurationMs("9223372036854775808").ok());
  EXPECT_FALSE(ParseDurationMs("18446703774409551617").ok());
  EXPECT_FALSE(ParseDurationMs("30222222222222222s").ok());
  EXPECT_FALSE(ParseDurationMs("153722867280913m").ok());
  EXPECT_EQ(*ParseDurationMs("153722867280912m"), 153722867280912 * 60000);
  EXPECT_EQ(*ParseDurationMs("18446744073709551615us"), 18446744073709552);  // rounded up, no wrap
  EXPECT_EQ(*ParseDurationMs("1001us"), 2);
  EnvGuard g("EPX_TIMEOUT", "30222222222222222s");
  EXPECT_FALSE(TunableMs("EPX_TIMEOUT").ok());
}

TEST(Tunables, FormatRoundTrips) {
  for (uint64_t n : {0ull, 1ull, 4097ull, 1536ull << 10, 64ull << 20, 2ull << 30, ~0ull}) {
    auto back = ParseSize(FormatSize(n));
    ASSERT_TRUE(back.ok()) << FormatSize(n);
    EXPECT_EQ(*back, n) << FormatSize(n);
  }
  EXPECT_EQ(FormatSize(64u << 20), "64M");
  for (int64_t ms : {int64_t{0}, int64_t{250}, int64_t{30000}, int64_t{120000}, INT64_MAX}) {
    auto back = ParseDurationMs(FormatDurationMs(ms));
    ASSERT_TRUE(back.ok()) << FormatDurationMs(ms);
    EXPECT_EQ(*back, ms) << FormatDurationMs(ms);
  }
  EXPECT_EQ(FormatDurationMs(30000), "30s");
}

// Found by tests/fuzz/tunables_fuzz: EPX_MAX_SLEEP * 1000 overflowed an int64_t (undefined behaviour)
// and large values were truncated to 32 bits.
TEST(Tunables, MaxSleepIsClamped) {
  {
    EnvGuard g("EPX_MAX_SLEEP", "16989579394285898ms");
    EXPECT_EQ(BackoffPolicy::FromTunables().max_sleep_us, BackoffPolicy::kMaxSleepCapUs);
  }
  {
    EnvGuard g("EPX_MAX_SLEEP", "4295s");  // 4295000000 us: wrapped to 32 bits before
    EXPECT_EQ(BackoffPolicy::FromTunables().max_sleep_us, BackoffPolicy::kMaxSleepCapUs);
  }
  {
    EnvGuard g("EPX_MAX_SLEEP", "0");
    EXPECT_EQ(BackoffPolicy::FromTunables().max_sleep_us, 1u);
  }
  EnvGuard g("EPX_MAX_SLEEP", "2s");
  EXPECT_EQ(BackoffPolicy::FromTunables().max_sleep_us, 2000000u);
}

// Ranks that share cpus spin less before yielding, unless EPX_SPIN_ITERS says otherwise.
TEST(Tunables, BackoffForSharedCpusSpinsLess) {
  unsetenv("EPX_SPIN_ITERS");
  const BackoffPolicy& d = BackoffPolicy::Default();
  EXPECT_EQ(BackoffPolicy::ForCpus(false).spin_iters, d.spin_iters);
  EXPECT_EQ(BackoffPolicy::ForCpus(true).spin_iters,
            std::min(d.spin_iters, BackoffPolicy::kSharedCpuSpinIters));
  EXPECT_EQ(BackoffPolicy::ForCpus(true).yield_iters, d.yield_iters);
  EXPECT_EQ(BackoffPolicy::ForCpus(true).max_sleep_us, d.max_sleep_us);
  EnvGuard g("EPX_SPIN_ITERS", "300");  // explicit: Default()'s value (read once) is kept
  EXPECT_EQ(BackoffPolicy::ForCpus(true).spin_iters, d.spin_iters);
}

}  // namespace
}  // namespace epx
