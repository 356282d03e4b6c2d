// tools/epx-run/process_group.h: starts the rank processes of this host and supervises them until
// they are all gone.
//
// Process model:
//   * every rank runs in its own process group (pgid = its pid), so a signal sent to -pgid reaches
//     whatever the rank forked; when a rank exits, its group is SIGKILLed (stragglers it left behind);
//   * every rank has PR_SET_PDEATHSIG(SIGKILL), so a launcher that dies hard takes its ranks along;
//   * a watchdog process (a fork of the launcher, own process group) holds the read end of a pipe
//     the launcher writes rank pgids to; when that pipe reaches EOF without a clean "bye" (the
//     launcher was SIGKILLed), it SIGKILLs every rank group: PDEATHSIG alone misses grandchildren.
//
// The supervisor is one thread: poll() over a signalfd (SIGCHLD, SIGINT, SIGTERM, SIGHUP) and the
// ranks' output pipes, with deadlines as poll timeouts. It never spins.
//
// Restarts (--respawn N): a rank that fails (a signal, or a non-zero exit) while it has restarts left is
// started again at once, the same way (same rank, environment, pinning, new process group and pipes, the
// watchdog told of the new group) with EPX_RESTART_COUNT=k for its k-th restart. Such a failure is not
// the job's: the other ranks are not stopped and --grace does not start. Once the job is failing (a rank
// out of restarts failed, a signal, --timeout) nothing is restarted any more.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "tools/epx-run/output_mux.h"
#include "transport/host_topology.h"

namespace epx::run {

struct RankLaunch {
  int rank = 0;
  std::vector<std::string> env;  // complete environment, "NAME=value"
  std::optional<RankPin> pin;    // nullopt: --no-bind
};

struct SupervisorOptions {
  bool tag_output = true;                            // prefix lines; false: ranks inherit our stdout/stderr
  std::chrono::milliseconds grace{2000};             // SIGTERM/forwarded signal -> SIGKILL
  std::optional<std::chrono::milliseconds> timeout;  // --timeout
  // --grace: after the first rank failed (non-zero exit or a signal), how long the others may keep
  // running (so that they can detect and report the failure themselves) before they are terminated.
  // 0: terminate them at once.
  std::chrono::milliseconds failure_grace{0};
  // --respawn: how many times each rank may be restarted after it failed (0: never).
  int respawn = 0;
};

class Supervisor {
 public:
  // Blocks SIGCHLD/SIGINT/SIGTERM/SIGHUP (read from a signalfd instead), ignores SIGPIPE and starts
  // the watchdog. Call once, from the single-threaded launcher, before Spawn().
  static StatusOr<std::unique_ptr<Supervisor>> Create(SupervisorOptions opts);
  ~Supervisor();

  // fork + exec of argv with the rank's env and pin. Returns once exec succeeded; an exec (or pin)
  // failure in the child is reported here, with the child's reason. Remembered for restarts.
  Status Spawn(const RankLaunch& launch, const std::vector<std::string>& argv);

  // Supervises the spawned ranks until all have exited and their output is drained. Returns the
  // launcher's exit code: 0 (every rank's last process exited 0, restarted or not); the first failing
  // rank's code or 128+signal (a failure with no restart left); 124 on --timeout; 128+signal when the
  // launcher itself was interrupted. When a rank failed, the last line says which and how ("epx-run: exit
  // code 137: rank 1 (pid 4242) killed by SIGKILL (signal 9, Killed) ..."); after restarts, the last line
  // also lists them.
  int Run();

  // Kills (SIGKILL to the groups) and reaps everything spawned so far; for a launch that failed half
  // way. Run() does this itself.
  void KillAll();

 private:
  using Clock = std::chrono::steady_clock;
  struct Rank {  // one process: a rank that was restarted has an entry per incarnation
    int rank = 0;
    pid_t pid = -1;
    int incarnation = 0;  // EPX_RESTART_COUNT
    bool alive = true;
    int out_fd = -1, err_fd = -1;  // our read ends; -1 once at EOF (or when not tagging)
    std::unique_ptr<LinePrefixer> out, err;
  };

  // How to start a rank again, and how often it was.
  struct RankSpec {
    RankLaunch launch;
    std::vector<std::string> argv;
    int restarts = 0;
  };
  struct Restart {  // a failed process to replace, noted during a reap and started after it
    int rank;
    pid_t pid;
    int code;          // what the job exits with if it cannot be restarted
    std::string how;   // "killed by signal 9 (Killed)"
    std::string what;  // "killed by SIGKILL (signal 9, Killed)"
  };

  explicit Supervisor(SupervisorOptions opts) : opts_(std::move(opts)) {}
  Status Init();
  Status Start(const RankLaunch& launch, const std::vector<std::string>& argv, int incarnation);
  void RestartFailed();
  void JobFailed(int rank, pid_t pid, int code, const std::string& how, const std::string& what);
  std::string RestartSummary() const;
  Status StartWatchdog();
  void TellWatchdog(pid_t value);
  void HandleSignals();
  void ReapExited();
  void OnRankExit(Rank& r, int status);
  void Drain(Rank& r);
  void CloseStream(int& fd, LinePrefixer* p);
  void SignalAll(int sig);
  void Stop(int sig, std::string_view why);
  int AliveCount() const;
  std::string AliveList() const;
  void Say(std::string_view line);

  SupervisorOptions opts_;
  int sigfd_ = -1;
  pid_t self_ = -1;
  pid_t watchdog_pid_ = -1;
  int watchdog_fd_ = -1;  // write end; its EOF is the watchdog's "launcher died"
  std::deque<Rank> ranks_;  // a deque: restarts append while references to earlier entries are held
  std::map<int, RankSpec> specs_;
  std::vector<Restart> to_restart_;
  std::vector<std::string> restarts_;  // "rank 1 (pid 4242, killed by SIGKILL ...) as pid 4250", in order
  LineSink out_sink_{1}, err_sink_{2};
  bool stopping_ = false;  // a failure, a signal or the timeout started the shutdown
  bool stop_sigkill_sent_ = false;
  int exit_code_ = 0;
  std::optional<Clock::time_point> kill_at_, timeout_at_, drain_until_;
  // The first rank failure: what the final line says, and (with --grace) until when the others run.
  std::string first_failure_;
  int first_failed_rank_ = -1;
  Clock::time_point failed_at_{};
  std::optional<Clock::time_point> survive_until_;
  std::vector<char> buf_;
};

}  // namespace epx::run
