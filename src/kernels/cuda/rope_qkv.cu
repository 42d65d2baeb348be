// The fused QKV projection's epilogue, in place: bias, RoPE on q and k, and
// the rotated k plus v written to the paged KV cache.
//
// Design: one CTA per row (grid = n). The row's cos/sin table ([head_dim/2]
// each, angle = float(position) * inv_freq[i] in fp32, accurate sincosf) is
// computed once into shared memory and shared by all q and k heads. The
// row's work is then split into independent units, strided over the threads:
//   - rotation units: (q or k head, 8 consecutive pair indices i) -> reads
//     x[i..i+8) and x[half+i..half+i+8), adds the bias in fp32, rotates in
//     fp32, rounds once to bf16 and stores both halves back; a k head also
//     stores the same bf16 values at its cache slot;
//   - v units: (kv head, 8 consecutive dims) -> bias added (rounded once) and
//     stored back when there is a bias, and stored at the V cache slot.
// A unit is 1 element (pair) instead of 8 when head_dim / 2 is not a
// multiple of 8 or a pointer is not 16-byte aligned. Every element of the
// row and of the slot is written by exactly one thread; no atomics. A row
// with a negative slot is still rotated, it only skips the cache writes.
// With a RowRmsScale (the norm-folded forward), the CTA first computes its
// residual row's inv_rms (row_inv_rms, a block reduction) and every element
// is multiplied by it in fp32 before the bias; v is then always stored back.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

template <int VEC>
__device__ __forceinline__ void load_vec(const bf16* p, float (&f)[VEC]) {
  if constexpr (VEC == 8) {
    load_bf16x8(p, f);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      f[j] = __bfloat162float(p[j]);
  }
}

template <int VEC>
__device__ __forceinline__ void store_vec(bf16* p, const float (&f)[VEC]) {
  if constexpr (VEC == 8) {
    store_bf16x8(p, f);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j)
      p[j] = __float2bfloat16_rn(f[j]);
  }
}

// Dynamic shared memory: cos [half] then sin [half].
template <int VEC>
__global__ void __launch_bounds__(256)
    rope_qkv_kernel(bf16* __restrict__ qkv /* [n, (n_heads + 2 * n_kv) * head_dim] */,
                    const bf16* __restrict__ bias /* [(n_heads + 2 * n_kv) * head_dim] or null */,
                    const int32_t* __restrict__ positions /* [n] */,
                    const float* __restrict__ inv_freq /* [head_dim / 2] */,
                    const int32_t* __restrict__ slot_mapping /* [n] */, KvLayer kv, int n_heads,
                    RowRmsScale scale) {
  pdl_wait();
  pdl_trigger();
  extern __shared__ float cs[];
  __shared__ float red[32];
  const int hd = kv.head_dim;
  const int half = hd / 2;
  const int n_kv = kv.num_kv_heads;
  const int64_t kv_dim = static_cast<int64_t>(n_kv) * hd;
  const int64_t row = blockIdx.x;
  bf16* xr = qkv + row * (static_cast<int64_t>(n_heads) + 2 * n_kv) * hd;

  const float pos = static_cast<float>(positions[row]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float sn, cn;
    sincosf(pos * inv_freq[i], &sn, &cn);
    cs[i] = cn;
    cs[half + i] = sn;
  }
  __syncthreads();
  // Row factor (CTA-uniform branch: every thread reduces).
  const bool scaled = scale.x != nullptr;
  const float r = scaled ? row_inv_rms(scale.x + row * scale.dim, scale.dim, scale.eps, red) : 1.f;

  // Slot s of this layer: block s / block_size, offset s % block_size.
  const int32_t slot = slot_mapping[row];
  bf16* k_dst = nullptr;  // [n_kv, head_dim] at the slot, or null: no write
  bf16* v_dst = nullptr;
  if (slot >= 0) {
    const int64_t off = static_cast<int64_t>(slot / kv.block_size) * kv.block_stride +
                        static_cast<int64_t>(slot % kv.block_size) * kv_dim;
    k_dst = kv.k + off;
    v_dst = kv.v + off;
  }

  const int pair_units = half / VEC;                // per rotated head
  const int n_rot = (n_heads + n_kv) * pair_units;  // q heads, then k heads
  const int v_units = hd / VEC;                     // per v head
  const int n_units = n_rot + n_kv * v_units;
  for (int u = threadIdx.x; u < n_units; u += blockDim.x) {
    if (u < n_rot) {
      const int head = u / pair_units;
      const int i0 = (u % pair_units) * VEC;
      const int lo = head * hd + i0;  // offset of x[i0] of this head in the row
      float a[VEC], b[VEC];
      load_vec<VEC>(xr + lo, a);
      load_vec<VEC>(xr + lo + half, b);
      if (scaled) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          a[j] *= r;
          b[j] *= r;
        }
      }
      if (bias != nullptr) {
        float ba[VEC], bb[VEC];
        load_vec<VEC>(bias + lo, ba);
        load_vec<VEC>(bias + lo + half, bb);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          a[j] += ba[j];
          b[j] += bb[j];
        }
      }
      float ra[VEC], rb[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float c = cs[i0 + j];
        const float sn = cs[half + i0 + j];
        ra[j] = a[j] * c - b[j] * sn;
        rb[j] = b[j] * c + a[j] * sn;
      }
      store_vec<VEC>(xr + lo, ra);
      store_vec<VEC>(xr + lo + half, rb);
      if (head >= n_heads && k_dst != nullptr) {
        bf16* kd = k_dst + (head - n_heads) * hd + i0;
        store_vec<VEC>(kd, ra);  // same rounding: the same bf16 bits as in qkv
        store_vec<VEC>(kd + half, rb);
      }
    } else {
      const int uv = u - n_rot;
      const int kvh = uv / v_units;
      const int d0 = (uv % v_units) * VEC;
      const int off = (n_heads + n_kv + kvh) * hd + d0;
      float v[VEC];
      load_vec<VEC>(xr + off, v);
      if (scaled) {
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          v[j] *= r;
      }
      if (bias != nullptr) {
        float bv[VEC];
        load_vec<VEC>(bias + off, bv);
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          v[j] += bv[j];
      }
      if (scaled || bias != nullptr) store_vec<VEC>(xr + off, v);
      if (v_dst != nullptr) store_vec<VEC>(v_dst + kvh * hd + d0, v);
    }
  }
}

}  // namespace

void rope_qkv_write(bf16* qkv, const bf16* bias, const int32_t* positions, const float* inv_freq,
                    const int32_t* slot_mapping, const KvLayer& kv, int n, int n_heads,
                    cudaStream_t s, RowRmsScale scale) {
  if (n <= 0) return;
  const int hd = kv.head_dim;
  if (hd <= 0 || hd % 2 != 0) op_fail("rope_qkv_write", "head_dim must be positive and even");
  if (n_heads <= 0 || kv.num_kv_heads <= 0 || kv.block_size <= 0)
    op_fail("rope_qkv_write", "bad head counts or block size");
  if (scale.x != nullptr && scale.dim <= 0) op_fail("rope_qkv_write", "scale dim must be positive");
  const int half = hd / 2;
  const bool vec = half % 8 == 0 && kv.block_stride % 8 == 0 && aligned16(qkv) &&
                   (bias == nullptr || aligned16(bias)) && aligned16(kv.k) && aligned16(kv.v);
  const int VEC = vec ? 8 : 1;
  const long long units = static_cast<long long>(n_heads + kv.num_kv_heads) * (half / VEC) +
                          static_cast<long long>(kv.num_kv_heads) * (hd / VEC);
  const int threads = warp_round(units, 256);
  const size_t smem = sizeof(float) * static_cast<size_t>(hd);  // cos and sin, half each
  if (vec) {
    launch(rope_qkv_kernel<8>, n, threads, smem, s, qkv, bias, positions, inv_freq, slot_mapping,
           kv, n_heads, scale);
  } else {
    launch(rope_qkv_kernel<1>, n, threads, smem, s, qkv, bias, positions, inv_freq, slot_mapping,
           kv, n_heads, scale);
  }
  check_launch("rope_qkv_write");
}

}  // namespace cartserve::ops::cuda
