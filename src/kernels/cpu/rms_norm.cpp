// RMSNorm, fp32 reference: out = x * rsqrt(mean(x^2) + eps) * w (accumulated in double).
#include <cmath>

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {

void rms_norm(const float* x, const float* w, float* out, int n, int dim, float eps) {
  ThreadPool::global().parallel_for(
      static_cast<size_t>(n),
      [&](size_t b, size_t e) {
        for (size_t r = b; r < e; ++r) {
          const float* xr = x + r * dim;
          float* orow = out + r * dim;
          double ss = 0.0;
          for (int i = 0; i < dim; ++i)
            ss += static_cast<double>(xr[i]) * xr[i];
          const float inv = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
          for (int i = 0; i < dim; ++i)
            orow[i] = xr[i] * inv * w[i];
        }
      },
      4);
}

}  // namespace cartserve::ops::cpu
