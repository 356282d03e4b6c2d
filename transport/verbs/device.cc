#include "transport/verbs/device.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/log.h"
#include "core/tunables.h"
#include "transport/host_topology.h"

namespace epx::verbs {
namespace {

const char* LinkLayerName(uint8_t ll) {
  switch (ll) {
    case IBV_LINK_LAYER_INFINIBAND:
      return "InfiniBand";
    case IBV_LINK_LAYER_ETHERNET:
      return "Ethernet";
    default:
      return "unspecified";
  }
}

const char* GidTypeName(uint32_t t) {
  switch (t) {
    case IBV_GID_TYPE_IB:
      return "IB";
    case IBV_GID_TYPE_ROCE_V1:
      return "RoCE v1";
    case IBV_GID_TYPE_ROCE_V2:
      return "RoCE v2";
    default:
      return "?";
  }
}

struct Candidate {
  size_t idx = 0;
  std::string name;
  ibv_device_attr dev{};
  int port = 0;  // first ACTIVE port, 0 if none
  ibv_port_attr pattr{};
  std::string port_states;  // "port 1 DOWN, port 2 INIT" for messages
};

Status Probe(ibv_context* ctx, size_t idx, Candidate& c) {
  c.idx = idx;
  c.name = ibv_get_device_name(ctx->device);
  EPX_IBV(ibv_query_device, (ctx, &c.dev), "device {}", c.name);
  for (int p = 1; p <= c.dev.phys_port_cnt; ++p) {
    ibv_port_attr pa{};
    EPX_IBV(ibv_query_port, (ctx, static_cast<uint8_t>(p), &pa), "device {} port {}", c.name, p);
    if (!c.port_states.empty()) c.port_states += ", ";
    c.port_states += fmt::format("port {} {}", p, PortStateName(pa.state));
    if (c.port == 0 && pa.state == IBV_PORT_ACTIVE) {
      c.port = p;
      c.pattr = pa;
    }
  }
  return Status::Ok();
}

// All valid GID entries of `port`, by index. ibv_query_gid_table is one ioctl; the per-index fallback
// is for kernels without it.
StatusOr<std::vector<ibv_gid_entry>> GidTable(ibv_context* ctx, int port, int tbl_len) {
  std::vector<ibv_gid_entry> out;
  ibv_device_attr_ex ex{};
  size_t total = 0;
  if (ibv_query_device_ex(ctx, nullptr, &ex) == 0) {
    for (int p = 1; p <= ex.orig_attr.phys_port_cnt; ++p) {
      ibv_port_attr pa{};
      if (ibv_query_port(ctx, static_cast<uint8_t>(p), &pa) == 0) total += pa.gid_tbl_len;
    }
  }
  if (total == 0) total = static_cast<size_t>(tbl_len);
  std::vector<ibv_gid_entry> all(total);
  ssize_t n = ibv_query_gid_table(ctx, all.data(), all.size(), 0);
  if (n >= 0) {
    for (ssize_t i = 0; i < n; ++i)
      if (static_cast<int>(all[i].port_num) == port) out.push_back(all[i]);
  } else {
    for (int i = 0; i < tbl_len; ++i) {
      ibv_gid_entry e{};
      if (ibv_query_gid_ex(ctx, static_cast<uint32_t>(port), static_cast<uint32_t>(i), &e, 0) != 0) continue;
      if (!GidIsZero(e.gid)) out.push_back(e);
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.gid_index < b.gid_index; });
  return out;
}

Status ChooseGid(ibv_context* ctx, const DeviceRequest& req, DeviceChoice& out, int tbl_len) {
  if (req.gid_index >= 0) {
    if (req.gid_index >= tbl_len)
      return EPX_ERROR(kInvalidArgument, "EPX_IB_GID_INDEX={}: {} port {} has {} GID entries", req.gid_index,
                       out.name, out.port, tbl_len);
    ibv_gid_entry e{};
    const int rc =
        ibv_query_gid_ex(ctx, static_cast<uint32_t>(out.port), static_cast<uint32_t>(req.gid_index), &e, 0);
    if (rc != 0 || GidIsZero(e.gid))
      return EPX_ERROR(kInvalidArgument, "EPX_IB_GID_INDEX={}: {} port {} has no GID at that index ({})",
                       req.gid_index, out.name, out.port,
                       rc != 0 ? std::strerror(IbvErrno(rc)) : "empty entry");
    out.gid_index = req.gid_index;
    out.gid = e.gid;
    out.gid_roce_v2 = e.gid_type == IBV_GID_TYPE_ROCE_V2;
    if (GidIsLinkLocal(e.gid) || (out.link_layer == IBV_LINK_LAYER_ETHERNET && !out.gid_roce_v2))
      EPX_WARN(
          "EPX_IB_GID_INDEX={} selects {} ({}) on {}: link-local or RoCE v1 GIDs often cannot reach peers",
          req.gid_index, GidToString(e.gid), GidTypeName(e.gid_type), out.name);
  } else if (out.link_layer == IBV_LINK_LAYER_INFINIBAND) {
    out.gid_index = -1;  // LID routing inside the subnet; no GRH needed
    ibv_query_gid(ctx, static_cast<uint8_t>(out.port), 0, &out.gid);
  } else {
    EPX_ASSIGN_OR_RETURN(auto table, GidTable(ctx, out.port, tbl_len));
    for (const auto& e : table) {
      if (e.gid_type == IBV_GID_TYPE_ROCE_V2 && GidIsIpv4Mapped(e.gid) && !GidIsLinkLocal(e.gid)) {
        out.gid_index = static_cast<int>(e.gid_index);
        out.gid = e.gid;
        out.gid_roce_v2 = true;
        break;
      }
    }
    if (out.gid_index < 0) {
      std::string listing;
      for (const auto& e : table)
        listing += fmt::format("{}{} {} {}", listing.empty() ? "" : "; ", e.gid_index, GidToString(e.gid),
                               GidTypeName(e.gid_type));
      return EPX_ERROR(
          kNotFound,
          "{} port {} has no RoCE v2 GID with an IPv4-mapped address (table: {}); give its netdev an "
          "IPv4 address or set EPX_IB_GID_INDEX (a link-local GID is never chosen automatically)",
          out.name, out.port, listing.empty() ? "empty" : listing);
    }
  }
  if (GidIsIpv4Mapped(out.gid)) std::memcpy(&out.ipv4, out.gid.raw + 12, 4);
  return Status::Ok();
}

}  // namespace

StatusOr<DeviceRequest> DeviceRequest::FromEnv(int numa_node) {
  DeviceRequest r;
  EPX_ASSIGN_OR_RETURN(r.name, TunableStr("EPX_IB_DEVICE"));
  EPX_ASSIGN_OR_RETURN(int64_t gid, TunableInt("EPX_IB_GID_INDEX"));
  r.gid_index = static_cast<int>(gid);
  r.numa_node = numa_node;
  return r;
}

std::string DeviceChoice::Describe() const {
  std::string addr =
      gid_index >= 0 ? fmt::format("gid {} {}{}", gid_index, GidToString(gid), gid_roce_v2 ? " RoCE v2" : "")
                     : fmt::format("lid {}", lid);
  std::string s = fmt::format("{} port {} ({}, mtu {}) {}", name, port, LinkLayerName(link_layer),
                              MtuBytes(active_mtu), addr);
  if (numa_node >= 0) s += fmt::format(", numa node {}", numa_node);
  return s;
}

StatusOr<size_t> ChooseDevice(std::span<ibv_context* const> ctxs, const DeviceRequest& req,
                              DeviceChoice& out) {
  if (ctxs.empty())
    return EPX_ERROR(
        kNotFound,
        "no RDMA device: libibverbs lists none (no driver loaded? for soft-RoCE: rdma link add rxe0 "
        "type rxe netdev <if>); EPX_RDMA=shm emulates the domain on one host");
  std::vector<Candidate> cands;
  std::string names;
  for (size_t i = 0; i < ctxs.size(); ++i) {
    const char* n = ibv_get_device_name(ctxs[i]->device);
    names += fmt::format("{}{}", names.empty() ? "" : ", ", n);
    if (!req.name.empty() && req.name != n) continue;
    Candidate c;
    EPX_RETURN_IF_ERROR(Probe(ctxs[i], i, c));
    cands.push_back(std::move(c));
  }
  const Candidate* pick = nullptr;
  int numa = -1;  // only looked up when it decides between devices
  if (!req.name.empty()) {
    if (cands.empty())
      return EPX_ERROR(kNotFound, "EPX_IB_DEVICE={}: no such RDMA device (have: {})", req.name, names);
    if (cands[0].port == 0)
      return EPX_ERROR(kNotFound, "EPX_IB_DEVICE={}: no ACTIVE port ({})", req.name, cands[0].port_states);
    pick = &cands[0];
  } else {
    std::vector<const Candidate*> active;
    std::string states;
    for (const auto& c : cands) {
      if (c.port != 0) active.push_back(&c);
      states += fmt::format("{}{}: {}", states.empty() ? "" : "; ", c.name, c.port_states);
    }
    if (active.empty()) return EPX_ERROR(kNotFound, "no RDMA device has an ACTIVE port ({})", states);
    pick = active[0];
    // NUMA affinity only matters when there is a choice; hwloc discovery is not free under emulation.
    if (active.size() > 1 && req.numa_node >= 0) {
      for (const Candidate* c : active)
        if (int node = DeviceNumaNode(c->name); node == req.numa_node) {
          pick = c;
          numa = node;
          break;
        }
    }
  }
  out = DeviceChoice{};
  out.name = pick->name;
  out.vendor_id = pick->dev.vendor_id;
  out.vendor_part_id = pick->dev.vendor_part_id;
  out.attr = pick->dev;
  out.port = pick->port;
  out.link_layer = pick->pattr.link_layer == IBV_LINK_LAYER_INFINIBAND ? IBV_LINK_LAYER_INFINIBAND
                                                                       : IBV_LINK_LAYER_ETHERNET;
  out.lid = pick->pattr.lid;
  out.active_mtu = pick->pattr.active_mtu;
  out.max_msg = pick->pattr.max_msg_sz;
  out.numa_node = numa;
  EPX_RETURN_IF_ERROR(ChooseGid(ctxs[pick->idx], req, out, pick->pattr.gid_tbl_len));
  return pick->idx;
}

StatusOr<ContextPtr> OpenChosenDevice(const DeviceRequest& req, DeviceChoice& out) {
  int n = 0;
  errno = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr)
    return VerbsError("ibv_get_device_list", errno != 0 ? errno : ENODEV, "listing RDMA devices");
  std::vector<ContextPtr> owned;
  std::vector<ibv_context*> ctxs;
  Status st;
  for (int i = 0; i < n && st.ok(); ++i) {
    if (!req.name.empty() && req.name != ibv_get_device_name(list[i])) continue;
    errno = 0;
    ibv_context* c = ibv_open_device(list[i]);
    if (c == nullptr) {
      st = VerbsError("ibv_open_device", errno != 0 ? errno : ENODEV, ibv_get_device_name(list[i]));
      break;
    }
    owned.emplace_back(c);
    ctxs.push_back(c);
  }
  // Opened contexts stay valid after the list is freed (ibv_get_device_list(3)).
  ibv_free_device_list(list);
  EPX_RETURN_IF_ERROR(st);
  if (ctxs.empty() && !req.name.empty()) {
    // Let ChooseDevice name the devices that do exist.
    int m = 0;
    ibv_device** l2 = ibv_get_device_list(&m);
    std::string names;
    for (int i = 0; l2 != nullptr && i < m; ++i)
      names += fmt::format("{}{}", i ? ", " : "", ibv_get_device_name(l2[i]));
    if (l2 != nullptr) ibv_free_device_list(l2);
    return EPX_ERROR(kNotFound, "EPX_IB_DEVICE={}: no such RDMA device (have: {})", req.name,
                     names.empty() ? "none" : names);
  }
  EPX_ASSIGN_OR_RETURN(size_t idx, ChooseDevice(ctxs, req, out));
  return std::move(owned[idx]);
}

bool AnyActiveDevice() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) return false;
  bool found = false;
  for (int i = 0; i < n && !found; ++i) {
    ibv_context* c = ibv_open_device(list[i]);
    if (c == nullptr) continue;
    ibv_device_attr da{};
    if (ibv_query_device(c, &da) == 0)
      for (int p = 1; p <= da.phys_port_cnt && !found; ++p) {
        ibv_port_attr pa{};
        found = ibv_query_port(c, static_cast<uint8_t>(p), &pa) == 0 && pa.state == IBV_PORT_ACTIVE;
      }
    ibv_close_device(c);
  }
  ibv_free_device_list(list);
  return found;
}

}  // namespace epx::verbs
