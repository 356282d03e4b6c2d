// kernels/isa.h: which family of the hand-written row kernels runs (FP8 cast, BF16 sums, streaming
// copy: kernels/fp8.cc, kernels/bf16_math.cc, kernels/stream_copy.cc). Every family gives bitwise the
// same results (the same IEEE operations in the same order, no FMA), so the choice is speed only.
//
// Chosen once per process, at first use (not by ifunc: resolvers run before sanitizer runtimes are up):
// the best the CPU supports, capped by EPX_KERNEL_ISA (core/tunables.h). The cap is how one machine
// measures or tests a family below its best (tests/kernels run their suites once per family).
#pragma once

namespace epx {

enum class Isa : int {
  kBaseline = 0,  // x86-64 SSE2 (or any other architecture): portable C++ the compiler vectorises
  kAvx2 = 1,      // AVX2, 256-bit lanes (e.g. AMD Zen 1-3, Intel Haswell and later client cores)
  kAvx512 = 2,    // AVX-512 F + BW + VL (e.g. AMD Zen 4, Intel Skylake-SP and later server cores)
};

// The family in use (see above). A bad EPX_KERNEL_ISA value was reported by ValidateTunableEnv at
// context setup; here it counts as "auto".
Isa KernelIsa();
// "avx512", "avx2", "baseline".
const char* IsaName(Isa isa);

}  // namespace epx
