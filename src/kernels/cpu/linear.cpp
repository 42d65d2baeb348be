// Dense layer: y = x @ w^T (+ bias). Weights are [out, in] as in HF checkpoints,
// fp32 or bf16 (half the bytes a decode step reads; computed in fp32).
// A few rows (decode): our own kernel that streams each weight row once from
// memory and dots it with every input row while it sits in L1 (BLAS sgemm
// packs the weights first, which costs more than the product at this size;
// at one row it matches sgemv, and keeps OpenBLAS's threads out of decode).
// Many rows (prefill): gemm_nt, whose rows, like the small-batch kernel's, do
// not depend on the other rows of the call (BLAS sgemm's do).
#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "kernels/cpu/gemm_nt.h"
#include "kernels/cpu/simd.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {
namespace {

// Rows of x up to which the small-batch kernel is used. Its result for a row
// does not depend on the other rows, so decode steps of up to 16 sequences
// give each sequence the same logits as it alone would (greedy answers do
// not change with concurrency). Speed on a 2-core Zen 4, SmolLM2 shapes: as
// fast as sgemv at 1 row, 2x sgemm at 4, 1.3x at 8; at 16 0.7x sgemm for a
// lone matrix but equal over a whole decode step (bench/cpu_model_bench).
constexpr int kSmallBatchMaxRows = 16;
// The same for bf16 weights, which the many-row path first widens to fp32.
constexpr int kSmallBatchMaxRowsBf16 = 32;
// Input rows handled per register block (8 accumulators of 8 lanes).
constexpr int kRowBlock = 8;

using simd::hsum;
using simd::v8f;

// Weights are fp32 or bf16 (uint16_t, the top half of an fp32).
inline v8f load_w8(const float* p) {
  return simd::load8(p);
}
inline v8f load_w8(const uint16_t* p) {
  return simd::load8_bf16(p);
}
inline float w_at(const float* p, int i) {
  return p[i];
}
inline float w_at(const uint16_t* p, int i) {
  return bf16_to_f32(p[i]);
}

// y[r * ldy] = dot(x[r, :k], wr[:k]) for r < R; wr stays in L1 across r.
template <int R, typename W>
void dot_rows(const float* x, const W* wr, int k, float* y, size_t ldy) {
  v8f acc[R] = {};
  int i = 0;
  for (; i + 8 <= k; i += 8) {
    const v8f wv = load_w8(wr + i);
    for (int r = 0; r < R; ++r)
      acc[r] += wv * simd::load8(x + static_cast<size_t>(r) * k + i);
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(acc[r]);
    const float* xr = x + static_cast<size_t>(r) * k;
    for (int t = i; t < k; ++t)
      s += xr[t] * w_at(wr, t);
    y[static_cast<size_t>(r) * ldy] = s;
  }
}

// y[r, j] for r < R (R <= kRowBlock) and one weight row j.
template <typename W>
void dot_block(const float* x, const W* wr, int k, float* y, size_t ldy, int rows) {
  switch (rows) {
    case 1:
      return dot_rows<1>(x, wr, k, y, ldy);
    case 2:
      return dot_rows<2>(x, wr, k, y, ldy);
    case 3:
      return dot_rows<3>(x, wr, k, y, ldy);
    case 4:
      return dot_rows<4>(x, wr, k, y, ldy);
    case 5:
      return dot_rows<5>(x, wr, k, y, ldy);
    case 6:
      return dot_rows<6>(x, wr, k, y, ldy);
    case 7:
      return dot_rows<7>(x, wr, k, y, ldy);
    default:
      return dot_rows<8>(x, wr, k, y, ldy);
  }
}

// Every weight row is read from memory once, by one thread.
template <typename W>
void linear_small_batch(const float* x, const W* w, float* y, int n, int in_dim, int out_dim) {
  ThreadPool::global().parallel_for(
      static_cast<size_t>(out_dim),
      [&](size_t b, size_t e) {
        for (size_t j = b; j < e; ++j) {
          const W* wr = w + j * static_cast<size_t>(in_dim);
          for (int r0 = 0; r0 < n; r0 += kRowBlock) {
            dot_block(x + static_cast<size_t>(r0) * in_dim, wr, in_dim,
                      y + static_cast<size_t>(r0) * out_dim + j, static_cast<size_t>(out_dim),
                      std::min(kRowBlock, n - r0));
          }
        }
      },
      64);
}

void add_bias(const float* bias, float* y, int n, int out_dim) {
  if (!bias) return;
  for (int r = 0; r < n; ++r) {
    float* yr = y + static_cast<size_t>(r) * out_dim;
    for (int i = 0; i < out_dim; ++i)
      yr[i] += bias[i];
  }
}

}  // namespace

void linear(const float* x, const float* w, const float* bias, float* y, int n, int in_dim,
            int out_dim, LinearKernel kernel) {
  if (kernel == LinearKernel::kPerRow ||
      (kernel == LinearKernel::kAuto && n <= kSmallBatchMaxRows)) {
    linear_small_batch(x, w, y, n, in_dim, out_dim);
  } else {
    const size_t k = static_cast<size_t>(in_dim);
    gemm_nt(
        x, n, in_dim, out_dim,
        [&](int64_t j0, int count, float* dst) {
          std::memcpy(dst, w + static_cast<size_t>(j0) * k, sizeof(float) * count * k);
        },
        y, static_cast<size_t>(out_dim));
  }
  add_bias(bias, y, n, out_dim);
}

void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int n, int in_dim,
                 int out_dim, LinearKernel kernel) {
  if (kernel == LinearKernel::kPerRow ||
      (kernel == LinearKernel::kAuto && n <= kSmallBatchMaxRowsBf16)) {
    linear_small_batch(x, w, y, n, in_dim, out_dim);
  } else {
    const size_t k = static_cast<size_t>(in_dim);
    gemm_nt(
        x, n, in_dim, out_dim,
        [&](int64_t j0, int count, float* dst) {
          convert_to_f32(DType::kBF16, w + static_cast<size_t>(j0) * k, dst,
                         static_cast<size_t>(count) * k);
        },
        y, static_cast<size_t>(out_dim));
  }
  add_bias(bias, y, n, out_dim);
}

}  // namespace cartserve::ops::cpu
