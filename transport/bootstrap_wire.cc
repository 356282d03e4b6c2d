#include "transport/bootstrap_wire.h"

#include <fmt/format.h>

namespace epx::bootstrap_wire {
namespace {

Status Corrupt(std::string_view what) {
  return Status(Code::kInternal, std::string(what));
}

template <typename T>
StatusOr<T> Frame(std::span<const uint8_t> bytes, const char* name) {
  if (bytes.size() != sizeof(T))
    return Corrupt(fmt::format("{} of {} bytes (expected {})", name, bytes.size(), sizeof(T)));
  T f;
  std::memcpy(&f, bytes.data(), sizeof(T));
  return f;
}

}  // namespace

const char* KindName(uint32_t k) {
  switch (k) {
    case 0:
      return "connect";
    case 1:
      return "allgather";
    case 2:
      return "allgatherv";
    case 3:
      return "broadcast";
    case 4:
      return "barrier";
  }
  return "?";
}

uint64_t JobHash(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

StatusOr<Hello> DecodeHello(std::span<const uint8_t> bytes) {
  auto h = Frame<Hello>(bytes, "hello");
  if (!h.ok() || h->magic != kMagic) return Status(Code::kInvalidArgument, "not an epx bootstrap peer");
  return h;
}

Status CheckHello(const Hello& h, uint64_t job_hash, int world, std::span<const int> fds) {
  auto bad = [](std::string why) { return Status(Code::kInvalidArgument, std::move(why)); };
  if (h.magic != kMagic) return bad("not an epx bootstrap peer");
  if (h.version != kVersion)
    return bad(fmt::format("protocol version {} (root has {})", h.version, kVersion));
  if (h.job_hash != job_hash)
    return bad("a different job id (EPX_JOB_ID differs: stale process of another run?)");
  if (h.world != world) return bad(fmt::format("world size {} (root has {})", h.world, world));
  // The peer's rank indexes the root's table: checked against the table itself, not only `world`.
  if (h.rank <= 0 || h.rank >= world || static_cast<size_t>(h.rank) >= fds.size())
    return bad(fmt::format("rank {} out of range", h.rank));
  if (fds[static_cast<size_t>(h.rank)] >= 0) return bad(fmt::format("rank {} joined twice", h.rank));
  return Status::Ok();
}

GenerationVerdict JudgeGeneration(uint64_t asked, uint64_t forming) {
  if (asked == 0 || forming == 0 || asked == forming) return GenerationVerdict::kJoin;
  return asked < forming ? GenerationVerdict::kStale : GenerationVerdict::kNewer;
}

StatusOr<MsgHeader> DecodeMsgHeader(std::span<const uint8_t> bytes) {
  EPX_ASSIGN_OR_RETURN(MsgHeader h, Frame<MsgHeader>(bytes, "message header"));
  if (h.magic != kMagic) return Corrupt(fmt::format("bad magic 0x{:x}", h.magic));
  if (h.phase_len > kMaxPhase) return Corrupt(fmt::format("phase name of {} bytes", h.phase_len));
  if (h.blob_len > kMaxBlob) return Corrupt(fmt::format("blob of {} bytes", h.blob_len));
  return h;
}

bool SameCollective(const MsgHeader& h, std::string_view got_phase, Kind kind, uint64_t seq, int root,
                    std::string_view phase) {
  return h.kind == static_cast<uint32_t>(kind) && h.seq == seq && h.root == root && got_phase == phase;
}

StatusOr<ReplyHeader> DecodeReplyHeader(std::span<const uint8_t> bytes, Kind kind, int world,
                                        size_t mine_size) {
  EPX_ASSIGN_OR_RETURN(ReplyHeader h, Frame<ReplyHeader>(bytes, "reply header"));
  if (h.magic != kMagic) return Corrupt(fmt::format("bad magic 0x{:x}", h.magic));
  if (h.code != 0) {
    if (h.code > static_cast<uint32_t>(Code::kInternal))
      return Corrupt(fmt::format("unknown error code {}", h.code));
    if (h.len > kMaxErrorText) return Corrupt(fmt::format("error text of {} bytes", h.len));
    return h;
  }
  // Products below are < 2^31 * (8 + 2^26): no overflow. A blob above kMaxBlob would have been refused.
  const uint64_t w = world > 0 ? static_cast<uint64_t>(world) : 0;
  bool ok = false;
  switch (kind) {
    case Kind::kConnect:
      ok = h.len == kWelcomeBytes;
      break;
    case Kind::kBarrier:
      ok = h.len == 0;
      break;
    case Kind::kAllGather:
      ok = mine_size <= kMaxBlob && h.len == w * mine_size;
      break;
    case Kind::kAllGatherV:
      ok = h.len >= 8 * w && h.len <= w * (8 + kMaxBlob);
      break;
    case Kind::kBroadcast:
      ok = h.len <= kMaxBlob;
      break;
  }
  if (!ok)
    return Corrupt(fmt::format("{} result of {} bytes for {} ranks ({} bytes from this rank)",
                               KindName(static_cast<uint32_t>(kind)), h.len, world, mine_size));
  return h;
}

Status ReplyError(const ReplyHeader& h, std::string_view text) {
  return Status(static_cast<Code>(h.code), fmt::format("{} (reported by rank 0)", text));
}

std::vector<uint8_t> EncodeAllGatherV(std::span<const std::vector<uint8_t>> blobs) {
  std::vector<uint8_t> out;
  for (const auto& b : blobs) {
    const uint64_t n = b.size();
    out.insert(out.end(), reinterpret_cast<const uint8_t*>(&n), reinterpret_cast<const uint8_t*>(&n) + 8);
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

StatusOr<std::vector<std::vector<uint8_t>>> DecodeAllGatherV(std::span<const uint8_t> raw, int world) {
  // At least a length per rank, checked before `world` entries are allocated.
  if (world < 0 || raw.size() / 8 < static_cast<size_t>(world))
    return Corrupt(fmt::format("all-gather-v result of {} bytes for {} ranks", raw.size(), world));
  std::vector<std::vector<uint8_t>> out(static_cast<size_t>(world));
  size_t off = 0;
  for (size_t r = 0; r < out.size(); ++r) {
    uint64_t n = 0;
    if (raw.size() - off < 8) return Corrupt(fmt::format("all-gather-v result ends in rank {}'s length", r));
    std::memcpy(&n, raw.data() + off, 8);
    off += 8;
    // Compared against what is left, never as off + n: a length near 2^64 would wrap the sum.
    if (n > raw.size() - off)
      return Corrupt(
          fmt::format("all-gather-v: rank {}'s {} bytes run past the {}-byte result", r, n, raw.size()));
    out[r].assign(raw.begin() + static_cast<ptrdiff_t>(off), raw.begin() + static_cast<ptrdiff_t>(off + n));
    off += n;
  }
  if (off != raw.size())
    return Corrupt(fmt::format("all-gather-v result has {} bytes after the last rank", raw.size() - off));
  return out;
}

}  // namespace epx::bootstrap_wire
