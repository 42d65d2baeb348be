// Element-wise ops: SwiGLU activation, residual add, embedding gather.
#include <cmath>
#include <cstring>

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  ThreadPool::global().parallel_for(
      static_cast<size_t>(n),
      [&](size_t b, size_t e) {
        for (size_t i = b; i < e; ++i) {
          const float g = gate[i];
          out[i] = g / (1.0f + std::exp(-g)) * up[i];
        }
      },
      4096);
}

void add_inplace(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    x[i] += y[i];
}

void embedding(const float* table, const int32_t* ids, float* out, int n, int dim) {
  for (int i = 0; i < n; ++i) {
    std::memcpy(out + static_cast<size_t>(i) * dim, table + static_cast<size_t>(ids[i]) * dim,
                sizeof(float) * dim);
  }
}

void kv_write(const float* k, const float* v, const int32_t* slots, float* k_cache, float* v_cache,
              int n, int kv_dim) {
  for (int i = 0; i < n; ++i) {
    const size_t dst = static_cast<size_t>(slots[i]) * kv_dim;
    std::memcpy(k_cache + dst, k + static_cast<size_t>(i) * kv_dim, sizeof(float) * kv_dim);
    std::memcpy(v_cache + dst, v + static_cast<size_t>(i) * kv_dim, sizeof(float) * kv_dim);
  }
}

}  // namespace cartserve::ops::cpu
