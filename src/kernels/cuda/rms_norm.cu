// Residual add fused with RMSNorm: x += delta; out = bf16(x * inv_rms * w).
//
// Design: one CTA per row (grid = n). Each thread owns a fixed set of
// "chunks" of the row (chunk c = threadIdx.x + k * blockDim.x, k < CHUNKS;
// a chunk is 8 consecutive elements when dim % 8 == 0 and the pointers are
// 16-byte aligned, else 1 element) and keeps them in registers between the
// two passes:
//   pass 1: load x (fp32) and delta (bf16), add in fp32, store x back, and
//           accumulate the sum of squares of the new x in fp32;
//   block_sum (fixed-order warp butterflies, then the warp totals in order);
//   pass 2: inv = 1 / sqrtf(mean + eps) (IEEE sqrt and division), out =
//           x * inv * w rounded once to bf16.
// The CTA size is a function of dim only, so the reduction order and hence
// the bits do not depend on n or on the other rows (batch invariance).
// The thread that reads delta[c] is the one that later writes out[c], so
// delta may alias out (in-place use).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

// Vectorised path: 8 elements per chunk, up to 4 chunks per thread
// (dim <= 8 * 4 * 1024); scalar path: up to 16 per thread (dim <= 16384).
constexpr int kVecChunks = 4;
constexpr int kScalarChunks = 16;

template <int VEC, int CHUNKS>
__global__ void __launch_bounds__(1024)
    add_rms_norm_kernel(float* __restrict__ x /* [n, dim] */, const bf16* delta /* [n, dim] */,
                        const bf16* __restrict__ w /* [dim] */, bf16* out /* [n, dim] */, int dim,
                        float eps) {
  pdl_wait();
  pdl_trigger();
  __shared__ float red[32];
  const int64_t row = blockIdx.x;
  float* xr = x + row * dim;
  const bf16* dr = delta != nullptr ? delta + row * dim : nullptr;
  bf16* orow = out + row * dim;
  const int n_chunks = dim / VEC;

  float v[CHUNKS][VEC];  // this thread's chunks of the updated x
  float ss = 0.f;
#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < n_chunks) {
      if constexpr (VEC == 8) {
        load_f32x8(xr + 8 * c, v[k]);
        if (dr != nullptr) {
          float d[8];
          load_bf16x8(dr + 8 * c, d);
#pragma unroll
          for (int j = 0; j < 8; ++j)
            v[k][j] += d[j];
          store_f32x8(xr + 8 * c, v[k]);
        }
      } else {
        v[k][0] = xr[c];
        if (dr != nullptr) {
          v[k][0] += __bfloat162float(dr[c]);
          xr[c] = v[k][0];
        }
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        ss += v[k][j] * v[k][j];
    }
  }

  const float total = block_sum(ss, red);
  const float inv = 1.0f / sqrtf(total / static_cast<float>(dim) + eps);

#pragma unroll
  for (int k = 0; k < CHUNKS; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < n_chunks) {
      if constexpr (VEC == 8) {
        float wv[8], o[8];
        load_bf16x8(w + 8 * c, wv);
#pragma unroll
        for (int j = 0; j < 8; ++j)
          o[j] = v[k][j] * inv * wv[j];
        store_bf16x8(orow + 8 * c, o);
      } else {
        orow[c] = __float2bfloat16_rn(v[k][0] * inv * __bfloat162float(w[c]));
      }
    }
  }
}

template <int VEC, int CHUNKS>
void run_norm(float* x, const bf16* delta, const bf16* w, bf16* out, int n, int dim, float eps,
              cudaStream_t s) {
  const int n_chunks = dim / VEC;
  if (n_chunks > CHUNKS * 1024) op_fail("add_rms_norm", "dim too large for one CTA per row");
  // Up to 256 threads with one chunk each; more threads only when a thread
  // would otherwise need more than CHUNKS chunks.
  int threads = warp_round(n_chunks, 256);
  if ((n_chunks + threads - 1) / threads > CHUNKS)
    threads = warp_round((n_chunks + CHUNKS - 1) / CHUNKS, 1024);
  launch(add_rms_norm_kernel<VEC, CHUNKS>, n, threads, 0, s, x, delta, w, out, dim, eps);
}

}  // namespace

void add_rms_norm(float* x, const bf16* delta, const bf16* w, bf16* out, int n, int dim, float eps,
                  cudaStream_t s) {
  if (n <= 0) return;
  if (dim <= 0) op_fail("add_rms_norm", "dim must be positive");
  const bool vec = dim % 8 == 0 && aligned16(x) && aligned16(w) && aligned16(out) &&
                   (delta == nullptr || aligned16(delta));
  if (vec) {
    run_norm<8, kVecChunks>(x, delta, w, out, n, dim, eps, s);
  } else {
    run_norm<1, kScalarChunks>(x, delta, w, out, n, dim, eps, s);
  }
  check_launch("add_rms_norm");
}

}  // namespace cartserve::ops::cuda
