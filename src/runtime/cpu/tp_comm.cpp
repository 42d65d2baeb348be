#include "runtime/cpu/tp_comm.h"

#include <algorithm>
#include <cstring>

namespace cartserve {

InProcessComm::InProcessComm(int32_t size)
    : size_(size), bufs_(static_cast<size_t>(size), nullptr) {}

template <typename F>
void InProcessComm::arrive_and_wait(F complete) {
  std::unique_lock<std::mutex> lk(mu_);
  const uint64_t gen = generation_;
  if (++arrived_ == size_) {
    complete();
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return;
  }
  cv_.wait(lk, [&] { return generation_ != gen; });
}

void InProcessComm::all_reduce_sum(int32_t rank, float* data, size_t n) {
  if (size_ == 1) return;
  bufs_[static_cast<size_t>(rank)] = data;
  if (rank == 0) n_ = n;
  // Every buffer posted; sum_ sized (no rank reads it during a phase change).
  arrive_and_wait([this] { sum_.resize(n_); });
  // Reduce-scatter: rank r sums chunk r in rank order.
  const size_t chunk = (n + static_cast<size_t>(size_) - 1) / static_cast<size_t>(size_);
  const size_t b = std::min(n, chunk * static_cast<size_t>(rank));
  const size_t e = std::min(n, b + chunk);
  for (size_t i = b; i < e; ++i) {
    float s = bufs_[0][i];
    for (int32_t j = 1; j < size_; ++j)
      s += bufs_[static_cast<size_t>(j)][i];
    sum_[i] = s;
  }
  arrive_and_wait([] {});  // sum_ complete; no rank reads another's buffer any more
  std::memcpy(data, sum_.data(), n * sizeof(float));
  // The next call's first barrier keeps sum_ and bufs_ unchanged until every
  // rank has copied.
}

}  // namespace cartserve
