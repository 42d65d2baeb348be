// Dense layer through BLAS: y = x @ w^T (+ bias). Weights are [out, in] as in HF checkpoints.
#include <cblas.h>

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {

void linear(const float* x, const float* w, const float* bias, float* y, int n, int in_dim,
            int out_dim) {
  if (n == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out_dim, in_dim, 1.0f, w, in_dim, x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out_dim, in_dim, 1.0f, x, in_dim, w,
                in_dim, 0.0f, y, out_dim);
  }
  if (bias) {
    for (int r = 0; r < n; ++r) {
      float* yr = y + static_cast<size_t>(r) * out_dim;
      for (int i = 0; i < out_dim; ++i)
        yr[i] += bias[i];
    }
  }
}

}  // namespace cartserve::ops::cpu
