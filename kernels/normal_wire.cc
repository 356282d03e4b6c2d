#include "kernels/normal_wire.h"

#include <fmt/format.h>

#include <algorithm>
#include <climits>

namespace epx {
namespace {

int32_t I32At(std::span<const uint8_t> b, size_t off) {
  int32_t v;
  std::memcpy(&v, b.data() + off, sizeof(v));
  return v;
}

Status Corrupt(std::string msg) {
  return Status(Code::kInternal, std::move(msg));
}

// Whether `n` rows of `stride` bytes, each holding `need` bytes, fit in `size` bytes (no overflow).
bool RowsFit(size_t size, size_t stride, size_t n, size_t need) {
  if (n == 0) return true;
  if (stride < need) return false;
  return (n - 1) <= (size - std::min(size, need)) / stride && need <= size;
}

}  // namespace

Status DecodeCountRows(std::span<const uint8_t> table, size_t stride, const CountRowsExpect& x,
                       NormalHandle* h) {
  const int R = x.num_ranks, C = x.channels, epr = x.local_experts;
  if (R < 1 || C < 1 || epr < 1 || x.max_topk < 1 ||
      !RowsFit(table.size(), stride, static_cast<size_t>(R), CountRowBytes(C, epr)))
    return Corrupt(
        fmt::format("normal dispatch count exchange: rank {}: a table of {} bytes (rows of {} bytes) "
                    "cannot hold {} rows of {} channels and {} experts",
                    x.rank, table.size(), stride, R, C, epr));
  h->rank_prefix.assign(static_cast<size_t>(R) + 1, 0);
  h->recv_channel_prefix.assign(static_cast<size_t>(R) * (C + 1), 0);
  h->tokens_per_expert.assign(static_cast<size_t>(epr), 0);
  const std::string who = fmt::format("normal dispatch count exchange: rank {}", x.rank);
  int64_t rows = 0;
  for (int s = 0; s < R; ++s) {
    const std::span<const uint8_t> row = table.subspan(static_cast<size_t>(s) * stride);
    const int32_t total = I32At(row, 8);
    uint32_t shape;
    std::memcpy(&shape, row.data() + 12, sizeof(shape));
    if (total < 0)
      return Corrupt(
          fmt::format("{}: source rank {} sent total {} (allowed 0..{})", who, s, total, INT32_MAX));
    int* rcp = &h->recv_channel_prefix[static_cast<size_t>(s) * (C + 1)];
    int64_t sum = 0;
    for (int c = 0; c < C; ++c) {
      const int32_t n = I32At(row, 16 + 4 * static_cast<size_t>(c));
      if (n < 0 || n > total)
        return Corrupt(
            fmt::format("{}: source rank {} sent {} tokens for channel {} (allowed 0..{}, its total)", who, s,
                        n, c, total));
      sum += n;
      if (sum > total) break;  // reported below; keeps the prefix an int
      rcp[c + 1] = static_cast<int>(sum);
    }
    if (sum != total)
      return Corrupt(fmt::format("{}: source rank {} sent channel counts that sum to {}{}, not its total {}",
                                 who, s, sum > total ? "more than " : "", sum > total ? total : sum, total));
    const int64_t max_expert = static_cast<int64_t>(total) * x.max_topk;
    for (int j = 0; j < epr; ++j) {
      const int32_t n = I32At(row, 16 + 4 * (static_cast<size_t>(C) + j));
      if (n < 0 || n > max_expert)
        return Corrupt(
            fmt::format("{}: source rank {} sent {} (token, k) pairs for local expert {} (allowed "
                        "0..{}: {} tokens x top-k {})",
                        who, s, n, j, max_expert, total, x.max_topk));
    }
    if (shape != x.shape)
      return Status(
          Code::kInvalidArgument,
          fmt::format("normal dispatch: rank {} called with a different hidden/dtype/topk/num_experts "
                      "than rank {} (shape signature {:#x} vs {:#x}): all ranks must dispatch the same "
                      "shape",
                      s, x.rank, shape, x.shape));
    rows += total;
    if (rows > INT32_MAX)
      return Corrupt(fmt::format("{}: the sources up to rank {} send {} rows in total (allowed 0..{})", who,
                                 s, rows, INT32_MAX));
    h->rank_prefix[static_cast<size_t>(s) + 1] = static_cast<int>(rows);
    for (int j = 0; j < epr; ++j) {
      const int64_t t =
          static_cast<int64_t>(h->tokens_per_expert[j]) + I32At(row, 16 + 4 * (static_cast<size_t>(C) + j));
      if (t > INT32_MAX)
        return Corrupt(
            fmt::format("{}: local expert {} receives {} (token, k) pairs up to source rank {} "
                        "(allowed 0..{})",
                        who, j, t, s, INT32_MAX));
      h->tokens_per_expert[j] = static_cast<int>(t);
    }
  }
  h->num_recv_tokens = static_cast<int>(rows);
  return Status::Ok();
}

Status DecodeNodeRows(std::span<const uint8_t> inbox, size_t stride, const NodeRowsExpect& x,
                      NormalHandle* h) {
  const int NN = x.nodes, L = x.local_size, C = x.channels, K = x.blocks;
  if (NN < 1 || L < 1 || C < 1 || K < 1 || x.node < 0 || x.node >= NN ||
      !RowsFit(inbox.size(), stride, static_cast<size_t>(NN) * K * (L + 1), CountRowBytes(C, 0)))
    return Corrupt(
        fmt::format("normal dispatch count exchange: rank {}: an inbox of {} bytes (rows of {} bytes) "
                    "cannot hold {} blocks of {} rows of {} channels",
                    x.rank, inbox.size(), stride, NN * K, L + 1, C));
  h->fwd_prefix.assign(static_cast<size_t>(C) * (NN + 1), 0);
  int64_t off = 0;
  for (int c = 0; c < C; ++c) {
    int* fp = &h->fwd_prefix[static_cast<size_t>(c) * (NN + 1)];
    for (int a = 0; a < NN; ++a) {
      fp[a] = static_cast<int>(off);
      if (a == x.node) continue;
      for (int k = 0; k < K; ++k) {
        auto from = [&] {
          return K > 1 ? fmt::format("node {} (source rank {})", a, a * L + k) : fmt::format("node {}", a);
        };
        const size_t block = (static_cast<size_t>(a) * K + k) * (L + 1) * stride;
        const size_t chan = 16 + 4 * static_cast<size_t>(c);
        int64_t most = 0, sum = 0;
        for (int l = 0; l < L; ++l) {
          const int32_t n = I32At(inbox, block + static_cast<size_t>(l) * stride + chan);
          if (n < 0)
            return Corrupt(
                fmt::format("normal dispatch count exchange: rank {}: {} sent {} tokens for "
                            "its local rank {} on channel {} (allowed 0..{})",
                            x.rank, from(), n, l, c, INT32_MAX));
          most = std::max<int64_t>(most, n);
          sum += n;
        }
        const int32_t fwd = I32At(inbox, block + static_cast<size_t>(L) * stride + chan);
        if (fwd < most || fwd > sum)
          return Corrupt(
              fmt::format("normal dispatch count exchange: rank {}: {} announced {} tokens to "
                          "forward on channel {} (allowed {}..{}: from the most any local rank gets "
                          "to what they get together)",
                          x.rank, from(), fwd, c, most, sum));
        off += fwd;
        if (off > INT32_MAX)
          return Corrupt(
              fmt::format("normal dispatch count exchange: rank {}: {} tokens to forward up to node {} "
                          "channel {} (allowed 0..{})",
                          x.rank, off, a, c, INT32_MAX));
      }
    }
    fp[NN] = static_cast<int>(off);
  }
  return Status::Ok();
}

namespace normal_wire_internal {

Status DispatchMsgError(std::span<const uint8_t> m, const DispatchMsgExpect& x) {
  const int L = x.local_size;
  const std::string who = fmt::format("normal dispatch: rank {} channel {}: a message {}", x.rank, x.channel,
                                      x.from_node >= 0 ? fmt::format("from node {}", x.from_node)
                                                       : fmt::format("from forwarder {}", x.from_local));
  if (L < 1 || L > kMaxLocalRanks || x.local < 0 || x.local >= L ||
      m.size() < sizeof(MsgHeader) + 4 * static_cast<size_t>(std::clamp(L, 1, kMaxLocalRanks)) ||
      x.rank_prefix.size() < static_cast<size_t>(std::max(x.num_ranks, 0)) + 1)
    return Corrupt(
        fmt::format("{}: {} bytes do not hold a header for {} local ranks (local index {}, {} row "
                    "prefixes for {} ranks)",
                    who, m.size(), L, x.local, x.rank_prefix.size(), x.num_ranks));
  MsgHeader h;
  std::memcpy(&h, m.data(), sizeof(h));
  if (h.local_mask == 0 || (L < 32 && h.local_mask >> L != 0))
    return Corrupt(fmt::format("{}: local mask {:#x} (allowed: non-zero, below {:#x} for {} local ranks)",
                               who, h.local_mask, L < 32 ? 1ull << L : 0x100000000ull, L));
  if (h.src_rank < 0 || h.src_rank >= x.num_ranks)
    return Corrupt(fmt::format("{}: source rank {} (allowed 0..{})", who, h.src_rank, x.num_ranks - 1));
  if (h.src_token < 0)
    return Corrupt(
        fmt::format("{}: source rank {} token index {} (allowed >= 0)", who, h.src_rank, h.src_token));
  if (x.from_node >= 0 && !FromNodeOk(h.src_rank, x))
    return Corrupt(fmt::format("{}: source rank {} (only rank {}{} sends on this ring)", who, h.src_rank,
                               x.from_node * L + x.local, x.via.empty() ? "" : " and the ranks it relays"));
  if (x.from_local >= 0 && !FromLocalOk(h.src_rank, x))
    return Corrupt(fmt::format("{}: source rank {} (allowed: ranks {} local index {})", who, h.src_rank,
                               x.via.empty() ? "with" : "routed through", x.from_local));
  if (x.from_local >= 0 && !(h.local_mask >> x.local & 1))
    return Corrupt(
        fmt::format("{}: source rank {} token {} with local mask {:#x} that does not include local "
                    "rank {}",
                    who, h.src_rank, h.src_token, h.local_mask, x.local));
  int32_t ord;
  std::memcpy(&ord, m.data() + sizeof(MsgHeader) + 4 * static_cast<size_t>(x.local), sizeof(ord));
  const size_t s = static_cast<size_t>(h.src_rank);
  return Corrupt(
      fmt::format("{}: source rank {} token {} for row {} (allowed 0..{}: the source sends {} rows)", who,
                  h.src_rank, h.src_token, ord, x.rank_prefix[s + 1] - x.rank_prefix[s] - 1,
                  x.rank_prefix[s + 1] - x.rank_prefix[s]));
}

}  // namespace normal_wire_internal
}  // namespace epx
