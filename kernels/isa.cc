#include "kernels/isa.h"

#include <algorithm>
#include <string>

#include "core/tunables.h"

namespace epx {
namespace {

Isa CpuIsa() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

}  // namespace

Isa KernelIsa() {
  static const Isa isa = [] {
    const Isa cpu = CpuIsa();
    StatusOr<std::string> cap = TunableStr("EPX_KERNEL_ISA");
    if (!cap.ok() || *cap == "auto") return cpu;
    const Isa want = *cap == "avx512" ? Isa::kAvx512 : *cap == "avx2" ? Isa::kAvx2 : Isa::kBaseline;
    return std::min(cpu, want);  // a cap: never a family the CPU lacks
  }();
  return isa;
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kBaseline:
      break;
  }
  return "baseline";
}

}  // namespace epx
