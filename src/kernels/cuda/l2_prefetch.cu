// Asks the L2 to fetch a byte range (the next linear layer's weights) while
// other kernels run, so that the layer's GEMM finds them there instead of
// starting its HBM stream cold (runtime/cuda/cuda_backend.cpp launches it on
// a side stream beside the small kernels between two GEMMs).
//
// Design: fire and forget. Each thread issues cp.async.bulk.prefetch.L2 for
// its pieces of kPiece bytes (the TMA unit of its SM fetches them; nothing
// waits, no data reaches the SM), so the kernel ends as soon as the requests
// are queued. A hint only: it changes no memory and no result. Measured
// off by default (CudaOptions::l2_prefetch_bytes).
#include <algorithm>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kThreads = 32;
constexpr uint32_t kPiece = 64 << 10;  // bytes per prefetch instruction
constexpr unsigned kMaxBlocks = 64;    // spreads the requests over this many SMs' TMA units

__global__ void __launch_bounds__(kThreads)
    l2_prefetch_kernel(const char* __restrict__ p /* 16-byte aligned */,
                       uint64_t bytes /* % 16 == 0 */) {
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * kThreads * kPiece;
  for (uint64_t off = (static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x) * kPiece;
       off < bytes; off += stride) {
    const uint64_t left = bytes - off;
    l2_prefetch(p + off, static_cast<int>(left < kPiece ? left : kPiece));
  }
}

}  // namespace

void prefetch_l2(const void* p, uint64_t bytes, cudaStream_t s) {
  // The instruction wants 16-byte alignment and a multiple of 16 bytes: the
  // aligned part of the range.
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (a + 15) & ~uintptr_t{15};
  const uintptr_t end = (a + bytes) & ~uintptr_t{15};
  if (p == nullptr || end <= begin) return;
  const uint64_t n = end - begin;
  const uint64_t pieces = (n + kPiece - 1) / kPiece;
  const unsigned grid =
      static_cast<unsigned>(std::min<uint64_t>(kMaxBlocks, (pieces + kThreads - 1) / kThreads));
  l2_prefetch_kernel<<<grid, kThreads, 0, s>>>(reinterpret_cast<const char*>(begin), n);
  check_launch("prefetch_l2");
}

}  // namespace cartserve::ops::cuda
