// transport/rdma_shm.h: the RDMA domain emulated over shared memory (EPX_RDMA=shm).
#pragma once

#include <memory>

#include "transport/rdma.h"

namespace epx {

// Every peer must be on this host (its heap mapped); collective over all ranks of ctx.
StatusOr<std::unique_ptr<RdmaDomain>> CreateShmRdmaDomain(Context& ctx, const RdmaOptions& opts);

}  // namespace epx
