// Linear layers of a few rows (decode at small batch): y[n, out] = x[n, in] @ w[out, in]^T,
// bf16 operands, fp32 accumulation, n <= kGemvMaxRows.
//
// Design: the weights are read once and dominate the bytes, so the kernel is
// a stream over w. One warp owns one output row: its 32 lanes walk the row in
// 16-byte chunks (lane j takes chunks j, j + 32, ...), four chunks in flight
// per lane, and multiply each against the same chunk of every x row (x is
// small and stays in L1/L2). Each lane keeps n fp32 partial sums; a butterfly
// over the warp adds them and lane 0 writes the n outputs of its row.
// The summation order depends only on `in` (not on n, the grid or timing), so
// a row's result is the same bits in any batch of at most kGemvMaxRows rows.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kWarps = 8;   // rows per CTA
constexpr int kUnroll = 4;  // 16-byte chunks in flight per lane

// sum_k w[k] * x[k] over 8 bf16 pairs packed in two uint4.
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  const auto* wp = reinterpret_cast<const __nv_bfloat162*>(&w);
  const auto* xp = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = __bfloat1622float2(wp[i]);
    const float2 b = __bfloat1622float2(xp[i]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
  return acc;
}

template <int N, bool F32_OUT>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const bf16* __restrict__ x /* [N, in] */,
                const bf16* __restrict__ w /* [out, in] */, void* __restrict__ y /* [N, out] */,
                int in, int out) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= out) return;  // the whole warp: no CTA-wide synchronisation below
  const int chunks = in / 8;
  const uint4* wr = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(row) * in);
  const uint4* xr = reinterpret_cast<const uint4*>(x);
  float acc[N];
#pragma unroll
  for (int t = 0; t < N; ++t)
    acc[t] = 0.f;
  int c = lane;
  for (; c + (kUnroll - 1) * 32 < chunks; c += kUnroll * 32) {
    uint4 wv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      wv[u] = __ldcs(wr + c + u * 32);  // streamed once: do not keep in cache
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int t = 0; t < N; ++t)
        acc[t] = dot8(wv[u], __ldg(xr + static_cast<int64_t>(t) * chunks + c + u * 32), acc[t]);
    }
  }
  for (; c < chunks; c += 32) {
    const uint4 wv = __ldcs(wr + c);
#pragma unroll
    for (int t = 0; t < N; ++t)
      acc[t] = dot8(wv, __ldg(xr + static_cast<int64_t>(t) * chunks + c), acc[t]);
  }
#pragma unroll
  for (int t = 0; t < N; ++t)
    acc[t] = warp_sum(acc[t]);
  if (lane == 0) {
#pragma unroll
    for (int t = 0; t < N; ++t) {
      const int64_t i = static_cast<int64_t>(t) * out + row;
      if constexpr (F32_OUT) {
        static_cast<float*>(y)[i] = acc[t];
      } else {
        static_cast<bf16*>(y)[i] = __float2bfloat16_rn(acc[t]);
      }
    }
  }
}

template <bool F32_OUT>
void launch(const bf16* x, const bf16* w, void* y, int n, int in, int out, cudaStream_t s) {
  using Kernel = void (*)(const bf16*, const bf16*, void*, int, int);
  // One instance per row count: the partial sums live in registers.
  constexpr Kernel kernels[kGemvMaxRows] = {gemv_kernel<1, F32_OUT>, gemv_kernel<2, F32_OUT>,
                                            gemv_kernel<3, F32_OUT>, gemv_kernel<4, F32_OUT>,
                                            gemv_kernel<5, F32_OUT>, gemv_kernel<6, F32_OUT>,
                                            gemv_kernel<7, F32_OUT>, gemv_kernel<8, F32_OUT>};
  const unsigned grid = static_cast<unsigned>((out + kWarps - 1) / kWarps);
  kernels[n - 1]<<<grid, kWarps * 32, 0, s>>>(x, w, y, in, out);
}

}  // namespace

bool gemv_supports(const void* x, const void* w, int n, int in) {
  return n >= 1 && n <= kGemvMaxRows && in > 0 && in % 8 == 0 && aligned16(x) && aligned16(w);
}

void gemv(const bf16* x, const bf16* w, void* y, bool y_fp32, int n, int in, int out,
          cudaStream_t s) {
  if (n <= 0 || out <= 0) return;
  if (!gemv_supports(x, w, n, in)) op_fail("gemv", "needs 1 <= n <= 8, in % 8 == 0, aligned x, w");
  if (y_fp32) {
    launch<true>(x, w, y, n, in, out, s);
  } else {
    launch<false>(x, w, y, n, in, out, s);
  }
  check_launch("gemv");
}

}  // namespace cartserve::ops::cuda
