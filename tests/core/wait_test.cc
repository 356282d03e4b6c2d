#include "core/wait.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace epx {
namespace {

TEST(Wait, ReturnsWhenPredicateTurnsTrue) {
  std::atomic<int> flag{0};
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    flag.store(1, std::memory_order_release);
  });
  Status s = WaitUntil([&] { return flag.load(std::memory_order_acquire) == 1; },
                       Deadline::After(std::chrono::seconds(10)), [] { return std::string("flag"); });
  t.join();
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST(Wait, TimesOutWithDiagnostic) {
  auto t0 = Clock::now();
  Status s = WaitUntil([] { return false; }, Deadline::After(std::chrono::milliseconds(100)),
                       [] { return std::string("peer 3, phase 'x', counter 5 < 6"); });
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  EXPECT_EQ(s.code(), Code::kTimeout);
  EXPECT_EQ(s.message(), "peer 3, phase 'x', counter 5 < 6");
  EXPECT_GE(ms, 100);
  EXPECT_LT(ms, 2000);  // sleeps are capped (EPX_MAX_SLEEP), so expiry is noticed promptly
}

TEST(Wait, BackoffSleepsInsteadOfSpinning) {
  // After the spin and yield phases a waiter must leave the CPU: 200 pauses past them take >= ~200 us.
  BackoffPolicy p{0, 0, 1000};
  Backoff b(p);
  auto t0 = Clock::now();
  for (int i = 0; i < 20; ++i) b.Pause();
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
  EXPECT_GE(us, 1000);  // 1+2+4+...+512+1000*10 us of requested sleep
}

TEST(Wait, DeadlineRemaining) {
  auto d = Deadline::After(std::chrono::milliseconds(500));
  EXPECT_FALSE(d.Expired());
  EXPECT_LE(d.RemainingMs(), 500);
  EXPECT_GT(d.RemainingMs(), 100);
  EXPECT_FALSE(Deadline::Never().Expired());
}

}  // namespace
}  // namespace epx
