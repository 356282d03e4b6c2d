// kernels/worker_pool.h: the channel threads of a NormalBuffer, created once and reused by every call
// (a call must not pay thread creation). Run() hands worker i the job `fn(i)` and returns when all
// are done; start and finish use a mutex + condition variable (once per call, never per token).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/status.h"
#include "core/wait.h"

namespace epx {

class Context;

// The backoff of a buffer's waits, chosen once at its setup (collective: every rank calls it with the
// same `phase`): all-gather each rank's cpus and busy threads (`channels`), and spin less before yielding
// where the threads of this rank's host outnumber their cpus (BackoffPolicy::ForCpus,
// transport/host_topology.h). One function for the normal and the low-latency buffer, so they agree.
StatusOr<BackoffPolicy> ChannelWaitPolicy(Context& ctx, std::string_view phase, int channels);

// What a worker returns when it stopped only because another worker of the same job failed (the job's
// abort flag): not a cause of its own, so Run() reports another worker's error in preference.
inline constexpr std::string_view kStoppedByOtherWorker = "stopped: another channel of this rank failed";
inline Status StoppedByOtherWorker() {
  return Status(Code::kFailedPrecondition, std::string(kStoppedByOtherWorker));
}
inline bool IsStoppedByOtherWorker(const Status& s) {
  return s.code() == Code::kFailedPrecondition && s.message() == kStoppedByOtherWorker;
}

class WorkerPool {
 public:
  explicit WorkerPool(int num_workers);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int size() const { return static_cast<int>(threads_.size()); }

  // Runs fn(i) on worker i for every i and waits. Returns the error of the worker that failed first
  // (in finishing order), skipping StoppedByOtherWorker() echoes unless nothing else failed: the first
  // failure is the cause, the others usually its consequences.
  template <typename F>
  Status Run(F& fn) {
    return RunRaw([](void* f, int i) { return (*static_cast<F*>(f))(i); }, &fn);
  }

 private:
  using Trampoline = Status (*)(void*, int);
  Status RunRaw(Trampoline tramp, void* fn);
  void Loop(int i);

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  uint64_t generation_ = 0;  // bumped per job; a worker runs each generation once
  int pending_ = 0;
  bool stop_ = false;
  Trampoline tramp_ = nullptr;
  void* fn_ = nullptr;
  std::vector<Status> results_;
  std::vector<int> failed_order_;  // workers whose result is an error, in the order they finished
};

}  // namespace epx
