// core/sys.h: the one thin wrapper for system calls. Every syscall in epx goes through EPX_SYS (or
// SysError for calls with other return conventions), so a failure names the call and errno.
#pragma once

#include <cerrno>
#include <string_view>

#include "core/status.h"

namespace epx {

// kSystem error "CALL failed: strerror (ERRNO) [context]"; logged once here.
Status SysError(std::string_view call, int err, std::string_view context = {},
                const char* file = __builtin_FILE(), int line = __builtin_LINE());

}  // namespace epx

// long lhs = CALL, retried on EINTR; on -1 returns SysError naming the call text and errno.
//   EPX_SYS(fd, ::memfd_create("x", 0), "heap of {} bytes", n);
#define EPX_SYS(lhs, expr, ...)                                                                   \
  [[maybe_unused]] long lhs;                                                                      \
  do {                                                                                            \
    lhs = static_cast<long>(expr);                                                                \
  } while (lhs == -1 && errno == EINTR);                                                          \
  if (lhs == -1) [[unlikely]]                                                                     \
  return ::epx::SysError(#expr, errno, ::fmt::format("" __VA_ARGS__), __FILE__, __LINE__)
