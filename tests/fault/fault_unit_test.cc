// tests/fault/fault_unit_test.cc: the pieces of dead-peer detection and fault injection, in process.
// Peers are forked children: alive, killed (a zombie until reaped), reaped; EPX_FAULT is armed inside
// a child that must then die of SIGKILL at the right hit.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "core/fault.h"
#include "core/tunables.h"
#include "core/wait.h"
#include "transport/liveness.h"

namespace epx {
namespace {

using namespace std::chrono_literals;

class EnvGuard {
 public:
  EnvGuard(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    if (old) old_ = old, had_ = true;
    ::setenv(name, value, 1);
  }
  ~EnvGuard() { had_ ? (void)::setenv(name_, old_.c_str(), 1) : (void)::unsetenv(name_); }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(FaultSpec, ParsesEveryPointAndDefaults) {
  auto off = ParseFaultSpec("  ");
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->enabled());
  for (const char* name : FaultPointNames()) {
    auto f = ParseFaultSpec(std::string("rank=3,point=") + name);
    ASSERT_TRUE(f.ok()) << name << ": " << f.status().ToString();
    EXPECT_EQ(f->rank, 3);
    EXPECT_STREQ(FaultPointName(f->point), name);
    EXPECT_EQ(f->after, 1u);
  }
  auto f = ParseFaultSpec(" after = 7 , point=ll.combine.recv,rank=0 ");
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->rank, 0);
  EXPECT_EQ(f->point, FaultPoint::kLlCombineRecv);
  EXPECT_EQ(f->after, 7u);
}

TEST(FaultSpec, BadValuesSayWhatIsWrong) {
  struct Case {
    const char* text;
    const char* says;
  } cases[] = {
      {"rank=1", "point missing"},
      {"point=normal.layout", "rank missing"},
      {"rank=1,point=normal.sideways", "unknown point 'normal.sideways'"},
      {"rank=-1,point=normal.layout", "not a rank"},
      {"rank=x,point=normal.layout", "not a rank"},
      {"rank=1,point=normal.layout,after=0", "not a count >= 1"},
      {"rank=1,rank=2,point=normal.layout", "rank given twice"},
      {"rank=1,point=normal.layout,when=now", "unknown key 'when'"},
      {"rank 1", "not key=value"},
  };
  for (const auto& c : cases) {
    auto f = ParseFaultSpec(c.text);
    ASSERT_FALSE(f.ok()) << c.text;
    EXPECT_EQ(f.status().code(), Code::kInvalidArgument);
    EXPECT_NE(f.status().message().find(c.says), std::string::npos) << c.text << ": " << f.status().message();
    EXPECT_NE(f.status().message().find("normal.dispatch.forward"), std::string::npos)  // lists the points
        << f.status().message();
  }
}

TEST(FaultSpec, IsATunableValidatedLikeTheOthers) {
  const TunableDef* d = FindTunable("EPX_FAULT");
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(ValidateTunableValue(*d, "").ok());
  EXPECT_TRUE(ValidateTunableValue(*d, "rank=0,point=ll.dispatch.send").ok());
  Status bad = ValidateTunableValue(*d, "rank=0,point=nowhere");
  EXPECT_EQ(bad.code(), Code::kInvalidArgument);
  EXPECT_NE(bad.message().find("EPX_FAULT='rank=0,point=nowhere'"), std::string::npos) << bad.message();
  EnvGuard g("EPX_FAULT", "rank=0,point=nowhere");
  EXPECT_FALSE(ValidateTunableEnv().ok());
  EXPECT_FALSE(TunableStr("EPX_FAULT").ok());
  EXPECT_FALSE(ArmFaultInjection(0, 2).ok());
}

TEST(FaultSpec, RankOutsideTheJobIsRejectedAtArming) {
  EnvGuard g("EPX_FAULT", "rank=4,point=normal.layout");
  Status s = ArmFaultInjection(0, 4);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("rank 4 is not a rank of this job (0..3)"), std::string::npos) << s.message();
  EnvGuard other("EPX_FAULT", "rank=1,point=normal.layout");
  ASSERT_TRUE(ArmFaultInjection(0, 4).ok());  // another rank's fault: nothing armed here
  EPX_FAULT_POINT(kNormalLayout);             // so this is a no-op
}

TEST(FaultInjection, TheArmedRankDiesOfSigkillAtTheNthHit) {
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::dup2(out[1], 2);
    ::setenv("EPX_FAULT", "rank=1,point=normal.dispatch.forward,after=3", 1);
    if (!ArmFaultInjection(1, 2).ok()) ::_exit(10);
    EPX_FAULT_POINT(kNormalDispatchSend);  // another point: not counted
    EPX_FAULT_POINT(kNormalDispatchForward);
    EPX_FAULT_POINT(kNormalDispatchForward);
    (void)!::write(2, "survived hit 2\n", 15);
    EPX_FAULT_POINT(kNormalDispatchForward);
    ::_exit(11);  // not reached
  }
  ::close(out[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
  ::close(out[0]);
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1) << "\n"
                                   << text;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_NE(text.find("survived hit 2"), std::string::npos) << text;
  EXPECT_NE(text.find(fmt::format("fault injection (EPX_FAULT): rank 1 (pid {}) kills itself with SIGKILL at "
                                  "normal.dispatch.forward (hit 3) t_mono_ns=",
                                  child)),
            std::string::npos)
      << text;
}

// epx-run --respawn: the fault is the death of the rank's first process; its restart (EPX_RESTART_COUNT
// > 0) must live, or a re-admission test would kill every incarnation. A bad value is still an error.
TEST(FaultInjection, ARestartOfTheNamedRankDoesNotArm) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::setenv("EPX_FAULT", "rank=1,point=normal.layout", 1);
    if (!ArmFaultInjection(1, 2, /*restart_count=*/1).ok()) ::_exit(10);
    for (int i = 0; i < 3; ++i) EPX_FAULT_POINT(kNormalLayout);
    ::setenv("EPX_FAULT", "rank=1,point=nowhere", 1);
    ::_exit(ArmFaultInjection(1, 2, 1).ok() ? 11 : 0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << (WIFSIGNALED(status) ? fmt::format("killed by signal {}", WTERMSIG(status))
                              : fmt::format("exit {}", WEXITSTATUS(status)));
}

// A child that sends its identity and then sleeps until killed.
struct Child {
  pid_t pid = -1;
  ProcessIdentity id;
  Child() {
    int p[2];
    EXPECT_EQ(::pipe(p), 0);
    pid = ::fork();
    if (pid == 0) {
      ProcessIdentity me = ProcessIdentity::Self(1);
      (void)!::write(p[1], &me, sizeof(me));
      for (;;) ::pause();
    }
    ::close(p[1]);
    // Through a byte buffer: GCC's -Wstringop-overflow (-O3) takes &id for its first member.
    char raw[sizeof(ProcessIdentity)];
    EXPECT_EQ(::read(p[0], raw, sizeof(raw)), static_cast<ssize_t>(sizeof(raw)));
    std::memcpy(&id, raw, sizeof(id));
    ::close(p[0]);
  }
  ~Child() {
    if (pid > 0) ::kill(pid, SIGKILL), ::waitpid(pid, nullptr, 0);
  }
};

TEST(ProcessProbe, AliveZombieGoneAndReplaced) {
  const ProcessIdentity me = ProcessIdentity::Self(0);
  EXPECT_EQ(me.pid, ::getpid());
  EXPECT_NE(me.start_ticks, 0u);
  EXPECT_NE(me.pidns, 0u);
  EXPECT_EQ(ProbeProcess(me), ProcessState::kAlive);
  ProcessIdentity restarted = me;
  restarted.start_ticks += 1;  // same pid, another start: a restarted process or a reused pid
  EXPECT_EQ(ProbeProcess(restarted), ProcessState::kReplaced);

  Child c;
  EXPECT_EQ(c.id.pid, c.pid);
  EXPECT_EQ(ProbeProcess(c.id), ProcessState::kAlive);
  ::kill(c.pid, SIGKILL);
  siginfo_t si{};
  ASSERT_EQ(::waitid(P_PID, static_cast<id_t>(c.pid), &si, WEXITED | WNOWAIT), 0);  // dead, not reaped
  EXPECT_EQ(ProbeProcess(c.id), ProcessState::kZombie);
  ::waitpid(c.pid, nullptr, 0);
  EXPECT_EQ(ProbeProcess(c.id), ProcessState::kGone);
  c.pid = -1;
}

TEST(PeerLiveness, NamesTheDeadPeerWithinAScanInterval) {
  Child alive, victim;
  std::vector<ProcessIdentity> ids = {ProcessIdentity::Self(0), alive.id, victim.id};
  PeerLiveness live(0, ids, {1, 2});
  EXPECT_FALSE(live.PeerDead());
  ::kill(victim.pid, SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  while (!live.PeerDead() && std::chrono::steady_clock::now() - t0 < 2s) std::this_thread::sleep_for(1ms);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  ASSERT_TRUE(live.PeerDead());
  EXPECT_LT(ms.count(), 500) << "a scan is due every " << PeerLiveness::kScanInterval.count() << " ms";
  EXPECT_EQ(live.dead_ranks(), std::vector<int>{2});
  Status s = live.PeerFailure("normal dispatch", "counter 3 < 4");
  EXPECT_EQ(s.code(), Code::kPeerFailure);
  EXPECT_NE(s.message().find(fmt::format("rank 2 (pid {}, node 1) died (", victim.pid)), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("during normal dispatch; rank 0 was waiting: counter 3 < 4"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("create a new Context"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find(fmt::format("pid {},", alive.pid)), std::string::npos)
      << "the live peer is not named";
}

TEST(PeerLiveness, ScansAreRateLimited) {
  Child victim;
  PeerLiveness live(0, {ProcessIdentity::Self(0), victim.id}, {1});
  EXPECT_FALSE(live.PeerDead());  // the first ask scans
  ::kill(victim.pid, SIGKILL);
  ::waitpid(victim.pid, nullptr, 0);
  victim.pid = -1;
  // Within the interval nobody looks again: the death is not known yet.
  EXPECT_FALSE(live.PeerDead());
  std::this_thread::sleep_for(PeerLiveness::kScanInterval + 5ms);
  EXPECT_TRUE(live.PeerDead());
  EXPECT_NE(live.DeadPeers().find("died (no longer running)"), std::string::npos) << live.DeadPeers();
}

TEST(PeerLiveness, AnAcknowledgedDeathNoLongerFailsWaitsButANewOneDoes) {
  // What masking needs: once a dead rank is masked, waits for the others must go on; another death
  // must still be seen.
  Child first, second, pre_masked;
  PeerLiveness live(0, {ProcessIdentity::Self(0), first.id, second.id, pre_masked.id}, {1, 2, 3});
  live.Acknowledge(3);  // masked after a timeout, before it died
  ::kill(pre_masked.pid, SIGKILL);
  ::kill(first.pid, SIGKILL);
  // SIGKILL is delivered asynchronously: on a loaded host a victim can still be running when the scan
  // below looks. Wait until both have exited (zombies, not reaped), so that one scan surely sees both.
  for (pid_t pid : {pre_masked.pid, first.pid}) {
    siginfo_t si{};
    ASSERT_EQ(::waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED | WNOWAIT), 0);
  }
  const auto t0 = std::chrono::steady_clock::now();
  while (!live.PeerDead() && std::chrono::steady_clock::now() - t0 < 2s) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(live.PeerDead());
  std::this_thread::sleep_for(PeerLiveness::kScanInterval + 5ms);
  (void)live.PeerDead();  // a scan that surely saw both deaths
  EXPECT_TRUE(live.IsDead(1));
  EXPECT_FALSE(live.IsDead(2));
  EXPECT_TRUE(live.IsDead(3));
  EXPECT_EQ(live.dead_ranks(), (std::vector<int>{1, 3}));
  EXPECT_EQ(live.DeadPeers().find("rank 3"), std::string::npos) << "acknowledged: " << live.DeadPeers();
  live.Acknowledge(1);
  EXPECT_FALSE(live.PeerDead());
  ::kill(second.pid, SIGKILL);
  const auto t1 = std::chrono::steady_clock::now();
  while (!live.PeerDead() && std::chrono::steady_clock::now() - t1 < 2s) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(live.PeerDead());
  EXPECT_EQ(live.DeadPeers().rfind("rank 2 (pid", 0), 0u) << live.DeadPeers();
  EXPECT_EQ(live.DeadPeers().find("rank 1 "), std::string::npos) << live.DeadPeers();
}

TEST(PeerLiveness, ListenersHearADeathBeforeAnyWaitSeesItAndCausesComeFirst) {
  // What death notices need (transport/verbs/): the listener runs once per death, and no wait of this
  // process can fail on the death (and its process exit) before the listener returned.
  Child victim;
  PeerLiveness live(0, {ProcessIdentity::Self(0), victim.id}, {1});
  std::atomic<int> heard{0}, dead_seen_inside{-1};
  const int id = live.AddDeathListener([&](int rank) {
    heard.fetch_add(rank == 1 ? 1 : 100);
    dead_seen_inside = live.IsDead(rank) ? 1 : 0;  // not published yet
  });
  std::string cause;
  const int cause_id = live.AddCauseSource([&] { return cause; });
  ::kill(victim.pid, SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  while (!live.PeerDead() && std::chrono::steady_clock::now() - t0 < 2s) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(live.PeerDead());
  EXPECT_EQ(heard.load(), 1);
  EXPECT_EQ(dead_seen_inside.load(), 0) << "the listener ran after the death was published";
  std::this_thread::sleep_for(PeerLiveness::kScanInterval + 5ms);
  (void)live.PeerDead();  // a later scan does not tell the listener again
  EXPECT_EQ(heard.load(), 1);
  // No cause: the message starts with the dead peer. A cause (another host's death): it comes first.
  const std::string plain = live.PeerFailure("x", "y").message();
  EXPECT_NE(plain.find("rank 1 (pid"), std::string::npos) << plain;
  EXPECT_EQ(plain.find("then on this host"), std::string::npos) << plain;
  cause = "rank 7 died on its host";
  const std::string m = live.PeerFailure("x", "y").message();
  EXPECT_NE(m.find("rank 7 died on its host; then on this host: rank 1 (pid"), std::string::npos) << m;
  live.RemoveDeathListener(id);
  live.RemoveDeathListener(cause_id);
  EXPECT_EQ(live.PeerFailure("x", "y").message().find("rank 7"), std::string::npos);
}

// A WaitHealth that reports a death after `after` asks.
class FakeHealth : public WaitHealth {
 public:
  explicit FakeHealth(int after) : after_(after) {}
  bool PeerDead() override { return ++asked_ > after_; }
  Status PeerFailure(std::string_view what, std::string_view waiting) override {
    return Status(Code::kPeerFailure, fmt::format("dead during {}: {}", what, waiting));
  }
  int asked() const { return asked_; }

 private:
  int after_;
  int asked_ = 0;
};

TEST(WaitWithHealth, ADeadPeerEndsTheWaitLongBeforeTheDeadline) {
  FakeHealth h(3);
  const auto t0 = std::chrono::steady_clock::now();
  Status s =
      WaitUntil([] { return false; }, Deadline::After(10s),
                [](int64_t ms) { return fmt::format("counter 1 < 2 after {} ms", ms); }, &h, "a test wait");
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  EXPECT_EQ(s.code(), Code::kPeerFailure);
  EXPECT_NE(s.message().find("dead during a test wait: counter 1 < 2 after"), std::string::npos)
      << s.message();
  EXPECT_LT(ms.count(), 2000);
}

TEST(WaitWithHealth, FastWaitsNeverAskAndAPublishedWordWins) {
  FakeHealth h(0);  // "dead" from the first ask
  int polls = 0;
  // Ends within the spin phase: the slow-path check is never reached.
  EXPECT_TRUE(WaitUntil([&] { return ++polls > 100; }, Deadline::After(10s),
                        [](int64_t) { return std::string(); }, &h, "fast")
                  .ok());
  EXPECT_EQ(h.asked(), 0);
  // The peer published its word and then exited: the wait succeeds although the peer is dead.
  std::atomic<bool> word{false};
  FakeHealth dead(0);
  int n = 0;
  Status s = WaitUntil(
      [&] {
        if (dead.asked() > 0) word.store(true);  // "published" right when the death is seen
        return word.load() && ++n > 0;
      },
      Deadline::After(10s), [](int64_t) { return std::string("x"); }, &dead, "publish-then-exit");
  EXPECT_TRUE(s.ok()) << s.ToString();
  // Timeouts keep their own message, with the time waited.
  FakeHealth never(1 << 30);
  Status t = WaitUntil([] { return false; }, Deadline::After(50ms),
                       [](int64_t ms) { return fmt::format("nothing after {} ms", ms); }, &never, "t");
  EXPECT_EQ(t.code(), Code::kTimeout);
  EXPECT_NE(t.message().find("nothing after"), std::string::npos) << t.message();
}

}  // namespace
}  // namespace epx
