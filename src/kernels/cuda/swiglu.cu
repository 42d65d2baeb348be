// SwiGLU over the fused gate/up projection: out[i, j] = silu(g) * u, where a
// row of gate_up holds gate and up in alternating blocks of `block` features
// (gate_up_offset(): block == ff is the plain [gate | up] layout).
//
// Design: purely element-wise and bandwidth-bound. A flat grid-stride loop
// over the n * ff outputs in chunks of 8 (16-byte loads of g and u, one
// 16-byte store) when ff % 8 == 0 and the pointers are aligned, else one
// element per step. The math is fp32: g / (1 + expf(-g)) * u (expf, not
// __expf; for g -> -inf the quotient goes to -0, never NaN), rounded once to
// bf16. The grid is sized from the host-known n * ff.
// silu_mul_scaled (the norm-folded forward): grid (n, column blocks), each
// CTA first computes its row's inv_rms r from the residual row (row_inv_rms;
// every CTA of a row gets the same bits), then one chunk per thread (four
// from 256 rows): silu(g * r) * (u * r), r applied in fp32 to the bf16
// projections.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kThreads = 256;

// One chunk of VEC gate features (at g) and their up features (`block`
// after them), loaded; store() writes silu(g r) * (u r) (r = 1: unscaled;
// x * 1.0f is x, so the bits are silu_mul's).
template <int VEC>
struct GateUpChunk {
  float g[VEC], u[VEC];
  __device__ __forceinline__ void load(const bf16* gp, int block) {
    if constexpr (VEC == 8) {
      load_bf16x8(gp, g);
      load_bf16x8(gp + block, u);
    } else {
      g[0] = __bfloat162float(gp[0]);
      u[0] = __bfloat162float(gp[block]);
    }
  }
  __device__ __forceinline__ void store(bf16* o, float r) const {
    float ov[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      ov[k] = silu_times(g[k] * r, u[k] * r);
    if constexpr (VEC == 8) {
      store_bf16x8(o, ov);
    } else {
      *o = __float2bfloat16_rn(ov[0]);
    }
  }
};

template <int VEC>
__global__ void __launch_bounds__(kThreads)
    silu_mul_kernel(const bf16* __restrict__ gate_up /* [n, 2 * ff] */,
                    bf16* __restrict__ out /* [n, ff] */, int64_t n, int ff, int block) {
  pdl_wait();
  pdl_trigger();
  const int per_row = ff / VEC;  // chunks per output row
  const int64_t total = n * per_row;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < total;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = c / per_row;
    const int j = static_cast<int>(c - row * per_row) * VEC;
    // A chunk of VEC never straddles two blocks (block % VEC == 0).
    GateUpChunk<VEC> ch;
    ch.load(gate_up + row * 2 * ff + gate_up_offset(j, block), block);
    ch.store(out + row * ff + j, 1.f);
  }
}

// K chunks per thread, kThreads * K consecutive chunks per CTA (K = 4 for
// prompt-sized row counts: the row factor's reads and reduction then serve
// four times the outputs).
template <int VEC, int K>
__global__ void __launch_bounds__(kThreads)
    silu_mul_scaled_kernel(const bf16* __restrict__ gate_up /* [n, 2 * ff] */,
                           bf16* __restrict__ out /* [n, ff] */, int ff, int block,
                           RowRmsScale scale) {
  pdl_wait();
  pdl_trigger();
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  // The chunks' loads are in flight while the row factor is reduced.
  GateUpChunk<VEC> ch[K];
  int j[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    j[k] =
        ((static_cast<int>(blockIdx.y) * K + k) * kThreads + static_cast<int>(threadIdx.x)) * VEC;
    if (j[k] < ff) ch[k].load(gate_up + row * 2 * ff + gate_up_offset(j[k], block), block);
  }
  const float r = row_inv_rms(scale.x + row * scale.dim, scale.dim, scale.eps, red);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if (j[k] < ff) ch[k].store(out + row * ff + j[k], r);
  }
}

}  // namespace

void silu_mul_scaled(const bf16* gate_up, bf16* out, int n, int ff, const RowRmsScale& scale,
                     cudaStream_t s, int block) {
  if (n <= 0 || ff <= 0) return;
  if (block == 0) block = ff;
  if (block < 0 || ff % block != 0) op_fail("silu_mul_scaled", "block must divide ff");
  if (scale.x == nullptr || scale.dim <= 0) op_fail("silu_mul_scaled", "needs the residual rows");
  const bool vec = block % 8 == 0 && aligned16(gate_up) && aligned16(out);
  const int chunks = vec ? ff / 8 : ff;
  // Decode-sized row counts: one chunk per thread (more CTAs, each one load
  // deep); from kWideRows rows, four.
  constexpr int kWideRows = 256;
  const int k = n >= kWideRows ? 4 : 1;
  const dim3 grid(static_cast<unsigned>(n),
                  static_cast<unsigned>((chunks + kThreads * k - 1) / (kThreads * k)));
  if (vec) {
    launch(k == 4 ? silu_mul_scaled_kernel<8, 4> : silu_mul_scaled_kernel<8, 1>, grid, kThreads, 0,
           s, gate_up, out, ff, block, scale);
  } else {
    launch(k == 4 ? silu_mul_scaled_kernel<1, 4> : silu_mul_scaled_kernel<1, 1>, grid, kThreads, 0,
           s, gate_up, out, ff, block, scale);
  }
  check_launch("silu_mul_scaled");
}

void silu_mul(const bf16* gate_up, bf16* out, int n, int ff, cudaStream_t s, int block) {
  if (n <= 0 || ff <= 0) return;
  if (block == 0) block = ff;
  if (block < 0 || ff % block != 0) op_fail("silu_mul", "block must divide ff");
  const bool vec = block % 8 == 0 && aligned16(gate_up) && aligned16(out);
  const long long work = static_cast<long long>(n) * (vec ? ff / 8 : ff);
  const unsigned grid = grid_for(work, kThreads);
  if (vec) {
    launch(silu_mul_kernel<8>, grid, kThreads, 0, s, gate_up, out, static_cast<int64_t>(n), ff,
           block);
  } else {
    launch(silu_mul_kernel<1>, grid, kThreads, 0, s, gate_up, out, static_cast<int64_t>(n), ff,
           block);
  }
  check_launch("silu_mul");
}

}  // namespace cartserve::ops::cuda
