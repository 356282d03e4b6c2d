#include "transport/verbs/ibv_wrap.h"

#include <arpa/inet.h>

#include <cstring>

#include "core/log.h"

namespace epx::verbs {

Status VerbsError(std::string_view call, int err, std::string_view context, const char* file, int line) {
  std::string msg = fmt::format("{} failed: {} ({})", call, std::strerror(err), err);
  if (!context.empty()) msg += fmt::format(" [{}]", context);
  if (err == ENOMEM && (call == "ibv_reg_mr" || call == "ibv_create_cq" || call == "ibv_create_qp"))
    msg += "; check `ulimit -l` (pinned memory limit) and the heap size (EPX_HEAP_SIZE)";
  return internal::MakeError(Code::kTransport, file, line, std::move(msg));
}

const char* WrOpcodeName(ibv_wr_opcode op) {
  switch (op) {
    case IBV_WR_RDMA_WRITE:
      return "RDMA_WRITE";
    case IBV_WR_RDMA_WRITE_WITH_IMM:
      return "RDMA_WRITE_WITH_IMM";
    case IBV_WR_SEND:
      return "SEND";
    case IBV_WR_SEND_WITH_IMM:
      return "SEND_WITH_IMM";
    case IBV_WR_RDMA_READ:
      return "RDMA_READ";
    case IBV_WR_ATOMIC_CMP_AND_SWP:
      return "ATOMIC_CMP_AND_SWP";
    case IBV_WR_ATOMIC_FETCH_AND_ADD:
      return "ATOMIC_FETCH_AND_ADD";
    default:
      return "OTHER";
  }
}

std::string WcStatusText(ibv_wc_status s) {
  const char* sym = "?";
  switch (s) {
#define EPX_WC_CASE(x) \
  case x:              \
    sym = #x;          \
    break;
    EPX_WC_CASE(IBV_WC_SUCCESS)
    EPX_WC_CASE(IBV_WC_LOC_LEN_ERR)
    EPX_WC_CASE(IBV_WC_LOC_QP_OP_ERR)
    EPX_WC_CASE(IBV_WC_LOC_EEC_OP_ERR)
    EPX_WC_CASE(IBV_WC_LOC_PROT_ERR)
    EPX_WC_CASE(IBV_WC_WR_FLUSH_ERR)
    EPX_WC_CASE(IBV_WC_MW_BIND_ERR)
    EPX_WC_CASE(IBV_WC_BAD_RESP_ERR)
    EPX_WC_CASE(IBV_WC_LOC_ACCESS_ERR)
    EPX_WC_CASE(IBV_WC_REM_INV_REQ_ERR)
    EPX_WC_CASE(IBV_WC_REM_ACCESS_ERR)
    EPX_WC_CASE(IBV_WC_REM_OP_ERR)
    EPX_WC_CASE(IBV_WC_RETRY_EXC_ERR)
    EPX_WC_CASE(IBV_WC_RNR_RETRY_EXC_ERR)
    EPX_WC_CASE(IBV_WC_LOC_RDD_VIOL_ERR)
    EPX_WC_CASE(IBV_WC_REM_INV_RD_REQ_ERR)
    EPX_WC_CASE(IBV_WC_REM_ABORT_ERR)
    EPX_WC_CASE(IBV_WC_INV_EECN_ERR)
    EPX_WC_CASE(IBV_WC_INV_EEC_STATE_ERR)
    EPX_WC_CASE(IBV_WC_FATAL_ERR)
    EPX_WC_CASE(IBV_WC_RESP_TIMEOUT_ERR)
    EPX_WC_CASE(IBV_WC_GENERAL_ERR)
#undef EPX_WC_CASE
    default:
      break;
  }
  return fmt::format("{} ({}={})", ibv_wc_status_str(s), sym, static_cast<int>(s));
}

const char* CmEventName(rdma_cm_event_type e) {
  return rdma_event_str(e);
}

int MtuBytes(ibv_mtu mtu) {
  switch (mtu) {
    case IBV_MTU_256:
      return 256;
    case IBV_MTU_512:
      return 512;
    case IBV_MTU_1024:
      return 1024;
    case IBV_MTU_2048:
      return 2048;
    case IBV_MTU_4096:
      return 4096;
  }
  return 0;
}

const char* PortStateName(ibv_port_state s) {
  return ibv_port_state_str(s);
}

std::string GidToString(const ibv_gid& gid) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (inet_ntop(AF_INET6, gid.raw, buf, sizeof(buf)) == nullptr) return "?";
  return buf;
}

bool GidIsZero(const ibv_gid& gid) {
  for (uint8_t b : gid.raw)
    if (b != 0) return false;
  return true;
}

bool GidIsIpv4Mapped(const ibv_gid& gid) {
  for (int i = 0; i < 10; ++i)
    if (gid.raw[i] != 0) return false;
  return gid.raw[10] == 0xff && gid.raw[11] == 0xff;
}

bool GidIsLinkLocal(const ibv_gid& gid) {
  if (gid.raw[0] == 0xfe && (gid.raw[1] & 0xc0) == 0x80) return true;
  return GidIsIpv4Mapped(gid) && gid.raw[12] == 169 && gid.raw[13] == 254;
}

// ---- owners -------------------------------------------------------------------------------------
// Destructors cannot fail: a failed release is a warning naming the call (a leak, not a crash).

namespace {
void WarnRelease(const char* call, int rc) {
  if (rc != 0)
    EPX_WARN("{} failed: {} ({}) (resource leaked)", call, std::strerror(IbvErrno(rc)), IbvErrno(rc));
}
}  // namespace

void IbvDeleter::operator()(ibv_context* p) const {
  WarnRelease("ibv_close_device", ibv_close_device(p));
}
void IbvDeleter::operator()(ibv_pd* p) const {
  WarnRelease("ibv_dealloc_pd", ibv_dealloc_pd(p));
}
void IbvDeleter::operator()(ibv_mr* p) const {
  WarnRelease("ibv_dereg_mr", ibv_dereg_mr(p));
}
void IbvDeleter::operator()(ibv_cq* p) const {
  WarnRelease("ibv_destroy_cq", ibv_destroy_cq(p));
}
void IbvDeleter::operator()(rdma_event_channel* p) const {
  rdma_destroy_event_channel(p);
}

void QpOwner::Reset() {
  if (id_ != nullptr) {
    // rdma_destroy_qp() destroys the QP that rdma_create_qp() made on the id; the id goes after it.
    if (qp_ != nullptr) rdma_destroy_qp(id_);
    WarnRelease("rdma_destroy_id", rdma_destroy_id(id_));
  } else if (qp_ != nullptr) {
    WarnRelease("ibv_destroy_qp", ibv_destroy_qp(qp_));
  }
  qp_ = nullptr;
  id_ = nullptr;
}

void CmIdOwner::Reset() {
  if (id_ != nullptr) WarnRelease("rdma_destroy_id", rdma_destroy_id(id_));
  id_ = nullptr;
}

}  // namespace epx::verbs
