// RMSNorm: one block per row; a block reduction of x^2, then scale.
#include "kernels/cuda/common.cuh"
#include "kernels/ops.h"

namespace cartserve::ops::cuda {

namespace {
__global__ void rms_norm_kernel(const float* x, const float* w, float* out, int dim, float eps) {
  __shared__ float shared[32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  float* orow = out + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    ss += xr[i] * xr[i];
  ss = block_sum(ss, shared);
  const float inv = rsqrtf(ss / dim + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    orow[i] = xr[i] * inv * w[i];
}
}  // namespace

void rms_norm(const float* x, const float* w, float* out, int n, int dim, float eps) {
  if (n == 0) return;
  rms_norm_kernel<<<n, 256>>>(x, w, out, dim, eps);
  check_launch("rms_norm");
}

}  // namespace cartserve::ops::cuda
