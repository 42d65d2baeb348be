#include "runtime/rank_threads.h"

namespace cartserve {

RankThreads::RankThreads(int32_t size, std::function<void(int32_t)> init)
    : status_(static_cast<size_t>(size)) {
  for (int32_t r = 1; r < size; ++r)
    threads_.emplace_back([this, r, init] { loop(r, init); });
}

RankThreads::~RankThreads() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_step_.notify_all();
  for (std::thread& t : threads_)
    t.join();
}

void RankThreads::loop(int32_t rank, const std::function<void(int32_t)>& init) {
  if (init) init(rank);
  uint64_t seen = 0;
  for (;;) {
    const std::function<Status(int32_t)>* work = nullptr;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_step_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      work = work_;
    }
    Status s = (*work)(rank);
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_[static_cast<size_t>(rank)] = std::move(s);
      if (--pending_ == 0) cv_done_.notify_one();
    }
  }
}

Status RankThreads::run(const std::function<Status(int32_t)>& work,
                        const std::function<Status()>& lead) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    work_ = &work;
    pending_ = static_cast<int32_t>(threads_.size());
    ++generation_;
  }
  cv_step_.notify_all();
  Status s0 = lead();
  {
    std::unique_lock<std::mutex> lock(mu_);
    cv_done_.wait(lock, [&] { return pending_ == 0; });
    work_ = nullptr;
  }
  for (size_t r = 1; r < status_.size() && s0.ok(); ++r)
    s0 = status_[r];
  return s0;
}

}  // namespace cartserve
