// Shared state of the multi-rank transport suite: the rank's Context, created once in main().
#pragma once

#include "transport/context.h"

namespace epx::test {
extern Context* g_ctx;
inline Context& Ctx() { return *g_ctx; }
}  // namespace epx::test

// ASSERT that a Status is OK, printing it otherwise.
#define ASSERT_OK(expr)                                      \
  do {                                                       \
    ::epx::Status s_ = (expr);                               \
    ASSERT_TRUE(s_.ok()) << #expr << ": " << s_.ToString();  \
  } while (0)
