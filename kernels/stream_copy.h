// kernels/stream_copy.h: copies into output memory that the caller reads much later (if at all) in
// this call: non-temporal stores, which skip the read-for-ownership of each destination line and do
// not push the source rows out of the cache. Used where a phase fills an output tensor far larger
// than the cache (the low-latency dispatch output: local experts x rows x H).
//
// Non-temporal stores are weakly ordered, also against a later release store of the same thread:
// StreamFence() must run before another thread may read what StreamCopy wrote (the channels call it
// before they report their phase done).
#pragma once

#include <cstddef>

namespace epx {

// memcpy(dst, src, n), with streaming stores for the 64-byte-aligned middle when n >= 1 KiB and the
// kernels use AVX-512 or AVX2 (kernels/isa.h; else plain memcpy). dst and src must not overlap.
void StreamCopy(void* dst, const void* src, size_t n);
// Orders every StreamCopy of this thread before its later stores (sfence); a no-op without them.
void StreamFence();

}  // namespace epx
