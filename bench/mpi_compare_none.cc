// bench/mpi_compare_none.cc: epx-bench built without MPI (EPX_WITH_MPI=OFF or no MPI found).
#include "bench/mpi_compare.h"

namespace epx::bench {

bool MpiUsable(std::string* why_not) {
  *why_not = "epx-bench was built without MPI (install openmpi via tools/setup and rebuild)";
  return false;
}
void MpiFinalize() {}

StatusOr<MpiRun> MpiRunNormal(Context&, const MpiNormalCase&, int, int) {
  MpiRun r;
  MpiUsable(&r.why_not);
  return r;
}
StatusOr<MpiRun> MpiRunLl(Context&, const MpiLlCase&, int, int) {
  MpiRun r;
  MpiUsable(&r.why_not);
  return r;
}

}  // namespace epx::bench
