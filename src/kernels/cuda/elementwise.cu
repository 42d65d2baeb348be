// Element-wise ops: SwiGLU, residual add, embedding gather, KV cache writes.
// Grid-stride loops; all memory-bound, one pass.
#include "kernels/cuda/common.cuh"
#include "kernels/ops.h"

namespace cartserve::ops::cuda {

namespace {
constexpr int kThreads = 256;

unsigned blocks_for(long long n) {
  const long long b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 * 16 ? b : 65535 * 16);
}

__global__ void silu_mul_kernel(const float* gate, const float* up, float* out, long long n) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.f + __expf(-g)) * up[i];
  }
}

__global__ void add_kernel(float* x, const float* y, long long n) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

// One block per output row.
__global__ void embedding_kernel(const float* table, const int32_t* ids, float* out, int dim) {
  const float* src = table + static_cast<size_t>(ids[blockIdx.x]) * dim;
  float* dst = out + static_cast<size_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x)
    dst[i] = src[i];
}

// One block per token.
__global__ void kv_write_kernel(const float* k, const float* v, const int32_t* slots,
                                float* k_cache, float* v_cache, int kv_dim) {
  const size_t dst = static_cast<size_t>(slots[blockIdx.x]) * kv_dim;
  const size_t src = static_cast<size_t>(blockIdx.x) * kv_dim;
  for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    k_cache[dst + i] = k[src + i];
    v_cache[dst + i] = v[src + i];
  }
}
}  // namespace

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  if (n == 0) return;
  silu_mul_kernel<<<blocks_for(n), kThreads>>>(gate, up, out, n);
  check_launch("silu_mul");
}

void add_inplace(float* x, const float* y, int64_t n) {
  if (n == 0) return;
  add_kernel<<<blocks_for(n), kThreads>>>(x, y, n);
  check_launch("add_inplace");
}

void embedding(const float* table, const int32_t* ids, float* out, int n, int dim) {
  if (n == 0) return;
  embedding_kernel<<<n, kThreads>>>(table, ids, out, dim);
  check_launch("embedding");
}

void kv_write(const float* k, const float* v, const int32_t* slots, float* k_cache, float* v_cache,
              int n, int kv_dim) {
  if (n == 0) return;
  kv_write_kernel<<<n, 128>>>(k, v, slots, k_cache, v_cache, kv_dim);
  check_launch("kv_write");
}

}  // namespace cartserve::ops::cuda
