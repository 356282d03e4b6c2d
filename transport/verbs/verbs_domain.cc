// Placeholder until the verbs transport lands (issue 3): reports that verbs is not built yet.
#include "transport/verbs/verbs_domain.h"

namespace epx {
bool VerbsDeviceAvailable() { return false; }
StatusOr<std::unique_ptr<RdmaDomain>> CreateVerbsDomain(Context&, const RdmaOptions&) {
  return EPX_ERROR(kUnsupported, "EPX_RDMA=verbs: the verbs transport is not implemented yet (issue 3)");
}
}  // namespace epx
