// Shared helpers for the CUDA kernels: error checks, launch checks,
// deterministic block reductions and 16-byte vector loads/stores of bf16 and
// fp32 data.
//
// Invariants the kernels rely on:
//  - block reductions are called by every thread of the block, with
//    blockDim.x a multiple of 32 (at most 1024); their summation order depends
//    only on blockDim.x, so the same launch shape gives the same bits;
//  - the *_x8 vector helpers need 16-byte aligned pointers (the host side of
//    each op checks alignment and falls back to a scalar kernel otherwise).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/env.h"

namespace cartserve::ops::cuda {

// ---- programmatic dependent launch (Hopper) -------------------------------
// With CARTSERVE_PDL=1, the decode-path kernels are launched by launch() with
// programmatic stream serialization: a kernel's CTAs may be scheduled while
// the kernel before it in the stream still runs. Invariants that keep this
// exact:
//  - such a kernel calls pdl_wait() before it reads or writes any memory that
//    an earlier kernel of the stream writes or reads (activations, the KV
//    pool, step inputs); only immutable data (weights) may be touched before.
//    pdl_wait() returns once the kernel before has completed and its writes
//    are visible; that kernel waited for its own predecessor, so every earlier
//    kernel has completed too;
//  - pdl_trigger() lets the next kernel be scheduled once every CTA of this
//    one has called it (or exited); all of this kernel's CTAs are then
//    resident, so waiting dependents never starve it of SMs. Kernels call it
//    right after pdl_wait(), so at most one kernel waits ahead of the one
//    running (called before the wait, every kernel of a step could be
//    scheduled at once, each holding SM slots and prefetching its weights
//    into L2 over the running kernel's: on an H100, decode with the skinny
//    kernel ran at 5.10 ms/step with PDL against 4.00 without,
//    bench/results/gpu-h100-2026-12-06-0040.json).
// Without the launch attribute both are no-ops.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// [p, p + bytes) into L2 (p 16-byte aligned, bytes a multiple of 16): what a
// programmatically launched kernel may ask for before pdl_wait() (weights).
__device__ __forceinline__ void l2_prefetch(const void* p, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// CARTSERVE_PDL=1 (read once).
inline bool pdl_enabled() {
  static const bool on = env_flag("CARTSERVE_PDL");
  return on;
}

// A kernel launch on stream s, programmatic (see above) when pdl_enabled().
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, A&&... args) {
  cudaLaunchAttribute attr[1] = {};
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  (void)cudaLaunchKernelEx(&cfg, kernel, static_cast<P>(args)...);  // errors: check_launch
}

// A failed CUDA call in an op is a programming error (shapes are validated
// by the caller); report where and abort rather than compute garbage.
inline void cuda_check(cudaError_t err, const char* what, const char* file, int line) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "CUDA error at %s:%d (%s): %s\n", file, line, what,
                 cudaGetErrorString(err));
    std::abort();
  }
}
#define CS_CUDA_CHECK(expr) ::cartserve::ops::cuda::cuda_check((expr), #expr, __FILE__, __LINE__)

// After a launch: a bad configuration shows up here (not a fault inside the
// kernel, which surfaces at the next synchronisation). Capture-safe.
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    std::fprintf(stderr, "CUDA kernel %s failed: %s\n", what, cudaGetErrorString(err));
    std::abort();
  }
}

// An invalid argument of an op (host side, before any launch).
inline void op_fail(const char* op, const char* why) {
  std::fprintf(stderr, "cartserve::ops::cuda::%s: %s\n", op, why);
  std::abort();
}

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Smallest multiple of 32 >= v, clamped to [32, hi] (hi a multiple of 32).
inline int warp_round(long long v, int hi) {
  long long t = (v + 31) / 32 * 32;
  if (t < 32) t = 32;
  if (t > hi) t = hi;
  return static_cast<int>(t);
}

// Grid size for a grid-stride loop over `work` items with `threads` per
// CTA; capped (the loops stride over the rest), at least 1.
inline unsigned grid_for(long long work, int threads, long long cap = 1 << 20) {
  long long b = (work + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return static_cast<unsigned>(b);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of `blockDim.x` threads (a multiple of 32, at most 1024):
// a butterfly per warp, then warp 0 adds the warp totals in a fixed order.
// Every thread gets the total. `shared` is reusable after the call.
__device__ inline float block_sum(float v, float* shared /* [32] */) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < n_warps) ? shared[threadIdx.x] : 0.f;
  if (warp == 0) {
    v = warp_sum(v);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  const float total = shared[0];
  __syncthreads();
  return total;
}

// 1 / sqrt(mean(x^2) + eps) of a bf16 row xr [dim], in fp32 (IEEE sqrt and
// division, as add_rms_norm): called by every thread of the block; the
// summation order depends only on blockDim.x and dim, so every CTA that
// computes a row's factor gets the same bits. 16-byte loads when dim % 8 == 0
// and xr is 16-byte aligned. COHERENT: loads through L2 only (__ldcg), for a
// row another CTA of the same kernel wrote (16-byte path only).
template <bool COHERENT = false>
__device__ inline float row_inv_rms(const __nv_bfloat16* xr, int dim, float eps,
                                    float* shared /* [32] */) {
  float ss = 0.f;
  if (COHERENT || (dim % 8 == 0 && (reinterpret_cast<uintptr_t>(xr) & 15) == 0)) {
    for (int c = threadIdx.x; c < dim / 8; c += blockDim.x) {
      const uint4* p = reinterpret_cast<const uint4*>(xr + 8 * c);
      const uint4 u = COHERENT ? __ldcg(p) : *p;
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 v = __bfloat1622float2(h[i]);
        ss += v.x * v.x;
        ss += v.y * v.y;
      }
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      const float v = __bfloat162float(xr[i]);
      ss += v * v;
    }
  }
  const float total = block_sum(ss, shared);
  return 1.0f / sqrtf(total / static_cast<float>(dim) + eps);
}

// Maximum over the block, same shape rules as block_sum.
__device__ inline float block_max(float v, float* shared /* [32] */) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < n_warps) ? shared[threadIdx.x] : -INFINITY;
  if (warp == 0) {
    v = warp_max(v);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  const float total = shared[0];
  __syncthreads();
  return total;
}

// ---- 16-byte vector access (pointers 16-byte aligned) ----------------------

// acc + sum_k w[k] * x[k] over 8 bf16 pairs packed in two uint4, in k order (fp32 FMAs).
__device__ __forceinline__ float dot_bf16x8(const uint4& w, const uint4& x, float acc) {
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

// 8 bf16 -> 8 floats (exact).
// SwiGLU of one feature in fp32: silu(g) * u = g / (1 + exp(-g)) * u (expf,
// not __expf; for g -> -inf the quotient goes to -0, never NaN). Every kernel
// that applies it (silu_mul, skinny_gemm's gate/up epilogue) gets the same bits.
__device__ __forceinline__ float silu_times(float g, float u) {
  return g / (1.f + expf(-g)) * u;
}

__device__ __forceinline__ void load_bf16x8(const __nv_bfloat16* p, float (&f)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// 8 floats -> 8 bf16, round to nearest even.
__device__ __forceinline__ void store_bf16x8(__nv_bfloat16* p, const float (&f)[8]) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i)
    h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

// 8 fp16 -> 8 floats (exact).
__device__ __forceinline__ void load_f16x8(const __half* p, float (&f)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// 8 floats -> 8 fp16, round to nearest even (overflow -> inf).
__device__ __forceinline__ void store_f16x8(__half* p, const float (&f)[8]) {
  uint4 u;
  __half2* h = reinterpret_cast<__half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i)
    h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

// 8 floats (two float4; 32 bytes, 16-byte aligned).
__device__ __forceinline__ void load_f32x8(const float* p, float (&f)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  const float4 b = *reinterpret_cast<const float4*>(p + 4);
  f[0] = a.x;
  f[1] = a.y;
  f[2] = a.z;
  f[3] = a.w;
  f[4] = b.x;
  f[5] = b.y;
  f[6] = b.z;
  f[7] = b.w;
}

__device__ __forceinline__ void store_f32x8(float* p, const float (&f)[8]) {
  *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  *reinterpret_cast<float4*>(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
}

// Typed element <-> float, for the scalar fallbacks and the templated movers.
__device__ __forceinline__ float to_f32(float v) {
  return v;
}
__device__ __forceinline__ float to_f32(__half v) {
  return __half2float(v);
}
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// 8 elements of T <-> 8 floats through the vector helpers above.
__device__ __forceinline__ void load_x8(const float* p, float (&f)[8]) {
  load_f32x8(p, f);
}
__device__ __forceinline__ void load_x8(const __half* p, float (&f)[8]) {
  load_f16x8(p, f);
}
__device__ __forceinline__ void load_x8(const __nv_bfloat16* p, float (&f)[8]) {
  load_bf16x8(p, f);
}
__device__ __forceinline__ void store_x8(float* p, const float (&f)[8]) {
  store_f32x8(p, f);
}
__device__ __forceinline__ void store_x8(__half* p, const float (&f)[8]) {
  store_f16x8(p, f);
}
__device__ __forceinline__ void store_x8(__nv_bfloat16* p, const float (&f)[8]) {
  store_bf16x8(p, f);
}

}  // namespace cartserve::ops::cuda
