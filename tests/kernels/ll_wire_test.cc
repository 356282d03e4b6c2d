// Decoders of what kernel peers write (kernels/ll_wire.h, kernels/normal_wire.h): the error of each bad
// field (its name, value, allowed range and source rank), and the regressions found by their fuzz targets
// (tests/fuzz/ll_wire_fuzz.cc, normal_wire_fuzz.cc).
#include "kernels/ll_wire.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/normal_wire.h"

namespace epx {
namespace {

using ::testing::HasSubstr;

#define EXPECT_ERROR(expr, code_, ...)                                                  \
  do {                                                                                  \
    const Status st_ = (expr);                                                          \
    EXPECT_EQ(st_.code(), Code::code_) << st_.ToString();                               \
    for (const char* part : {__VA_ARGS__}) EXPECT_THAT(st_.message(), HasSubstr(part)); \
  } while (0)

// ---- Low-latency dispatch header ----------------------------------------------------------------------

constexpr int kTmax = 128, kHidden = 7168, kK = 8, kE = 64;
constexpr uint32_t kShape = 7168 | 1u << 24;  // H=7168, FP8

LlHeaderExpect Expect() {
  return LlHeaderExpect{.rank = 1,
                        .source = 3,
                        .max_tokens = kTmax,
                        .max_hidden = kHidden,
                        .header_k = kK,
                        .num_experts = kE,
                        .shape = kShape};
}

std::vector<uint8_t> Header(int32_t token, uint32_t shape, std::vector<int64_t> ids, int header_k = kK) {
  std::vector<uint8_t> m(LlHeaderIdsBytes(header_k) + 8, 0xee);
  LlEncodeHeader(m.data(), token, shape, ids, header_k);
  return m;
}

TEST(LlWire, HeaderRoundTrip) {
  auto m = Header(5, kShape, {9, -1, 17, 40});
  auto h = LlDecodeHeader(m, Expect(), 17);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->token, 5);
  EXPECT_EQ(h->slot, 2);
  EXPECT_TRUE(LlDecodeHeader(m, Expect(), 9, /*staged=*/5).ok());
  // The ids past the call's K are -1, so the header means the same to a receiver with any K.
  for (int k = 4; k < kK; ++k) EXPECT_EQ(LlHeaderId(m.data(), k), -1) << k;
}

// A node-local receiver scans all K_buf ids of a staged token. Before, the sender wrote only its call's K
// ids and the receiver scanned its own call's K: ids left by an earlier call with a larger K were read as
// this call's (rows placed twice, or "found N rows, announced M"), and ids past the receiver's K missed.
TEST(LlWire, ShorterTopkLeavesNoStaleIds) {
  std::vector<uint8_t> m(LlHeaderIdsBytes(kK));
  LlEncodeHeader(m.data(), 0, kShape, std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}, kK);
  LlEncodeHeader(m.data(), 0, kShape, std::vector<int64_t>{40, 41}, kK);
  EXPECT_EQ(LlHeaderId(m.data(), 0), 40);
  EXPECT_EQ(LlHeaderId(m.data(), 1), 41);
  for (int k = 2; k < kK; ++k) EXPECT_EQ(LlHeaderId(m.data(), k), -1) << k;
  EXPECT_ERROR(LlDecodeHeader(m, Expect(), 3).status(), kInternal, "does not select", "expert 3");
}

TEST(LlWire, ShapeOfAnotherCallIsAUsageError) {
  auto m = Header(0, 4096 | 1u << 24, {17});
  EXPECT_ERROR(LlDecodeHeader(m, Expect(), 17).status(), kInvalidArgument, "source rank 3 sent H=4096 mode=1",
               "rank 1 expects H=7168 mode=1", "all ranks must agree");
  m = Header(0, kHidden, {17});  // BF16 where FP8 is expected
  EXPECT_ERROR(LlDecodeHeader(m, Expect(), 17).status(), kInvalidArgument, "mode=0", "mode=1");
}

TEST(LlWire, BadMode) {
  auto m = Header(0, kHidden | 7u << 24, {17});
  EXPECT_ERROR(LlDecodeHeader(m, Expect(), 17).status(), kInternal, "source rank 3", "mode 7",
               "allowed 0..3");
}

TEST(LlWire, BadHidden) {
  EXPECT_ERROR(LlDecodeHeader(Header(0, 0 | 1u << 24, {17}), Expect(), 17).status(), kInternal,
               "source rank 3", "H=0", "allowed 1..7168");
  EXPECT_ERROR(LlDecodeHeader(Header(0, 8000 | 1u << 24, {17}), Expect(), 17).status(), kInternal, "H=8000",
               "allowed 1..7168");
}

TEST(LlWire, TokenIndexBeyondTmax) {
  EXPECT_ERROR(LlDecodeHeader(Header(kTmax, kShape, {17}), Expect(), 17).status(), kInternal,
               "rank 1 read a message of source rank 3", "token index 128", "allowed 0..127, T_max 128");
  EXPECT_ERROR(LlDecodeHeader(Header(-1, kShape, {17}), Expect(), 17).status(), kInternal, "token index -1");
  EXPECT_ERROR(LlDecodeHeader(Header(4, kShape, {17}), Expect(), 17, /*staged=*/3).status(), kInternal,
               "staged token 3 carries token index 4");
}

TEST(LlWire, ExpertIdOutOfRange) {
  EXPECT_ERROR(LlDecodeHeader(Header(2, kShape, {17, kE}), Expect(), 17).status(), kInternal, "source rank 3",
               "expert id 64 in top-k slot 1", "allowed -1..63");
  EXPECT_ERROR(LlDecodeHeader(Header(2, kShape, {-2, 17}), Expect(), 17).status(), kInternal, "expert id -2");
}

TEST(LlWire, HeaderThatDoesNotSelectTheExpert) {
  EXPECT_ERROR(LlDecodeHeader(Header(2, kShape, {1, 2}), Expect(), 17).status(), kInternal, "token 2",
               "expert 17", "expert ids [1, 2, -1");
}

TEST(LlWire, ShortMessage) {
  auto m = Header(0, kShape, {17});
  EXPECT_ERROR(LlDecodeHeader({m.data(), 12}, Expect(), 17).status(), kInternal, "12 bytes",
               "8 expert ids takes 40");
}

TEST(LlWire, Count) {
  auto c = LlDecodeCount(10 + 1 + kTmax, 10, kTmax, 1, 3, 2);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, kTmax);
  c = LlDecodeCount(11, 10, kTmax, 1, 3, 2);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, 0);
  EXPECT_ERROR(LlDecodeCount(10 + 2 + kTmax, 10, kTmax, 1, 3, 2).status(), kInternal,
               "source rank 3 announced 129 tokens for local expert 2", "allowed 0..128");
  EXPECT_ERROR(LlDecodeCount(10, 10, kTmax, 1, 3, 2).status(), kInternal, "did not move");
  EXPECT_ERROR(LlDecodeCount(1, ~0ull, kTmax, 1, 3, 2).status(), kInternal, "did not move");
}

TEST(LlWire, CombineRow) {
  const int64_t rows = 4 * kTmax;
  auto r = LlDecodeCombineRow(100, 5, rows, 1, 0, 3);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 105);
  EXPECT_ERROR(LlDecodeCombineRow(-1, 5, rows, 1, 0, 3).status(), kInternal,
               "node-local rank 0 published first row -1 for its local expert 3", "outside 0..511");
  EXPECT_ERROR(LlDecodeCombineRow(510, 2, rows, 1, 0, 3).status(), kInternal, "row 512 is outside 0..511");
  EXPECT_ERROR(LlDecodeCombineRow(INT32_MAX, INT32_MAX, rows, 1, 0, 3).status(), kInternal, "4294967294");
}

// ---- Normal mode: count rows, node rows, message headers -----------------------------------------------

constexpr int kR = 4, kC = 2, kEpr = 3, kMaxTopk = 8;
constexpr uint32_t kSig = 0x12345678;
constexpr size_t kStride = 64;

struct Row {
  int32_t total;
  uint32_t shape;
  std::vector<int32_t> chan, expert;
};

std::vector<uint8_t> Table(const std::vector<Row>& rows) {
  std::vector<uint8_t> t(rows.size() * kStride, 0);
  for (size_t s = 0; s < rows.size(); ++s) {
    CountRowRef r{t.data() + s * kStride, static_cast<int>(rows[s].chan.size())};
    r.total() = rows[s].total;
    r.shape() = rows[s].shape;
    // std::copy, not memcpy: an empty vector's data() may be null, which memcpy must not get (UBSan).
    std::copy(rows[s].chan.begin(), rows[s].chan.end(), r.chan());
    std::copy(rows[s].expert.begin(), rows[s].expert.end(), r.expert());
  }
  return t;
}

std::vector<Row> GoodRows() {
  return {{3, kSig, {1, 2}, {1, 0, 3}},
          {0, kSig, {0, 0}, {0, 0, 0}},
          {5, kSig, {5, 0}, {5, 5, 0}},
          {2, kSig, {1, 1}, {2, 0, 0}}};
}

CountRowsExpect RowsExpect() {
  return CountRowsExpect{
      .rank = 2, .num_ranks = kR, .channels = kC, .local_experts = kEpr, .max_topk = kMaxTopk, .shape = kSig};
}

TEST(NormalWire, CountRows) {
  NormalHandle h;
  ASSERT_TRUE(DecodeCountRows(Table(GoodRows()), kStride, RowsExpect(), &h).ok());
  EXPECT_EQ(h.rank_prefix, (std::vector<int>{0, 3, 3, 8, 10}));
  EXPECT_EQ(h.recv_channel_prefix, (std::vector<int>{0, 1, 3, 0, 0, 0, 0, 5, 5, 0, 1, 2}));
  EXPECT_EQ(h.tokens_per_expert, (std::vector<int>{8, 5, 3}));
  EXPECT_EQ(h.num_recv_tokens, 10);
}

TEST(NormalWire, CountRowErrors) {
  NormalHandle h;
  auto rows = GoodRows();
  rows[2].total = -5;
  EXPECT_ERROR(DecodeCountRows(Table(rows), kStride, RowsExpect(), &h), kInternal,
               "rank 2: source rank 2 sent total -5", "allowed 0..2147483647");
  rows = GoodRows();
  rows[1].chan = {-1, 1};
  rows[1].total = 0;
  EXPECT_ERROR(DecodeCountRows(Table(rows), kStride, RowsExpect(), &h), kInternal,
               "source rank 1 sent -1 tokens for channel 0", "allowed 0..0");
  rows = GoodRows();
  rows[3].chan = {1, 0};
  EXPECT_ERROR(DecodeCountRows(Table(rows), kStride, RowsExpect(), &h), kInternal,
               "source rank 3 sent channel counts that sum to 1, not its total 2");
  rows = GoodRows();
  rows[0].expert = {1, 0, 25};
  EXPECT_ERROR(DecodeCountRows(Table(rows), kStride, RowsExpect(), &h), kInternal,
               "source rank 0 sent 25 (token, k) pairs for local expert 2", "allowed 0..24");
  rows = GoodRows();
  rows[3].shape = kSig + 1;
  EXPECT_ERROR(DecodeCountRows(Table(rows), kStride, RowsExpect(), &h), kInvalidArgument,
               "rank 3 called with a different hidden/dtype/topk/num_experts than rank 2");
  // Totals that each fit but whose sum does not: the row prefix is an int.
  rows = GoodRows();
  for (auto& r : rows) r = {INT32_MAX / 2 + 1, kSig, {INT32_MAX / 2 + 1, 0}, {0, 0, 0}};
  EXPECT_ERROR(DecodeCountRows(Table(rows), kStride, RowsExpect(), &h), kInternal, "send 2147483648 rows",
               "allowed 0..2147483647");
  EXPECT_ERROR(DecodeCountRows(Table(GoodRows()), 16, RowsExpect(), &h), kInternal, "cannot hold");
}

// Inbox of NN = 3 nodes, L = 2 (rows of node 1, this rank's own, are never read).
std::vector<uint8_t> Inbox(int32_t fwd_node0, int32_t fwd_node2) {
  std::vector<Row> rows = {{0, 0, {2, 1}, {}},   {0, 0, {3, 0}, {}},   {0, 0, {fwd_node0, 1}, {}},
                           {0, 0, {-9, -9}, {}}, {0, 0, {-9, -9}, {}}, {0, 0, {-9, -9}, {}},
                           {0, 0, {0, 4}, {}},   {0, 0, {0, 4}, {}},   {0, 0, {0, fwd_node2}, {}}};
  return Table(rows);
}

TEST(NormalWire, NodeRows) {
  const NodeRowsExpect x{.rank = 3, .node = 1, .nodes = 3, .local_size = 2, .channels = kC};
  NormalHandle h;
  ASSERT_TRUE(DecodeNodeRows(Inbox(4, 6), kStride, x, &h).ok());
  // Offsets run on across channels: [channel][source node], own node empty.
  EXPECT_EQ(h.fwd_prefix, (std::vector<int>{0, 4, 4, 4, 4, 5, 5, 11}));
  EXPECT_ERROR(DecodeNodeRows(Inbox(6, 6), kStride, x, &h), kInternal,
               "rank 3: node 0 announced 6 tokens to forward on channel 0", "allowed 3..5");
  EXPECT_ERROR(DecodeNodeRows(Inbox(2, 6), kStride, x, &h), kInternal, "announced 2", "allowed 3..5");
  EXPECT_ERROR(DecodeNodeRows(Inbox(4, 9), kStride, x, &h), kInternal, "node 2 announced 9", "allowed 4..8");
}

// One block per source (K = L = 2, NN = 2, this rank on node 1): the blocks of node 0's two sources add
// up (source 1 relayed to this rank); a bad block names its source rank.
std::vector<uint8_t> InboxPerSource(int32_t fwd_src1) {
  const Row unused = {0, 0, {-9, -9}, {}};
  std::vector<Row> rows = {{0, 0, {2, 1}, {}},
                           {0, 0, {3, 0}, {}},
                           {0, 0, {4, 1}, {}},
                           {0, 0, {1, 0}, {}},
                           {0, 0, {0, 2}, {}},
                           {0, 0, {fwd_src1, 2}, {}},
                           unused,
                           unused,
                           unused,
                           unused,
                           unused,
                           unused};
  return Table(rows);
}

TEST(NormalWire, NodeRowsPerSource) {
  const NodeRowsExpect x{.rank = 3, .node = 1, .nodes = 2, .local_size = 2, .channels = kC, .blocks = 2};
  NormalHandle h;
  ASSERT_TRUE(DecodeNodeRows(InboxPerSource(1), kStride, x, &h).ok());
  EXPECT_EQ(h.fwd_prefix, (std::vector<int>{0, 5, 5, 5, 8, 8}));
  EXPECT_ERROR(DecodeNodeRows(InboxPerSource(3), kStride, x, &h), kInternal,
               "node 0 (source rank 1) announced 3 tokens to forward on channel 0", "allowed 1..1");
}

std::vector<uint8_t> Msg(int32_t src, int32_t token, uint32_t mask, std::vector<int32_t> ords) {
  std::vector<uint8_t> m(sizeof(MsgHeader) + 4 * ords.size() + 64, 0);
  const MsgHeader h{src, token, mask, 0};
  std::memcpy(m.data(), &h, sizeof(h));
  std::copy(ords.begin(), ords.end(), reinterpret_cast<int32_t*>(m.data() + sizeof(h)));
  return m;
}

// R = 8 ranks on 2 nodes of L = 4; this rank is (1, 2) = rank 6, which gets rows [0, 3, 3, 8, ...].
const std::vector<int> kPrefix = {0, 3, 3, 8, 10, 10, 10, 12, 12};
DispatchMsgExpect FromForwarder(int g, std::span<const int8_t> via = {}) {
  return DispatchMsgExpect{.rank = 6,
                           .channel = 1,
                           .num_ranks = 8,
                           .local_size = 4,
                           .local = 2,
                           .from_local = g,
                           .rank_prefix = kPrefix,
                           .via = via};
}
DispatchMsgExpect FromNode(int a, std::span<const int8_t> via = {}) {
  return DispatchMsgExpect{.rank = 6,
                           .channel = 1,
                           .num_ranks = 8,
                           .local_size = 4,
                           .local = 2,
                           .from_node = a,
                           .rank_prefix = kPrefix,
                           .via = via};
}
// Routes into node 1 with ranks 4, 5 and 7 masked: every live source of node 0 is relayed through local
// index 2, the only one live on node 1, so rank 6 = (1, 2) forwards them all (NormalState::via).
const std::vector<int8_t> kVia = {2, 2, 2, 2, -1, -1, 2, -1};

TEST(NormalWire, DispatchMessage) {
  auto m = DecodeDispatchMsg(Msg(2, 7, 0b0101, {0, 0, 4, 0}), FromNode(0));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->src_rank, 2);
  EXPECT_EQ(m->src_token, 7);
  EXPECT_EQ(m->ordinal, 4);
  m = DecodeDispatchMsg(Msg(2, 7, 0b0001, {0, 0, 99, 0}), FromNode(0));  // not for this rank: no ordinal
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->ordinal, -1);
  m = DecodeDispatchMsg(Msg(3, 0, 0b0100, {0, 0, 1, 0}), FromForwarder(3));
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->ordinal, 1);
  // Relayed: rank 1 on the RDMA ring from node 0 (after rank 2's own), and rank 1 on a node ring from
  // forwarder 2 (this rank's receive side names the forwarder, not the source's own index).
  m = DecodeDispatchMsg(Msg(1, 5, 0b0001, {0, 0, 0, 0}), FromNode(0, kVia));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->src_rank, 1);
  m = DecodeDispatchMsg(Msg(3, 5, 0b0100, {0, 0, 1, 0}), FromForwarder(2, kVia));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->ordinal, 1);
}

TEST(NormalWire, DispatchMessageErrors) {
  EXPECT_ERROR(DecodeDispatchMsg(Msg(2, 7, 0, {0, 0, 0, 0}), FromNode(0)).status(), kInternal,
               "rank 6 channel 1: a message from node 0", "local mask 0x0");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(2, 7, 0x14, {0, 0, 0, 0}), FromNode(0)).status(), kInternal,
               "local mask 0x14", "below 0x10 for 4 local ranks");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(8, 7, 4, {0, 0, 0, 0}), FromForwarder(0)).status(), kInternal,
               "source rank 8 (allowed 0..7)");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(3, 7, 4, {0, 0, 0, 0}), FromNode(0)).status(), kInternal,
               "source rank 3 (only rank 2 sends on this ring)");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(5, 7, 4, {0, 0, 0, 0}), FromForwarder(3)).status(), kInternal,
               "a message from forwarder 3", "source rank 5 (allowed: ranks with local index 3)");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(1, 5, 4, {0, 0, 0, 0}), FromNode(0)).status(), kInternal,
               "source rank 1 (only rank 2 sends on this ring)");  // no relays: rank 1 has its own ring
  EXPECT_ERROR(DecodeDispatchMsg(Msg(5, 5, 4, {0, 0, 0, 0}), FromNode(0, kVia)).status(), kInternal,
               "source rank 5 (only rank 2 and the ranks it relays sends on this ring)");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(7, 5, 4, {0, 0, 0, 0}), FromForwarder(3, kVia)).status(), kInternal,
               "source rank 7 (allowed: ranks routed through local index 3)");  // masked: no route
  EXPECT_ERROR(DecodeDispatchMsg(Msg(1, 5, 4, {0, 0, 0, 0}), FromForwarder(1, kVia)).status(), kInternal,
               "source rank 1 (allowed: ranks routed through local index 1)");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(7, 7, 1, {0, 0, 0, 0}), FromForwarder(3)).status(), kInternal,
               "local mask 0x1 that does not include local rank 2");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(3, -4, 4, {0, 0, 0, 0}), FromForwarder(3)).status(), kInternal,
               "token index -4");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(3, 9, 4, {0, 0, 2, 0}), FromForwarder(3)).status(), kInternal,
               "source rank 3 token 9 for row 2 (allowed 0..1: the source sends 2 rows)");
  EXPECT_ERROR(DecodeDispatchMsg(Msg(2, 9, 4, {0, 0, -1, 0}), FromNode(0)).status(), kInternal, "row -1");
  auto m = Msg(2, 9, 4, {0, 0, 0, 0});
  EXPECT_ERROR(DecodeDispatchMsg({m.data(), 20}, FromNode(0)).status(), kInternal, "20 bytes do not hold");
}

}  // namespace
}  // namespace epx
