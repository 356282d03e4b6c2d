#include "kernels/worker_pool.h"

#include "transport/context.h"
#include "transport/host_topology.h"

namespace epx {

StatusOr<BackoffPolicy> ChannelWaitPolicy(Context& ctx, std::string_view phase, int channels) {
  EPX_ASSIGN_OR_RETURN(const auto cpus, ctx.bootstrap().AllGatherPod(phase, ThisRankCpus(channels)));
  return BackoffPolicy::ForCpus(HostThreadsOutnumberCpus(cpus, ctx.placement().rank));
}

WorkerPool::WorkerPool(int num_workers) : results_(num_workers) {
  failed_order_.reserve(static_cast<size_t>(num_workers));
  for (int i = 0; i < num_workers; ++i) threads_.emplace_back([this, i] { Loop(i); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

Status WorkerPool::RunRaw(Trampoline tramp, void* fn) {
  {
    std::lock_guard<std::mutex> g(mu_);
    tramp_ = tramp;
    fn_ = fn;
    pending_ = size();
    failed_order_.clear();
    ++generation_;
  }
  start_cv_.notify_all();
  std::unique_lock<std::mutex> lk(mu_);
  done_cv_.wait(lk, [&] { return pending_ == 0; });
  for (int i : failed_order_)
    if (!IsStoppedByOtherWorker(results_[static_cast<size_t>(i)]))
      return std::move(results_[static_cast<size_t>(i)]);
  if (!failed_order_.empty()) return std::move(results_[static_cast<size_t>(failed_order_.front())]);
  return Status::Ok();
}

void WorkerPool::Loop(int i) {
  uint64_t seen = 0;
  for (;;) {
    Trampoline tramp;
    void* fn;
    {
      std::unique_lock<std::mutex> lk(mu_);
      start_cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      tramp = tramp_;
      fn = fn_;
    }
    Status s = tramp(fn, i);  // the job: mutex acquire above/below orders it with Run()
    {
      std::lock_guard<std::mutex> g(mu_);
      if (!s.ok()) failed_order_.push_back(i);
      results_[i] = std::move(s);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }
}

}  // namespace epx
