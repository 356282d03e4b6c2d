// Fuzz target: the decoders of bootstrap frames (transport/bootstrap_wire.h), i.e. everything rank 0
// reads from a rank and a rank reads from rank 0. The first byte picks the decoder, a few more bytes
// the local context (world size, this rank's blob size, joined ranks), the rest is the frame. Checked:
// nothing crashes or allocates beyond the bounds of the collective, accepted frames satisfy their
// documented bounds, and encode(decode(bytes)) == bytes / decode(encode(x)) == x.
#include <fuzzer/FuzzedDataProvider.h>

#include <string>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "transport/bootstrap_wire.h"

namespace epx::bootstrap_wire {
namespace {

std::span<const uint8_t> AsSpan(const std::vector<uint8_t>& v) {
  return {v.data(), v.size()};
}

void FuzzHello(FuzzedDataProvider& in) {
  const int world = in.ConsumeIntegralInRange<int>(1, 64);
  std::vector<int> fds(static_cast<size_t>(world), -1);
  for (int& fd : fds) fd = in.ConsumeBool() ? 7 : -1;
  const uint64_t job = JobHash(in.ConsumeBool() ? "job-a" : "");
  const auto bytes = in.ConsumeRemainingBytes<uint8_t>();
  auto h = DecodeHello(AsSpan(bytes));
  if (!h.ok()) return;
  FUZZ_CHECK(h->magic == kMagic && bytes.size() == sizeof(Hello), "");
  FUZZ_CHECK(Encode(*h) == bytes, "hello does not re-encode to its bytes");
  Status st = CheckHello(*h, job, world, fds);
  if (st.ok()) {
    // Only now may the root index its table with the peer's rank.
    FUZZ_CHECK(h->rank > 0 && h->rank < world && fds[static_cast<size_t>(h->rank)] < 0, "rank {}", h->rank);
    FUZZ_CHECK(h->world == world && h->job_hash == job && h->version == kVersion, "");
    // Any generation is a valid request; the root's verdict orders it against the one forming.
    const uint64_t g = h->generation;
    FUZZ_CHECK(JudgeGeneration(g, g) == GenerationVerdict::kJoin &&
                   JudgeGeneration(g, 0) == GenerationVerdict::kJoin,
               "generation {}", g);
    if (g > 1) FUZZ_CHECK(JudgeGeneration(g - 1, g) == GenerationVerdict::kStale, "generation {}", g);
    if (g > 1) FUZZ_CHECK(JudgeGeneration(g, g - 1) == GenerationVerdict::kNewer, "generation {}", g);
  } else {
    FUZZ_CHECK(st.code() == Code::kInvalidArgument, "{}", st.ToString());
  }
}

void FuzzMsgHeader(FuzzedDataProvider& in) {
  const auto bytes = in.ConsumeBytes<uint8_t>(sizeof(MsgHeader) + in.ConsumeIntegralInRange<int>(-2, 2));
  const std::string phase = in.ConsumeRemainingBytesAsString();
  auto h = DecodeMsgHeader(AsSpan(bytes));
  if (!h.ok()) {
    FUZZ_CHECK(h.status().code() == Code::kInternal, "{}", h.status().ToString());
    return;
  }
  FUZZ_CHECK(h->phase_len <= kMaxPhase && h->blob_len <= kMaxBlob, "phase {} blob {}", h->phase_len,
             h->blob_len);
  FUZZ_CHECK(Encode(*h) == bytes, "message header does not re-encode to its bytes");
  // The root reads exactly phase_len bytes into its phase buffer and compares them as a string_view.
  const std::string got = phase.substr(0, h->phase_len);
  (void)KindName(h->kind);
  if (SameCollective(*h, got, static_cast<Kind>(h->kind), h->seq, h->root, phase))
    FUZZ_CHECK(got == phase, "phase '{}' matched '{}'", got, phase);
}

void FuzzReply(FuzzedDataProvider& in) {
  const auto kind = static_cast<Kind>(in.ConsumeIntegralInRange<uint32_t>(0, 4));
  const int world = in.ConsumeIntegralInRange<int>(1, 1 << 20);
  const size_t mine = in.ConsumeIntegralInRange<size_t>(0, kMaxBlob + 1);
  const auto bytes = in.ConsumeRemainingBytes<uint8_t>();
  auto h = DecodeReplyHeader(AsSpan(bytes), kind, world, mine);
  if (!h.ok()) return;
  FUZZ_CHECK(Encode(*h) == bytes, "reply header does not re-encode to its bytes");
  if (h->code != 0) {
    FUZZ_CHECK(h->len <= kMaxErrorText, "error text of {} bytes", h->len);
    Status st = ReplyError(*h, "text");
    FUZZ_CHECK(!st.ok() && st.code() <= Code::kInternal, "{}", st.ToString());
    (void)st.ToString();
    return;
  }
  // What the rank then allocates and reads: bounded by the collective, never by the peer.
  const uint64_t w = static_cast<uint64_t>(world);
  switch (kind) {
    case Kind::kAllGather:
      FUZZ_CHECK(h->len == w * mine, "len {}", h->len);
      break;
    case Kind::kAllGatherV:
      FUZZ_CHECK(h->len >= 8 * w && h->len <= w * (8 + kMaxBlob), "len {}", h->len);
      break;
    case Kind::kBroadcast:
      FUZZ_CHECK(h->len <= kMaxBlob, "len {}", h->len);
      break;
    case Kind::kConnect:
      FUZZ_CHECK(h->len == kWelcomeBytes, "len {}", h->len);
      break;
    default:
      FUZZ_CHECK(h->len == 0, "len {}", h->len);
  }
}

void FuzzAllGatherVDecode(FuzzedDataProvider& in) {
  const int world = in.ConsumeIntegralInRange<int>(0, 1 << 16);
  const auto raw = in.ConsumeRemainingBytes<uint8_t>();
  auto blobs = DecodeAllGatherV(AsSpan(raw), world);
  if (!blobs.ok()) return;
  FUZZ_CHECK(blobs->size() == static_cast<size_t>(world), "{} blobs for world {}", blobs->size(), world);
  FUZZ_CHECK(EncodeAllGatherV(*blobs) == raw, "all-gather-v result does not re-encode to its bytes");
}

void FuzzAllGatherVRoundTrip(FuzzedDataProvider& in) {
  std::vector<std::vector<uint8_t>> blobs(in.ConsumeIntegralInRange<size_t>(0, 16));
  for (auto& b : blobs) b = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(0, 64));
  const auto raw = EncodeAllGatherV(blobs);
  auto back = DecodeAllGatherV(AsSpan(raw), static_cast<int>(blobs.size()));
  FUZZ_CHECK(back.ok() && *back == blobs, "decode(encode(blobs)) != blobs");
  if (!raw.empty()) {
    // One byte short, or one rank too many, is corrupt, never a read past the end.
    FUZZ_CHECK(!DecodeAllGatherV({raw.data(), raw.size() - 1}, static_cast<int>(blobs.size())).ok(), "");
    FUZZ_CHECK(!DecodeAllGatherV(AsSpan(raw), static_cast<int>(blobs.size()) + 1).ok(), "");
  }
}

}  // namespace
}  // namespace epx::bootstrap_wire

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace epx::bootstrap_wire;
  if (size == 0) return 0;
  // The first byte picks the decoder (FuzzedDataProvider takes integers from the end, bytes from the front).
  FuzzedDataProvider in(data + 1, size - 1);
  switch (data[0] % 5) {
    case 0:
      FuzzHello(in);
      break;
    case 1:
      FuzzMsgHeader(in);
      break;
    case 2:
      FuzzReply(in);
      break;
    case 3:
      FuzzAllGatherVDecode(in);
      break;
    case 4:
      FuzzAllGatherVRoundTrip(in);
      break;
  }
  return 0;
}
