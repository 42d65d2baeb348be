// Shared helpers for the CUDA kernels: launch checks and block reductions.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

namespace cartserve::ops::cuda {

// A failed launch is a programming error (bad shapes were validated before);
// report it with the kernel's name and abort rather than compute garbage.
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    std::fprintf(stderr, "CUDA kernel %s failed: %s\n", what, cudaGetErrorString(err));
    std::abort();
  }
}

// Sum over a block of `blockDim.x` threads (a multiple of 32, at most 1024).
__device__ inline float block_sum(float v, float* shared /* [32] */) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < n_warps) ? shared[threadIdx.x] : 0.f;
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1)
      v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  const float total = shared[0];
  __syncthreads();
  return total;
}

}  // namespace cartserve::ops::cuda
