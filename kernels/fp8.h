// kernels/fp8.h: per-token FP8 cast of BF16 rows, as DeepEP defines it.
//
// For each 128-column block of a row: amax = max(|x|, 1e-4); the block is scaled by 448/amax and cast
// to E4M3 with saturation; the stored scale is scale_inv = amax/448 (float32), so x ~= q * scale_inv.
//   round_scale: scale_inv is rounded up to a power of two (2^ceil(log2(amax/448))) and x is divided by
//                it instead, so dequantisation is exact shifting.
//   ue8m0:       (needs round_scale) only the exponent byte of scale_inv is kept: 4 blocks packed per
//                int32, block b in byte b%4 of word b/4; decode: float bits = byte << 23.
// The last block of a row may be narrower than 128 columns (H not a multiple of 128).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/dtypes.h"

namespace epx {

inline constexpr int kFp8Block = 128;
inline constexpr float kFp8AmaxFloor = 1e-4f;

inline int Fp8NumBlocks(int hidden) { return (hidden + kFp8Block - 1) / kFp8Block; }
// int32 words per row of UE8M0 scales.
inline int Ue8m0Words(int hidden) { return (Fp8NumBlocks(hidden) + 3) / 4; }

struct Fp8Options {
  bool round_scale = false;
  bool ue8m0 = false;
};

// One row: out[hidden] E4M3 codes; scales: Fp8NumBlocks floats, or Ue8m0Words int32 words if ue8m0.
// `next` (optional): the row of `hidden` values the caller casts after this one. Its lines are prefetched
// while this row's codes are computed, so a next row that comes from DRAM streams in under this row's
// arithmetic instead of stalling its own first (amax) pass. Never read, so any address is safe.
void CastRowToFp8(const bf16* in, int hidden, const Fp8Options& opt, uint8_t* out, void* scales,
                  const bf16* next = nullptr);

// The E4M3 codes of n floats (saturating, round to nearest even, NaN -> 0x7f): the same bits as
// FloatToE4m3, with the vector kernel CastRowToFp8 uses on this CPU (kernels/isa.h: AVX-512, AVX2 or
// portable).
void FloatsToE4m3(const float* in, size_t n, uint8_t* out);

// Inverse, for tests and for experts that consume FP8: x = q * scale_inv.
void CastRowFromFp8(const uint8_t* in, const void* scales, int hidden, bool ue8m0, float* out);

}  // namespace epx
