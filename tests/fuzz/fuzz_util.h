// tests/fuzz/fuzz_util.h: what every fuzz target shares.
//
// FUZZ_CHECK(cond, fmt, ...) reports a broken invariant (with the formatted context) and aborts, which
// libFuzzer records as a crash with the input that caused it. Error logging is dropped: the decoders
// under test create (and log) an error for nearly every input.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "core/log.h"

#define FUZZ_CHECK(cond, ...)                                                                 \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s: %s\n", __FILE__, __LINE__, #cond, \
                   ::fmt::format(__VA_ARGS__).c_str());                                       \
      std::abort();                                                                           \
    }                                                                                         \
  } while (0)

namespace epx::fuzz {

// Drops log lines for the whole process (installed before main, so before the first input).
inline const bool kQuietLog = [] {
  SetLogSink([](std::string_view) {});
  return true;
}();

}  // namespace epx::fuzz
