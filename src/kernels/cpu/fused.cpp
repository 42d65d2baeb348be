// The fp32 twins of the fused CUDA ops (kernels/cuda_ops.h): residual add +
// RMSNorm, QKV bias + RoPE on the fused row, SwiGLU on the fused gate/up row,
// and the row gather for the LM head. Same math as the unfused reference ops
// (rms_norm, rope, silu_mul) so the two paths agree; rows in parallel.
#include <cmath>
#include <cstring>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {

void add_rms_norm(float* x, const float* delta, const float* w, float* out, int n, int dim,
                  float eps) {
  ThreadPool::global().parallel_for(
      static_cast<size_t>(n),
      [&](size_t b, size_t e) {
        for (size_t r = b; r < e; ++r) {
          float* xr = x + r * dim;
          float* orow = out + r * dim;
          if (delta != nullptr) {
            const float* dr = delta + r * dim;
            for (int i = 0; i < dim; ++i)
              xr[i] += dr[i];
          }
          double ss = 0.0;  // as rms_norm: accumulated in double
          for (int i = 0; i < dim; ++i)
            ss += static_cast<double>(xr[i]) * xr[i];
          const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
          for (int i = 0; i < dim; ++i)
            orow[i] = xr[i] * inv * w[i];
        }
      },
      4);
}

void rope_qkv(float* qkv, const float* bias, const int32_t* positions, const RopeTable& table,
              int n, int n_heads, int n_kv_heads) {
  const int d = table.head_dim;
  const int half = d / 2;
  const size_t width = static_cast<size_t>(n_heads + 2 * n_kv_heads) * d;
  ThreadPool::global().parallel_for(
      static_cast<size_t>(n),
      [&](size_t b, size_t e) {
        std::vector<float> cos_v(half), sin_v(half);
        for (size_t t = b; t < e; ++t) {
          float* row = qkv + t * width;  // q | k | v
          if (bias != nullptr) {
            for (size_t i = 0; i < width; ++i)
              row[i] += bias[i];
          }
          // As rope: the angle rounded to fp32 (pos * inv_freq), then cos/sin.
          const float pos = static_cast<float>(positions[t]);
          for (int i = 0; i < half; ++i) {
            const float angle = pos * table.inv_freq[i];
            cos_v[i] = std::cos(angle);
            sin_v[i] = std::sin(angle);
          }
          for (int h = 0; h < n_heads + n_kv_heads; ++h) {  // q heads, then k heads
            float* xh = row + static_cast<size_t>(h) * d;
            for (int i = 0; i < half; ++i) {
              const float a = xh[i];
              const float bb = xh[i + half];
              xh[i] = a * cos_v[i] - bb * sin_v[i];
              xh[i + half] = bb * cos_v[i] + a * sin_v[i];
            }
          }
        }
      },
      8);
}

void silu_mul_fused(const float* gate_up, float* out, int n, int ff) {
  ThreadPool::global().parallel_for(
      static_cast<size_t>(n),
      [&](size_t b, size_t e) {
        for (size_t r = b; r < e; ++r) {
          const float* g = gate_up + r * 2 * ff;
          const float* u = g + ff;
          float* o = out + r * ff;
          for (int j = 0; j < ff; ++j)
            o[j] = g[j] / (1.0f + std::exp(-g[j])) * u[j];  // as silu_mul
        }
      },
      4);
}

void gather_rows(const float* x, const int32_t* rows, float* out, int n, int dim) {
  for (int i = 0; i < n; ++i) {
    std::memcpy(out + static_cast<size_t>(i) * dim, x + static_cast<size_t>(rows[i]) * dim,
                sizeof(float) * dim);
  }
}

}  // namespace cartserve::ops::cpu
