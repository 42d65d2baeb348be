// A decode step's layers in one persistent kernel (the norm-folded forward):
// for 1..kPersistentMaxRows rows, every layer's five phases run in one
// cooperative launch of one CTA per SM, separated by grid-wide barriers
// instead of kernel boundaries. At batch 1 the graph of per-op kernels pays
// a launch gap and a ramp-up per kernel (~7 per layer); here the step pays a
// barrier per phase, and before each barrier every CTA asks L2 for the start
// of its next weight slice, so HBM keeps streaming while CTAs wait.
//
// Phases of layer l (x: the bf16 residual rows, staged into shared memory by
// every CTA that reads them):
//  1. qkv = bf16(x @ wqkv^T), the raw projection (wqkv carries attn_norm);
//  2. attention. Items (row t, KV head g, split s) over the CTAs; an item
//     first makes its q heads as rope_qkv_write would (times the row's
//     inv_rms, plus the bias, rotated, rounded to bf16) and, for the split
//     holding the row's own position, its k and v, which it writes to the
//     cache slot. Then it walks its positions in stages of kChunk through
//     shared memory (K and V rows read once for the GQA group), with an
//     online softmax in log2 units as paged_attention_decode. One split: the
//     output is written; several: partials to the workspace, and the last
//     split to count itself on the (t, g) counter merges them in split order
//     and zeroes the counter;
//  3. x += bf16(attn @ wo^T) (the product rounded, then added and rounded:
//     cuBLASLt's beta = 1 as Gemm::accumulate runs it);
//  4. act = silu(g r) * (u r), g and u the bf16 gate and up projections of x
//     (wgu carries ffn_norm), r the row's inv_rms;
//  5. x += bf16(act @ wdown^T).
// A linear phase: CTA c owns a contiguous range of weight rows (whole
// granules: 16 rows for gate/up, so each gate row's up row is its own); a
// unit is (row, slice of in / slices columns); warps take units in turn,
// their 32 lanes walking the slice's 16-byte chunks (kUnroll in flight per
// lane) against every staged x row. The slices' sums are added in order.
// (The split of rows, units and attention items: kernels/persistent_plan.h.)
// The summation order depends only on the shapes and the CTA count, never on
// the row count or the other rows: a row's bits are the same alone or in a
// batch (not the bits of the cuBLASLt path).
// Memory: data written inside the launch is read through L2 (__ldcg) or
// shared memory; weights, the block table and the step's inputs come from
// before the launch. Grid barrier: a counter zeroed before the launch; each
// CTA adds 1 after a fence and waits for epoch * gridDim.x (the cooperative
// launch makes every CTA resident; a wait past 10 s traps). With
// PersistentDecode::timeline, thread 0 of each CTA stamps the global timer
// at its start, at each barrier's arrival and release, and at its end.
#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/persistent_plan.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kThreads = kPersistentThreads;
constexpr int kWarps = kPersistentWarps;
constexpr int kChunk = kPersistentChunk;
constexpr int kUnroll = 4;             // 16-byte weight chunks in flight per lane
constexpr int kPrime = 2;              // of them loaded before the input rows are staged
constexpr uint32_t kPiece = 64 << 10;  // bytes per L2 prefetch instruction
constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned long long kBarrierTimeoutNs = 10'000'000'000ull;  // 10 s
using LinearShape = PersistentLinear;

struct Plan {
  LinearShape qkv, o, gu, down;
  int xs_bytes = 0;  // shared memory for the staged rows; the partial sums follow
};

__device__ __forceinline__ float bf16_round(float v) {
  return __bfloat162float(__float2bfloat16_rn(v));
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// PersistentDecode::timeline: this CTA's event `event` (arrival 0: start;
// release: after the barrier) at the global timer, by thread 0.
__device__ __forceinline__ void mark(unsigned long long* timeline, int event, bool release) {
  if (timeline != nullptr) {
    timeline[(2 * static_cast<int64_t>(event) + (release ? 1 : 0)) * gridDim.x + blockIdx.x] =
        global_ns();
  }
}

// Every CTA's writes before the call are visible to every CTA after it.
__device__ __forceinline__ void grid_sync(unsigned* counter, unsigned& epoch,
                                          unsigned long long* timeline) {
  ++epoch;
  __syncthreads();
  if (threadIdx.x == 0) {
    mark(timeline, static_cast<int>(epoch), false);
    __threadfence();
    atomicAdd(counter, 1u);
    const unsigned target = epoch * gridDim.x;
    // A barrier that does not open within kBarrierTimeoutNs is a bug (or a
    // CTA that never became resident): trap, so the step fails with a CUDA
    // error instead of hanging the server.
    const unsigned long long t0 = global_ns();
    while (ld_acquire(counter) < target) {
      if (static_cast<long long>(global_ns() - t0) > static_cast<long long>(kBarrierTimeoutNs)) {
        __trap();
      }
    }
    __threadfence();
    mark(timeline, static_cast<int>(epoch), true);
  }
  __syncthreads();
}

// This CTA's rows [r0, r1) of a linear phase.
__device__ __forceinline__ void cta_rows(const LinearShape& s, int& r0, int& r1) {
  persistent_cta_rows(s, static_cast<int>(blockIdx.x), static_cast<int>(gridDim.x), r0, r1);
}

// Asks L2 for the first `cap` bytes of this CTA's rows of w (weights:
// immutable, so the request may run ahead of the phase that reads them).
__device__ __forceinline__ void prefetch_rows(const bf16* w, const LinearShape& s, int cap) {
  if (cap <= 0) return;
  int r0, r1;
  cta_rows(s, r0, r1);
  const uint64_t all = static_cast<uint64_t>(r1 - r0) * static_cast<uint64_t>(s.in) * 2;
  const uint64_t bytes = std::min<uint64_t>(all, static_cast<uint64_t>(cap)) & ~uint64_t{15};
  const char* base = reinterpret_cast<const char*>(w + static_cast<int64_t>(r0) * s.in);
  for (uint64_t off = threadIdx.x * uint64_t{kPiece}; off < bytes;
       off += uint64_t{kThreads} * kPiece)
    l2_prefetch(base + off, static_cast<int>(std::min<uint64_t>(kPiece, bytes - off)));
}

// dst [rows, dim] (shared) = src [rows, dim] (global, written in this launch).
__device__ __forceinline__ void stage_rows(const bf16* src, int rows, int dim, bf16* dst) {
  const int n = rows * dim / 8;
  const uint4* s = reinterpret_cast<const uint4*>(src);
  uint4* d = reinterpret_cast<uint4*>(dst);
  for (int i = threadIdx.x; i < n; i += kThreads)
    d[i] = __ldcg(s + i);
  __syncthreads();
}

enum Epilogue { kStore, kAddResidual, kSwiglu };

// The input rows of a linear phase: src [N, in] (global, written in this
// launch) staged into shared memory xs; for SwiGLU also each row's inv_rms
// (RMSNorm eps) into r.
struct PhaseInput {
  const bf16* src;
  bf16* xs;
  float eps;
  float* red;  // shared [32]
};

// y from the rows of `in` and this CTA's rows of w (see the file comment).
// kStore: y[t, row] = bf16(sum); kAddResidual: y[t, row] = bf16(y +
// bf16(sum)); kSwiglu: y[t, f] = silu(g r[t]) * (u r[t]) for the gate rows'
// features f. part: shared [units, N]. Each warp's first weight loads are in
// flight while the input rows are staged.
template <int N, int EPI>
__device__ void linear_phase(const LinearShape& s, const bf16* __restrict__ w, const PhaseInput& in,
                             float* part, bf16* y, int y_stride) {
  int r0, r1;
  cta_rows(s, r0, r1);
  const int chunks = s.in / 8;
  const int per = chunks / s.slices;
  const int units = (r1 - r0) * s.slices;
  const int lane = threadIdx.x & 31;
  const int first_unit = threadIdx.x >> 5;
  auto unit_weights = [&](int u) {  // unit u's first chunk of this lane's row slice
    const int row = r0 + u / s.slices;
    return reinterpret_cast<const uint4*>(w + static_cast<int64_t>(row) * s.in) +
           (u % s.slices) * per;
  };
  // The first unrolled step of the warp's first unit, before the staging.
  const bool primed = first_unit < units && lane + (kUnroll - 1) * 32 < per;
  uint4 prime[kPrime];
  if (primed) {
    const uint4* wr = unit_weights(first_unit);
#pragma unroll
    for (int k = 0; k < kPrime; ++k)
      prime[k] = __ldcs(wr + lane + 32 * k);
  }
  stage_rows(in.src, N, s.in, in.xs);
  __shared__ float r[N];  // SwiGLU's row factors (read after the barrier below)
  if constexpr (EPI == kSwiglu) {
#pragma unroll
    for (int t = 0; t < N; ++t) {
      const float f = row_inv_rms(in.xs + t * s.in, s.in, in.eps, in.red);
      if (threadIdx.x == 0) r[t] = f;
    }
  }
  const uint4* xv = reinterpret_cast<const uint4*>(in.xs);
  for (int u = first_unit; u < units; u += kWarps) {
    const uint4* wr = unit_weights(u);
    const uint4* xr = xv + (u % s.slices) * per;
    float acc[N];
#pragma unroll
    for (int t = 0; t < N; ++t)
      acc[t] = 0.f;
    int c = lane;
    for (; c + (kUnroll - 1) * 32 < per; c += kUnroll * 32) {
      uint4 wv[kUnroll];
      if (primed && u == first_unit && c == lane) {
#pragma unroll
        for (int k = 0; k < kUnroll; ++k)
          wv[k] = k < kPrime ? prime[k] : __ldcs(wr + c + 32 * k);
      } else {
#pragma unroll
        for (int k = 0; k < kUnroll; ++k)
          wv[k] = __ldcs(wr + c + 32 * k);  // streamed once
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
#pragma unroll
        for (int t = 0; t < N; ++t)
          acc[t] = dot_bf16x8(wv[k], xr[t * chunks + c + 32 * k], acc[t]);
      }
    }
    for (; c < per; c += 32) {
      const uint4 wv = __ldcs(wr + c);
#pragma unroll
      for (int t = 0; t < N; ++t)
        acc[t] = dot_bf16x8(wv, xr[t * chunks + c], acc[t]);
    }
#pragma unroll
    for (int t = 0; t < N; ++t)
      acc[t] = warp_sum(acc[t]);
    if (lane == 0) {
#pragma unroll
      for (int t = 0; t < N; ++t)
        part[u * N + t] = acc[t];
    }
  }
  __syncthreads();
  // The sum over a local row's slices, in slice order.
  auto total = [&](int local_row, int t) {
    const float* p = part + local_row * s.slices * N + t;
    float v = p[0];
    for (int k = 1; k < s.slices; ++k)
      v += p[k * N];
    return v;
  };
  if constexpr (EPI == kSwiglu) {
    // Gate row 16 b + k (k < 8) and its up row 16 b + k + 8 -> feature 8 b + k.
    const int pairs = (r1 - r0) / 2;
    for (int i = threadIdx.x; i < pairs * N; i += kThreads) {
      const int q = i / N, t = i % N;
      const int lg = 16 * (q / 8) + q % 8;
      const float g = bf16_round(total(lg, t));
      const float u = bf16_round(total(lg + 8, t));
      const int f = (r0 / 16 + q / 8) * 8 + q % 8;
      y[static_cast<int64_t>(t) * y_stride + f] =
          __float2bfloat16_rn(silu_times(g * r[t], u * r[t]));
    }
  } else {
    for (int i = threadIdx.x; i < (r1 - r0) * N; i += kThreads) {
      const int lr = i / N, t = i % N;
      bf16* yp = y + static_cast<int64_t>(t) * y_stride + r0 + lr;
      const float v = total(lr, t);
      if constexpr (EPI == kStore) {
        *yp = __float2bfloat16_rn(v);
      } else {
        *yp = __float2bfloat16_rn(__bfloat162float(__ldcg(yp)) + bf16_round(v));
      }
    }
  }
}

// Phase 2 of layer `kv`'s attention (see the file comment).
template <int D>
__device__ void attention_phase(const PersistentDecode& p, int rows, const KvLayer& kv,
                                const bf16* __restrict__ bias, uint8_t* smem, float* red,
                                unsigned* counters) {
  constexpr int half = D / 2;
  constexpr int DPL = D / 32;                       // dims per lane in a score
  constexpr int PER = kChunk * (D / 8) / kThreads;  // 16-byte K (and V) pieces per thread
  static_assert(PER * kThreads == kChunk * (D / 8), "a stage is whole pieces per thread");
  const int nkv = kv.num_kv_heads;
  const int G = p.n_heads / nkv;
  const int Q = p.n_heads * D;
  const int64_t KVD = static_cast<int64_t>(nkv) * D;
  const int64_t QKV = Q + 2 * KVD;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const float scale_log2 = p.scale * kLog2e;
  const PersistentAttnSmem L(D, G);
  bf16* sk = reinterpret_cast<bf16*>(smem + L.k);
  bf16* sv = reinterpret_cast<bf16*>(smem + L.v);
  float* sq = reinterpret_cast<float*>(smem + L.q);
  float* ssc = reinterpret_cast<float*>(smem + L.sc);
  float* scs = reinterpret_cast<float*>(smem + L.cs);
  float* s_m = reinterpret_cast<float*>(smem + L.stats);
  float* s_l = s_m + kPersistentMaxGroup;
  float* s_a = s_l + kPersistentMaxGroup;
  bf16* snk = reinterpret_cast<bf16*>(smem + L.nk);
  bf16* snv = reinterpret_cast<bf16*>(smem + L.nv);
  int* s_flag = reinterpret_cast<int*>(smem + L.flag);
  float* o_part = static_cast<float*>(p.workspace);  // [R, n_heads, MS, D]
  float* ml_part = o_part + static_cast<int64_t>(kPersistentMaxRows) * p.n_heads *
                                kPersistentMaxSplits * D;  // [R, n_heads, MS, 2]

  for (int item = blockIdx.x;; item += gridDim.x) {
    PersistentItem it;
    if (!persistent_item(p.batch.context_lens, rows, nkv, item, it)) break;  // (CTA-uniform)
    const int t = it.row, g = it.kv_head, sp = it.split, n_splits = it.splits;
    const int begin = it.begin, end = it.end;
    const int pos = p.positions[t];
    const bool own = pos >= begin && pos < end;  // this split makes the row's k and v
    const bf16* qrow = p.qkv + t * QKV;
    const int32_t* bt = p.batch.block_table + static_cast<int64_t>(t) * p.batch.max_blocks;
    // A stage's K and V rows pass through registers (this thread's PER
    // 16-byte pieces of each): loaded while the previous stage is computed
    // (the first while q is made), stored to shared memory after it.
    uint4 kx[PER], vx[PER];
    auto load_stage = [&](int p0) {
      const int cnt = end - p0 < kChunk ? end - p0 : kChunk;
#pragma unroll
      for (int j = 0; j < PER; ++j) {
        const int i = tid + j * kThreads;
        const int row = i / (D / 8), c = i % (D / 8);
        const int pp = p0 + row;
        kx[j] = make_uint4(0, 0, 0, 0);  // past the stage's end: zeros (p = 0 there)
        vx[j] = kx[j];
        if (row < cnt && !(own && pp == pos)) {
          const int64_t off = static_cast<int64_t>(bt[pp / kv.block_size]) * kv.block_stride +
                              static_cast<int64_t>(pp % kv.block_size) * KVD + g * D + c * 8;
          kx[j] = __ldcg(reinterpret_cast<const uint4*>(kv.k + off));
          vx[j] = __ldcg(reinterpret_cast<const uint4*>(kv.v + off));
        }
      }
    };
    auto store_stage = [&](int p0) {  // the row's own position from shared memory
#pragma unroll
      for (int j = 0; j < PER; ++j) {
        const int i = tid + j * kThreads;
        const int row = i / (D / 8), c = i % (D / 8);
        if (own && p0 + row == pos) {
          kx[j] = reinterpret_cast<const uint4*>(snk)[c];
          vx[j] = reinterpret_cast<const uint4*>(snv)[c];
        }
        reinterpret_cast<uint4*>(sk)[i] = kx[j];
        reinterpret_cast<uint4*>(sv)[i] = vx[j];
      }
    };
    load_stage(begin);
    const float r =
        row_inv_rms<true>(p.x + static_cast<int64_t>(t) * p.hidden, p.hidden, p.eps, red);
    for (int i = tid; i < half; i += kThreads) {
      float sn, cn;
      sincosf(static_cast<float>(pos) * p.inv_freq[i], &sn, &cn);
      scs[i] = cn;
      scs[half + i] = sn;
    }
    __syncthreads();
    // Element i < half of the head at `off` of the row and its partner
    // i + half, scaled, biased, rotated and rounded (rope_qkv_write's math).
    auto rotate = [&](int64_t off, int i, float& ra, float& rb) {
      float a = __bfloat162float(__ldcg(qrow + off)) * r;
      float b = __bfloat162float(__ldcg(qrow + off + half)) * r;
      if (bias != nullptr) {
        a += __bfloat162float(bias[off]);
        b += __bfloat162float(bias[off + half]);
      }
      const float c = scs[i], sn = scs[half + i];
      ra = bf16_round(a * c - b * sn);
      rb = bf16_round(b * c + a * sn);
    };
    for (int i = tid; i < G * half; i += kThreads) {
      const int h = i / half, j = i % half;
      float ra, rb;
      rotate(static_cast<int64_t>(g * G + h) * D + j, j, ra, rb);
      sq[h * D + j] = ra;
      sq[h * D + j + half] = rb;
    }
    if (own) {
      const int32_t slot = p.slot_mapping[t];
      const int64_t dst = slot >= 0 ? static_cast<int64_t>(slot / kv.block_size) * kv.block_stride +
                                          static_cast<int64_t>(slot % kv.block_size) * KVD + g * D
                                    : -1;
      for (int j = tid; j < half; j += kThreads) {
        float ra, rb;
        rotate(Q + static_cast<int64_t>(g) * D + j, j, ra, rb);
        snk[j] = __float2bfloat16_rn(ra);
        snk[j + half] = __float2bfloat16_rn(rb);
        if (dst >= 0) {
          kv.k[dst + j] = snk[j];
          kv.k[dst + j + half] = snk[j + half];
        }
      }
      for (int j = tid; j < D; j += kThreads) {
        const int64_t off = Q + KVD + static_cast<int64_t>(g) * D + j;
        float v = __bfloat162float(__ldcg(qrow + off)) * r;
        if (bias != nullptr) v += __bfloat162float(bias[off]);
        snv[j] = __float2bfloat16_rn(v);
        if (dst >= 0) kv.v[dst + j] = snv[j];
      }
    }
    if (tid < G) {
      s_m[tid] = -INFINITY;
      s_l[tid] = 0.f;
    }
    // Thread tid owns the (head, dim pair) items tid and tid + kThreads of
    // [G, half] (G * half <= 2 kThreads).
    float acc[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    __syncthreads();
    for (int p0 = begin; p0 < end; p0 += kChunk) {
      const int cnt = end - p0 < kChunk ? end - p0 : kChunk;
      store_stage(p0);
      __syncthreads();
      if (p0 + kChunk < end) load_stage(p0 + kChunk);  // in flight during this stage
      // Scores in log2 units, one warp per (head, position).
      for (int pr = warp; pr < G * kChunk; pr += kWarps) {
        const int h = pr / kChunk, row = pr % kChunk;
        if (row >= cnt) {
          if (lane == 0) ssc[h * kChunk + row] = -INFINITY;
          continue;
        }
        const bf16* kr = sk + row * D + lane * DPL;
        const float* qh = sq + h * D + lane * DPL;
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < DPL; ++e)
          d = fmaf(qh[e], __bfloat162float(kr[e]), d);
        d = warp_sum(d);
        if (lane == 0) ssc[h * kChunk + row] = d * scale_log2;
      }
      __syncthreads();
      // Softmax statistics, one warp per head (kChunk == 64: two per lane).
      for (int h = warp; h < G; h += kWarps) {
        float* sh = ssc + h * kChunk;
        float v0 = sh[lane], v1 = sh[lane + 32];
        const float m_old = s_m[h];
        const float m_new = fmaxf(m_old, warp_max(fmaxf(v0, v1)));  // finite: cnt >= 1
        v0 = exp2f(v0 - m_new);
        v1 = exp2f(v1 - m_new);
        sh[lane] = v0;
        sh[lane + 32] = v1;
        const float sum = warp_sum(v0 + v1);
        __syncwarp();  // every lane has read s_m[h] before lane 0 updates it
        if (lane == 0) {
          const float a = exp2f(m_old - m_new);  // 0 on the first stage
          s_a[h] = a;
          s_l[h] = s_l[h] * a + sum;
          s_m[h] = m_new;
        }
      }
      __syncthreads();
      // acc = acc * alpha + P V.
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int idx = tid + k * kThreads;
        if (idx >= G * half) break;
        const int h = idx / half, d2 = idx % half;
        const float a = s_a[h];
        float o0 = acc[k][0] * a, o1 = acc[k][1] * a;
        const float* ph = ssc + h * kChunk;
        const __nv_bfloat162* vc = reinterpret_cast<const __nv_bfloat162*>(sv) + d2;
        for (int row = 0; row < cnt; ++row) {
          const float2 vv = __bfloat1622float2(vc[row * half]);
          o0 = fmaf(ph[row], vv.x, o0);
          o1 = fmaf(ph[row], vv.y, o1);
        }
        acc[k][0] = o0;
        acc[k][1] = o1;
      }
      __syncthreads();  // the next stage overwrites sk, sv and ssc
    }
    bf16* orow = p.attn + static_cast<int64_t>(t) * Q + static_cast<int64_t>(g) * G * D;
    if (n_splits == 1) {
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int idx = tid + k * kThreads;
        if (idx >= G * half) break;
        const int h = idx / half, d2 = idx % half;
        const float inv = 1.f / s_l[h];
        reinterpret_cast<__nv_bfloat162*>(orow + h * D)[d2] =
            __floats2bfloat162_rn(acc[k][0] * inv, acc[k][1] * inv);
      }
    } else {
      const int64_t slot0 = (static_cast<int64_t>(t) * p.n_heads + g * G) * kPersistentMaxSplits;
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const int idx = tid + k * kThreads;
        if (idx >= G * half) break;
        const int h = idx / half, d2 = idx % half;
        float* o = o_part + (slot0 + h * kPersistentMaxSplits + sp) * D + 2 * d2;
        o[0] = acc[k][0];
        o[1] = acc[k][1];
      }
      if (tid < G) {
        float* ml = ml_part + 2 * (slot0 + tid * kPersistentMaxSplits + sp);
        ml[0] = s_m[tid];
        ml[1] = s_l[tid];
      }
      __syncthreads();
      unsigned* counter = counters + t * nkv + g;
      if (tid == 0) {
        __threadfence();  // the partials before the count
        const unsigned before = atomicAdd(counter, 1u);
        __threadfence();
        *s_flag = before == static_cast<unsigned>(n_splits - 1);
      }
      __syncthreads();
      if (*s_flag) {  // the last split: merge in split order
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int idx = tid + k * kThreads;
          if (idx >= G * half) break;
          const int h = idx / half, d2 = idx % half;
          const int64_t base = slot0 + h * kPersistentMaxSplits;
          float big_m = -INFINITY;
          for (int s = 0; s < n_splits; ++s)
            big_m = fmaxf(big_m, __ldcg(ml_part + 2 * (base + s)));
          float o0 = 0.f, o1 = 0.f, big_l = 0.f;
          for (int s = 0; s < n_splits; ++s) {
            const float wgt = exp2f(__ldcg(ml_part + 2 * (base + s)) - big_m);
            big_l = fmaf(wgt, __ldcg(ml_part + 2 * (base + s) + 1), big_l);
            const float* o = o_part + (base + s) * D + 2 * d2;
            o0 = fmaf(wgt, __ldcg(o), o0);
            o1 = fmaf(wgt, __ldcg(o + 1), o1);
          }
          const float inv = 1.f / big_l;
          reinterpret_cast<__nv_bfloat162*>(orow + h * D)[d2] =
              __floats2bfloat162_rn(o0 * inv, o1 * inv);
        }
        if (tid == 0) *counter = 0;  // for the next layer (read past two barriers)
      }
    }
    __syncthreads();  // shared memory is reused by the next item
  }
}

template <int N, int D>
__global__ void __launch_bounds__(kThreads, 1)
    decode_persistent_kernel(const PersistentDecode p, const Plan plan) {
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float red[32];
  unsigned* barrier = p.counters;
  unsigned* merge = p.counters + kMergeCounters;
  unsigned epoch = 0;
  const int H = p.hidden, FF = p.ff, Q = p.n_heads * D;
  const int QKV = Q + 2 * p.kv.num_kv_heads * D;
  bf16* xs = reinterpret_cast<bf16*>(smem);                      // [N, in] staged rows
  float* part = reinterpret_cast<float*>(smem + plan.xs_bytes);  // [units, N]
  const int pf = p.prefetch_bytes;
  if (threadIdx.x == 0) mark(p.timeline, 0, false);
  for (int l = 0; l < p.num_layers; ++l) {
    const PersistentLayer w = p.layers[l];
    KvLayer kv = p.kv;
    kv.k += l * p.kv_layer_stride;
    kv.v += l * p.kv_layer_stride;
    // 1. QKV.
    linear_phase<N, kStore>(plan.qkv, w.wqkv, {p.x, xs, p.eps, red}, part, p.qkv, QKV);
    prefetch_rows(w.wo, plan.o, 4 * pf);  // during attention, which reads no weights
    grid_sync(barrier, epoch, p.timeline);
    // 2. Attention.
    attention_phase<D>(p, N, kv, w.bqkv, smem, red, merge);
    grid_sync(barrier, epoch, p.timeline);
    // 3. o projection into the residual.
    linear_phase<N, kAddResidual>(plan.o, w.wo, {p.attn, xs, p.eps, red}, part, p.x, H);
    prefetch_rows(w.wgu, plan.gu, pf);
    grid_sync(barrier, epoch, p.timeline);
    // 4. gate/up and SwiGLU.
    linear_phase<N, kSwiglu>(plan.gu, w.wgu, {p.x, xs, p.eps, red}, part, p.act, FF);
    prefetch_rows(w.wdown, plan.down, pf);
    grid_sync(barrier, epoch, p.timeline);
    // 5. down projection into the residual.
    linear_phase<N, kAddResidual>(plan.down, w.wdown, {p.act, xs, p.eps, red}, part, p.x, H);
    if (l + 1 < p.num_layers) {
      prefetch_rows(p.layers[l + 1].wqkv, plan.qkv, pf);
      grid_sync(barrier, epoch, p.timeline);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) mark(p.timeline, 5 * p.num_layers, false);
}

using Kernel = void (*)(const PersistentDecode, const Plan);

template <int N>
Kernel kernel_for(int head_dim) {
  return head_dim == 64 ? decode_persistent_kernel<N, 64> : decode_persistent_kernel<N, 128>;
}

Plan make_plan(int hidden, int ff, int n_heads, int n_kv_heads, int head_dim, int rows, int grid) {
  const int Q = n_heads * head_dim, QKV = Q + 2 * n_kv_heads * head_dim;
  Plan plan;
  plan.qkv = persistent_plan_linear(hidden, QKV, 1, grid);
  plan.o = persistent_plan_linear(Q, hidden, 1, grid);
  plan.gu = persistent_plan_linear(hidden, 2 * ff, 16, grid);
  plan.down = persistent_plan_linear(ff, hidden, 1, grid);
  plan.xs_bytes = static_cast<int>(sizeof(bf16)) * rows * std::max({hidden, Q, ff});
  plan.xs_bytes = (plan.xs_bytes + 15) / 16 * 16;
  return plan;
}

// Dynamic shared memory of a launch: the linear phases' (staged rows, then
// the partial sums) or the attention phase's, whichever is larger.
size_t launch_smem(const Plan& plan, int rows, int grid, int head_dim, int group) {
  const int units =
      std::max({persistent_most_units(plan.qkv, grid), persistent_most_units(plan.o, grid),
                persistent_most_units(plan.gu, grid), persistent_most_units(plan.down, grid)});
  const size_t linear = static_cast<size_t>(plan.xs_bytes) + sizeof(float) * units * rows;
  return std::max(linear, static_cast<size_t>(PersistentAttnSmem(head_dim, group).total));
}

int device_attribute(cudaDeviceAttr a) {
  int dev = 0, v = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&v, a, dev);
  return v;
}

// Raises k's dynamic shared-memory limit to smem on the current device if
// it is lower (the limit is per function and device) and checks that one
// CTA per SM fits; under a lock, once per new maximum (the first step of a
// bucket runs eagerly, before its graph is captured).
void prepare(Kernel k, size_t smem) {
  static std::mutex mu;
  static std::map<std::pair<int, Kernel>, size_t> limit;
  int dev = 0;
  CS_CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  size_t& have = limit[{dev, k}];
  if (smem <= have) return;
  CS_CUDA_CHECK(
      cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  int per_sm = 0;
  CS_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kThreads, smem));
  if (per_sm < 1) op_fail("decode_layers_persistent", "one CTA per SM does not fit");
  have = smem;
}

}  // namespace

size_t persistent_decode_workspace_bytes(int n_heads, int head_dim) {
  return sizeof(float) * static_cast<size_t>(kPersistentMaxRows) * n_heads * kPersistentMaxSplits *
         (static_cast<size_t>(head_dim) + 2);
}

bool persistent_decode_supported(int hidden, int ff, int n_heads, int n_kv_heads, int head_dim,
                                 int ctas) {
  if (head_dim != 64 && head_dim != 128) return false;
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || n_heads / n_kv_heads > kPersistentMaxGroup) {
    return false;
  }
  const int q = n_heads * head_dim;
  if (hidden % 64 != 0 || q % 64 != 0 || ff % 64 != 0) return false;
  if (ctas < 1 || ctas > device_attribute(cudaDevAttrMultiProcessorCount)) return false;
  const Plan plan = make_plan(hidden, ff, n_heads, n_kv_heads, head_dim, kPersistentMaxRows, ctas);
  const size_t smem = launch_smem(plan, kPersistentMaxRows, ctas, head_dim, n_heads / n_kv_heads);
  return smem <= static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
}

bool decode_layers_persistent(const PersistentDecode& p, int rows, int ctas, cudaStream_t s) {
  const KvLayer& kv = p.kv;
  const int D = kv.head_dim, nkv = kv.num_kv_heads;
  if (rows < 1 || rows > kPersistentMaxRows || rows != p.batch.num_seqs ||
      !persistent_decode_supported(p.hidden, p.ff, p.n_heads, nkv, D, ctas)) {
    op_fail("decode_layers_persistent",
            "rows must be 1..kPersistentMaxRows and the batch's sequences, the shapes and CTA "
            "count supported (persistent_decode_supported)");
  }
  if (p.layers == nullptr || p.counters == nullptr || p.positions == nullptr ||
      p.slot_mapping == nullptr || p.inv_freq == nullptr || p.batch.context_lens == nullptr ||
      p.batch.block_table == nullptr || kv.block_size <= 0 || kv.block_stride % 8 != 0 ||
      p.kv_layer_stride % 8 != 0 || p.workspace == nullptr || p.x == nullptr || p.qkv == nullptr ||
      p.attn == nullptr || p.act == nullptr || kv.k == nullptr || kv.v == nullptr ||
      !aligned16(kv.k) || !aligned16(kv.v) || !aligned16(p.x) || !aligned16(p.qkv) ||
      !aligned16(p.attn) || !aligned16(p.act) || !aligned16(p.workspace)) {
    op_fail("decode_layers_persistent",
            "needs every array, a positive block size, 16-byte aligned buffers and KV strides");
  }
  const Plan plan = make_plan(p.hidden, p.ff, p.n_heads, nkv, D, rows, ctas);
  const size_t smem = launch_smem(plan, rows, ctas, D, p.n_heads / nkv);
  Kernel k = nullptr;
  switch (rows) {
    case 1:
      k = kernel_for<1>(D);
      break;
    case 2:
      k = kernel_for<2>(D);
      break;
    case 3:
      k = kernel_for<3>(D);
      break;
    default:
      k = kernel_for<4>(D);
      break;
  }
  prepare(k, smem);
  CS_CUDA_CHECK(
      cudaMemsetAsync(p.counters, 0, sizeof(unsigned) * persistent_decode_counters(nkv), s));
  cudaLaunchAttribute attr[1] = {};
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(ctas));
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  // A cooperative launch can be refused where the SMs are shared (MPS, green
  // contexts): the caller falls back to the per-op kernels.
  if (cudaLaunchKernelEx(&cfg, k, p, plan) != cudaSuccess) {
    const cudaError_t err = cudaGetLastError();  // (clears it)
    std::fprintf(stderr, "decode_layers_persistent: launch refused: %s\n", cudaGetErrorString(err));
    return false;
  }
  return true;
}

}  // namespace cartserve::ops::cuda
