// Fuzz target: the decoders of what normal-mode peers write (kernels/normal_wire.h): the count rows of
// the count exchange, the node rows of an RDMA inbox block and dispatch message headers. The first byte
// picks the decoder, then fixed fields (ByteReader: packed little-endian, see each case) and the bytes
// as the peer left them. Checked: nothing crashes, overflows or reads out of bounds; what is accepted is
// what the channel loops rely on (prefixes that start at 0, never decrease and fit an int; per-source
// channel prefixes that end at the source's rows; forwarding that its block's rows account for; a
// message source, token and ordinal that pick a row of that source); rejects are kInternal, or
// kInvalidArgument only for a shape mismatch; and valid rows always decode to what was encoded.
#include <climits>
#include <cstring>
#include <vector>

#include "kernels/normal_wire.h"
#include "tests/fuzz/fuzz_util.h"

namespace epx {
namespace {

using fuzz::ByteReader;

int32_t I32(const std::vector<uint8_t>& b, size_t off) {
  int32_t v;
  std::memcpy(&v, b.data() + off, 4);
  return v;
}

// [u8 R-1][u8 C-1][u8 E/R-1][u8 top-k-1][u8 extra stride words][u32 shape] then the table.
void FuzzCountRows(ByteReader& in) {
  CountRowsExpect x;
  x.num_ranks = 1 + in.Take<uint8_t>() % 8;
  x.channels = 1 + in.Take<uint8_t>() % 4;
  x.local_experts = 1 + in.Take<uint8_t>() % 8;
  x.max_topk = 1 + in.Take<uint8_t>() % 8;
  const size_t stride = CountRowBytes(x.channels, x.local_experts) + 4 * (in.Take<uint8_t>() % 4);
  x.shape = in.Take<uint32_t>();
  const auto rest = in.Rest();
  const std::vector<uint8_t> table(rest.begin(), rest.end());
  NormalHandle h;
  const Status st = DecodeCountRows(table, stride, x, &h);
  if (!st.ok()) {
    FUZZ_CHECK(st.code() == Code::kInternal || st.code() == Code::kInvalidArgument, "{}", st.ToString());
    FUZZ_CHECK(!st.message().empty(), "");
    return;
  }
  const int R = x.num_ranks, C = x.channels;
  FUZZ_CHECK(table.size() >= (R - 1) * stride + CountRowBytes(C, x.local_experts), "{} bytes accepted",
             table.size());
  FUZZ_CHECK(h.rank_prefix.size() == static_cast<size_t>(R) + 1 && h.rank_prefix[0] == 0, "");
  FUZZ_CHECK(h.num_recv_tokens == h.rank_prefix[R] && h.num_recv_tokens >= 0, "");
  for (int s = 0; s < R; ++s) {
    const int rows = h.rank_prefix[s + 1] - h.rank_prefix[s];
    FUZZ_CHECK(rows >= 0 && rows == I32(table, s * stride + 8), "source {}: {} rows", s, rows);
    uint32_t shape;
    std::memcpy(&shape, table.data() + s * stride + 12, 4);
    FUZZ_CHECK(shape == x.shape, "source {} shape 0x{:x} accepted", s, shape);
    const int* p = &h.recv_channel_prefix[static_cast<size_t>(s) * (C + 1)];
    FUZZ_CHECK(p[0] == 0 && p[C] == rows, "source {}: channels end at {} of {}", s, p[C], rows);
    for (int c = 0; c < C; ++c) FUZZ_CHECK(p[c] <= p[c + 1], "source {} channel {}", s, c);
  }
  for (int n : h.tokens_per_expert) FUZZ_CHECK(n >= 0, "expert count {}", n);
}

// [u8 R-1][u8 C-1][u8 E/R-1] then per source: u16 rows split over channels by u8 weights, u8 per expert.
// Valid by construction: must decode to exactly these counts.
void FuzzCountRowsValid(ByteReader& in) {
  const int R = 1 + in.Take<uint8_t>() % 8, C = 1 + in.Take<uint8_t>() % 4, epr = 1 + in.Take<uint8_t>() % 8;
  const size_t stride = CountRowBytes(C, epr);
  std::vector<uint8_t> table(R * stride);
  std::vector<std::vector<int>> chans(R);
  std::vector<int> per_expert(epr, 0);
  for (int s = 0; s < R; ++s) {
    CountRowRef row{table.data() + s * stride, C};
    const int total = in.Take<uint16_t>();
    int left = total;
    for (int c = 0; c < C; ++c) {
      const int n = c + 1 == C ? left : std::min(left, static_cast<int>(in.Take<uint8_t>()));
      row.chan()[c] = n;
      chans[s].push_back(n);
      left -= n;
    }
    row.total() = total;
    row.shape() = 7;
    for (int j = 0; j < epr; ++j)
      per_expert[j] += row.expert()[j] = std::min(total, static_cast<int>(in.Take<uint8_t>()));
  }
  NormalHandle h;
  const Status st = DecodeCountRows(table, stride, CountRowsExpect{0, R, C, epr, 1, 7}, &h);
  FUZZ_CHECK(st.ok(), "{}", st.ToString());
  for (int s = 0; s < R; ++s)
    for (int c = 0; c < C; ++c)
      FUZZ_CHECK(
          h.recv_channel_prefix[s * (C + 1) + c + 1] - h.recv_channel_prefix[s * (C + 1) + c] == chans[s][c],
          "source {} channel {}", s, c);
  FUZZ_CHECK(h.tokens_per_expert == per_expert, "");
}

// [u8 NN-1][u8 L-1][u8 C-1][u8 node][u8 extra stride words][u8 blocks per node - 1] then the inbox.
void FuzzNodeRows(ByteReader& in) {
  NodeRowsExpect x;
  x.nodes = 1 + in.Take<uint8_t>() % 4;
  x.local_size = 1 + in.Take<uint8_t>() % 4;
  x.channels = 1 + in.Take<uint8_t>() % 3;
  x.node = in.Take<uint8_t>() % x.nodes;
  const size_t stride = CountRowBytes(x.channels, 0) + 4 * (in.Take<uint8_t>() % 4);
  x.blocks = 1 + in.Take<uint8_t>() % 3;
  const auto rest = in.Rest();
  const std::vector<uint8_t> inbox(rest.begin(), rest.end());
  NormalHandle h;
  const Status st = DecodeNodeRows(inbox, stride, x, &h);
  if (!st.ok()) {
    FUZZ_CHECK(st.code() == Code::kInternal && !st.message().empty(), "{}", st.ToString());
    return;
  }
  const int NN = x.nodes, L = x.local_size, C = x.channels, K = x.blocks;
  FUZZ_CHECK(h.fwd_prefix.size() == static_cast<size_t>(C) * (NN + 1) && h.fwd_prefix[0] == 0, "");
  for (int c = 0; c < C; ++c) {
    const int* fp = &h.fwd_prefix[static_cast<size_t>(c) * (NN + 1)];
    if (c > 0) FUZZ_CHECK(fp[0] == fp[-1], "channel {} does not continue", c);
    for (int a = 0; a < NN; ++a) {
      const int n = fp[a + 1] - fp[a];
      FUZZ_CHECK(n >= 0, "node {} channel {}: {}", a, c, n);
      if (a == x.node) {
        FUZZ_CHECK(n == 0, "own node forwards {}", n);
        continue;
      }
      int64_t sum = 0;
      for (int k = 0; k < K; ++k)
        for (int l = 0; l < L; ++l) sum += I32(inbox, ((a * K + k) * (L + 1) + l) * stride + 16 + 4 * c);
      FUZZ_CHECK(n <= sum, "node {} channel {}: forwards {} of {}", a, c, n, sum);
    }
  }
}

// [u8 L-1][u8 NN-1][u8 local][u8 from: bit 0 node ring, rest index] then R u8 rows per source, [u8 routes:
// odd = R u8 forwarder indices follow (value % (L + 1) - 1)], then the message.
void FuzzMessage(ByteReader& in) {
  DispatchMsgExpect x;
  x.local_size = 1 + in.Take<uint8_t>() % kMaxLocalRanks;
  const int NN = 1 + in.Take<uint8_t>() % 4;
  x.num_ranks = NN * x.local_size;
  x.local = in.Take<uint8_t>() % x.local_size;
  const uint8_t from = in.Take<uint8_t>();
  if (from & 1)
    x.from_node = (from >> 1) % NN;
  else
    x.from_local = (from >> 1) % x.local_size;
  std::vector<int> prefix(x.num_ranks + 1, 0);
  for (int s = 0; s < x.num_ranks; ++s) prefix[s + 1] = prefix[s] + in.Take<uint8_t>();
  x.rank_prefix = prefix;
  std::vector<int8_t> via;
  if (in.Take<uint8_t>() & 1)
    for (int s = 0; s < x.num_ranks; ++s)
      via.push_back(static_cast<int8_t>(in.Take<uint8_t>() % (x.local_size + 1) - 1));
  x.via = via;
  const auto rest = in.Rest();
  const std::vector<uint8_t> msg(rest.begin(), rest.end());
  auto m = DecodeDispatchMsg(msg, x);
  if (!m.ok()) {
    FUZZ_CHECK(m.status().code() == Code::kInternal && !m.status().message().empty(), "{}",
               m.status().ToString());
    return;
  }
  const int L = x.local_size;
  FUZZ_CHECK(msg.size() >= sizeof(MsgHeader) + 4 * static_cast<size_t>(L), "{} bytes accepted", msg.size());
  FUZZ_CHECK(m->src_rank >= 0 && m->src_rank < x.num_ranks && m->src_token >= 0, "source {} token {}",
             m->src_rank, m->src_token);
  FUZZ_CHECK(m->mask != 0 && (L == 32 || m->mask >> L == 0), "mask {:#x}", m->mask);
  // The forwarder of the source on this node: its own index, or the route (-1: masked, never accepted).
  const int fwd = via.empty() ? m->src_rank % L : via[static_cast<size_t>(m->src_rank)];
  if (x.from_node >= 0)
    FUZZ_CHECK(m->src_rank / L == x.from_node && fwd == x.local, "source {} forwarder {}", m->src_rank, fwd);
  if (x.from_local >= 0)
    FUZZ_CHECK(fwd == x.from_local && (m->mask >> x.local & 1), "source {} forwarder {} mask {:#x}",
               m->src_rank, fwd, m->mask);
  if (m->mask >> x.local & 1)
    FUZZ_CHECK(m->ordinal >= 0 && m->ordinal < prefix[m->src_rank + 1] - prefix[m->src_rank], "ordinal {}",
               m->ordinal);
  else
    FUZZ_CHECK(m->ordinal == -1, "ordinal {} without the mask bit", m->ordinal);
}

}  // namespace
}  // namespace epx

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return epx::fuzz::RunOneOf(
      data, size, {epx::FuzzCountRows, epx::FuzzCountRowsValid, epx::FuzzNodeRows, epx::FuzzMessage});
}
