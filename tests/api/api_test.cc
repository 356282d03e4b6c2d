// The public header is self-contained and a single-rank runtime works without any launcher.
#include <epx/epx.h>
#include <gtest/gtest.h>

namespace {

TEST(Api, SingleRankRuntimeWithoutLauncher) {
  // No launcher variables in ctest's environment: a world of one.
  setenv("EPX_HEAP_SIZE", "1M", 1);
  auto rt = epx::Runtime::Create();
  ASSERT_TRUE(rt.ok()) << rt.status().ToString();
  epx::Runtime& r = **rt;
  EXPECT_EQ(r.world_size(), 1);
  EXPECT_EQ(r.placement().launcher, "single");
  uint64_t v = 42, got = 0;
  ASSERT_TRUE(r.node().Put(0, epx::kHeapControlBytes, &v, 8).ok());
  ASSERT_TRUE(r.node().Get(0, epx::kHeapControlBytes, &got, 8).ok());
  EXPECT_EQ(got, 42u);
  EXPECT_TRUE(r.node().Barrier("api").ok());
  EXPECT_TRUE(r.bootstrap().Barrier("api").ok());
  unsetenv("EPX_HEAP_SIZE");
}

TEST(Api, BadTunableIsReportedAtCreate) {
  setenv("EPX_HEAP_SIZE", "huge", 1);
  auto rt = epx::Runtime::Create();
  unsetenv("EPX_HEAP_SIZE");
  ASSERT_FALSE(rt.ok());
  EXPECT_EQ(rt.status().code(), epx::Code::kInvalidArgument);
  EXPECT_NE(rt.status().message().find("EPX_HEAP_SIZE='huge'"), std::string::npos) << rt.status().message();
}

}  // namespace
