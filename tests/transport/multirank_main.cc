// main() of the multi-rank transport suite. Each rank process builds one Context from the
// environment (any launcher), runs the same gtest cases in the same order, then meets the others at a
// final bootstrap barrier so that no rank tears its heap down while peers still read it.
//
// EPX_TEST_MODE (for the failure suite): "setup-only" = create the context and exit;
// "hold" = set up, print "ready", then sleep until killed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "tests/transport/mr_env.h"

namespace epx::test {
Context* g_ctx = nullptr;
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto ctx = epx::Context::Create();
  if (!ctx.ok()) {
    std::fprintf(stderr, "context setup failed: %s\n", ctx.status().ToString().c_str());
    return 2;
  }
  epx::test::g_ctx = ctx->get();
  const char* mode = std::getenv("EPX_TEST_MODE");
  std::string m = mode ? mode : "";
  if (m == "setup-only") {
    std::printf("setup ok rank %d\n", (*ctx)->rank());
    return 0;
  }
  if (m == "hold") {
    std::printf("ready rank %d pid %d\n", (*ctx)->rank(), getpid());
    std::fflush(stdout);
    for (;;) pause();
  }
  int rc = RUN_ALL_TESTS();
  auto st = (*ctx)->bootstrap().Barrier("test-end");
  if (!st.ok()) {
    std::fprintf(stderr, "final barrier failed: %s\n", st.ToString().c_str());
    return 3;
  }
  return rc;
}
