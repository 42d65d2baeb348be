// The collective a tensor-parallel forward needs: a sum all-reduce of the
// o_proj and down partials. InProcessComm is its CPU form: N ranks as threads
// of one process, each calling all_reduce_sum with its own buffer.
//
// NOTE: determinism. Every rank gets the same bits: chunk c of the result is
// summed in rank order 0, 1, ..., N-1 by one rank and copied by all, so the
// ranks' residual streams never drift apart.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

namespace cartserve {

class InProcessComm {
 public:
  explicit InProcessComm(int32_t size);

  int32_t size() const { return size_; }
  // Collective: every rank calls it with a buffer of the same n floats; on
  // return each holds the element-wise sum over the ranks.
  void all_reduce_sum(int32_t rank, float* data, size_t n);

 private:
  // Blocks until every rank arrived; the last one runs `complete` first.
  // (A mutex and a condition variable: libstdc++ 12's std::barrier let
  // ranks through early under load here, corrupting the buffers.)
  template <typename F>
  void arrive_and_wait(F complete);

  int32_t size_;
  size_t n_ = 0;  // elements of the current call, posted by rank 0
  std::mutex mu_;
  std::condition_variable cv_;
  int32_t arrived_ = 0;       // guarded by mu_
  uint64_t generation_ = 0;   // guarded by mu_; one per completed phase
  std::vector<float*> bufs_;  // [size] posted by each rank
  std::vector<float> sum_;    // the result, chunks written by their ranks
};

}  // namespace cartserve
