// Decoders of what peers send at setup (transport/bootstrap_wire.h, transport/verbs/connect_wire.h):
// the regressions found by their fuzz targets (tests/fuzz), as plain unit tests.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "transport/bootstrap_wire.h"
#include "transport/verbs/connect_wire.h"

namespace epx {
namespace {

using namespace bootstrap_wire;

std::vector<uint8_t> U64(uint64_t v) {
  std::vector<uint8_t> b(8);
  std::memcpy(b.data(), &v, 8);
  return b;
}

// Found by tests/fuzz/bootstrap_wire_fuzz: a length near 2^64 wrapped `off + n` past the bounds check
// and the rank died in std::vector::assign (std::length_error -> std::terminate).
TEST(BootstrapWire, AllGatherVLengthCannotWrap) {
  auto raw = U64(~0ull);
  raw.insert(raw.end(), {0xff, 0xff, 0xff, 0xff, 0xff, 0x08});
  auto r = DecodeAllGatherV(raw, 1);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInternal);
}

TEST(BootstrapWire, AllGatherVRoundTripAndStrictness) {
  std::vector<std::vector<uint8_t>> blobs = {{1, 2, 3}, {}, {9}};
  auto raw = EncodeAllGatherV(blobs);
  auto back = DecodeAllGatherV(raw, 3);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, blobs);
  EXPECT_FALSE(DecodeAllGatherV(raw, 4).ok());                           // a rank missing
  EXPECT_FALSE(DecodeAllGatherV(raw, 2).ok());                           // bytes left over
  EXPECT_FALSE(DecodeAllGatherV({raw.data(), raw.size() - 1}, 3).ok());  // short
  EXPECT_FALSE(DecodeAllGatherV(raw, 1 << 30).ok());                     // no allocation for a huge world
}

// The reply length is what the collective produces, checked before the rank allocates it: before, a
// corrupt all-gather reply longer than world * sizeof(T) overflowed AllGatherPod's output (memcpy).
TEST(BootstrapWire, ReplyLengthIsBoundedByTheCollective) {
  auto hdr = [](uint32_t code, uint64_t len) { return Encode(ReplyHeader{kMagic, code, len}); };
  EXPECT_TRUE(DecodeReplyHeader(hdr(0, 4 * 96), Kind::kAllGather, 4, 96).ok());
  EXPECT_FALSE(DecodeReplyHeader(hdr(0, 4 * 96 + 1), Kind::kAllGather, 4, 96).ok());
  EXPECT_FALSE(DecodeReplyHeader(hdr(0, 1), Kind::kBarrier, 4, 0).ok());
  EXPECT_TRUE(DecodeReplyHeader(hdr(0, kWelcomeBytes), Kind::kConnect, 4, 0).ok());  // the generation
  EXPECT_FALSE(DecodeReplyHeader(hdr(0, 0), Kind::kConnect, 4, 0).ok());  // a version-1 root's welcome
  EXPECT_FALSE(DecodeReplyHeader(hdr(0, kMaxBlob + 1), Kind::kBroadcast, 4, 0).ok());
  EXPECT_FALSE(DecodeReplyHeader(hdr(0, 8 * 3), Kind::kAllGatherV, 4, 0).ok());
  EXPECT_TRUE(DecodeReplyHeader(hdr(3, 100), Kind::kBarrier, 4, 0).ok());
  EXPECT_FALSE(DecodeReplyHeader(hdr(200, 10), Kind::kBarrier, 4, 0).ok());  // no such epx::Code
  EXPECT_FALSE(DecodeReplyHeader(hdr(3, kMaxErrorText + 1), Kind::kBarrier, 4, 0).ok());
  auto bad_magic = Encode(ReplyHeader{kMagic + 1, 0, 0});
  EXPECT_FALSE(DecodeReplyHeader(bad_magic, Kind::kBarrier, 4, 0).ok());
}

TEST(BootstrapWire, HelloAndMessageHeader) {
  const uint64_t job = JobHash("j");
  std::vector<int> fds = {-1, -1, 5, -1};
  auto h = DecodeHello(Encode(Hello{kMagic, kVersion, 1, 4, job, 0}));
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(CheckHello(*h, job, 4, fds).ok());
  EXPECT_FALSE(CheckHello(Hello{kMagic, kVersion, 2, 4, job, 0}, job, 4, fds).ok());  // joined twice
  EXPECT_FALSE(CheckHello(Hello{kMagic, kVersion, 4, 4, job, 0}, job, 4, fds).ok());
  EXPECT_FALSE(CheckHello(Hello{kMagic, kVersion, 1, 4, job + 1, 0}, job, 4, fds).ok());
  EXPECT_FALSE(DecodeHello(Encode(Hello{0, kVersion, 1, 4, job, 0})).ok());
  EXPECT_FALSE(DecodeMsgHeader(Encode(MsgHeader{kMagic, 1, 1, 0, kMaxPhase + 1, 0})).ok());
  EXPECT_FALSE(DecodeMsgHeader(Encode(MsgHeader{kMagic, 1, 1, 0, 4, kMaxBlob + 1})).ok());
  auto m = DecodeMsgHeader(Encode(MsgHeader{kMagic, 1, 7, 0, 4, 16}));
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE(SameCollective(*m, "heap", Kind::kAllGather, 7, 0, "heap"));
  // Phases compare as byte strings: one with a NUL inside is not the same as its prefix.
  EXPECT_FALSE(SameCollective(*m, std::string_view("he\0p", 4), Kind::kAllGather, 7, 0, "he"));
}

// Generations (transport/bootstrap.h): a hello from a process that last joined an older generation is
// refused; a fresh one (0) joins any; a newer one means what forms so far is stale.
TEST(BootstrapWire, GenerationOfAHello) {
  EXPECT_EQ(JudgeGeneration(0, 0), GenerationVerdict::kJoin);  // first start of the job
  EXPECT_EQ(JudgeGeneration(0, 3), GenerationVerdict::kJoin);  // a restarted process joins generation 3
  EXPECT_EQ(JudgeGeneration(3, 0), GenerationVerdict::kJoin);  // a restarted root takes it from the hello
  EXPECT_EQ(JudgeGeneration(3, 3), GenerationVerdict::kJoin);
  EXPECT_EQ(JudgeGeneration(2, 3), GenerationVerdict::kStale);  // missed generation 2: refused
  EXPECT_EQ(JudgeGeneration(1, 3), GenerationVerdict::kStale);
  EXPECT_EQ(JudgeGeneration(4, 3), GenerationVerdict::kNewer);
  // The field travels: a version-1 hello (24 bytes) is not a hello any more.
  const uint64_t job = JobHash("j");
  auto h = DecodeHello(Encode(Hello{kMagic, kVersion, 1, 4, job, 7}));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->generation, 7u);
  auto bytes = Encode(Hello{kMagic, kVersion, 1, 4, job, 7});
  EXPECT_FALSE(DecodeHello({bytes.data(), 24}).ok());
  std::vector<int> fds = {-1, -1, -1, -1};
  EXPECT_FALSE(CheckHello(Hello{kMagic, 1, 1, 4, job, 0}, job, 4, fds).ok());  // protocol version 1
}

verbs::RankRecord Record(int rank) {
  verbs::RankRecord r{};
  r.magic = verbs::kRecordMagic;
  r.version = verbs::kRecordVersion;
  r.rank = rank;
  r.world = 2;
  r.channels = 1;
  r.heap_addr = 0x7f0000000000;
  r.heap_size = 64 << 20;
  r.counter_off = 4096;
  r.counter_bytes = 512;
  r.port.link_layer = IBV_LINK_LAYER_ETHERNET;
  r.port.mtu = IBV_MTU_1024;
  r.port.use_grh = 1;
  return r;
}

// Found by tests/fuzz/connect_wire_fuzz: a peer's MTU byte went through static_cast<ibv_mtu> into
// std::min (undefined behaviour for 200: UBSan "load of value 200, which is not a valid value for type
// 'const ibv_mtu'"), and 0 became path MTU 0.
TEST(ConnectWire, RankRecordFieldsAreValidated) {
  const verbs::RankRecord mine = Record(1);
  EXPECT_TRUE(verbs::CheckRankRecord(Record(0), 0, mine).ok());
  for (uint8_t mtu : {0, 6, 200}) {
    auto x = Record(0);
    x.port.mtu = mtu;
    EXPECT_EQ(verbs::CheckRankRecord(x, 0, mine).code(), Code::kInternal) << int(mtu);
  }
  auto x = Record(0);
  x.heap_size = ~0ull;  // wraps
  EXPECT_FALSE(verbs::CheckRankRecord(x, 0, mine).ok());
  x = Record(0);
  x.heap_size = 4096;  // the counter area does not fit
  EXPECT_EQ(verbs::CheckRankRecord(x, 0, mine).code(), Code::kInvalidArgument);
  x = Record(0);
  x.channels = 2;
  EXPECT_EQ(verbs::CheckRankRecord(x, 0, mine).code(), Code::kInvalidArgument);
  EXPECT_EQ(verbs::CheckRankRecord(Record(0), 1, mine).code(), Code::kFailedPrecondition);
  EXPECT_EQ(verbs::PathMtu(IBV_MTU_4096, Record(0).port), IBV_MTU_1024);
}

TEST(ConnectWire, OobTable) {
  // 2 ranks x 2 channels: rank r's row lists (peer, channel) entries.
  std::vector<verbs::OobQp> all(8, verbs::OobQp{0x11, 0x22});
  all[1 * 4 + 0 * 2 + 1] = verbs::OobQp{0x1000000, 5};  // rank 1 -> rank 0 channel 1: 25-bit QPN
  all[1 * 4 + 0 * 2 + 0] = verbs::OobQp{0, 0};          // rank 1 made no QP for rank 0 channel 0
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(all.data()), all.size() * 8);
  EXPECT_TRUE(verbs::DecodeOobQp(bytes, 2, 1, 0, 1, 1).ok());
  EXPECT_EQ(verbs::DecodeOobQp(bytes, 2, 1, 1, 0, 1).status().code(), Code::kInternal);
  EXPECT_EQ(verbs::DecodeOobQp(bytes, 2, 1, 1, 0, 0).status().code(), Code::kFailedPrecondition);
  EXPECT_FALSE(verbs::DecodeOobQp(bytes.first(56), 2, 1, 0, 1, 1).ok());  // short table
  EXPECT_FALSE(verbs::DecodeOobQp(bytes, 2, 1, 2, 1, 1).ok());            // no such peer
}

TEST(ConnectWire, CmPrivateData) {
  verbs::CmHello h{verbs::kHelloMagic, verbs::kHelloVersion, 1, 3, 2, 0x1234};
  std::vector<uint8_t> pd(56, 0);  // the CM pads private data
  std::memcpy(pd.data(), &h, sizeof(h));
  auto v = verbs::DecodeCmHello(pd, 0x1234, 2);
  EXPECT_EQ(v.reject, 0);
  EXPECT_EQ(v.hello.src_rank, 3);
  EXPECT_EQ(verbs::DecodeCmHello(pd, 0x1235, 2).reject, verbs::kOtherJob);
  EXPECT_EQ(verbs::DecodeCmHello({pd.data(), 10}, 0x1234, 2).reject, verbs::kBadHello);
  verbs::CmReject r{verbs::kRejectMagic, verbs::kHelloVersion, verbs::kDuplicate};
  EXPECT_EQ(verbs::DecodeCmReject({reinterpret_cast<const uint8_t*>(&r), sizeof(r)}), verbs::kDuplicate);
  EXPECT_FALSE(verbs::DecodeCmReject({pd.data(), 4}).has_value());
}

}  // namespace
}  // namespace epx
