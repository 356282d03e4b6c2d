#include "core/status.h"

#include <gtest/gtest.h>

#include "core/sys.h"

namespace epx {
namespace {

Status FailsWith(Code c) { return Status(c, "inner"); }

Status Propagates() {
  EPX_RETURN_IF_ERROR(FailsWith(Code::kTimeout));
  return Status(Code::kInternal, "not reached");
}

StatusOr<int> Value(bool ok) {
  if (!ok) return EPX_ERROR(kInvalidArgument, "bad value {}", 7);
  return 42;
}

Status UsesAssign(bool ok, int* out) {
  EPX_ASSIGN_OR_RETURN(*out, Value(ok));
  return Status::Ok();
}

Status SysFails() {
  EPX_SYS(rc, ::close(-1), "closing fd {}", -1);
  return Status::Ok();
}

TEST(Status, OkByDefault) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "ok");
}

TEST(Status, PropagatesUnchanged) {
  Status s = Propagates();
  EXPECT_EQ(s.code(), Code::kTimeout);
  EXPECT_EQ(s.message(), "inner");
  EXPECT_EQ(s.ToString(), "timeout: inner");
}

TEST(Status, AssignOrReturn) {
  int v = 0;
  EXPECT_TRUE(UsesAssign(true, &v).ok());
  EXPECT_EQ(v, 42);
  Status s = UsesAssign(false, &v);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad value 7");
}

TEST(Status, WithAddsContextOnlyOnError) {
  EXPECT_TRUE(Status().With("ctx").ok());
  EXPECT_EQ(Status(Code::kSystem, "x").With("while y").message(), "while y: x");
}

TEST(Status, SyscallWrapperNamesCallAndErrno) {
  Status s = SysFails();
  EXPECT_EQ(s.code(), Code::kSystem);
  EXPECT_NE(s.message().find("::close(-1) failed"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("Bad file descriptor (errno 9)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("[closing fd -1]"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace epx
