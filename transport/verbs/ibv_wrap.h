// transport/verbs/ibv_wrap.h: the one checked layer over libibverbs and librdmacm.
//
// Every ibv_*/rdma_* call of the verbs transport goes through one of the macros below, so a failure
// is one kTransport error naming the call, the errno string and what was being done:
//   "ibv_modify_qp failed: Invalid argument (22) [INIT->RTR of QP 0x1c to rank 3, channel 1]"
// Return conventions differ across the two libraries, and the macros normalise them:
//   EPX_IBV(fn, (args), ctx...)          0 on success, else an errno value (ibv_modify_qp, ibv_query_*,
//                                        ibv_post_*, ...); -1 + errno and -errno are accepted too
//   EPX_IBV_NEW(lhs, fn, (args), ctx...) a pointer, NULL + errno on failure (ibv_create_*, ibv_reg_mr)
//   EPX_RDMACM(fn, (args), ctx...)       0, or -1 + errno (rdma_cm(7); older librdmacm gave -errno)
// The RAII owners release in the only safe order when members are declared context, PD, MR, CQ, QP
// (destruction runs in reverse); a failing destroy is logged as a warning, never thrown.
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <cerrno>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "core/status.h"

namespace epx::verbs {

// Builds (and logs once) "CALL failed: strerror (err) [context]" as kTransport.
Status VerbsError(std::string_view call, int err, std::string_view context = {},
                  const char* file = __builtin_FILE(), int line = __builtin_LINE());

// rc of an ibv_* call returning 0/errno, -1 + errno or -errno -> errno value (0 = success).
inline int IbvErrno(int rc) {
  if (rc == 0) return 0;
  if (rc == -1) return errno != 0 ? errno : EIO;
  return rc < 0 ? -rc : rc;
}

// Names for messages: "RDMA_WRITE", "RETRY_EXC_ERR (transport retry counter exceeded)", "1024".
const char* WrOpcodeName(ibv_wr_opcode op);
std::string WcStatusText(ibv_wc_status s);  // "transport retry counter exceeded (IBV_WC_RETRY_EXC_ERR=12)"
const char* CmEventName(rdma_cm_event_type e);
int MtuBytes(ibv_mtu mtu);
const char* PortStateName(ibv_port_state s);
std::string GidToString(const ibv_gid& gid);  // "::ffff:10.99.0.1", "fe80::200:ff:fe00:0"
bool GidIsZero(const ibv_gid& gid);
bool GidIsIpv4Mapped(const ibv_gid& gid);  // ::ffff:a.b.c.d
bool GidIsLinkLocal(const ibv_gid& gid);   // fe80::/10, or IPv4-mapped 169.254/16

// ---- RAII owners ------------------------------------------------------------------------------

struct IbvDeleter {
  void operator()(ibv_context* p) const;
  void operator()(ibv_pd* p) const;
  void operator()(ibv_mr* p) const;
  void operator()(ibv_cq* p) const;
  void operator()(rdma_event_channel* p) const;
};
using ContextPtr = std::unique_ptr<ibv_context, IbvDeleter>;
using PdPtr = std::unique_ptr<ibv_pd, IbvDeleter>;
using MrPtr = std::unique_ptr<ibv_mr, IbvDeleter>;
using CqPtr = std::unique_ptr<ibv_cq, IbvDeleter>;
using EventChannelPtr = std::unique_ptr<rdma_event_channel, IbvDeleter>;

// An RC QP created either directly (ibv_create_qp, out-of-band connection) or on an rdma_cm id
// (rdma_create_qp, which the id then owns). Destroys the QP, then the id.
class QpOwner {
 public:
  QpOwner() = default;
  explicit QpOwner(ibv_qp* qp) : qp_(qp) {}
  QpOwner(rdma_cm_id* id, ibv_qp* qp) : qp_(qp), id_(id) {}
  QpOwner(QpOwner&& o) noexcept : qp_(std::exchange(o.qp_, nullptr)), id_(std::exchange(o.id_, nullptr)) {}
  QpOwner& operator=(QpOwner&& o) noexcept {
    if (this != &o) {
      Reset();
      qp_ = std::exchange(o.qp_, nullptr);
      id_ = std::exchange(o.id_, nullptr);
    }
    return *this;
  }
  ~QpOwner() { Reset(); }
  void Reset();
  // An rdma_cm id owned before its QP exists gets the QP made by rdma_create_qp.
  void set_qp(ibv_qp* qp) { qp_ = qp; }
  ibv_qp* qp() const { return qp_; }
  rdma_cm_id* id() const { return id_; }
  explicit operator bool() const { return qp_ != nullptr; }

 private:
  ibv_qp* qp_ = nullptr;
  rdma_cm_id* id_ = nullptr;
};

// Owns a cm_id that has no QP (the listener); rdma_destroy_id.
class CmIdOwner {
 public:
  CmIdOwner() = default;
  explicit CmIdOwner(rdma_cm_id* id) : id_(id) {}
  CmIdOwner(CmIdOwner&& o) noexcept : id_(std::exchange(o.id_, nullptr)) {}
  CmIdOwner& operator=(CmIdOwner&& o) noexcept {
    if (this != &o) {
      Reset();
      id_ = std::exchange(o.id_, nullptr);
    }
    return *this;
  }
  ~CmIdOwner() { Reset(); }
  void Reset();
  rdma_cm_id* get() const { return id_; }
  rdma_cm_id* release() { return std::exchange(id_, nullptr); }

 private:
  rdma_cm_id* id_ = nullptr;
};

}  // namespace epx::verbs

// ibv_* call returning 0 / errno: EPX_IBV(ibv_modify_qp, (qp, &a, mask), "RTR of QP 0x{:x}", qpn);
#define EPX_IBV(fn, args, ...)                                                                               \
  do {                                                                                                       \
    const int epx_ibv_err_ = ::epx::verbs::IbvErrno(fn args);                                                \
    if (epx_ibv_err_ != 0) [[unlikely]]                                                                      \
      return ::epx::verbs::VerbsError(#fn, epx_ibv_err_, ::fmt::format("" __VA_ARGS__), __FILE__, __LINE__); \
  } while (0)

// Pointer-returning call: auto* lhs = fn args, or return its error.
#define EPX_IBV_NEW(lhs, fn, args, ...)                                                                   \
  errno = 0;                                                                                              \
  lhs = fn args;                                                                                          \
  if (lhs == nullptr) [[unlikely]]                                                                        \
  return ::epx::verbs::VerbsError(#fn, errno != 0 ? errno : EIO, ::fmt::format("" __VA_ARGS__), __FILE__, \
                                  __LINE__)

// rdma_* call returning 0 or -1 + errno.
#define EPX_RDMACM(fn, args, ...)                                                                           \
  do {                                                                                                      \
    errno = 0;                                                                                              \
    const int epx_cm_rc_ = fn args;                                                                         \
    if (epx_cm_rc_ != 0) [[unlikely]] {                                                                     \
      const int epx_cm_err_ = epx_cm_rc_ == -1 ? (errno != 0 ? errno : EIO) : -epx_cm_rc_;                  \
      return ::epx::verbs::VerbsError(#fn, epx_cm_err_, ::fmt::format("" __VA_ARGS__), __FILE__, __LINE__); \
    }                                                                                                       \
  } while (0)
