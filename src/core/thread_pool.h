// A fixed pool of worker threads for data-parallel loops. parallel_for splits
// [0, n) into contiguous chunks, runs them on the workers and the calling
// thread, and returns when all are done. Calls from several threads are
// serialised; a nested call from inside a task runs inline.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace cartserve {

class ThreadPool {
 public:
  // n_threads counts the caller: n_threads - 1 workers are started.
  explicit ThreadPool(size_t n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return workers_.size() + 1; }

  // fn(begin, end) over chunks of at least `min_chunk` items.
  void parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn, size_t min_chunk = 1);

  // Process-wide pool; size from CARTSERVE_THREADS or the hardware.
  static ThreadPool& global();

 private:
  void worker_loop(size_t index);

  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one parallel_for at a time
  std::mutex mu_;
  std::condition_variable cv_work_;
  std::condition_variable cv_done_;
  const std::function<void(size_t, size_t)>* fn_ = nullptr;
  size_t n_ = 0;
  size_t chunk_ = 0;
  size_t n_chunks_ = 0;
  size_t next_chunk_ = 0;
  // Written under mu_; also read without it by the short spins that save a
  // sleep/wake between the many small loops of a decode step.
  std::atomic<size_t> pending_ = 0;
  std::atomic<uint64_t> generation_ = 0;
  std::atomic<bool> stop_ = false;
};

}  // namespace cartserve
