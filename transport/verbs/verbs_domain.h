// transport/verbs/verbs_domain.h: entry points of the ibverbs implementation of RdmaDomain.
#pragma once

#include <memory>

#include "core/status.h"
#include "transport/rdma.h"

namespace epx {

// True when libibverbs lists at least one device with an ACTIVE port.
bool VerbsDeviceAvailable();
// Collective over all ranks of ctx: registers the heap, exchanges (addr, rkey), connects opts.peers.
StatusOr<std::unique_ptr<RdmaDomain>> CreateVerbsDomain(Context& ctx, const RdmaOptions& opts);

}  // namespace epx
