// The collective of tensor parallelism on GPUs (tp_cuda_backend.h): after
// o_proj and after down, every rank's bf16 partial [n, hidden] becomes the
// sum over the ranks, in place, enqueued on the rank's compute stream. Each
// rank calls it from its own thread, the same calls in the same order.
//
// Two forms:
//  - NCCL, one rank per GPU (the server's);
//  - one device: every rank on the same GPU (tests, and checking the split
//    on a one-GPU machine). Rank 0 sums the partials in rank order into a
//    scratch buffer (ops::cuda::sum_bf16) and every rank copies the sum
//    back; the ranks meet on the host between the steps of one call, so
//    calls cannot be captured in CUDA graphs.
//
// NOTE: failure. A rank that fails inside a step calls abort(): the other
// ranks' waiting calls return an error instead of waiting forever (NCCL:
// ncclCommAbort). The communicator is unusable afterwards, and so is the
// backend holding it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <vector>

#include "core/status.h"

namespace cartserve::cuda {

class DeviceComm {
 public:
  virtual ~DeviceComm() = default;
  virtual int size() const = 0;
  // The GPU rank r runs on.
  virtual int device(int rank) const = 0;
  // Whether all_reduce_sum may be captured into a CUDA graph.
  virtual bool capturable() const = 0;
  // Collective, in place: data [count] bf16 on rank `rank`'s device.
  virtual Status all_reduce_sum(int rank, __nv_bfloat16* data, size_t count, cudaStream_t s) = 0;
  // Any thread, any time: pending and later calls fail (see the NOTE above).
  virtual void abort() = 0;
};

// NCCL over `devices` (rank r on devices[r]), one process.
Result<std::unique_ptr<DeviceComm>> make_nccl_device_comm(const std::vector<int>& devices);
// `size` ranks on `device`; calls of at most `max_count` elements.
Result<std::unique_ptr<DeviceComm>> make_one_device_comm(int size, int device, size_t max_count);

}  // namespace cartserve::cuda
