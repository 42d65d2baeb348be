// An NCCL communicator for tensor parallelism on GPUs (issue 12): one rank
// per GPU, the sum all-reduce after o_proj and down (device_comm.h wraps it
// for the sharded CUDA backend, tp_cuda_backend.h), and a broadcast.
// Compiled only where NCCL was found (CARTSERVE_WITH_NCCL, see
// src/CMakeLists.txt); elsewhere create() says NCCL is missing.
//
// NOTE: NVLink multicast stays off. Before the first communicator is made,
// NCCL_NVLS_ENABLE is set to 0 unless the environment already sets it (the
// GPU machines keep it 0); nothing here calls cuMulticastCreate.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"

namespace cartserve::cuda {

class NcclComm {
 public:
  ~NcclComm();
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  // One process driving `devices.size()` GPUs (rank i on devices[i]), as the
  // single-process server would: ncclCommInitAll.
  static Result<std::vector<std::unique_ptr<NcclComm>>> create_all(const std::vector<int>& devices);

  int rank() const { return rank_; }
  int size() const { return size_; }
  int device() const { return device_; }

  // In place: `count` elements of `dtype` (kF32 or kBF16) at `data` on this
  // rank's device become their sum over the ranks; enqueued on `stream`
  // (a cudaStream_t). Calls of every rank must be grouped (group_start /
  // group_end) when one thread drives several ranks.
  Status all_reduce_sum(void* data, size_t count, DType dtype, void* stream);
  // `bytes` at `data` from rank `root` to every rank, on `stream`.
  Status broadcast(void* data, size_t bytes, int root, void* stream);

  // Ends every operation of this rank in flight (another rank failed); the
  // communicator is unusable afterwards. Any thread.
  Status abort();

  static Status group_start();
  static Status group_end();
  // "2.28.9" (works without a GPU).
  static std::string version();

 private:
  NcclComm(void* comm, int rank, int size, int device)
      : comm_(comm), rank_(rank), size_(size), device_(device) {}

  std::atomic<void*> comm_;  // ncclComm_t; null once aborted
  int rank_, size_, device_;
};

}  // namespace cartserve::cuda
