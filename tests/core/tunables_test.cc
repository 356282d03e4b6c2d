#include "core/tunables.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <set>

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

}  // namespace
}  // namespace epx
