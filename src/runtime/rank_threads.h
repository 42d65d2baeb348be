// The threads of ranks 1..N-1 of a tensor-parallel backend (TpCpuBackend,
// TpCudaBackend): each step, every rank r >= 1 runs work(r) on its own
// persistent thread while the calling (engine) thread runs rank 0's part.
//
// NOTE: run() returns only after every rank has finished its part, so
// anything the parts share by reference (the StepInput) may die after it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/status.h"

namespace cartserve {

class RankThreads {
 public:
  // `init(r)` runs first on rank r's thread (e.g. binding it to its GPU).
  explicit RankThreads(int32_t size, std::function<void(int32_t)> init = {});
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  // work(r) on the threads of ranks 1..N-1, lead() here; lead's status if it
  // failed, else the first failing rank's.
  Status run(const std::function<Status(int32_t)>& work, const std::function<Status()>& lead);

 private:
  void loop(int32_t rank, const std::function<void(int32_t)>& init);

  std::mutex mu_;
  std::condition_variable cv_step_, cv_done_;
  const std::function<Status(int32_t)>* work_ = nullptr;  // the current step's
  uint64_t generation_ = 0;                               // bumped per step
  int32_t pending_ = 0;                                   // ranks > 0 still running
  bool stop_ = false;
  std::vector<Status> status_;  // [N] of the last step (rank 0 unused)
  std::vector<std::thread> threads_;
};

}  // namespace cartserve
