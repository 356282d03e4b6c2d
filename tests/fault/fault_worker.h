// tests/fault/fault_worker.h: what the files of fault_worker share (fault_worker.cc: the normal and
// --mask modes and main; readmit_worker.cc: --readmit).
#pragma once

#include <cstdint>
#include <memory>

#include "core/status.h"
#include "kernels/normal.h"
#include "kernels/problem_gen.h"
#include "transport/context.h"

namespace epx {

// The sizes of every mode's problems: small, so that a round takes milliseconds and what a cell times is
// the failure, not the work.
inline constexpr int kHidden = 256, kTopk = 4, kExpertsPerRank = 8, kTokens = 40;

// CLOCK_MONOTONIC in ns: the same clock in every process of the host, so the tests compare these times
// with the victim's "t_mono_ns=" line of core/fault.cc.
long long MonoNs();

// "fault-worker: rank R FAILED t_mono_ns=T in <call> (round N): <status>" on stderr, then _exit(3).
[[noreturn]] void Fail(int rank, const char* call, int round, const Status& s);

// A round's ProblemSpec for the ranks of ctx's job: the sizes above and `seed`. Token counts (and p_none)
// are the caller's: each mode varies them from round to round its own way.
ProblemSpec RoundSpec(const Context& ctx, uint64_t seed);

// The NormalBuffer of the normal rounds, Fail()ing on an error: NormalConfig from the environment, with two
// channels unless EPX_NORMAL_CHANNELS says otherwise, so that the abort path between channels is exercised.
std::unique_ptr<NormalBuffer> CreateNormalBuffer(Context& ctx);

// --mask on `ctx` (fault_worker.cc): low-latency rounds with mask_on_failure, every result checked against
// the reference with or without the EPX_FAULT victim. With ignore_fault, EPX_FAULT is not looked at: `rounds`
// checked rounds against the full reference, nobody masked, ending with a bootstrap barrier. With
// normal_phase, the survivors then go on in normal mode without the masked ranks (fault_worker.cc
// RunNormalPhase). Returns the exit code (0: all checks passed); the victim never returns.
int RunMasked(Context& ctx, int rounds, int channels, bool ignore_fault, bool normal_phase = false);

// --readmit (readmit_worker.cc): the whole run, Contexts included. Returns the exit code.
int RunReadmit(int rounds, int channels);

}  // namespace epx
