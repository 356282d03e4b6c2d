// transport/verbs/verbs_domain.h: entry points of the ibverbs implementation of RdmaDomain.
//
// Files of the verbs transport:
//   ibv_wrap.{h,cc}        checked calls (EPX_IBV, EPX_RDMACM) and RAII owners of verbs objects
//   device.{h,cc}          device / port / GID choice (EPX_IB_DEVICE, EPX_IB_GID_INDEX)
//   connect.h              connection setup interface; connect_oob.cc, connect_rdmacm.cc
//   domain.h               the domain class (internal): design notes, hot posting path inline
//   verbs_setup.cc         setup: registration, queues, record exchange, connection; entry points
//   verbs_domain.cc        the data path: completions, Quiet, receives/counters, peer health
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"
#include "transport/rdma.h"

namespace epx {

// True when libibverbs lists at least one device with an ACTIVE port.
bool VerbsDeviceAvailable();
// Collective over all ranks of ctx: registers the heap, exchanges (addr, rkey), connects opts.peers.
// The domain must be destroyed before ctx (it holds a registration of ctx's heap).
StatusOr<std::unique_ptr<RdmaDomain>> CreateVerbsDomain(Context& ctx, const RdmaOptions& opts);

// What a verbs domain chose at setup (for logs, benchmarks and tests).
struct VerbsInfo {
  std::string device;      // "rxe0"
  uint32_t vendor_id = 0;  // 0xffffff: soft-RoCE
  int port = 0;
  int gid_index = -1;
  std::string gid;  // "::ffff:10.99.0.1"
  bool gid_roce_v2 = false;
  bool gid_ipv4_mapped = false;
  std::string connect;    // "oob" or "rdmacm"
  int sq_depth = 0;       // send WRs in flight per QP (our accounting bound)
  int signal_every = 0;   // one signaled WR per this many
  int recv_depth = 0;     // receives posted per QP
  size_t max_inline = 0;  // smallest granted inline size over the data QPs
  bool native_atomics = true;
};

// Non-null when `d` is a verbs domain.
const VerbsInfo* GetVerbsInfo(const RdmaDomain& d);

// TEST ONLY: makes every later operation of `d` towards `peer` use a wrong rkey, so that the peer's
// NIC rejects it (remote access error). Breaks the connection; the domain must be discarded after.
Status VerbsCorruptRemoteKeyForTest(RdmaDomain& d, int peer);

}  // namespace epx
