// transport/verbs/device.h: which RDMA device, port and GID a rank uses.
//
// Device: EPX_IB_DEVICE if set (an error lists the devices that exist), else among the devices with
// an ACTIVE port the one nearest the rank's NUMA node (transport/host_topology.h), else the first.
// Port: the first ACTIVE one.
// Address (Ethernet link layer, i.e. RoCE): EPX_IB_GID_INDEX if set, else the first RoCE v2 GID that
// is an IPv4-mapped address (::ffff:a.b.c.d). A link-local or RoCE v1 entry is never chosen
// automatically: a wrong GID is the classic cause of "transport retry counter exceeded" in the
// field, so no match is an error that prints the table. InfiniBand link layer: the port's LID; the
// GID (index 0, or EPX_IB_GID_INDEX) is used with a GRH only when the index is given.
#pragma once

#include <infiniband/verbs.h>

#include <cstdint>
#include <span>
#include <string>

#include "core/status.h"
#include "transport/verbs/ibv_wrap.h"

namespace epx::verbs {

struct DeviceRequest {
  std::string name;    // EPX_IB_DEVICE ("" = choose)
  int gid_index = -1;  // EPX_IB_GID_INDEX (-1 = choose)
  int numa_node = -1;  // the rank's NUMA node (-1 = unknown)
  static StatusOr<DeviceRequest> FromEnv(int numa_node);
};

struct DeviceChoice {
  std::string name;  // "rxe0"
  uint32_t vendor_id = 0;
  uint32_t vendor_part_id = 0;
  int port = 1;
  int numa_node = -1;  // the device's node when it decided between devices, else -1 (not looked up)
  uint8_t link_layer = IBV_LINK_LAYER_ETHERNET;
  uint16_t lid = 0;
  int gid_index = -1;  // -1: no GRH (InfiniBand without EPX_IB_GID_INDEX)
  ibv_gid gid{};
  bool gid_roce_v2 = false;
  uint32_t ipv4 = 0;  // network order; from an IPv4-mapped GID, else 0 (rdma_cm then needs the netdev's)
  ibv_mtu active_mtu = IBV_MTU_1024;
  uint32_t max_msg = 0;
  ibv_device_attr attr{};  // max_qp_wr, max_cqe, atomic_cap, max_qp_rd_atom, ...

  bool is_rxe() const { return vendor_id == 0xffffff || name.rfind("rxe", 0) == 0; }
  // "rxe0 port 1 (Ethernet, mtu 1024) gid 1 ::ffff:10.99.0.1 RoCE v2"
  std::string Describe() const;
};

// Picks among open device contexts (ours, or librdmacm's from rdma_get_devices). Returns the index
// into `ctxs` and fills `out`.
StatusOr<size_t> ChooseDevice(std::span<ibv_context* const> ctxs, const DeviceRequest& req,
                              DeviceChoice& out);

// Opens every device libibverbs lists, chooses, keeps the chosen context open.
StatusOr<ContextPtr> OpenChosenDevice(const DeviceRequest& req, DeviceChoice& out);

// True when at least one device has an ACTIVE port (no logging; used to resolve EPX_RDMA=auto).
bool AnyActiveDevice();

}  // namespace epx::verbs
