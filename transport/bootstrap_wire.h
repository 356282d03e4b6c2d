// transport/bootstrap_wire.h: the bytes of the bootstrap protocol (transport/bootstrap.h), apart from
// the sockets, so that every decoder of what a peer sent is a pure function (and a fuzz target:
// tests/fuzz/bootstrap_wire_fuzz.cc).
//
// Frames are fixed-layout structs in host byte order (all ranks of a job run one build on one ISA):
//   rank -> root   Hello                                    once, after connect
//   root -> rank   ReplyHeader + u64 generation | error text  the welcome, or a rejection
//   rank -> root   MsgHeader + phase + blob                 each collective
//   root -> rank   ReplyHeader + result | error text        each collective
// The all-gather-v result is, per rank in order, a u64 length and that many bytes.
//
// Decoders never trust a length or an enum from the wire: a frame that is short, has the wrong magic,
// an unknown error code or a length the collective cannot produce is kInternal ("corrupt"), and the
// bound on each length is checked before anything is allocated for it. Errors are returned, not
// logged: the socket code adds the phase and peer and logs once.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace epx::bootstrap_wire {

constexpr uint32_t kMagic = 0x42585045;  // "EPXB"
constexpr uint32_t kVersion = 2;         // 2: generations (Hello::generation, the welcome carries one)
constexpr size_t kMaxPhase = 64;
constexpr uint64_t kMaxBlob = 64ull << 20;      // setup records only; guards against garbage lengths
constexpr uint64_t kMaxErrorText = 1ull << 20;  // error replies carry a message, never a payload

// On the wire as MsgHeader::kind. kConnect is the welcome round after the hello (never in a MsgHeader).
enum class Kind : uint32_t { kConnect = 0, kAllGather = 1, kAllGatherV = 2, kBroadcast = 3, kBarrier = 4 };
const char* KindName(uint32_t kind);  // "allgather", ...; "?" for a value no build sends

struct Hello {
  uint32_t magic, version;
  int32_t rank, world;
  uint64_t job_hash;
  // The generation this process asks to join (transport/bootstrap.h "Generations"): the one after the
  // last it joined as this rank of this job, or 0 when it never joined one (a fresh process: any).
  uint64_t generation;
};
struct MsgHeader {
  uint32_t magic, kind;
  uint64_t seq;
  int32_t root;
  uint32_t phase_len;
  uint64_t blob_len;
};
struct ReplyHeader {
  uint32_t magic, code;  // code: 0 = ok, else the epx::Code of the error whose text follows
  uint64_t len;
};
static_assert(sizeof(Hello) == 32 && sizeof(MsgHeader) == 32 && sizeof(ReplyHeader) == 16);
constexpr uint64_t kWelcomeBytes = sizeof(uint64_t);  // an OK connect reply: the generation formed

// FNV-1a of the job id: what a hello carries instead of the id itself.
uint64_t JobHash(std::string_view job_id);

template <typename T>
std::vector<uint8_t> Encode(const T& frame) {
  std::vector<uint8_t> out(sizeof(T));
  std::memcpy(out.data(), &frame, sizeof(T));
  return out;
}

// A hello of the right size and magic (anything else is "not an epx bootstrap peer").
StatusOr<Hello> DecodeHello(std::span<const uint8_t> bytes);
// Root side: whether this hello may join a job `job_hash` of `world` ranks in which `fds[r] >= 0` marks
// the ranks already joined (fds.size() == world). The error (kInvalidArgument) says why not.
Status CheckHello(const Hello& h, uint64_t job_hash, int world, std::span<const int> fds);

// Root side: what to do with a hello that asks for generation `asked` (0: fresh) while the root forms
// generation `forming` (0: not known yet: the root is fresh and every rank so far was fresh too).
enum class GenerationVerdict : uint8_t {
  kJoin,   // fresh, not known yet, or the same generation
  kStale,  // asks for an older generation than the one forming: refuse this connection
  kNewer,  // asks for a newer one: what forms so far is stale (ranks that asked for less, or the root)
};
GenerationVerdict JudgeGeneration(uint64_t asked, uint64_t forming);

// Root side: a collective's header with its phase and blob lengths within bounds.
StatusOr<MsgHeader> DecodeMsgHeader(std::span<const uint8_t> bytes);
// Whether a decoded header (and the phase bytes that followed it) is the collective the root is in.
bool SameCollective(const MsgHeader& h, std::string_view got_phase, Kind kind, uint64_t seq, int root,
                    std::string_view phase);

// Rank side: the root's reply to collective `kind` of `world` ranks to which this rank gave `mine_size`
// bytes. An OK reply must have the length that collective produces (all-gather: world * mine_size
// exactly; all-gather-v: at least 8 per rank; broadcast: at most kMaxBlob; barrier: 0; connect: the
// welcome's kWelcomeBytes); an
// error reply a known code and at most kMaxErrorText bytes of text.
StatusOr<ReplyHeader> DecodeReplyHeader(std::span<const uint8_t> bytes, Kind kind, int world,
                                        size_t mine_size);
// The Status an error reply stands for (`h.code` != 0, validated by DecodeReplyHeader).
Status ReplyError(const ReplyHeader& h, std::string_view text);

// All-gather-v result: per rank a u64 length and the bytes. Decode requires exactly `world` entries
// that cover all of `raw`.
std::vector<uint8_t> EncodeAllGatherV(std::span<const std::vector<uint8_t>> blobs);
StatusOr<std::vector<std::vector<uint8_t>>> DecodeAllGatherV(std::span<const uint8_t> raw, int world);

}  // namespace epx::bootstrap_wire
