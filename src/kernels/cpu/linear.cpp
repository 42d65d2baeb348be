// Dense layer: y = x @ w^T (+ bias). Weights are [out, in] as in HF checkpoints.
// Through BLAS; a plain loop where no BLAS is built in (the GPU-only build).
#ifdef CARTSERVE_HAVE_BLAS
#include <cblas.h>
#endif

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {

void linear(const float* x, const float* w, const float* bias, float* y, int n, int in_dim,
            int out_dim) {
#ifdef CARTSERVE_HAVE_BLAS
  if (n == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out_dim, in_dim, 1.0f, w, in_dim, x, 1, 0.0f, y, 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out_dim, in_dim, 1.0f, x, in_dim, w,
                in_dim, 0.0f, y, out_dim);
  }
#else
  ThreadPool::global().parallel_for(static_cast<size_t>(n) * out_dim, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const float* xr = x + (i / out_dim) * in_dim;
      const float* wr = w + (i % out_dim) * in_dim;
      float acc = 0.f;
      for (int k = 0; k < in_dim; ++k) acc += xr[k] * wr[k];
      y[i] = acc;
    }
  }, 64);
#endif
  if (bias) {
    for (int r = 0; r < n; ++r) {
      float* yr = y + static_cast<size_t>(r) * out_dim;
      for (int i = 0; i < out_dim; ++i)
        yr[i] += bias[i];
    }
  }
}

}  // namespace cartserve::ops::cpu
