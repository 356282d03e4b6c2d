// Fuzz target: the decoders of what low-latency peers write (kernels/ll_wire.h): dispatch message
// headers, dispatch counts and the combine row table. The first byte picks the decoder, then fixed
// fields (ByteReader: packed little-endian, see each case) and, for headers, the message bytes.
// Checked: nothing crashes or reads out of bounds; an accepted value is one the kernels may use (token
// index < T_max, a top-k slot whose id is the expected expert, a count <= T_max, a row inside the
// expert's R*T_max rows); a rejected one is kInternal, or kInvalidArgument only for a well-formed shape
// of another call; and decode(encode(x)) == x for headers, whatever stale ids the slot held before.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/ll_config.h"  // kLlMaxTopk, kLlMaxTokens
#include "kernels/ll_wire.h"
#include "tests/fuzz/fuzz_util.h"

namespace epx {
namespace {

using fuzz::ByteReader;

// [u8 T_max-1][u8 K_buf-1][u16 E-1][u32 max_hidden][u32 shape][i32 expert][u32 staged][u8 rank][u8 source]
// then the message.
void FuzzHeader(ByteReader& in) {
  LlHeaderExpect x;
  x.max_tokens = 1 + in.Take<uint8_t>();
  x.header_k = 1 + in.Take<uint8_t>() % kLlMaxTopk;
  x.num_experts = 1 + in.Take<uint16_t>() % 1024;
  x.max_hidden = 1 + static_cast<int>(in.Take<uint32_t>() % 0xffffff);
  x.shape = in.Take<uint32_t>();
  const int64_t expert = in.Take<int32_t>();
  const int32_t staged =
      static_cast<int32_t>(in.Take<uint32_t>() % (static_cast<uint32_t>(x.max_tokens) + 1)) - 1;
  x.rank = in.Take<uint8_t>();
  x.source = in.Take<uint8_t>();
  const auto m = in.Rest();
  // A copy of exactly the message: ASan then flags a read past what the decoder was given.
  const std::vector<uint8_t> msg(m.begin(), m.end());
  auto h = LlDecodeHeader(msg, x, expert, staged);
  if (!h.ok()) {
    const Status& st = h.status();
    FUZZ_CHECK(!st.message().empty(), "empty error");
    if (st.code() == Code::kInvalidArgument) {
      // Only a shape another call could have: mode 0..3, H in 1..max_hidden, not this call's.
      uint32_t shape;
      FUZZ_CHECK(msg.size() >= 8, "{}", st.ToString());
      std::memcpy(&shape, msg.data() + 4, 4);
      FUZZ_CHECK(shape != x.shape && LlShapeMode(shape) <= kLlMaxMode && LlShapeHidden(shape) >= 1 &&
                     LlShapeHidden(shape) <= static_cast<uint32_t>(x.max_hidden),
                 "shape 0x{:x}: {}", shape, st.ToString());
    } else {
      FUZZ_CHECK(st.code() == Code::kInternal, "{}", st.ToString());
      FUZZ_CHECK(st.message().find(fmt::format("source rank {}", x.source)) != std::string::npos, "{}",
                 st.ToString());
    }
    return;
  }
  FUZZ_CHECK(msg.size() >= LlHeaderIdsBytes(x.header_k), "{} bytes accepted", msg.size());
  LlWireHeader w;
  std::memcpy(&w, msg.data(), sizeof(w));
  FUZZ_CHECK(w.shape == x.shape, "shape 0x{:x} accepted for 0x{:x}", w.shape, x.shape);
  FUZZ_CHECK(h->token == w.token && h->token >= 0 && h->token < x.max_tokens, "token {}", h->token);
  FUZZ_CHECK(staged < 0 || h->token == staged, "token {} for staged {}", h->token, staged);
  FUZZ_CHECK(h->slot >= 0 && h->slot < x.header_k && LlHeaderId(msg.data(), h->slot) == expert, "slot {}",
             h->slot);
  for (int k = 0; k < x.header_k; ++k) {
    const int32_t id = LlHeaderId(msg.data(), k);
    FUZZ_CHECK(id >= -1 && id < x.num_experts, "id {} in slot {} accepted", id, k);
    if (k < h->slot) FUZZ_CHECK(id != expert, "slot {} but {} matches first", h->slot, k);
  }
}

// [u8 K_buf-1][u8 K][u16 E-1][u32 hidden][u8 mode][u32 token] then K x i16 ids (folded into [-1, E),
// duplicates dropped) and the stale bytes the slot held before.
void FuzzRoundTrip(ByteReader& in) {
  const int header_k = 1 + in.Take<uint8_t>() % kLlMaxTopk;
  const int k_call = 1 + in.Take<uint8_t>() % header_k;
  const int E = 1 + in.Take<uint16_t>() % 1024;
  const uint32_t hidden = 1 + in.Take<uint32_t>() % 0xffffff;
  const uint32_t shape = hidden | (in.Take<uint8_t>() % (kLlMaxMode + 1)) << 24;
  const int T = 1 + kLlMaxTokens;  // any token of any buffer
  const int32_t token = static_cast<int32_t>(in.Take<uint32_t>() % static_cast<uint32_t>(T));
  std::vector<int64_t> ids;
  for (int k = 0; k < k_call; ++k) {
    int64_t id = static_cast<int64_t>(static_cast<uint16_t>(in.Take<int16_t>()) % (E + 1)) - 1;
    if (std::find(ids.begin(), ids.end(), id) != ids.end()) id = -1;  // the API rejects duplicates
    ids.push_back(id);
  }
  std::vector<uint8_t> m(LlHeaderIdsBytes(header_k));
  const auto stale = in.Rest();
  std::memcpy(m.data(), stale.data(), std::min(stale.size(), m.size()));
  LlEncodeHeader(m.data(), token, shape, ids, header_k);
  for (int k = k_call; k < header_k; ++k) FUZZ_CHECK(LlHeaderId(m.data(), k) == -1, "stale id in slot {}", k);
  const LlHeaderExpect x{.rank = 0,
                         .source = 1,
                         .max_tokens = T,
                         .max_hidden = static_cast<int>(hidden),
                         .header_k = header_k,
                         .num_experts = E,
                         .shape = shape};
  for (int k = 0; k < k_call; ++k) {
    if (ids[static_cast<size_t>(k)] < 0) continue;
    auto h = LlDecodeHeader(m, x, ids[static_cast<size_t>(k)], token);
    FUZZ_CHECK(h.ok() && h->token == token && h->slot == k, "id {} in slot {}: {}",
               ids[static_cast<size_t>(k)], k,
               h.ok() ? fmt::format("slot {}", h->slot) : h.status().ToString());
  }
}

// [u64 value][u64 prev][u32 T_max]
void FuzzCount(ByteReader& in) {
  const uint64_t value = in.Take<uint64_t>(), prev = in.Take<uint64_t>();
  const int T = static_cast<int>(in.Take<uint32_t>() % (kLlMaxTokens + 1));
  auto c = LlDecodeCount(value, prev, T, 0, 1, 2);
  const bool valid = value > prev && value - prev - 1 <= static_cast<uint64_t>(T);
  FUZZ_CHECK(c.ok() == valid, "value {} prev {} T_max {}: {}", value, prev, T,
             c.ok() ? "accepted" : c.status().ToString());
  if (c.ok())
    FUZZ_CHECK(static_cast<uint64_t>(*c) == value - prev - 1, "count {}", *c);
  else
    FUZZ_CHECK(c.status().code() == Code::kInternal, "{}", c.status().ToString());
}

// [i32 first][i32 slot][u32 rows-1]
void FuzzCombineRow(ByteReader& in) {
  const int32_t first = in.Take<int32_t>(), slot = in.Take<int32_t>();
  const int64_t rows = 1 + static_cast<int64_t>(in.Take<uint32_t>() % (1u << 31));
  auto r = LlDecodeCombineRow(first, slot, rows, 0, 1, 2);
  if (!r.ok()) {
    FUZZ_CHECK(r.status().code() == Code::kInternal, "{}", r.status().ToString());
    FUZZ_CHECK(first < 0 || slot < 0 || static_cast<int64_t>(first) + slot >= rows, "{} + {} < {} rejected",
               first, slot, rows);
    return;
  }
  FUZZ_CHECK(*r >= 0 && *r < rows && *r == static_cast<int64_t>(first) + slot, "row {} of {}", *r, rows);
}

}  // namespace
}  // namespace epx

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return epx::fuzz::RunOneOf(data, size,
                             {epx::FuzzHeader, epx::FuzzRoundTrip, epx::FuzzCount, epx::FuzzCombineRow});
}
