// Dense layer over quantized weights (kernels/quant_ops.h).
// A few rows (decode): the activations are quantized to int16 per block once, then every
// weight row is read from memory once, by one thread, and dotted with all the
// rows (integer block products, kernels/cpu/quant_dot.h).
// Many rows (prefill): panels of weight rows are dequantized to fp32 and
// multiplied by gemm_nt (batch-invariant), which is compute-bound there and
// faster than the integer kernels; the dequantization is small next to the
// product. The
// activations are rounded as the integer kernels round them (int16 per block
// of 32, then back to fp32), so both paths compute the same products up to
// float summation order: a token's logits do not depend on whether it was
// prefilled in a big chunk or a small one (the cartridge canary relies on it).
#include <algorithm>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/cpu/gemm_nt.h"
#include "kernels/cpu/quant_dot.h"
#include "kernels/quant_ops.h"

namespace cartserve::ops::cpu {
namespace {

// Rows of x up to which the integer kernels are used (as linear.cpp's
// small-batch kernel: a row's result does not depend on the batch).
constexpr int kSmallBatchMaxRows = 16;
// Weight rows per task of the thread pool.
constexpr size_t kMinRowsPerTask = 16;

void add_bias(const float* bias, float* y, int n, int64_t out_dim) {
  if (!bias) return;
  for (int r = 0; r < n; ++r) {
    float* yr = y + static_cast<size_t>(r) * static_cast<size_t>(out_dim);
    for (int64_t i = 0; i < out_dim; ++i)
      yr[i] += bias[i];
  }
}

void linear_small_batch(const float* x, const QuantMatrix& w, float* y, int n) {
  // Reused across calls (decode allocates nothing). A reference, so that the
  // pool's threads see the caller's copy, not their own.
  thread_local QActRows tls_a;
  QActRows& a = tls_a;
  quantize_rows_act(x, n, static_cast<int>(w.cols), a);
  const size_t ldy = static_cast<size_t>(w.rows);
  ThreadPool::global().parallel_for(
      static_cast<size_t>(w.rows),
      [&](size_t b, size_t e) {
        quant_dot_rows(w, static_cast<int64_t>(b), static_cast<int64_t>(e), a, 0, n, y + b, ldy);
      },
      kMinRowsPerTask);
}

void linear_panels(const float* x_in, const QuantMatrix& w, float* y, int n) {
  const size_t k = static_cast<size_t>(w.cols);
  thread_local QActRows tls_a;
  thread_local std::vector<float> tls_x;
  QActRows& a = tls_a;
  std::vector<float>& xr = tls_x;  // [n, k]: x as the integer kernels see it
  quantize_rows_act(x_in, n, static_cast<int>(k), a);
  xr.resize(static_cast<size_t>(n) * k);
  ThreadPool::global().parallel_for(
      static_cast<size_t>(n) * k / 32,
      [&](size_t b, size_t e) {
        for (size_t blk = b; blk < e; ++blk) {
          const float d = a.d[blk];
          for (size_t i = 32 * blk; i < 32 * blk + 32; ++i)
            xr[i] = static_cast<float>(a.q[i]) * d;
        }
      },
      1024);
  gemm_nt(
      xr.data(), n, static_cast<int>(k), w.rows,
      [&](int64_t j0, int count, float* dst) { dequantize_rows(w, j0, count, dst); }, y,
      static_cast<size_t>(w.rows));
}

}  // namespace

void quant_dot_rows(const QuantMatrix& w, int64_t j0, int64_t j1, const QActRows& a, int r0, int r1,
                    float* y, size_t ldy) {
#if defined(__x86_64__)
  switch (cpu_isa()) {
    case CpuIsa::kAvx512:
      return detail::quant_dot_avx512(w, j0, j1, a, r0, r1, y, ldy);
    case CpuIsa::kAvx2:
      return detail::quant_dot_avx2(w, j0, j1, a, r0, r1, y, ldy);
    case CpuIsa::kScalar:
      break;
  }
#endif
  detail::quant_dot_scalar(w, j0, j1, a, r0, r1, y, ldy);
}

void linear_quant(const float* x, const QuantMatrix& w, const float* bias, float* y, int n,
                  LinearKernel kernel) {
  if (n <= 0) return;
  if (kernel == LinearKernel::kGemm || (kernel == LinearKernel::kAuto && n > kSmallBatchMaxRows)) {
    linear_panels(x, w, y, n);
  } else {
    linear_small_batch(x, w, y, n);
  }
  add_bias(bias, y, n, w.rows);
}

}  // namespace cartserve::ops::cpu
