#include "core/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>

namespace cartserve {

namespace {
thread_local bool t_in_pool_task = false;

// How long an idle worker (or the waiting caller) polls before it sleeps: a
// decode step issues hundreds of loops of a few microseconds each, and a
// futex wake-up costs about as much as one of them.
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Polls `ready` for up to kSpin; true once it holds.
template <typename Pred>
bool spin_until(Pred ready) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 0;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) return false;
  }
}
}  // namespace

ThreadPool::ThreadPool(size_t n_threads) {
  const size_t n = std::max<size_t>(1, n_threads);
  for (size_t i = 0; i + 1 < n; ++i)
    workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_work_.notify_all();
  for (auto& t : workers_)
    t.join();
}

void ThreadPool::worker_loop(size_t /*index*/) {
  uint64_t seen = 0;
  for (;;) {
    spin_until([&] { return stop_.load() || generation_.load() != seen; });
    std::unique_lock<std::mutex> lk(mu_);
    cv_work_.wait(lk, [&] { return stop_ || (generation_ != seen && next_chunk_ < n_chunks_); });
    if (stop_) return;
    seen = generation_;
    while (next_chunk_ < n_chunks_) {
      const size_t c = next_chunk_++;
      const auto* fn = fn_;
      const size_t begin = c * chunk_;
      const size_t end = std::min(n_, begin + chunk_);
      lk.unlock();
      t_in_pool_task = true;
      (*fn)(begin, end);
      t_in_pool_task = false;
      lk.lock();
      if (--pending_ == 0) cv_done_.notify_all();
    }
  }
}

void ThreadPool::parallel_for(size_t n, const std::function<void(size_t, size_t)>& fn,
                              size_t min_chunk) {
  if (n == 0) return;
  const size_t threads = size();
  if (threads == 1 || t_in_pool_task || n <= min_chunk) {
    fn(0, n);
    return;
  }
  std::lock_guard<std::mutex> call_lk(call_mu_);
  std::unique_lock<std::mutex> lk(mu_);
  // A few chunks per thread balance uneven work without much overhead.
  const size_t target_chunks = threads * 4;
  chunk_ = std::max(min_chunk, (n + target_chunks - 1) / target_chunks);
  n_ = n;
  n_chunks_ = (n + chunk_ - 1) / chunk_;
  next_chunk_ = 0;
  pending_ = n_chunks_;
  fn_ = &fn;
  ++generation_;
  cv_work_.notify_all();
  while (next_chunk_ < n_chunks_) {
    const size_t c = next_chunk_++;
    const size_t begin = c * chunk_;
    const size_t end = std::min(n_, begin + chunk_);
    lk.unlock();
    t_in_pool_task = true;
    fn(begin, end);
    t_in_pool_task = false;
    lk.lock();
    --pending_;
  }
  lk.unlock();
  spin_until([&] { return pending_.load() == 0; });
  lk.lock();
  cv_done_.wait(lk, [&] { return pending_ == 0; });
  fn_ = nullptr;
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool([] {
    if (const char* env = std::getenv("CARTSERVE_THREADS")) {
      const int v = std::atoi(env);
      if (v > 0) return static_cast<size_t>(v);
    }
    return static_cast<size_t>(std::max(1u, std::thread::hardware_concurrency()));
  }());
  return pool;
}

}  // namespace cartserve
