// Low-latency dispatch data path (protocol: kernels/ll.h "Dispatch"): stage each token once, one
// message per (token, expert), one count signal per (expert, source); the receive phase places the
// blocks in source order, so the output order is the reference's whatever the timing.
//
// Hot-path rules: no allocation, lock or syscall in the per-token loops (ord/wait_ns are sized at
// setup; output vectors keep their capacity across calls); waits back off and have deadlines.
#include <cstring>

#include "kernels/fp8.h"
#include "kernels/ll_state.h"
#include "kernels/ll_wire.h"
#include "kernels/normal_config.h"  // AlignUp
#include "kernels/stream_copy.h"

namespace epx {
namespace {

// Payload offset and bytes of one message for this call (the layout's header size is for the buffer's K).
size_t PayloadBytes(int hidden, const LlDispatchOptions& o) {
  return o.use_fp8 ? static_cast<size_t>(hidden) : 2 * static_cast<size_t>(hidden);
}
size_t ScaleOffset(const LlLayout& lay, int hidden) {
  return lay.header_bytes + AlignUp(static_cast<size_t>(hidden), 16);
}

}  // namespace

Status LlDispatchSend(LlState& st, const LlDispatchInput& in, int b, int32_t* send_slot) {
  const LlLayout& lay = st.lay;
  const LlDispatchOptions opt{in.use_fp8, in.use_fp8 ? in.fp8 : Fp8Options{}};
  const uint32_t shape = LlShapeWord(in.hidden, opt.use_fp8, opt.fp8);
  const size_t scale_bytes = LlScaleRowBytes(in.hidden, opt);
  const size_t msg_len = opt.use_fp8 ? ScaleOffset(lay, in.hidden) + scale_bytes
                                     : lay.header_bytes + PayloadBytes(in.hidden, opt);
  const int N = in.num_tokens, K = in.topk, C = st.C;
  // Stage: header + payload of token t at send[b][t]; tokens split in contiguous ranges per channel.
  auto stage = [&](int c) -> Status {
    const int per = (N + C - 1) / C, t0 = std::min(N, per * c), t1 = std::min(N, per * (c + 1));
    for (int t = t0; t < t1; ++t) {
      uint8_t* m = st.heap() + st.Send(b) + static_cast<size_t>(t) * lay.dispatch_msg;
      LlEncodeHeader(m, t, shape, in.topk_idx.subspan(static_cast<size_t>(t) * K, K), st.cfg.topk);
      const bf16* row = in.x.data() + static_cast<size_t>(t) * in.hidden;
      // x is the caller's and usually cold here (the last combine's traffic evicted it): the cast
      // prefetches the next row while it computes this one's codes.
      if (opt.use_fp8)
        CastRowToFp8(row, in.hidden, opt.fp8, m + lay.header_bytes, m + ScaleOffset(lay, in.hidden),
                     t + 1 < t1 ? row + in.hidden : nullptr);
      else
        std::memcpy(m + lay.header_bytes, row, PayloadBytes(in.hidden, opt));
    }
    return Status::Ok();
  };
  EPX_RETURN_IF_ERROR(st.RunChannels(stage));
  // Post: channel c owns experts e % C == c, so each (channel, peer) QP carries an expert's data and
  // then its count, and RC ordering (or the release add for node-local peers) puts the data first.
  auto post = [&](int c) -> Status {
    EPX_FAULT_POINT(kLlDispatchSend);
    std::vector<int>& ord = st.ord[c];
    for (int e = c; e < st.cfg.num_experts; e += C) ord[e] = 0;
    for (int t = 0; t < N; ++t)
      for (int k = 0; k < K; ++k) {
        const int64_t e = in.topk_idx[static_cast<size_t>(t) * K + k];
        if (e < 0 || e % C != c) continue;
        const int dest = st.Owner(e), el = static_cast<int>(e % st.El);
        if (st.Masked(dest)) continue;  // send_slot stays -1: combine skips (t, k) (kernels/ll.h "Masking")
        const int slot = ord[e]++;  // rank of t among this source's tokens for e: no atomics decide it
        send_slot[static_cast<size_t>(t) * K + k] = slot;  // combine finds the row of (t, k) with it
        if (st.Local(dest)) continue;  // node-local experts pull from send[b] (LlDispatchRecv)
        EPX_RETURN_IF_ERROR(st.Put(c, dest, st.Send(b) + static_cast<size_t>(t) * lay.dispatch_msg,
                                   st.DispatchSlot(b, el, st.rank, slot), msg_len));
      }
    // Every expert hears its count, 0 included (+1: the counter must move every call).
    for (int e = c; e < st.cfg.num_experts; e += C)
      if (!st.Masked(st.Owner(e)))
        EPX_RETURN_IF_ERROR(
            st.Add(c, st.Owner(e), st.Cnt(b, e % st.El, st.rank), static_cast<uint64_t>(ord[e]) + 1));
    if (st.rdma) EPX_RETURN_IF_ERROR(st.rdma->Flush(c));
    return Status::Ok();
  };
  return st.RunChannels(post);
}

Status LlDispatchRecv(LlState& st, int b) {
  EPX_FAULT_POINT(kLlDispatchRecv);
  LlPending& p = st.pending[b];
  LlDispatchOutput& out = *p.dout;
  LlHandle& h = *p.handle;
  const LlLayout& lay = st.lay;
  const int El = st.El, R = st.R, rows = static_cast<int>(st.cfg.rows_per_expert());
  const int hidden = static_cast<int>(p.shape & 0xffffff);
  const size_t row_bytes = PayloadBytes(hidden, p.dopt), scale_bytes = LlScaleRowBytes(hidden, p.dopt);
  const size_t total = static_cast<size_t>(El) * rows;
  out.local_experts = El;
  out.rows = rows;
  out.hidden = hidden;
  out.row_bytes = row_bytes;
  out.scale_row_bytes = scale_bytes;
  out.x.resize(total * row_bytes);  // keeps contents: rows past count are unspecified (kernels/ll.h)
  out.scales.resize(total * scale_bytes);
  out.count.assign(El, 0);
  out.src_info.assign(total, -1);
  out.layout_range.assign(static_cast<size_t>(El) * R, 0);
  h.src_slot.assign(total, 0);
  // Channel c receives local experts e % C == c, source by source in rank order: it waits for the
  // counts of its experts from source s, then places s's rows after those of sources < s (begin).
  // Remote sources wrote full messages into recv slots; node-local sources staged every token once in
  // their send[b], and this rank pulls the rows straight from there (one copy instead of two). Their
  // staging stays valid until this rank releases b (kernels/ll.h "Rotation"): a source reuses send[b]
  // only after every peer released it.
  auto recv = [&](int c) -> Status {
    int* begin = st.begin[c].data();
    int* fill = st.fill[c].data();
    for (int e = c; e < El; e += st.C) begin[e] = 0;
    for (int s = 0; s < R; ++s) {
      if (st.Masked(s)) {  // nothing from a masked source: empty blocks (kernels/ll.h "Masking")
        for (int e = c; e < El; e += st.C) out.layout_range[static_cast<size_t>(e) * R + s] = LlPackRange(begin[e], 0);
        continue;
      }
      int remaining = 0;
      for (int e = c; e < El; e += st.C) {
        uint64_t& prev = st.prev_cnt[(static_cast<size_t>(b) * El + e) * R + s];
        StatusOr<uint64_t> got = st.WaitGE(s, st.Cnt(b, e, s), prev + 1, &st.wait_ns[c][s], [&] {
          return fmt::format("dispatch count of local expert {} from source {} (buffer {}, call {})", e, s, b,
                             p.call);
        });
        if (!got.ok()) {
          // Masked now (here, or by another channel: mask_on_failure): the caller runs the phase again
          // without s. Otherwise the error.
          if (!st.Masked(s)) EPX_RETURN_IF_ERROR(st.MaskOnFailure(s, got.status()));
          return Status(Code::kFailedPrecondition, "mask changed");  // not logged: replaced by the re-run
        }
        const uint64_t v = *got;
        const StatusOr<int> cnt = LlDecodeCount(v, prev, st.cfg.max_tokens, st.rank, s, e);
        if (!cnt.ok()) [[unlikely]]
          return internal::MakeError(cnt.status().code(), __FILE__, __LINE__, cnt.status().message());
        prev = v;
        out.layout_range[static_cast<size_t>(e) * R + s] = LlPackRange(begin[e], cnt.value());
        fill[e] = 0;
        remaining += cnt.value();
      }
      // Places message m (header + payload) as row `fill[e]` of source s in local expert e. The header
      // was written by s: it is checked before its token index and slot are used (kernels/ll_wire.h).
      const LlHeaderExpect expect{st.rank,     s,           st.cfg.max_tokens, st.cfg.hidden,
                                  st.cfg.topk, st.cfg.num_experts, p.shape};
      auto place = [&](const uint8_t* m, int e, int32_t staged) -> Status {
        StatusOr<LlHeader> hd =
            LlDecodeHeader({m, lay.header_bytes}, expect, static_cast<int64_t>(st.rank) * El + e, staged);
        if (!hd.ok()) [[unlikely]]
          return internal::MakeError(hd.status().code(), __FILE__, __LINE__, hd.status().message());
        // A node-local source's staged ids could select e more often than its count said: never write
        // past the announced block (it would land in the next expert's rows, or past the output).
        if (fill[e] >= LlRangeCount(out.layout_range[static_cast<size_t>(e) * R + s])) [[unlikely]]
          return EPX_ERROR(kInternal,
                           "low-latency dispatch: rank {}: source rank {} staged more rows for local expert "
                           "{} than the {} it announced (token {})",
                           st.rank, s, e, LlRangeCount(out.layout_range[static_cast<size_t>(e) * R + s]),
                           hd->token);
        const size_t row = static_cast<size_t>(e) * rows + begin[e] + fill[e]++;
        // The output (local experts x rows x H) is far larger than the cache and read only after
        // this call: streaming stores (fenced at the end of the channel's phase).
        StreamCopy(out.x.data() + row * row_bytes, m + lay.header_bytes, row_bytes);
        if (scale_bytes) std::memcpy(out.scales.data() + row * scale_bytes, m + ScaleOffset(lay, hidden), scale_bytes);
        out.src_info[row] = hd->token;
        h.src_slot[row] = static_cast<uint8_t>(hd->slot);
        return Status::Ok();
      };
      if (st.Local(s)) {
        // Scan s's staged tokens in order (slot order = token order) until every announced row is found.
        const uint8_t* staged = st.ctx.node().Address(s, st.Send(b));
        for (int t = 0; remaining > 0; ++t) {
          if (t >= st.cfg.max_tokens)
            return EPX_ERROR(kInternal, "low-latency dispatch: source {} announced {} more rows than it staged", s,
                             remaining);
          const uint8_t* m = staged + static_cast<size_t>(t) * lay.dispatch_msg;
          // A peer's staged tokens were just written by another core: fetch the next one while this one's
          // rows stream out (it is placed once per local expert it selects, so it is read from the peer's
          // cache once). Our own staging is still in this core's cache: no gain measured there.
          if (s != st.rank && t + 1 < st.cfg.max_tokens)
            for (size_t l = 0; l < lay.dispatch_msg; l += 64)
              __builtin_prefetch(m + lay.dispatch_msg + l, 0, 3);
          // All K_buf ids: ids past the source's K are -1 (LlEncodeHeader), whatever K this rank used.
          for (int k = 0; k < st.cfg.topk; ++k) {
            const int64_t g = LlHeaderId(m, k);
            if (g < 0 || g / El != st.rank || (g % El) % st.C != c) continue;
            EPX_RETURN_IF_ERROR(place(m, static_cast<int>(g % El), t));
            --remaining;
          }
        }
      } else {
        for (int e = c; e < El; e += st.C) {
          const int cnt = LlRangeCount(out.layout_range[static_cast<size_t>(e) * R + s]);
          for (int i = 0; i < cnt; ++i)
            EPX_RETURN_IF_ERROR(place(st.heap() + st.DispatchSlot(b, e, s, i), e, /*staged=*/-1));
        }
      }
      for (int e = c; e < El; e += st.C) {
        if (fill[e] != LlRangeCount(out.layout_range[static_cast<size_t>(e) * R + s]))
          return EPX_ERROR(kInternal, "low-latency dispatch: local expert {} found {} rows of source {}, announced {}",
                           e, fill[e], s, LlRangeCount(out.layout_range[static_cast<size_t>(e) * R + s]));
        begin[e] += fill[e];
      }
    }
    for (int e = c; e < El; e += st.C) out.count[e] = begin[e];
    StreamFence();  // the rows before RunChannels reports this channel done (kernels/stream_copy.h)
    return Status::Ok();
  };
  // A source masked midway (mask_on_failure) may have rows in some channels' blocks and not in others:
  // run the phase again from the counters as they were, without it, until the mask holds still (each
  // round masks one more rank at most, so at most R rounds).
  uint64_t* prev_b = st.prev_cnt.data() + static_cast<size_t>(b) * El * R;
  std::copy(prev_b, prev_b + static_cast<size_t>(El) * R, st.prev_snapshot.begin());
  for (int round = 0;; ++round) {
    const uint64_t epoch = st.mask_epoch.load(std::memory_order_acquire);
    Status s = st.RunChannels(recv);
    if (st.mask_epoch.load(std::memory_order_acquire) == epoch || round > R) {
      EPX_RETURN_IF_ERROR(s);
      break;
    }
    std::copy(st.prev_snapshot.begin(), st.prev_snapshot.end(), prev_b);
    out.count.assign(El, 0);
    out.src_info.assign(total, -1);
    out.layout_range.assign(static_cast<size_t>(El) * R, 0);
  }
  for (int e = 0; e < El; ++e) st.recv_tokens[e] += out.count[e];
  h.count = out.count;
  h.layout_range = out.layout_range;
  h.src_info = out.src_info;
  return Status::Ok();
}

}  // namespace epx
