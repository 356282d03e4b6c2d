// tests/fault/readmit_worker.cc: fault_worker --readmit (issue 7, "a masked rank can be re-admitted after it
// restarts and reconnects"), the rank program of tests/fault/readmit_test.cc. Run under
// `epx-run --respawn 1` with EPX_FAULT=rank=V,point=ll.<...> naming the victim:
//   1. every rank's first process: a Context (generation 1) and --mask (fault_worker.cc RunMasked): V kills
//      itself at the point, every survivor masks it (LowLatencyConfig::mask_on_failure), checks every result
//      (the reference without V once it is gone) and runs 3 more rounds without it;
//   2. each survivor destroys its buffer and Context, and checks that nothing of them is left in the
//      process (file descriptors, heap mappings);
//   3. every rank calls Context::Create() again: the survivors, and V's restarted process
//   (EPX_RESTART_COUNT=1;
//      EPX_FAULT does not arm in a restarted process, core/fault.h). That is generation 2 of the job; it
//      returns once all ranks are back (transport/context.h "Re-admission");
//   4. all ranks run `--rounds` low-latency rounds (RunMasked without a victim) and `--rounds` normal rounds,
//      every result checked bitwise against the FULL reference (kernels/ll_reference.h, kernels/reference.h).
// Stdout lines, with CLOCK_MONOTONIC times that the test puts against the victim's fault line
// (core/fault.cc):
//   fault-worker: rank R ready (generation 1) pid P
//   fault-worker: rank R masked [V], ...                                      (step 1, RunMasked)
//   fault-worker: rank R destroyed generation 1 in D ms: fds F (F0 before it), heap mappings M
//   fault-worker: rank V restarted (restart K) pid P t_mono_ns=T              (V's restarted process)
//   fault-worker: rank R re-creating the Context t_mono_ns=T
//   fault-worker: rank R re-admitted: generation G up t_mono_ns=T; rank V is pid P (watched|not watched)
//   fault-worker: rank R done (N rounds, every result checked)                (step 4, low-latency)
//   fault-worker: rank R readmit passed: N low-latency and N normal rounds after re-admission equal the full
//     reference (generation G) t_mono_ns=T
// A failed re-creation (e.g. nobody restarted V: EPX_BOOTSTRAP_TIMEOUT) is the usual
// "fault-worker: rank R FAILED t_mono_ns=T in re-create Context (round -1): <status>" and exit 3; a wrong
// result "fault-worker: rank R CHECK FAILED ..." and exit 4.
#include <dirent.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "core/fault.h"
#include "kernels/normal.h"
#include "kernels/problem_gen.h"
#include "kernels/reference.h"
#include "tests/fault/fault_worker.h"
#include "tests/kernels/mr_check.h"
#include "transport/context.h"

namespace epx {
namespace {

// Open file descriptors of this process (the directory's own fd is counted every time alike).
int CountFds() {
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n;
}

// Mappings of heap memfds (transport/heap.cc names them "epx-heap-r<rank>"): this rank's and its host peers'.
int CountHeapMappings() {
  std::ifstream maps("/proc/self/maps");
  int n = 0;
  for (std::string line; std::getline(maps, line);)
    if (line.find("memfd:epx-heap-") != std::string::npos) ++n;
  return n;
}

// `rounds` normal dispatch + combine rounds, every output compared bitwise with kernels/reference.h: the
// expert outputs are the received rows themselves, combined with the received weights. Returns the number
// of failed checks.
int NormalRounds(Context& ctx, int rounds) {
  const int me = ctx.rank(), R = ctx.world_size();
  const std::unique_ptr<NormalBuffer> nb = CreateNormalBuffer(ctx);
  int failures = 0;
  for (int round = 0; round < rounds; ++round) {
    ProblemSpec spec = RoundSpec(ctx, 7000 + static_cast<uint64_t>(round));
    spec.p_none = 0.1;
    for (int r = 0; r < R; ++r) spec.num_tokens.push_back(kTokens - (3 * r + 2 * round) % 9);
    const GeneratedProblem g(spec, -1);  // every rank's rows: the combine reference reads them all
    const RefProblem& p = g.problem();
    auto route = ReferenceRouting(p);
    if (!route.ok()) Fail(me, "ReferenceRouting (a generator bug)", round, route.status());

    DispatchOutput out;
    NormalHandle h;
    if (Status s = nb->Dispatch(test::NormalInputOf(g, me), &out, &h); !s.ok())
      Fail(me, "normal dispatch", round, s);
    std::vector<RefDispatch> refs;
    for (int r = 0; r < R; ++r) refs.push_back(ReferenceDispatch(p, *route, r));
    std::string diff = test::DiffNormalDispatch(
        out, test::ExpectedNormalDispatch(refs[me], kHidden, p.dtype, kTopk, refs[me].num_rows, true));

    CombineInput cin;
    cin.hidden = kHidden;
    cin.y = {reinterpret_cast<const bf16*>(out.x.data()), static_cast<size_t>(out.num_recv_tokens) * kHidden};
    cin.topk = kTopk;
    cin.topk_weights = out.topk_weights;
    CombineOutput back;
    if (Status s = nb->Combine(h, cin, &back); !s.ok()) Fail(me, "normal combine", round, s);
    RefCombineInputs rin;
    rin.y_row = [&](int r, int i) {
      return reinterpret_cast<const bf16*>(refs[r].x.data()) + static_cast<size_t>(i) * kHidden;
    };
    rin.w_row = [&](int r, int i) { return &refs[r].topk_weights[static_cast<size_t>(i) * kTopk]; };
    const RefCombine cref = ReferenceCombine(p, *route, me, rin);
    diff += test::DiffBits("combine x", back.x, cref.x, kHidden);
    diff += test::DiffBits("combine topk_weights", back.topk_weights, cref.topk_weights, kTopk);
    if (!diff.empty()) {
      ++failures;
      std::printf("fault-worker: rank %d CHECK FAILED normal round %d after re-admission: %s\n", me, round,
                  diff.c_str());
    }
  }
  if (Status s = ctx.bootstrap().Barrier("fault-worker-normal-end"); !s.ok())
    Fail(me, "normal barrier", rounds, s);
  return failures;
}

}  // namespace

int RunReadmit(int rounds, int channels) {
  auto place = PlacementFromEnv();
  if (!place.ok()) {
    std::fprintf(stderr, "fault-worker: %s\n", place.status().ToString().c_str());
    return 2;
  }
  const int me = place->rank;
  auto fault = ParseFaultSpec(std::getenv("EPX_FAULT") ? std::getenv("EPX_FAULT") : "");
  if (!fault.ok() || !fault->enabled()) {
    std::fprintf(stderr, "fault-worker: --readmit needs EPX_FAULT naming the victim (rank=V,point=ll.*)\n");
    return 2;
  }
  const int victim = fault->rank;

  if (place->restart_count == 0) {
    const int fds_before = CountFds();
    auto ctx = Context::Create();
    if (!ctx.ok()) {
      std::fprintf(stderr, "fault-worker: context setup failed: %s\n", ctx.status().ToString().c_str());
      return 2;
    }
    std::printf("fault-worker: rank %d ready (generation %llu) pid %d\n", me,
                static_cast<unsigned long long>((*ctx)->generation()), static_cast<int>(::getpid()));
    // The victim dies in here; a survivor returns once it ran its rounds without it (its buffer is gone).
    if (int rc = RunMasked(**ctx, 0, channels, /*ignore_fault=*/false); rc != 0) return rc;
    const long long t0 = MonoNs();
    ctx->reset();  // a peer is dead: nothing in here may wait for it
    std::printf(
        "fault-worker: rank %d destroyed generation 1 in %.1f ms: fds %d (%d before it), heap mappings %d\n",
        me, (MonoNs() - t0) / 1e6, CountFds(), fds_before, CountHeapMappings());
  } else {
    std::printf("fault-worker: rank %d restarted (restart %d) pid %d t_mono_ns=%lld\n", me,
                place->restart_count, static_cast<int>(::getpid()), MonoNs());
  }

  // Re-admission: the same placement, a new generation; returns once every rank is back.
  std::printf("fault-worker: rank %d re-creating the Context t_mono_ns=%lld\n", me, MonoNs());
  auto ctx = Context::Create();
  if (!ctx.ok()) Fail(me, "re-create Context", -1, ctx.status());
  const long long t_up = MonoNs();
  Context& c = **ctx;
  const auto& watched = c.liveness().watched();
  const bool watches = std::find(watched.begin(), watched.end(), victim) != watched.end();
  std::printf(
      "fault-worker: rank %d re-admitted: generation %llu up t_mono_ns=%lld; rank %d is pid %d (%s)\n", me,
      static_cast<unsigned long long>(c.generation()), t_up, victim, c.liveness().identity(victim).pid,
      watches ? "watched" : "not watched");

  if (int rc = RunMasked(c, rounds, channels, /*ignore_fault=*/true); rc != 0) return rc;
  if (int failed = NormalRounds(c, rounds); failed > 0) {
    std::printf("fault-worker: rank %d: %d normal round(s) differ from the reference\n", me, failed);
    return 4;
  }
  std::printf(
      "fault-worker: rank %d readmit passed: %d low-latency and %d normal rounds after re-admission equal "
      "the "
      "full reference (generation %llu) t_mono_ns=%lld\n",
      me, rounds, rounds, static_cast<unsigned long long>(c.generation()), MonoNs());
  if (Status s = c.bootstrap().Barrier("fault-worker-readmit-end"); !s.ok())
    Fail(me, "final barrier", rounds, s);
  return 0;
}

}  // namespace epx
