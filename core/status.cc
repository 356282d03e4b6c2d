#include "core/status.h"

#include "core/log.h"

namespace epx {

const char* CodeName(Code c) {
  switch (c) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kFailedPrecondition: return "failed precondition";
    case Code::kTimeout: return "timeout";
    case Code::kPeerFailure: return "peer failure";
    case Code::kSystem: return "system error";
    case Code::kTransport: return "transport error";
    case Code::kResource: return "out of resources";
    case Code::kNotFound: return "not found";
    case Code::kUnsupported: return "unsupported";
    case Code::kInternal: return "internal error";
  }
  return "unknown";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return fmt::format("{}: {}", CodeName(code_), msg_);
}

Status Status::With(std::string_view context) && {
  if (ok()) return std::move(*this);
  return Status(code_, fmt::format("{}: {}", context, msg_));
}

namespace internal {
Status MakeError(Code code, const char* file, int line, std::string msg) {
  // Logged here, once, where the error starts; propagation does not log again.
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  Log(LogLevel::kWarn, fmt::format("error at {}:{}: {}: {}", base, line, CodeName(code), msg));
  return Status(code, std::move(msg));
}
}  // namespace internal

}  // namespace epx

#include <cstring>

#include "core/sys.h"

namespace epx {
Status SysError(std::string_view call, int err, std::string_view context, const char* file, int line) {
  std::string msg = fmt::format("{} failed: {} (errno {})", call, std::strerror(err), err);
  if (!context.empty()) msg += fmt::format(" [{}]", context);
  return internal::MakeError(Code::kSystem, file, line, std::move(msg));
}
}  // namespace epx
