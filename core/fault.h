// core/fault.h: fault injection for the failure tests (EPX_FAULT, ctest label `fault`).
//
//   EPX_FAULT=rank=1,point=normal.dispatch.forward,after=3
//
// makes rank 1 kill itself with SIGKILL (kill(getpid(), SIGKILL): the same as a `kill -9` from outside
// at that moment, so nothing is flushed or unwound) the 3rd time (after=N, default 1; counted over all
// threads of the process) it reaches the named point. Empty (the default) = off. The value is parsed and
// validated with the tunables (a bad one is a kInvalidArgument naming EPX_FAULT) and read when a Context
// is created (ArmFaultInjection); ranks other than the named one never arm anything. Nor does a restarted
// process of the named rank (EPX_RESTART_COUNT > 0, set by `epx-run --respawn`): the fault is the death
// of the rank's first incarnation, so a re-admission test kills the rank once, not every restart of it.
//
// Points (EPX_FAULT_POINT in the kernels; each names a role in a phase):
//   normal.layout            count exchange of a normal dispatch (normal_notify.cc), before any row is sent
//   normal.dispatch.send     a token was pushed into a node or RDMA ring (sender)
//   normal.dispatch.forward  a token from another node was forwarded into the node rings (forwarder)
//   normal.dispatch.recv     received tokens were placed in the output (receiver)
//   normal.combine.send      an expert-output row was pushed back towards its source (return)
//   normal.combine.forward   a node partial sum was pushed to its source node (forwarder)
//   normal.combine.reduce    one of this rank's tokens was reduced (receiver)
//   ll.dispatch.send         low-latency dispatch: tokens staged, before any count is posted
//   ll.dispatch.recv         low-latency dispatch receive phase, before it waits for counts
//   ll.combine.send          low-latency combine send phase, before any row or done flag is posted
//   ll.combine.recv          low-latency combine receive phase, before it waits for the done flags
//
// Hot path: EPX_FAULT_POINT is one relaxed load of a global int and a compare that is never taken in
// production (-1 never equals a point), i.e. one predictable branch and no call.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"

namespace epx {

enum class FaultPoint : int {
  kNormalLayout = 0,
  kNormalDispatchSend,
  kNormalDispatchForward,
  kNormalDispatchRecv,
  kNormalCombineSend,
  kNormalCombineForward,
  kNormalCombineReduce,
  kLlDispatchSend,
  kLlDispatchRecv,
  kLlCombineSend,
  kLlCombineRecv,
  kCount,
};

// "normal.dispatch.send", ...; "?" for kCount.
const char* FaultPointName(FaultPoint p);
// Every point's name, in enum order.
std::span<const char* const> FaultPointNames();

struct FaultSpec {
  int rank = -1;  // -1: off
  FaultPoint point = FaultPoint::kCount;
  uint64_t after = 1;
  bool enabled() const { return rank >= 0; }
};

// "" (or only blanks) = off; else "rank=R,point=P[,after=N]" in any order, R >= 0, N >= 1. The error
// says what is wrong and lists the points (callers prefix the variable name).
StatusOr<FaultSpec> ParseFaultSpec(std::string_view text);

// Reads EPX_FAULT (validated through the tunables table) and arms it if it names `rank` and this process
// is the rank's first incarnation (restart_count == 0, Placement::restart_count); a rank outside
// 0..world_size-1 is an error. Call at setup, before any thread that reaches a point exists
// (Context::Create does): the worker threads are created later, which orders the store before their loads.
Status ArmFaultInjection(int rank, int world_size, int restart_count = 0);

namespace fault_internal {
extern std::atomic<int> g_armed;  // the armed FaultPoint, or -1
void Hit(FaultPoint p);           // counts the hit; at the after-th one, SIGKILLs this process
}  // namespace fault_internal

}  // namespace epx

// One-line hook: EPX_FAULT_POINT(kNormalDispatchSend);
#define EPX_FAULT_POINT(point)                                            \
  do {                                                                    \
    if (::epx::fault_internal::g_armed.load(std::memory_order_relaxed) == \
        static_cast<int>(::epx::FaultPoint::point)) [[unlikely]]          \
      ::epx::fault_internal::Hit(::epx::FaultPoint::point);               \
  } while (0)
