// The collective a tensor-parallel forward needs: a sum all-reduce of the
// o_proj and down partials. InProcessComm is its CPU form: N ranks as threads
// of one process, each calling all_reduce_sum with its own buffer.
//
// NOTE: determinism. Every rank gets the same bits: chunk c of the result is
// summed in rank order 0, 1, ..., N-1 by one rank and copied by all, so the
// ranks' residual streams never drift apart.
#pragma once

#include <barrier>
#include <cstddef>
#include <cstdint>
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
  // Runs once per phase, after every rank arrived and before any leaves:
  // sizes sum_ for the call (no rank is reading it then).
  struct SizeSum {
    InProcessComm* self;
    void operator()() noexcept { self->sum_.resize(self->n_); }
  };

  int32_t size_;
  size_t n_ = 0;  // elements of the current call, posted by rank 0
  std::barrier<SizeSum> barrier_;
  std::vector<float*> bufs_;  // [size] posted by each rank
  std::vector<float> sum_;    // the result, chunks written by their ranks
};

}  // namespace cartserve
