// Linear layers of a few rows (decode at small batch): y[n, out] = x[n, in] @ w[out, in]^T,
// bf16 operands, fp32 accumulation, n <= kGemvMaxRows.
//
// Design: the weights are read once and dominate the bytes, so the kernel is
// a stream over w. One warp owns R output rows (1, 2 or 4 by n): its 32 lanes
// walk them in 16-byte chunks (lane j takes chunks j, j + 32, ...), four
// chunks in flight per lane, and multiply each against the same chunk of every
// x row (x is small and stays in L1/L2; one x load serves the R rows). Each
// lane keeps R x n fp32 partial sums; a butterfly over the warp adds them and
// lane 0 writes the outputs of its rows.
// The summation order depends only on `in` (not on n, R, the grid or timing),
// so a row's result is the same bits in any batch of at most kGemvMaxRows rows.
// SwiGLU epilogue (gemv_swiglu): warp w owns gate row 16 (w / 8) + w % 8 and
// its up row 8 further (the blocks of 8 the backend interleaves them in) and
// writes act[., w] = silu(gate) * up, each rounded to bf16 first as silu_mul
// reads them: the bits of gemv into a projection, then silu_mul.
// Launched programmatically (CARTSERVE_PDL=1), each warp first asks L2 for
// its weight rows, then waits for the kernel before.
#include <array>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kWarps = 8;   // rows per CTA
constexpr int kUnroll = 4;  // 16-byte chunks in flight per lane

// What the kernel writes: y [N, out] in fp32 or bf16, or act [N, out / 2]
// (bf16) with R = 2 rows per warp, a gate row and its up row.
enum Epilogue { kF32, kBf16, kSwiglu };

template <int N, int R, int EPI>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(const bf16* __restrict__ x /* [N, in] */,
                const bf16* __restrict__ w /* [out, in] */,
                void* __restrict__ y /* [N, out], or [N, out / 2] for kSwiglu */, int in, int out,
                bool prefetch) {
  static_assert(EPI != kSwiglu || R == 2, "SwiGLU: a gate row and its up row per warp");
  constexpr int U = kUnroll / R;  // chunks of each row in flight per lane
  const int lane = threadIdx.x & 31;
  const int wid = blockIdx.x * kWarps + (threadIdx.x >> 5);
  // Weight row r of this warp: R consecutive rows, or gate row 16 (wid / 8)
  // + wid % 8 and its up row 8 further.
  const int row0 = EPI == kSwiglu ? 16 * (wid / 8) + wid % 8 : wid * R;
  const int row_step = EPI == kSwiglu ? 8 : 1;
  // The whole warp leaves: no CTA-wide synchronisation below (and an exited
  // CTA counts as triggered for PDL).
  if (row0 >= out) return;
  const int chunks = in / 8;
  const uint4* wr[R];
#pragma unroll
  for (int r = 0; r < R; ++r)  // rows past `out` read the last row and are not written
    wr[r] = reinterpret_cast<const uint4*>(
        w + static_cast<int64_t>(min(row0 + r * row_step, out - 1)) * in);
  if (prefetch && lane == 0) {  // weights (immutable): before the wait
#pragma unroll
    for (int r = 0; r < R; ++r)
      l2_prefetch(wr[r], in * 2);
  }
  pdl_wait();
  pdl_trigger();
  const uint4* xr = reinterpret_cast<const uint4*>(x);
  float acc[R][N];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < N; ++t)
      acc[r][t] = 0.f;
  // Each x chunk is loaded once for the warp's R rows. Every accumulator takes
  // its lane's chunks in increasing order whatever U and R are.
  int c = lane;
  for (; c + (U - 1) * 32 < chunks; c += U * 32) {
    uint4 wv[U][R];
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int r = 0; r < R; ++r)
        wv[u][r] = __ldcs(wr[r] + c + u * 32);  // streamed once: do not keep in cache
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int t = 0; t < N; ++t) {
        const uint4 xv = __ldg(xr + static_cast<int64_t>(t) * chunks + c + u * 32);
#pragma unroll
        for (int r = 0; r < R; ++r)
          acc[r][t] = dot_bf16x8(wv[u][r], xv, acc[r][t]);
      }
    }
  }
  for (; c < chunks; c += 32) {
    uint4 wv[R];
#pragma unroll
    for (int r = 0; r < R; ++r)
      wv[r] = __ldcs(wr[r] + c);
#pragma unroll
    for (int t = 0; t < N; ++t) {
      const uint4 xv = __ldg(xr + static_cast<int64_t>(t) * chunks + c);
#pragma unroll
      for (int r = 0; r < R; ++r)
        acc[r][t] = dot_bf16x8(wv[r], xv, acc[r][t]);
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < N; ++t)
      acc[r][t] = warp_sum(acc[r][t]);
  if (lane != 0) return;
  if constexpr (EPI == kSwiglu) {
#pragma unroll
    for (int t = 0; t < N; ++t) {
      const float gate = __bfloat162float(__float2bfloat16_rn(acc[0][t]));
      const float up = __bfloat162float(__float2bfloat16_rn(acc[1][t]));
      static_cast<bf16*>(y)[static_cast<int64_t>(t) * (out / 2) + wid] =
          __float2bfloat16_rn(silu_times(gate, up));
    }
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (row0 + r >= out) break;
#pragma unroll
      for (int t = 0; t < N; ++t) {
        const int64_t i = static_cast<int64_t>(t) * out + row0 + r;
        if constexpr (EPI == kF32) {
          static_cast<float*>(y)[i] = acc[r][t];
        } else {
          static_cast<bf16*>(y)[i] = __float2bfloat16_rn(acc[r][t]);
        }
      }
    }
  }
}

// Weight rows per warp for n x rows: one at n <= 2 (the most rows in flight),
// more as n grows so that each x chunk load serves several rows.
constexpr int rows_per_warp(int n) {
  return n <= 2 ? 1 : n <= 8 ? 2 : 4;
}

using Kernel = void (*)(const bf16*, const bf16*, void*, int, int, bool);

constexpr int rows_per_warp(int n, int epi) {
  return epi == kSwiglu ? 2 : rows_per_warp(n);
}

template <int EPI, int... I>
constexpr auto kernel_table(std::integer_sequence<int, I...>) {
  return std::array<Kernel, sizeof...(I)>{gemv_kernel<I + 1, rows_per_warp(I + 1, EPI), EPI>...};
}

template <int EPI>
void launch_gemv(const bf16* x, const bf16* w, void* y, int n, int in, int out, cudaStream_t s) {
  // One instance per row count: the partial sums live in registers.
  static constexpr auto kKernels =
      kernel_table<EPI>(std::make_integer_sequence<int, kGemvMaxRows>{});
  const int rows_per_cta = kWarps * rows_per_warp(n, EPI);
  const unsigned grid = static_cast<unsigned>((out + rows_per_cta - 1) / rows_per_cta);
  launch(kKernels[static_cast<size_t>(n - 1)], grid, kWarps * 32, 0, s, x, w, y, in, out,
         pdl_enabled());
}

}  // namespace

bool gemv_supports(const void* x, const void* w, int n, int in) {
  return n >= 1 && n <= kGemvMaxRows && in > 0 && in % 8 == 0 && aligned16(x) && aligned16(w);
}

void gemv(const bf16* x, const bf16* w, void* y, bool y_fp32, int n, int in, int out,
          cudaStream_t s) {
  if (n <= 0 || out <= 0) return;
  if (!gemv_supports(x, w, n, in))
    op_fail("gemv", "needs 1 <= n <= kGemvMaxRows, in % 8 == 0, aligned x, w");
  if (y_fp32) {
    launch_gemv<kF32>(x, w, y, n, in, out, s);
  } else {
    launch_gemv<kBf16>(x, w, y, n, in, out, s);
  }
  check_launch("gemv");
}

void gemv_swiglu(const bf16* x, const bf16* w_gate_up, bf16* act, int n, int in, int ff,
                 cudaStream_t s) {
  if (n <= 0 || ff <= 0) return;
  if (!gemv_supports(x, w_gate_up, n, in) || ff % 8 != 0)
    op_fail("gemv_swiglu", "needs 1 <= n <= kGemvMaxRows, in % 8 == 0, ff % 8 == 0, aligned x, w");
  launch_gemv<kSwiglu>(x, w_gate_up, act, n, in, 2 * ff, s);
  check_launch("gemv_swiglu");
}

}  // namespace cartserve::ops::cuda
