// Rotary position embedding, HF rotate_half layout: for i < d/2 the pair is
// (x[i], x[i + d/2]) rotated by angle pos * inv_freq[i]. Angles in double so
// large positions keep fp32 accuracy.
#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {

void rope(float* x, const int32_t* positions, const RopeTable& table, int n, int n_heads) {
  const int d = table.head_dim;
  const int half = d / 2;
  ThreadPool::global().parallel_for(
      static_cast<size_t>(n),
      [&](size_t b, size_t e) {
        std::vector<float> cos_v(half), sin_v(half);
        for (size_t t = b; t < e; ++t) {
          const double pos = positions[t];
          for (int i = 0; i < half; ++i) {
            // Same rounding as the reference: angle computed in fp32 (pos * inv_freq),
            // then cos/sin of that fp32 angle.
            const float angle = static_cast<float>(pos) * table.inv_freq[i];
            cos_v[i] = std::cos(angle);
            sin_v[i] = std::sin(angle);
          }
          for (int h = 0; h < n_heads; ++h) {
            float* xh = x + (t * n_heads + h) * d;
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

}  // namespace cartserve::ops::cpu
