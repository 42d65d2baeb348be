// Rotary embedding (rotate_half layout): one thread per (token, head, pair).
#include "kernels/cuda/common.cuh"
#include "kernels/ops.h"

namespace cartserve::ops::cuda {

namespace {
__global__ void rope_kernel(float* x, const int32_t* positions, const float* inv_freq, int n,
                            int n_heads, int head_dim) {
  const int half = head_dim / 2;
  const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long total = static_cast<long long>(n) * n_heads * half;
  if (idx >= total) return;
  const int i = static_cast<int>(idx % half);
  const long long th = idx / half;  // token * n_heads + head
  const int t = static_cast<int>(th / n_heads);
  const float angle = static_cast<float>(positions[t]) * inv_freq[i];
  float s, c;
  sincosf(angle, &s, &c);
  float* xh = x + th * head_dim;
  const float a = xh[i];
  const float b = xh[i + half];
  xh[i] = a * c - b * s;
  xh[i + half] = b * c + a * s;
}
}  // namespace

void rope(float* x, const int32_t* positions, const RopeTable& table, int n, int n_heads) {
  const long long total = static_cast<long long>(n) * n_heads * (table.head_dim / 2);
  if (total == 0) return;
  const int threads = 256;
  rope_kernel<<<static_cast<unsigned>((total + threads - 1) / threads), threads>>>(
      x, positions, table.inv_freq, n, n_heads, table.head_dim);
  check_launch("rope");
}

}  // namespace cartserve::ops::cuda
