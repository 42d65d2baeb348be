// Internal entry points of the paged attention kernels, beside the contract
// in kernels/cuda_ops.h: the CUDA-core twin of paged_attention_prefill (the
// fallback of both attention ops, and a second implementation the GPU tests
// check against the CPU twin) and the split-length rule the two decode
// kernels share.
#pragma once

#ifdef CARTSERVE_WITH_CUDA

#include <cstdint>

#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

// The same function as paged_attention_prefill (same arguments, same
// contract) on CUDA cores: one warp per (query row, query head), the KV
// positions visited one by one with an online softmax in fp32. No alignment
// requirement beyond the element type; any head_dim that is a multiple of 32
// up to 128 (64 and 128 are instantiated). Slow for long prefills; exact
// enough to serve as a reference and as the fallback for unaligned inputs.
void paged_attention_prefill_simple(const bf16* q, int64_t q_row_stride, const KvLayer& kv,
                                    const AttnBatch& batch, bf16* out, int n_heads, float scale,
                                    cudaStream_t s);

// KV positions per decode chunk (the unit of the split kernel's softmax).
inline constexpr int kDecodeChunk = 64;

// Length of each split of a decode sequence with `ctx` KV positions: the
// positions divided evenly over num_splits, rounded up to whole chunks.
// Split i covers [i * len, min(ctx, (i + 1) * len)); the splits with
// i * len >= ctx are empty (the split kernel exits, the merge skips them).
__host__ __device__ inline int decode_split_len(int ctx, int num_splits) {
  const int c = ctx > 1 ? ctx : 1;
  const int per = (c + num_splits - 1) / num_splits;
  return (per + kDecodeChunk - 1) / kDecodeChunk * kDecodeChunk;
}

// Split-KV prefill (paged_attention_prefill with num_splits > 1): split i of
// a sequence with `ctx` KV positions covers the same positions as decode
// split i (decode_split_len), so a query row whose last visible key is `lim`
// has its keys in the first lim / len + 1 splits, all of them non-empty.
__host__ __device__ inline int split_active(int lim, int len, int num_splits) {
  const int n = lim / len + 1;
  return n < num_splits ? n : num_splits;
}

#ifdef __CUDACC__
// ---- device helpers shared by the attention kernels ----

// The sequence of flat query row `row`: the largest s with query_start[s] <= row.
__device__ __forceinline__ int row_sequence(const int32_t* query_start, int num_seqs, int row) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (query_start[mid] <= row) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// One warp merges the partial softmaxes of one (row, head): n_a of them at
// op_a / ml_a, then n_b at op_b / ml_b (o rows [n][D] unnormalised, ml [n][2]:
// max in log2 units, sum); out[d] = sum_i 2^(m_i - M) o_i[d] / sum_i 2^(m_i -
// M) l_i, M = max m_i, added in that order (no atomics: fixed bits), rounded
// to bf16. COHERENT: the partials were written by other CTAs of the running
// kernel, so they are read through L2 (ld.global.cg), not the incoherent L1.
template <int D, bool COHERENT = false>
__device__ __forceinline__ void merge_partials(const float* __restrict__ op_a,
                                               const float* __restrict__ ml_a, int n_a,
                                               bf16* __restrict__ orow, int lane,
                                               const float* __restrict__ op_b = nullptr,
                                               const float* __restrict__ ml_b = nullptr,
                                               int n_b = 0) {
  constexpr int VPL = D / 32;  // dims per lane: lane + 32 k
  const int n = n_a + n_b;
  auto ml = [&](int i) { return i < n_a ? ml_a + 2 * i : ml_b + 2 * (i - n_a); };
  auto op = [&](int i) { return i < n_a ? op_a + i * D : op_b + (i - n_a) * D; };
  auto ld = [](const float* p) {
    if constexpr (COHERENT) return __ldcg(p);
    return *p;
  };
  float big_m = -INFINITY;
  for (int i = 0; i < n; ++i)
    big_m = fmaxf(big_m, ld(ml(i)));
  float big_l = 0.f;
  float acc[VPL];
#pragma unroll
  for (int k = 0; k < VPL; ++k)
    acc[k] = 0.f;
  for (int i = 0; i < n; ++i) {
    const float* m = ml(i);
    const float* o = op(i);
    const float w = exp2f(ld(m) - big_m);
    big_l = fmaf(w, ld(m + 1), big_l);
#pragma unroll
    for (int k = 0; k < VPL; ++k)
      acc[k] = fmaf(w, ld(o + lane + 32 * k), acc[k]);
  }
  const float inv = big_l > 0.f ? 1.f / big_l : 0.f;
#pragma unroll
  for (int k = 0; k < VPL; ++k)
    orow[lane + 32 * k] = __float2bfloat16_rn(acc[k] * inv);
}

// 16 bytes global -> shared, asynchronously (cp.async, L2 only); zero-filled
// when !valid (the source is then not read). The data is visible to the
// issuing thread after cp_async_wait, to other threads after a barrier too.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  const unsigned saddr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const size_t gaddr = __cvta_generic_to_global(src);
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(gaddr),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif  // __CUDACC__

}  // namespace cartserve::ops::cuda

#endif  // CARTSERVE_WITH_CUDA
