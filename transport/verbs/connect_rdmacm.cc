// rdma_cm connection setup (rdma_cm(7)): one event channel per rank drives all of its handshakes at
// once. Active side (the higher rank of a pair): create id -> resolve addr -> create QP + post
// receives -> resolve route -> connect(hello) -> ESTABLISHED. Passive side: CONNECT_REQUEST (new id)
// -> validate hello -> create QP + post receives -> accept -> ESTABLISHED. Every event is acked
// before its id may be destroyed (rdma_destroy_id waits for the acks).
#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/log.h"
#include "core/sys.h"
#include "transport/verbs/connect.h"

namespace epx::verbs {
namespace {

// Private data of rdma_connect / rdma_reject (CmHello, CmReject): transport/verbs/connect_wire.h.

constexpr int kResolveMs = 2000;

enum class St { kIdle, kAddr, kRoute, kConnecting, kWaitRequest, kAccepting, kEstablished };
const char* StName(St s) {
  switch (s) {
    case St::kIdle:
      return "waiting to retry";
    case St::kAddr:
      return "resolving address";
    case St::kRoute:
      return "resolving route";
    case St::kConnecting:
      return "connecting";
    case St::kWaitRequest:
      return "waiting for the peer's connect request";
    case St::kAccepting:
      return "accepting";
    case St::kEstablished:
      return "established";
  }
  return "?";
}

struct Conn {
  size_t slot = 0;
  QpSlot s{};
  bool active = false;
  St st = St::kIdle;
  QpOwner qp;  // owns the cm id (and, once created, its QP)
  int attempts = 0;
  Clock::time_point retry_at{};
  std::string last;  // last failure, for the deadline message
};

std::string Ipv4Text(uint32_t ip_be) {
  char b[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &ip_be, b, sizeof(b));
  return b;
}

// IPv4 address of the device's netdev, for devices whose GID is not IPv4-mapped (InfiniBand: IPoIB).
uint32_t NetdevIpv4(const DeviceChoice& dev) {
  namespace fs = std::filesystem;
  std::vector<std::string> names;
  std::ifstream nd(fmt::format("/sys/class/infiniband/{}/ports/{}/gid_attrs/ndevs/{}", dev.name, dev.port,
                               std::max(dev.gid_index, 0)));
  if (std::string n; nd >> n) names.push_back(n);
  std::error_code ec;
  for (const auto& e :
       fs::directory_iterator(fmt::format("/sys/class/infiniband/{}/device/net", dev.name), ec))
    names.push_back(e.path().filename());
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) != 0) return 0;
  uint32_t ip = 0;
  for (const auto& n : names) {
    for (ifaddrs* a = ifs; a != nullptr && ip == 0; a = a->ifa_next)
      if (a->ifa_addr != nullptr && a->ifa_addr->sa_family == AF_INET && n == a->ifa_name)
        ip = reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr;
    if (ip != 0) break;
  }
  freeifaddrs(ifs);
  return ip;
}

void SetAckTimeout(rdma_cm_id* id, int timeout) {
  uint8_t t = static_cast<uint8_t>(timeout);
  if (rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &t, sizeof(t)) != 0) {
    static bool warned = false;
    if (!warned)
      EPX_WARN("rdma_set_option(ACK_TIMEOUT={}) failed: {}; rdma_cm derives the timeout", timeout,
               std::strerror(errno));
    warned = true;
  }
}

}  // namespace

RdmacmConnector::~RdmacmConnector() = default;

ibv_context* RdmacmConnector::verbs() const {
  return listener_.get()->verbs;
}

StatusOr<std::unique_ptr<RdmacmConnector>> RdmacmConnector::Listen(const DeviceChoice& dev) {
  std::unique_ptr<RdmacmConnector> c(new RdmacmConnector());
  rdma_event_channel* ch;
  EPX_IBV_NEW(ch, rdma_create_event_channel, (), "rdma_cm event channel (is rdma_ucm loaded?)");
  c->channel_.reset(ch);
  EPX_SYS(fl, ::fcntl(ch->fd, F_GETFL), "rdma_cm event channel");
  EPX_SYS(rc, ::fcntl(ch->fd, F_SETFL, fl | O_NONBLOCK), "rdma_cm event channel");

  const uint32_t ip = dev.ipv4 != 0 ? dev.ipv4 : NetdevIpv4(dev);
  if (ip == 0)
    return EPX_ERROR(kNotFound,
                     "EPX_CONNECT=rdmacm: {} has no IPv4 address (GID {} is not IPv4-mapped and its netdev "
                     "has none); give the netdev an address or use EPX_CONNECT=oob",
                     dev.name, GidToString(dev.gid));
  rdma_cm_id* id = nullptr;
  EPX_RDMACM(rdma_create_id, (ch, &id, nullptr, RDMA_PS_TCP), "listener");
  c->listener_ = CmIdOwner(id);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = ip;
  sin.sin_port = 0;  // the kernel picks a free rdma_cm port; all ranks of a host share the address
  EPX_RDMACM(rdma_bind_addr, (id, reinterpret_cast<sockaddr*>(&sin)), "listener on {} ({})", Ipv4Text(ip),
             dev.name);
  if (id->verbs == nullptr)
    return EPX_ERROR(kUnsupported,
                     "EPX_CONNECT=rdmacm: rdma_cm ties {} (the address of {}) to no RDMA device: a loopback "
                     "address (soft-RoCE on `lo`) cannot be used with rdma_cm; use EPX_CONNECT=oob",
                     Ipv4Text(ip), dev.name);
  if (dev.name != ibv_get_device_name(id->verbs->device))
    return EPX_ERROR(kFailedPrecondition,
                     "rdma_cm maps {} to device {}, but epx chose {} (set EPX_IB_DEVICE)", Ipv4Text(ip),
                     ibv_get_device_name(id->verbs->device), dev.name);
  EPX_RDMACM(rdma_listen, (id, 128), "listener on {}", Ipv4Text(ip));
  c->self_ = CmEndpoint{ip, rdma_get_src_port(id), 0};
  return c;
}

StatusOr<std::vector<QpOwner>> RdmacmConnector::Connect(int rank, uint64_t job_tag,
                                                        std::span<const CmEndpoint> endpoints,
                                                        const QpConfig& cfg, std::span<const QpSlot> slots,
                                                        int channels, const Deadline& deadline) {
  std::vector<Conn> conns(slots.size());
  for (size_t i = 0; i < slots.size(); ++i) {
    conns[i].slot = i;
    conns[i].s = slots[i];
    conns[i].active = slots[i].peer < rank;  // the higher rank of a pair connects
    conns[i].st = conns[i].active ? St::kIdle : St::kWaitRequest;
  }
  size_t established = 0;
  ibv_context* const verbs = this->verbs();

  auto name = [&](const Conn& c) { return SlotName(c.s, channels); };
  // A failed attempt: drop the id and QP; the active side retries after a back-off.
  auto retry_later = [&](Conn& c, std::string why) {
    if (c.st == St::kEstablished) --established;
    c.last = std::move(why);
    c.qp.Reset();
    if (c.active) {
      ++c.attempts;
      c.st = St::kIdle;
      c.retry_at = Clock::now() + std::chrono::milliseconds(std::min(1000, 50 << std::min(c.attempts, 5)));
      EPX_INFO("rdma_cm: {} attempt {} failed ({}); retrying", name(c), c.attempts, c.last);
    } else {
      c.st = St::kWaitRequest;
    }
  };
  auto create_qp = [&](Conn& c, rdma_cm_id* id) -> Status {
    EPX_ASSIGN_OR_RETURN(
        ibv_qp * qp,
        CreateWithInlineFallback(cfg, c.slot, "rdma_create_qp", name(c), [&](ibv_qp_init_attr& a) -> ibv_qp* {
          return rdma_create_qp(id, cfg.pd, &a) == 0 ? id->qp : nullptr;
        }));
    c.qp.set_qp(qp);
    if (cfg.on_created) EPX_RETURN_IF_ERROR(cfg.on_created(c.slot, qp));
    SetAckTimeout(id, cfg.timeout);
    return Status::Ok();
  };
  auto start = [&](Conn& c) -> Status {
    rdma_cm_id* id = nullptr;
    EPX_RDMACM(rdma_create_id, (channel_.get(), &id, &c, RDMA_PS_TCP), "{}", name(c));
    c.qp = QpOwner(id, nullptr);
    sockaddr_in src{}, dst{};
    src.sin_family = dst.sin_family = AF_INET;
    src.sin_addr.s_addr = self_.ipv4;
    dst.sin_addr.s_addr = endpoints[c.s.peer].ipv4;
    dst.sin_port = endpoints[c.s.peer].port;
    EPX_RDMACM(rdma_resolve_addr,
               (id, reinterpret_cast<sockaddr*>(&src), reinterpret_cast<sockaddr*>(&dst), kResolveMs),
               "{} at {}:{}", name(c), Ipv4Text(dst.sin_addr.s_addr), ntohs(dst.sin_port));
    c.st = St::kAddr;
    return Status::Ok();
  };
  auto reject = [&](rdma_cm_id* id, uint16_t reason, const std::string& why) {
    EPX_WARN("rdma_cm: rejecting a connect request: {} ({})", RejectText(reason), why);
    CmReject r{kRejectMagic, kHelloVersion, reason};
    rdma_reject(id, &r, sizeof(r));
    rdma_destroy_id(id);
  };
  auto on_request = [&](rdma_cm_id* id, const rdma_conn_param& req,
                        const std::vector<uint8_t>& pd) -> Status {
    const CmHelloVerdict v = DecodeCmHello(pd, job_tag, rank);
    if (v.reject != 0) {
      reject(id, v.reject, v.why);
      return Status::Ok();
    }
    const CmHello& h = v.hello;
    auto it = std::find_if(conns.begin(), conns.end(), [&](const Conn& c) {
      return !c.active && c.s.peer == h.src_rank && c.s.ch == h.ch;
    });
    if (it == conns.end()) {
      reject(id, kUnexpected, fmt::format("rank {} channel {}", h.src_rank, h.ch));
      return Status::Ok();
    }
    Conn& c = *it;
    if (c.st == St::kEstablished) {
      reject(id, kDuplicate, name(c));
      return Status::Ok();
    }
    c.qp.Reset();  // a half-done earlier attempt of the same pair: the peer gave up on it
    id->context = &c;
    c.qp = QpOwner(id, nullptr);
    EPX_RETURN_IF_ERROR(create_qp(c, id));
    rdma_conn_param p{};
    // Our limits, capped by what the requester offered (IB CM negotiation).
    p.responder_resources = std::min<uint8_t>(cfg.rd_atom, req.initiator_depth);
    p.initiator_depth = std::min<uint8_t>(cfg.rd_atom, req.responder_resources);
    p.retry_count = static_cast<uint8_t>(cfg.retry_cnt);
    p.rnr_retry_count = 7;
    EPX_RDMACM(rdma_accept, (id, &p), "{}", name(c));
    c.st = St::kAccepting;
    return Status::Ok();
  };

  while (established < conns.size()) {
    const auto now = Clock::now();
    if (deadline.Expired()) {
      std::string pending;
      int n = 0;
      for (const Conn& c : conns) {
        if (c.st == St::kEstablished) continue;
        if (++n <= 8)
          pending += fmt::format("{}{} ({}, {}{}{})", pending.empty() ? "" : "; ", name(c),
                                 c.active ? "active" : "passive", StName(c.st),
                                 c.last.empty() ? "" : ", last: ", c.last);
      }
      return EPX_ERROR(kTimeout,
                       "rdma_cm: rank {}: {} of {} connections not established by the setup deadline: {}{}",
                       rank, conns.size() - established, conns.size(), pending, n > 8 ? "; ..." : "");
    }
    for (Conn& c : conns)
      if (c.active && c.st == St::kIdle && now >= c.retry_at) EPX_RETURN_IF_ERROR(start(c));

    pollfd pfd{channel_->fd, POLLIN, 0};
    const int wait_ms = static_cast<int>(std::min<int64_t>(50, std::max<int64_t>(1, deadline.RemainingMs())));
    if (::poll(&pfd, 1, wait_ms) < 0 && errno != EINTR)
      return VerbsError("poll", errno, "rdma_cm event channel");

    for (;;) {
      rdma_cm_event* ev = nullptr;
      if (rdma_get_cm_event(channel_.get(), &ev) != 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
        return VerbsError("rdma_get_cm_event", errno, "rdma_cm event channel");
      }
      // Copy what we need, then ack: private data dies with the ack, and an id can only be destroyed
      // once all of its events are acked.
      const rdma_cm_event_type type = ev->event;
      const int status = ev->status;
      rdma_cm_id* id = ev->id;
      const rdma_conn_param param = ev->param.conn;
      std::vector<uint8_t> pd;
      if (param.private_data != nullptr && param.private_data_len > 0) {
        const auto* b = static_cast<const uint8_t*>(param.private_data);
        pd.assign(b, b + param.private_data_len);
      }
      rdma_ack_cm_event(ev);

      if (type == RDMA_CM_EVENT_CONNECT_REQUEST) {
        EPX_RETURN_IF_ERROR(on_request(id, param, pd));
        continue;
      }
      if (type == RDMA_CM_EVENT_DEVICE_REMOVAL)
        return EPX_ERROR(kTransport, "rdma_cm: device {} was removed during connection setup",
                         ibv_get_device_name(verbs->device));
      Conn* c = static_cast<Conn*>(id->context);
      if (c == nullptr || c->qp.id() != id) continue;  // the listener, or an id already replaced
      switch (type) {
        case RDMA_CM_EVENT_ADDR_RESOLVED:
          if (id->verbs != verbs)
            return EPX_ERROR(kFailedPrecondition, "rdma_cm routes {} via device {}, not the chosen {}",
                             name(*c), id->verbs ? ibv_get_device_name(id->verbs->device) : "none",
                             ibv_get_device_name(verbs->device));
          EPX_RETURN_IF_ERROR(create_qp(*c, id));
          EPX_RDMACM(rdma_resolve_route, (id, kResolveMs), "{}", name(*c));
          c->st = St::kRoute;
          break;
        case RDMA_CM_EVENT_ROUTE_RESOLVED: {
          CmHello h{kHelloMagic, kHelloVersion, static_cast<uint16_t>(c->s.ch), rank, c->s.peer, job_tag};
          rdma_conn_param p{};
          p.private_data = &h;
          p.private_data_len = sizeof(h);
          p.responder_resources = cfg.rd_atom;
          p.initiator_depth = cfg.rd_atom;
          p.retry_count = static_cast<uint8_t>(cfg.retry_cnt);
          p.rnr_retry_count = 7;
          EPX_RDMACM(rdma_connect, (id, &p), "{}", name(*c));
          c->st = St::kConnecting;
          break;
        }
        case RDMA_CM_EVENT_ESTABLISHED:
          if (c->st != St::kEstablished) ++established;
          c->st = St::kEstablished;
          break;
        case RDMA_CM_EVENT_REJECTED: {
          if (const auto reason = DecodeCmReject(pd); reason && *reason != kDuplicate)
            return EPX_ERROR(kFailedPrecondition, "rdma_cm: rank {} rejected {}: {}", c->s.peer, name(*c),
                             RejectText(*reason));
          retry_later(*c, fmt::format("{} (status {})", CmEventName(type), status));
          break;
        }
        case RDMA_CM_EVENT_ADDR_ERROR:
        case RDMA_CM_EVENT_ROUTE_ERROR:
          // "No such device": rdma_cm cannot route over this netdev at all (rxe bound to `lo` is the
          // known case); retrying until the deadline would only delay the same answer.
          if (status == -ENODEV)
            return EPX_ERROR(kUnsupported,
                             "rdma_cm: {} for {}: {} (rdma_cm cannot route over this device's netdev, e.g. "
                             "soft-RoCE on `lo`); use EPX_CONNECT=oob",
                             CmEventName(type), name(*c), std::strerror(ENODEV));
          [[fallthrough]];
        case RDMA_CM_EVENT_UNREACHABLE:
        case RDMA_CM_EVENT_CONNECT_ERROR:
        case RDMA_CM_EVENT_DISCONNECTED:
          retry_later(*c, fmt::format("{} (status {}: {})", CmEventName(type), status,
                                      status < 0 ? std::strerror(-status) : "see rdma_cm(7)"));
          break;
        default:
          break;
      }
    }
  }
  std::vector<QpOwner> out;
  out.reserve(conns.size());
  for (Conn& c : conns) out.push_back(std::move(c.qp));
  return out;
}

}  // namespace epx::verbs
