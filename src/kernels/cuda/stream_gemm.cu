// Linear layers of up to 64 rows on tensor cores, tiled through shared memory:
// y[n, out] = x[n, in] @ w[out, in]^T, bf16 operands, fp32 accumulation.
//
// Design: at decode batches and short prompts the weights dominate the bytes,
// so the kernel is a stream over w with every x row riding along.
//  - A CTA owns BM = 64 output features (4 warps x 16) and all n rows (NT
//    n-tiles of 8) over one of `splits` equal, contiguous k ranges.
//  - Its range is walked in k-tiles of BK = 64: the weight tile [64][64] and
//    the x tile [8 NT][64] go global -> shared by cp.async (a row's 128 bytes
//    by 8 consecutive threads) into a ring of kStages tiles, kStages - 1 in
//    flight while one is computed. Rows keep their 16-byte pieces XOR-swizzled
//    by row (piece c of row r at c ^ (r & 7)), so ldmatrix reads are free of
//    bank conflicts. Weight rows past `out` and x rows past n are zeros.
//  - mma.sync m16n8k16: a warp's 16 features are the A operand (ldmatrix.x4),
//    the x rows the B operand (one ldmatrix.x4: two k16 steps of an n-tile).
//  - Split-K: `splits` depends only on (in, out) and the SM count
//    (stream_gemm_splits). Each CTA writes its fp32 partial tile to the
//    scratch; the last of a feature block's CTAs to finish (a counter per
//    block, reset by that CTA) adds the partials in split order and writes y.
//  - Batch invariance: an mma's output element depends only on its row of A,
//    its column of B and its accumulator; the order of the k steps (tiles in
//    order, splits in order) depends only on `in` and `splits`. So a row's
//    bits are the same for every n <= kStreamMaxRows and every neighbour.
//  - Launched programmatically (CARTSERVE_PDL=1), a CTA issues its first
//    weight tiles before waiting for the kernel before (weights are immutable).
// Epilogues: y in fp32 or bf16, or SwiGLU of a gate/up projection interleaved
// in blocks of 8 (m-tile T: gate features 8T..8T+7 in rows 0-7, the matching
// up features in rows 8-15): act[r, 8T + g] = silu(gate) * up, each rounded to
// bf16 first (the bits of the projection into bf16, then silu_mul).
#include <algorithm>
#include <array>
#include <utility>

#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kBM = 64;  // output features per CTA
constexpr int kBK = 64;  // k per tile: a row's 128 bytes, 8 pieces of 16
constexpr int kWarps = kBM / 16;
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 5;            // tiles in the ring (4 in flight)
constexpr int kMinTilesPerSplit = 2;  // k-tiles a split covers at least
constexpr int kMaxSplits = 16;
constexpr int kWTileBytes = kBM * kBK * 2;
// Partial tile of one CTA at NT = 8 (the scratch is sized for it): [kWarps][NT][4][32] floats.
constexpr size_t kPartBytesPerCta = static_cast<size_t>(kWarps) * 8 * 4 * 32 * sizeof(float);

enum Epilogue { kF32, kBf16, kSwiglu };

// Byte offset of 16-byte piece `c` of tile row `r` (rows of 128 bytes).
__device__ __forceinline__ int swz(int r, int c) {
  return r * 128 + ((c ^ (r & 7)) << 4);
}

template <int NT>
constexpr int stage_bytes() {
  return kWTileBytes + 8 * NT * kBK * 2;
}

template <int NT, int EPI>
__global__ void __launch_bounds__(kThreads)
    stream_gemm_kernel(const bf16* __restrict__ x /* [n, in] */,
                       const bf16* __restrict__ w /* [out, in] */,
                       void* __restrict__ y /* [n, out], or [n, out / 2] for kSwiglu */, int n,
                       int in, int out, int splits,
                       float* __restrict__ part /* [blocks, splits] partial tiles */,
                       unsigned* __restrict__ counters /* [blocks], zeros between launches */) {
  constexpr int XR = 8 * NT;  // x rows of a tile
  constexpr int STAGE = stage_bytes<NT>();
  extern __shared__ __align__(128) uint8_t smem[];  // [kStages][W tile, x tile]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int block = blockIdx.x, split = blockIdx.y;
  const int m0 = block * kBM;
  const int tiles = in / kBK / splits;  // k-tiles of this split
  const int kt0 = split * tiles;

  auto load_w = [&](int kt, int slot) {
    uint8_t* ws = smem + slot * STAGE;
    const int k0 = kt * kBK;
#pragma unroll
    for (int i = tid; i < kBM * 8; i += kThreads) {
      const int r = i >> 3, c = i & 7, m = m0 + r;
      cp_async_16(ws + swz(r, c), w + static_cast<int64_t>(min(m, out - 1)) * in + k0 + c * 8,
                  m < out);
    }
  };
  auto load_x = [&](int kt, int slot) {
    uint8_t* xs = smem + slot * STAGE + kWTileBytes;
    const int k0 = kt * kBK;
#pragma unroll
    for (int i = tid; i < XR * 8; i += kThreads) {
      const int r = i >> 3, c = i & 7;
      cp_async_16(xs + swz(r, c), x + static_cast<int64_t>(min(r, n - 1)) * in + k0 + c * 8, r < n);
    }
  };

  // Prologue: the first kStages - 1 weight tiles before the wait, then their
  // x tiles; group s ends with x tile s (so it holds weight tile s too).
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s)
    if (s < tiles) load_w(kt0 + s, s);
  pdl_wait();
  pdl_trigger();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < tiles) load_x(kt0 + s, s);
    cp_async_commit();
  }

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int q = 0; q < 4; ++q)
      acc[j][q] = 0.f;

  for (int i = 0; i < tiles; ++i) {
    cp_async_wait<kStages - 2>();  // this thread's pieces of tile i have landed
    __syncthreads();               // everyone's have; everyone is done with tile i - 1's slot
    const int next = i + kStages - 1;
    if (next < tiles) {
      load_w(kt0 + next, next % kStages);
      load_x(kt0 + next, next % kStages);
    }
    cp_async_commit();  // (empty near the end: the count stays uniform)
    const uint8_t* ws = smem + (i % kStages) * STAGE;
    const uint8_t* xs = ws + kWTileBytes;
#pragma unroll
    for (int p = 0; p < 2; ++p) {  // k16 steps 2p, 2p + 1
      uint32_t b[NT][4];           // n-tile j: b0, b1 of step 2p, then of step 2p + 1
#pragma unroll
      for (int j = 0; j < NT; ++j)
        ldmatrix_x4(
            b[j], reinterpret_cast<const bf16*>(xs + swz(8 * j + (lane & 7), 4 * p + (lane >> 3))));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int kk = 2 * p + h;
        uint32_t a[4];
        ldmatrix_x4(a, reinterpret_cast<const bf16*>(
                           ws + swz(16 * warp + (lane & 15), 2 * kk + (lane >> 4))));
#pragma unroll
        for (int j = 0; j < NT; ++j)
          mma_16816(acc[j], a, b[j][2 * h], b[j][2 * h + 1]);
      }
    }
  }
  cp_async_wait<0>();  // (only empty groups can be pending)

  if (splits > 1) {
    // This CTA's partial tile, then the block's counter; the last CTA adds
    // all splits' partials in split order.
    float* mine =
        part + ((static_cast<int64_t>(block) * splits + split) * kWarps + warp) * NT * 128;
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q)
        mine[(j * 4 + q) * 32 + lane] = acc[j][q];
    __shared__ int s_last;
    __threadfence();  // release: the partial is visible before the CTA is counted
    __syncthreads();
    if (tid == 0) {
      unsigned* count = counters + block;
      s_last = atomicAdd(count, 1u) + 1 == static_cast<unsigned>(splits);
      if (s_last) *count = 0;  // every split has counted: the next launch starts at 0
    }
    __syncthreads();
    if (!s_last) return;
    __threadfence();  // acquire: the other splits' partials
    const float* all = part + static_cast<int64_t>(block) * splits * kWarps * NT * 128;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int64_t at = (static_cast<int64_t>(warp) * NT + j) * 128 + (q * 32 + lane);
        float v = split == 0 ? acc[j][q] : __ldcg(all + at);
        for (int s = 1; s < splits; ++s)
          v += s == split ? acc[j][q]
                          : __ldcg(all + static_cast<int64_t>(s) * kWarps * NT * 128 + at);
        acc[j][q] = v;
      }
    }
  }

  // Accumulator q of lane (g, t) in n-tile j: feature 16 warp + g (+8 for
  // q >= 2) of the block, x row 8j + 2t (+1 for odd q).
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    if constexpr (EPI == kSwiglu) {
      const int tile = m0 / 16 + warp;
      if (16 * tile >= out) continue;  // out % 16 == 0: whole tiles
#pragma unroll
      for (int p = 0; p < 2; ++p) {
        const int r = 8 * j + 2 * t + p;
        if (r >= n) continue;
        const float gate = __bfloat162float(__float2bfloat16_rn(acc[j][p]));
        const float up = __bfloat162float(__float2bfloat16_rn(acc[j][2 + p]));
        static_cast<bf16*>(y)[static_cast<int64_t>(r) * (out / 2) + 8 * tile + g] =
            __float2bfloat16_rn(silu_times(gate, up));
      }
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int m = m0 + 16 * warp + g + 8 * (q >> 1);
        const int r = 8 * j + 2 * t + (q & 1);
        if (m >= out || r >= n) continue;
        const int64_t o = static_cast<int64_t>(r) * out + m;
        if constexpr (EPI == kF32) {
          static_cast<float*>(y)[o] = acc[j][q];
        } else {
          static_cast<bf16*>(y)[o] = __float2bfloat16_rn(acc[j][q]);
        }
      }
    }
  }
}

using Kernel = void (*)(const bf16*, const bf16*, void*, int, int, int, int, float*, unsigned*);

template <int EPI, int... I>
constexpr auto kernel_table(std::integer_sequence<int, I...>) {
  return std::array<Kernel, sizeof...(I)>{stream_gemm_kernel<I + 1, EPI>...};
}

template <int... I>
constexpr auto smem_table(std::integer_sequence<int, I...>) {
  return std::array<int, sizeof...(I)>{(kStages * stage_bytes<I + 1>())...};
}

int device_sm_count() {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return std::max(sms, 1);
}

void launch_stream(int epi, const bf16* x, const bf16* w, void* y, int n, int in, int out,
                   const StreamGemmScratch& scratch, cudaStream_t s) {
  if (n <= 0 || out <= 0) return;
  if (!stream_gemm_supports(x, w, n, in))
    op_fail("stream_gemm", "needs 1 <= n <= kStreamMaxRows, in % 64 == 0, aligned x, w");
  constexpr int kNT = kStreamMaxRows / 8;
  static constexpr std::array<Kernel, kNT> kTables[3] = {
      kernel_table<kF32>(std::make_integer_sequence<int, kNT>{}),
      kernel_table<kBf16>(std::make_integer_sequence<int, kNT>{}),
      kernel_table<kSwiglu>(std::make_integer_sequence<int, kNT>{})};
  static constexpr auto kSmem = smem_table(std::make_integer_sequence<int, kNT>{});
  const int nt = (n + 7) / 8;
  const Kernel k = kTables[epi][static_cast<size_t>(nt - 1)];
  const int smem = kSmem[static_cast<size_t>(nt - 1)];
  // Rings past 48 KB need the opt-in (once per kernel; cheap to repeat).
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
    op_fail("stream_gemm", "cannot raise the shared memory limit");
  const int splits = stream_gemm_splits(in, out, scratch);
  const dim3 grid(static_cast<unsigned>((out + kBM - 1) / kBM), static_cast<unsigned>(splits));
  launch(k, grid, kThreads, smem, s, x, w, y, n, in, out, splits, scratch.part, scratch.counters);
  check_launch("stream_gemm");
}

}  // namespace

size_t stream_gemm_scratch_bytes(int max_blocks) {
  return static_cast<size_t>(max_blocks) * kPartBytesPerCta;
}

int stream_gemm_splits(int in, int out, const StreamGemmScratch& scratch) {
  const int tiles = in / kBK;
  const long long blocks = (out + kBM - 1) / kBM;
  const long long want = 2LL * device_sm_count();  // CTAs: about two per SM
  int best = 1;
  for (int sp = 2; sp <= std::min(tiles, kMaxSplits) && blocks * best < want; ++sp) {
    if (tiles % sp != 0 || tiles / sp < kMinTilesPerSplit) continue;
    // The scratch holds every CTA's partial tile at the most rows, and a
    // counter per block: the choice never depends on n.
    if (blocks > scratch.counters_len ||
        static_cast<size_t>(blocks) * sp * kPartBytesPerCta > scratch.part_bytes)
      break;
    best = sp;
  }
  return best;
}

bool stream_gemm_supports(const void* x, const void* w, int n, int in) {
  return n >= 1 && n <= kStreamMaxRows && in > 0 && in % kBK == 0 && aligned16(x) && aligned16(w);
}

void stream_gemm(const bf16* x, const bf16* w, void* y, bool y_fp32, int n, int in, int out,
                 const StreamGemmScratch& scratch, cudaStream_t s) {
  launch_stream(y_fp32 ? kF32 : kBf16, x, w, y, n, in, out, scratch, s);
}

void stream_gemm_swiglu(const bf16* x, const bf16* w_gate_up, bf16* act, int n, int in, int ff,
                        const StreamGemmScratch& scratch, cudaStream_t s) {
  if (ff % 8 != 0) op_fail("stream_gemm_swiglu", "needs ff % 8 == 0 (gate/up blocks of 8)");
  launch_stream(kSwiglu, x, w_gate_up, act, n, in, 2 * ff, scratch, s);
}

}  // namespace cartserve::ops::cuda
