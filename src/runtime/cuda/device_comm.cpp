#include "runtime/cuda/device_comm.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>

#include "kernels/cuda_ops.h"
#include "runtime/cuda/cuda_status.h"
#include "runtime/cuda/nccl_comm.h"

namespace cartserve::cuda {

namespace {

class NcclDeviceComm final : public DeviceComm {
 public:
  explicit NcclDeviceComm(std::vector<std::unique_ptr<NcclComm>> comms)
      : comms_(std::move(comms)) {}
  int size() const override { return static_cast<int>(comms_.size()); }
  int device(int rank) const override { return comms_[static_cast<size_t>(rank)]->device(); }
  bool capturable() const override { return true; }  // NCCL >= 2.9 inside CUDA graphs
  Status all_reduce_sum(int rank, __nv_bfloat16* data, size_t count, cudaStream_t s) override {
    return comms_[static_cast<size_t>(rank)]->all_reduce_sum(data, count, DType::kBF16, s);
  }
  void abort() override {
    for (auto& c : comms_)
      (void)c->abort();
  }

 private:
  std::vector<std::unique_ptr<NcclComm>> comms_;
};

class OneDeviceComm final : public DeviceComm {
 public:
  OneDeviceComm(int size, int device, size_t max_count)
      : size_(size), device_(device), max_count_(max_count), ptrs_(static_cast<size_t>(size)) {}
  ~OneDeviceComm() override {
    for (cudaEvent_t e : ready_)
      if (e) cudaEventDestroy(e);
    if (summed_) cudaEventDestroy(summed_);
    if (scratch_) cudaFree(scratch_);
  }

  Status init() {
    CS_CUDA(cudaSetDevice(device_));
    CS_CUDA(cudaMalloc(&scratch_, std::max<size_t>(max_count_, 1) * sizeof(__nv_bfloat16)));
    ready_.assign(static_cast<size_t>(size_), nullptr);
    for (cudaEvent_t& e : ready_)
      CS_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    CS_CUDA(cudaEventCreateWithFlags(&summed_, cudaEventDisableTiming));
    return {};
  }

  int size() const override { return size_; }
  int device(int) const override { return device_; }
  bool capturable() const override { return false; }

  Status all_reduce_sum(int rank, __nv_bfloat16* data, size_t count, cudaStream_t s) override {
    if (count > max_count_) {
      return make_error(ErrorCode::kInternal, "all-reduce of {} elements; the buffer holds {}",
                        count, max_count_);
    }
    const auto r = static_cast<size_t>(rank);
    CS_CUDA(cudaEventRecord(ready_[r], s));
    ptrs_[r] = data;             // read by rank 0 after the meeting below
    CS_RETURN_IF_ERROR(meet());  // every partial's event is recorded
    if (rank == 0) {
      for (cudaEvent_t e : ready_)
        CS_CUDA(cudaStreamWaitEvent(s, e, 0));
      ops::cuda::sum_bf16(ptrs_.data(), size_, scratch_, static_cast<int64_t>(count), s);
      CS_CUDA(cudaEventRecord(summed_, s));
    }
    CS_RETURN_IF_ERROR(meet());  // the sum is enqueued
    // Rank 0 re-records summed_ only after every rank has met it again in its
    // next call, i.e. after this wait; likewise ready_[r] and scratch_.
    if (rank != 0) CS_CUDA(cudaStreamWaitEvent(s, summed_, 0));
    CS_CUDA(cudaMemcpyAsync(data, scratch_, count * sizeof(__nv_bfloat16), cudaMemcpyDeviceToDevice,
                            s));
    return {};
  }

  void abort() override {
    std::lock_guard<std::mutex> lock(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  // Blocks until every rank has arrived (or the comm was aborted).
  Status meet() {
    std::unique_lock<std::mutex> lock(mu_);
    if (aborted_) return make_error(ErrorCode::kUnavailable, "all-reduce aborted (a rank failed)");
    const uint64_t gen = generation_;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return {};
    }
    cv_.wait(lock, [&] { return aborted_ || generation_ != gen; });
    if (generation_ == gen) {
      return make_error(ErrorCode::kUnavailable, "all-reduce aborted (a rank failed)");
    }
    return {};
  }

  const int size_, device_;
  const size_t max_count_;
  __nv_bfloat16* scratch_ = nullptr;        // [max_count] the sum
  std::vector<const __nv_bfloat16*> ptrs_;  // [size] this call's partials
  std::vector<cudaEvent_t> ready_;          // [size] a rank's partial is written
  cudaEvent_t summed_ = nullptr;            // the sum is in scratch_
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;          // guarded by mu_
  uint64_t generation_ = 0;  // guarded by mu_
  bool aborted_ = false;     // guarded by mu_
};

}  // namespace

Result<std::unique_ptr<DeviceComm>> make_nccl_device_comm(const std::vector<int>& devices) {
  CS_ASSIGN_OR_RETURN(auto comms, NcclComm::create_all(devices));
  return std::unique_ptr<DeviceComm>(new NcclDeviceComm(std::move(comms)));
}

Result<std::unique_ptr<DeviceComm>> make_one_device_comm(int size, int device, size_t max_count) {
  if (size < 1 || size > ops::cuda::kMaxSumInputs) {
    return make_error(ErrorCode::kInvalidArgument, "one-device all-reduce of {} ranks (1 to {})",
                      size, ops::cuda::kMaxSumInputs);
  }
  auto c = std::make_unique<OneDeviceComm>(size, device, max_count);
  CS_RETURN_IF_ERROR(c->init());
  return std::unique_ptr<DeviceComm>(std::move(c));
}

}  // namespace cartserve::cuda
