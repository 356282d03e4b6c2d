// core/status.h: the one error type of epx, and its propagation macros.
//
// Every fallible function returns `Status` (or `StatusOr<T>`). An error is created once, where it is
// first detected, by `EPX_ERROR(code, fmt, ...)` which also logs it (one line, with file:line); callers
// only propagate it with `EPX_RETURN_IF_ERROR` / `EPX_ASSIGN_OR_RETURN`, optionally adding context with
// `Status::With()`. No exceptions are thrown on the data path; the public API may convert to exceptions
// at a binding boundary if one is ever added.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

namespace epx {

// Canonical error codes (a small subset of absl's, plus the ones this domain needs).
enum class Code : uint8_t {
  kOk = 0,
  kInvalidArgument,     // bad shape, index, rank, value of a tunable
  kFailedPrecondition,  // called in the wrong phase / state
  kTimeout,             // a deadline passed (names the phase and what is missing)
  kPeerFailure,         // a peer died or its connection broke
  kSystem,              // a syscall failed (names the call and errno)
  kTransport,           // an ibv_*/rdma_* call or a work completion failed
  kResource,            // out of memory / buffer space / queue depth
  kNotFound,            // no device, no file, no such peer
  kUnsupported,         // feature missing on this machine or device
  kInternal,            // a broken invariant: a bug in epx
};

const char* CodeName(Code c);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(Code code, std::string msg) : code_(code), msg_(std::move(msg)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }
  // "timeout: bootstrap barrier 'init': ranks 3 did not arrive within 5000 ms"
  std::string ToString() const;

  // Prepends context ("while X: <original>") on the error path only; OK stays OK.
  Status With(std::string_view context) &&;

 private:
  Code code_ = Code::kOk;
  std::string msg_;
};

// Value or error. Holds a T only when ok().
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status s) : status_(std::move(s)) {}  // NOLINT: implicit on purpose (macro ergonomics)
  StatusOr(T v) : value_(std::move(v)) {}        // NOLINT
  bool ok() const { return status_.ok(); }
  const Status& status() const& { return status_; }
  Status status() && { return std::move(status_); }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  T& operator*() { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

namespace internal {
// Builds and logs an error at its origin. Defined in status.cc.
Status MakeError(Code code, const char* file, int line, std::string msg);
}  // namespace internal

}  // namespace epx

// Creates (and logs once) an error status: return EPX_ERROR(kTimeout, "phase {} ...", x);
#define EPX_ERROR(code, ...) \
  ::epx::internal::MakeError(::epx::Code::code, __FILE__, __LINE__, ::fmt::format(__VA_ARGS__))

#define EPX_CONCAT_INNER_(a, b) a##b
#define EPX_CONCAT_(a, b) EPX_CONCAT_INNER_(a, b)

// Propagates a non-OK Status to the caller.
#define EPX_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::epx::Status epx_status_ = (expr);            \
    if (!epx_status_.ok()) [[unlikely]]            \
      return epx_status_;                          \
  } while (0)

// auto x = ...; from a StatusOr<T>, or returns its error.
#define EPX_ASSIGN_OR_RETURN(lhs, expr) EPX_ASSIGN_OR_RETURN_IMPL_(EPX_CONCAT_(epx_sor_, __LINE__), lhs, expr)
#define EPX_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) [[unlikely]]                      \
    return std::move(tmp).status();                \
  lhs = std::move(tmp).value()

// Checks an internal invariant; a failure is a bug in epx (returns kInternal).
#define EPX_CHECK_OR_RETURN(cond, ...) \
  do {                                 \
    if (!(cond)) [[unlikely]]          \
      return EPX_ERROR(kInternal, "check failed: " #cond ": " __VA_ARGS__); \
  } while (0)
