// kernels/worker_pool.h: the channel threads of a NormalBuffer, created once and reused by every call
// (a call must not pay thread creation). Run() hands worker i the job `fn(i)` and returns when all
// are done; start and finish use a mutex + condition variable (once per call, never per token).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "core/status.h"

namespace epx {

class WorkerPool {
 public:
  explicit WorkerPool(int num_workers);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int size() const { return static_cast<int>(threads_.size()); }

  // Runs fn(i) on worker i for every i and waits; returns the first (lowest-index) error.
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
};

}  // namespace epx
