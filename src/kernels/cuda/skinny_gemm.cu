// Linear layers of decode rows on tensor cores: y[n, out] = x[n, in] @ w[out, in]^T,
// bf16 operands, fp32 accumulation, for any n.
//
// Design: decode reads every weight once per step, so the kernel is a stream
// over w that feeds mma.sync m16n8k16 (w is the A operand, 16 output features
// per m-tile; the x rows are the B operand, 8 rows per n-tile).
//  - Loads: lane (g, t) of a warp reads 16 contiguous bytes of weight rows g and
//    g + 8 per 32-wide k chunk (a warp covers 16 rows x 64 bytes per chunk).
//    The 8 values a lane holds are fed to two mmas under a fixed permutation
//    of k inside the chunk; x is read under the same permutation, so the sum
//    is the same dot product.
//  - Work split: a CTA owns MT m-tiles (MT * 16 features) and one group of up to
//    64 x rows; its `wk` warps split the k chunks into contiguous ranges, and
//    their partial sums are added through shared memory in warp order.
//  - Batch invariance: `wk` and the ranges depend only on `in`, and an mma's
//    output element depends only on its own row of A, column of B and
//    accumulator, so a row's bits are the same for every n, every MT and
//    every neighbour in its step. MT and NT (n-tiles) only choose which warp
//    computes what: MT grows with n so that a CTA's x reads (L1/L2) stay at
//    most its weight bytes.
//  - Launched programmatically (CARTSERVE_PDL=1, common.cuh), each warp first
//    asks L2 for its weight slice (one bulk prefetch per row), then waits for
//    the kernel before: the weights stream while the small kernels between
//    two GEMMs of a decode step run.
#include <algorithm>
#include <array>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kGroupRows = 64;  // x rows per CTA (8 n-tiles); larger n: more CTAs
constexpr int kMaxSplit = 8;    // warps per CTA, each a range of k chunks

// D += A (16x16, row-major) * B (16x8, col-major), bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma_bf16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One 32-wide k chunk: lo/hi hold physical k 8t..8t+7 of weight rows g and
// g + 8, b the same k of x row g. mma 0 takes k 8t..8t+3 (as its logical k
// 2t, 2t+1, 2t+8, 2t+9), mma 1 takes 8t+4..8t+7.
__device__ __forceinline__ void mma_chunk(float (&d)[4], const uint4& lo, const uint4& hi,
                                          const uint4& b) {
  mma_bf16(d, lo.x, hi.x, lo.y, hi.y, b.x, b.y);
  mma_bf16(d, lo.z, hi.z, lo.w, hi.w, b.z, b.w);
}

// What a CTA writes: y in fp32 or bf16, or SwiGLU of an interleaved gate/up
// projection: m-tile T holds gate features 8T..8T+7 (its rows 0-7) and the
// matching up features (rows 8-15), so y is [n, out / 2] bf16 with
// y[r, 8T + g] = silu(gate) * up, each rounded to bf16 first as silu_mul
// reads them from a stored projection (the same bits as the two-step path).
enum Epilogue { kF32, kBf16, kSwiglu };

template <int MT, int NT, int EPI>
__global__ void __launch_bounds__(kMaxSplit * 32)
    skinny_kernel(const bf16* __restrict__ x /* [n, in] */,
                  const bf16* __restrict__ w /* [out, in] */,
                  void* __restrict__ y /* [n, out], or [n, out / 2] for kSwiglu */, int n, int in,
                  int out, int wk, bool prefetch) {
  constexpr int U = MT == 1 ? 4 : MT == 2 ? 2 : 1;  // chunks per group: 8 uint4 of w per lane
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int chunks = in / 32;
  const int c_begin = warp * chunks / wk, c_end = (warp + 1) * chunks / wk;
  const int m0 = blockIdx.y * MT * 16;
  const int r0 = blockIdx.x * kGroupRows;

  // Lane t's uint4 of chunk c sits at index 4c + t of its row.
  const uint4* wr[MT][2];
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = min(m0 + 16 * i + g + 8 * h, out - 1);  // rows past `out`: not written
      wr[i][h] = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(m) * in) + t;
    }
  }
  if (prefetch && t == 0 && c_end > c_begin) {
    // Before the wait (weights are immutable): this warp's weight slice into
    // L2, streaming while the kernel before still runs (PDL launches only).
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        l2_prefetch(wr[i][h] + 4 * c_begin, (c_end - c_begin) * 64);
  }
  pdl_wait();
  pdl_trigger();
  const uint4* xr[NT];
  bool xlive[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int r = r0 + 8 * j + g;
    xlive[j] = r < n;
    xr[j] = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(min(r, n - 1)) * in) + t;
  }

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q)
        acc[i][j][q] = 0.f;

  auto step = [&](const uint4(&a)[MT][2], int c) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const uint4 b = xlive[j] ? __ldg(xr[j] + 4 * c) : make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int i = 0; i < MT; ++i)
        mma_chunk(acc[i][j], a[i][0], a[i][1], b);
    }
  };
  struct Group {
    uint4 a[U][MT][2];  // U chunks of MT m-tiles, rows g and g + 8
  };
  auto load = [&](Group& grp, int c) {
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          grp.a[u][i][h] = __ldcs(wr[i][h] + 4 * (c + u));  // streamed: read once per step
  };
  // Groups of U chunks, software-pipelined: group k + 1's weights are in
  // flight while group k's mmas run (two groups of registers).
  int c = c_begin;
  if (c + U <= c_end) {
    Group cur;
    load(cur, c);
    for (; c + U <= c_end; c += U) {
      Group nxt;
      const bool more = c + 2 * U <= c_end;
      if (more) load(nxt, c + U);
#pragma unroll
      for (int u = 0; u < U; ++u)
        step(cur.a[u], c + u);
      if (more) cur = nxt;
    }
  }
  for (; c < c_end; ++c) {
    uint4 a[MT][2];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        a[i][h] = __ldcs(wr[i][h] + 4 * c);
    step(a, c);
  }

  // Partial sums of the k ranges, added in warp order: ((p0 + p1) + p2) + ...
  // One m-tile at a time: warps 1..wk-1 park theirs, warp 0 adds them.
  __shared__ float part[kMaxSplit - 1][NT * 4 * 32];  // [warp - 1][NT][4][lane]
#pragma unroll
  for (int i = 0; i < MT; ++i) {
    if (wk == 1) break;
    if (warp > 0) {
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int q = 0; q < 4; ++q)
          part[warp - 1][(j * 4 + q) * 32 + lane] = acc[i][j][q];
    }
    __syncthreads();
    if (warp == 0) {
      for (int s = 1; s < wk; ++s)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int q = 0; q < 4; ++q)
            acc[i][j][q] += part[s - 1][(j * 4 + q) * 32 + lane];
    }
    if (i + 1 < MT) __syncthreads();
  }
  if (warp != 0) return;
    // Accumulator q of lane (g, t): feature g (+8 for q >= 2), x row 2t (+1 for odd q).
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      if constexpr (EPI == kSwiglu) {
        const int tile = m0 / 16 + i;
        if (16 * tile >= out) continue;  // out % 16 == 0: whole tiles
#pragma unroll
        for (int p = 0; p < 2; ++p) {
          const int r = r0 + 8 * j + 2 * t + p;
          if (r >= n) continue;
          const float gate = __bfloat162float(__float2bfloat16_rn(acc[i][j][p]));
          const float up = __bfloat162float(__float2bfloat16_rn(acc[i][j][2 + p]));
          static_cast<bf16*>(y)[static_cast<int64_t>(r) * (out / 2) + 8 * tile + g] =
              __float2bfloat16_rn(silu_times(gate, up));
        }
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const int m = m0 + 16 * i + g + 8 * (q >> 1);
          const int r = r0 + 8 * j + 2 * t + (q & 1);
          if (m >= out || r >= n) continue;
          const int64_t o = static_cast<int64_t>(r) * out + m;
          if constexpr (EPI == kF32) {
            static_cast<float*>(y)[o] = acc[i][j][q];
          } else {
            static_cast<bf16*>(y)[o] = __float2bfloat16_rn(acc[i][j][q]);
          }
        }
      }
    }
  }
}

using Kernel = void (*)(const bf16*, const bf16*, void*, int, int, int, int, bool);

// MT for NT n-tiles by default: a CTA's x reads (MT*16 features share them)
// stay at or below its weight bytes.
constexpr int m_tiles(int nt) {
  return nt <= 2 ? 1 : nt <= 4 ? 2 : 4;
}

// [log2 MT][NT - 1]: every m-tile count for every n-tile count.
template <int EPI, int... NT>
constexpr auto kernel_row(std::integer_sequence<int, NT...>) {
  using Row = std::array<Kernel, sizeof...(NT)>;
  return std::array<Row, 3>{Row{skinny_kernel<1, NT + 1, EPI>...},
                            Row{skinny_kernel<2, NT + 1, EPI>...},
                            Row{skinny_kernel<4, NT + 1, EPI>...}};
}

void launch_skinny(int epi, const bf16* x, const bf16* w, void* y, int n, int in, int out,
                   cudaStream_t s, int wk, int mt) {
  if (n <= 0 || out <= 0) return;
  if (!skinny_gemm_supports(x, w, in)) {
    op_fail("skinny_gemm", "needs in % 32 == 0 and 16-byte aligned x, w");
  }
  if (wk < 1 || wk > kMaxSplit) op_fail("skinny_gemm", "needs 1 <= wk <= 8");
  using Table = std::array<std::array<Kernel, 8>, 3>;
  static constexpr Table kTables[3] = {kernel_row<kF32>(std::make_integer_sequence<int, 8>{}),
                                       kernel_row<kBf16>(std::make_integer_sequence<int, 8>{}),
                                       kernel_row<kSwiglu>(std::make_integer_sequence<int, 8>{})};
  const int nt = (std::min(n, kGroupRows) + 7) / 8;
  if (mt == 0) mt = m_tiles(nt);
  const int mt_index = mt == 1 ? 0 : mt == 2 ? 1 : mt == 4 ? 2 : -1;
  if (mt_index < 0) op_fail("skinny_gemm", "needs mt in {1, 2, 4}");
  const dim3 grid(static_cast<unsigned>((n + kGroupRows - 1) / kGroupRows),
                  static_cast<unsigned>((out + 16 * mt - 1) / (16 * mt)));
  const Kernel k = kTables[epi][static_cast<size_t>(mt_index)][static_cast<size_t>(nt - 1)];
  launch(k, grid, wk * 32, 0, s, x, w, y, n, in, out, wk, pdl_enabled());
  check_launch("skinny_gemm");
}

}  // namespace

int skinny_gemm_split(int in) {
  const int chunks = in / 32;
  return std::max(1, std::min(kMaxSplit, chunks / 4));
}

bool skinny_gemm_supports(const void* x, const void* w, int in) {
  return in > 0 && in % 32 == 0 && aligned16(x) && aligned16(w);
}

void skinny_gemm_shaped(const bf16* x, const bf16* w, void* y, bool y_fp32, int n, int in, int out,
                        cudaStream_t s, int wk, int mt) {
  launch_skinny(y_fp32 ? kF32 : kBf16, x, w, y, n, in, out, s, wk, mt);
}

void skinny_gemm(const bf16* x, const bf16* w, void* y, bool y_fp32, int n, int in, int out,
                 cudaStream_t s) {
  launch_skinny(y_fp32 ? kF32 : kBf16, x, w, y, n, in, out, s, skinny_gemm_split(in), 0);
}

void skinny_gemm_swiglu(const bf16* x, const bf16* w_gate_up, bf16* act, int n, int in, int ff,
                        cudaStream_t s) {
  if (ff % 8 != 0) op_fail("skinny_gemm_swiglu", "needs ff % 8 == 0 (gate/up blocks of 8)");
  launch_skinny(kSwiglu, x, w_gate_up, act, n, in, 2 * ff, s, skinny_gemm_split(in), 0);
}

}  // namespace cartserve::ops::cuda
