// The combine traffic floor's job from the routing (bench/copy_limit.h CombineTrafficOf): no Context, so
// bench_floor_test checks it alone.
#include <algorithm>

#include "bench/copy_limit.h"

namespace epx::bench {

CombineTrafficJob CombineTrafficOf(const std::vector<std::vector<int64_t>>& topk_idx, int topk,
                                   int experts_per_rank, int me, int hidden) {
  CombineTrafficJob j;
  j.hidden = hidden;
  const int R = static_cast<int>(topk_idx.size());
  std::vector<int> per(static_cast<size_t>(R));
  for (int s = 0; s < R; ++s) {
    const size_t K = static_cast<size_t>(topk), n = topk_idx[s].size() / K;
    for (size_t t = 0; t < n; ++t) {
      std::fill(per.begin(), per.end(), 0);
      for (size_t k = 0; k < K; ++k)
        if (const int64_t e = topk_idx[s][t * K + k]; e >= 0)
          ++per[static_cast<size_t>(e / experts_per_rank)];
      if (s != me) {
        if (per[me] > 0) j.pre.push_back(static_cast<uint8_t>(per[me]));
        continue;
      }
      j.own.push_back(static_cast<uint8_t>(per[me]));
      for (int d = 0; d < R; ++d)
        if (d != me && per[d] > 0) j.peer.push_back(static_cast<uint8_t>(per[d]));
      j.peer_end.push_back(static_cast<int>(j.peer.size()));
    }
  }
  return j;
}

}  // namespace epx::bench
