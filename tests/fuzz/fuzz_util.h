// tests/fuzz/fuzz_util.h: what every fuzz target shares.
//
// FUZZ_CHECK(cond, fmt, ...) reports a broken invariant (with the formatted context) and aborts, which
// libFuzzer records as a crash with the input that caused it. Error logging is dropped: the decoders
// under test create (and log) an error for nearly every input.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <span>
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

// Reads fixed-size fields from the front of an input (zeros once it runs out), so that seeds are plain
// packed structs (struct.pack in Python) and the layout of an input is obvious from the target's code.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : p_(data), n_(size) {}
  template <typename T>
  T Take() {
    T x{};
    const size_t k = std::min(sizeof(T), n_);
    if (k) std::memcpy(&x, p_, k);
    p_ += k;
    n_ -= k;
    return x;
  }
  std::span<const uint8_t> Rest() const { return {p_, n_}; }

 private:
  const uint8_t* p_;
  size_t n_;
};

// The usual entry: the input's first byte picks one of `targets` (modulo their number), the rest is
// what that target reads. A fuzz target's LLVMFuzzerTestOneInput is then one line.
using Target = void (*)(ByteReader&);
inline int RunOneOf(const uint8_t* data, size_t size, std::initializer_list<Target> targets) {
  if (size == 0 || targets.size() == 0) return 0;
  ByteReader in(data + 1, size - 1);
  targets.begin()[data[0] % targets.size()](in);
  return 0;
}

}  // namespace epx::fuzz
