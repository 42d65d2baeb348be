// Tensor-core building blocks shared by the attention kernels that run on
// mma.sync: the causal kernel of attention_prefill.cu and the shared-prefix
// kernel of attention_cascade.cu.
//
// A CTA of MmaCfg::WARPS warps (4 by default) owns 16 MA rows per warp
// (MA = 1 by default), each a (query row, query head) pair of one KV head;
// warp w owns rows [16 MA w, 16 MA (w + 1)), and a thread the rows
// 16 MA w + 16 a + g and + 8 (g = lane / 4) of each m-tile a. Q is staged
// through shared memory once and kept as A fragments (MA = 1) or read from
// shared memory by ldmatrix per tile (MA = 2); K/V tiles of BN positions
// (MmaCfg) are gathered
// through a block table by cp.async into two shared stages (tile i + 1 loads
// while tile i is computed). Per tile: S = Q K^T (bf16 mma, fp32
// accumulators; K by ldmatrix), scaled to log2 units, optionally masked,
// online softmax per row (the 4 lanes of a quad hold one row), P rounded to
// bf16 and fed from the S accumulators as A fragments, O += P V (V by
// ldmatrix.trans).
//
// Determinism: each row's results depend only on its own query, the keys and
// BN (mma rows are independent, the quad reductions have a fixed order),
// never on the other rows of the tile, the warp count or MA.
#pragma once

#ifdef CARTSERVE_WITH_CUDA

#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

constexpr int kMmaThreads = 128;  // 4 warps: the default CTA (the cascade kernel's)
constexpr int kMmaRows = 64;      // rows of a default CTA tile, 16 per warp
constexpr int kMmaPad = 8;        // bf16 of padding per shared row (conflict-free fragment loads)

// A CTA shape: head_dim D, BN KV positions per tile (64 at head_dim 64, 32 at
// 128 by default), WARPS warps of 16 * MA rows each (MA m-tiles of 16 rows
// per warp). MA = 1: Q is staged through the K/V buffers and kept in
// registers as A fragments. MA = 2: Q stays in shared memory after the K/V
// stages (Q_OFF) and each tile reads its fragments by ldmatrix; every K/V
// fragment a warp loads then feeds two m-tiles (half the shared-memory
// reads per mma). A row's results depend on D and BN only (the tile walk and
// its online softmax), never on WARPS or MA.
template <int D_, int BN_ = (D_ == 64 ? 64 : 32), int WARPS_ = 4, int MA_ = 1>
struct MmaCfg {
  static constexpr int D = D_;
  static constexpr int BN = BN_;
  static constexpr int WARPS = WARPS_;
  static constexpr int MA = MA_;
  static constexpr int THREADS = 32 * WARPS;
  static constexpr int ROWS = 16 * MA * WARPS;  // rows of the CTA tile
  static constexpr int LD = D + kMmaPad;        // shared row stride, elements
  static constexpr int TILE = BN * LD;          // elements of one K (or V) tile
  static constexpr bool Q_IN_SMEM = MA > 1;
  static constexpr int Q_OFF = 4 * TILE;                               // the Q tile (Q_IN_SMEM)
  static constexpr int SMEM = 4 * TILE + (Q_IN_SMEM ? ROWS * LD : 0);  // 2 x (K, V) [+ Q]
  static constexpr int CHUNKS = D / 8;                                 // 16-byte chunks per row
  static constexpr int SMEM_BYTES = SMEM * 2;
  static_assert(MA == 1 || MA == 2, "one or two m-tiles per warp");
  static_assert(Q_IN_SMEM || ROWS * LD <= SMEM, "the Q tile is staged in the K/V buffers");
  static_assert((BN * CHUNKS) % THREADS == 0, "whole chunks per thread");
  static_assert(BN % 16 == 0 && D % 16 == 0, "mma shapes");
  static_assert(64 % BN == 0, "splits of 64-position multiples start on tile boundaries");
};

__device__ __forceinline__ uint32_t ld_shared_u32(const bf16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

__device__ __forceinline__ void copy4(uint32_t (&dst)[4], const uint32_t (&src)[4]) {
  dst[0] = src[0];
  dst[1] = src[1];
  dst[2] = src[2];
  dst[3] = src[3];
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);  // lo in the low 16 bits
  return *reinterpret_cast<const uint32_t*>(&h);
}

// D[16x8] += A[16x16] (row) * B[16x8] (col); bf16 inputs, fp32 accumulators.
// Fragments (g = lane / 4, t = lane % 4):
//   a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]
//   b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1], d[2..3] = D[g+8][2t..2t+1]
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices from shared memory: lanes 8i..8i+7 give the row
// addresses of matrix i; lane l receives r[i] = {M_i[g][2t], M_i[g][2t+1]},
// or with TRANS {M_i[2t][g], M_i[2t+1][g]}.
template <bool TRANS = false>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
  }
}

// Writes the Q tile [ROWS][LD] at qs. row_ptr(r) gives the D contiguous bf16
// of tile row r (16-byte aligned), or nullptr for a padding row (zeros).
// Every thread calls it; the tile is complete on return.
template <class Cfg, typename RowPtr>
__device__ __forceinline__ void stage_q(bf16* qs, RowPtr row_ptr) {
  constexpr int CHUNKS = Cfg::CHUNKS;
  for (int i = threadIdx.x; i < Cfg::ROWS * CHUNKS; i += Cfg::THREADS) {
    const int r = i / CHUNKS;
    const int c = i % CHUNKS;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (const bf16* src = row_ptr(r)) v = *reinterpret_cast<const uint4*>(src + c * 8);
    *reinterpret_cast<uint4*>(qs + r * Cfg::LD + c * 8) = v;
  }
  __syncthreads();
}

// A fragment of m-tile a of this warp's rows for k-step kk, from a Q tile in
// shared memory (MA > 1): matrix i of the ldmatrix holds rows 8 (i & 1) and
// dims 16 kk + 8 (i >> 1) of the m-tile.
template <class Cfg>
__device__ __forceinline__ void q_fragment(const bf16* qs, int a, int kk, uint32_t (&f)[4]) {
  const int lane = threadIdx.x & 31;
  const int row = (threadIdx.x >> 5) * 16 * Cfg::MA + 16 * a + (lane & 15);
  ldmatrix_x4(f, qs + row * Cfg::LD + kk * 16 + (lane >> 4) * 8);
}

// Stages the Q tile (MA = 1: through the K/V buffers) and returns this
// warp's A fragments (see stage_q). Every thread calls it; smem is free
// again on return.
template <class Cfg, typename RowPtr>
__device__ __forceinline__ void load_q_fragments(bf16* smem, RowPtr row_ptr,
                                                 uint32_t (&qa)[Cfg::D / 16][4]) {
  static_assert(Cfg::MA == 1, "two m-tiles per warp read Q from shared memory");
  constexpr int D = Cfg::D;
  constexpr int LD = Cfg::LD;
  const int tid = threadIdx.x;
  stage_q<Cfg>(smem, row_ptr);
  const int warp = tid >> 5;
  const int g = (tid & 31) >> 2;
  const int t = tid & 3;
  const bf16* qw = smem + (warp * 16) * LD;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    qa[kk][0] = ld_shared_u32(qw + g * LD + kk * 16 + 2 * t);
    qa[kk][1] = ld_shared_u32(qw + (g + 8) * LD + kk * 16 + 2 * t);
    qa[kk][2] = ld_shared_u32(qw + g * LD + kk * 16 + 8 + 2 * t);
    qa[kk][3] = ld_shared_u32(qw + (g + 8) * LD + kk * 16 + 8 + 2 * t);
  }
  __syncthreads();  // the Q staging area becomes K/V stage 0
}

// Gathers K/V positions [tile * BN, tile * BN + BN) of KV head kvh through
// block table row bt, by THREADS threads: 16-byte chunk c (dims 8c .. 8c + 7)
// of position row r goes to byte dst(r, c) of ks and of vs; positions >=
// k_end are zero-filled (never read from the pool). Issues cp.async only
// (the caller commits).
template <int D, int BN, int THREADS, typename Dst>
__device__ __forceinline__ void gather_kv_chunks(unsigned char* ks, unsigned char* vs, Dst dst,
                                                 int tile, int k_end, const int32_t* bt,
                                                 const KvLayer& kv, int kvh) {
  constexpr int CHUNKS = D / 8;
  static_assert((BN * CHUNKS) % THREADS == 0, "whole chunks per thread");
  const int bs = kv.block_size;
  const int64_t kv_dim = static_cast<int64_t>(kv.num_kv_heads) * D;
#pragma unroll
  for (int j = 0; j < BN * CHUNKS / THREADS; ++j) {
    const int i = threadIdx.x + j * THREADS;
    const int r = i / CHUNKS;
    const int c = i % CHUNKS;
    const int p = tile * BN + r;
    const bool valid = p < k_end;
    int64_t off = 0;
    if (valid) {
      off = static_cast<int64_t>(bt[p / bs]) * kv.block_stride +
            static_cast<int64_t>(p % bs) * kv_dim + kvh * D + c * 8;
    }
    const uint32_t o = dst(r, c);
    cp_async_16(ks + o, kv.k + off, valid);
    cp_async_16(vs + o, kv.v + off, valid);
  }
}

// gather_kv_chunks into `stage` of the padded [BN][LD] K/V tiles.
template <class Cfg>
__device__ __forceinline__ void gather_kv_tile(bf16* smem, int tile, int stage, int k_end,
                                               const int32_t* bt, const KvLayer& kv, int kvh) {
  bf16* ks = smem + stage * 2 * Cfg::TILE;
  gather_kv_chunks<Cfg::D, Cfg::BN, Cfg::THREADS>(
      reinterpret_cast<unsigned char*>(ks), reinterpret_cast<unsigned char*>(ks + Cfg::TILE),
      [](int r, int c) { return static_cast<uint32_t>((r * Cfg::LD + c * 8) * 2); }, tile, k_end,
      bt, kv, kvh);
}

// Online-softmax state of one thread's rows: in m-tile a (of MA), rows
// 16 a + g and 16 a + g + 8 of its warp's (half 0 and 1; g = lane / 4).
template <class Cfg>
struct MmaRows {
  static constexpr int D = Cfg::D;
  static constexpr int MA = Cfg::MA;
  float o[MA][D / 8][4];  // O accumulators: n-tile dt covers dims [8 dt, 8 dt + 8)
  float m[MA][2];         // running max (log2 units)
  float l[MA][2];         // this thread's part of the running sums (quad sums after finish())

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int a = 0; a < MA; ++a) {
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        o[a][dt][0] = o[a][dt][1] = o[a][dt][2] = o[a][dt][3] = 0.f;
      m[a][0] = m[a][1] = -INFINITY;
      l[a][0] = l[a][1] = 0.f;
    }
  }

  // The scores sc of keys n0 + [0, BN) (this thread's fragment of S = Q K^T:
  // m-tile a, n-tile nt holds keys n0 + 8 nt + 2t, + 1 of rows g (e = 0, 1)
  // and g + 8 (e = 2, 3)) into the running softmax: per m-tile, scale, mask
  // (keys past lim[a][half], with need_mask), row max, then P = exp2(S - m)
  // as bf16 A fragments pa (k-step j covers keys [16 j, 16 j + 16) =
  // n-tiles 2j (a[0], a[1]) and 2j + 1 (a[2], a[3])), the sums, and O
  // rescaled. The caller adds P V.
  template <int NT>  // n-tiles: NT * 8 keys
  __device__ __forceinline__ void softmax(float (&sc)[MA][NT][4], int n0, float scale_log2,
                                          bool need_mask, const int (&lim)[MA][2],
                                          uint32_t (&pa)[MA][NT / 2][4]) {
    constexpr int BN = NT * 8;
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int a = 0; a < MA; ++a) {
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int p = n0 + nt * 8 + 2 * t + e;
          float x0 = sc[a][nt][e] * scale_log2;
          float x1 = sc[a][nt][2 + e] * scale_log2;
          if (need_mask) {
            if (p > lim[a][0]) x0 = -INFINITY;
            if (p > lim[a][1]) x1 = -INFINITY;
          }
          sc[a][nt][e] = x0;
          sc[a][nt][2 + e] = x1;
          mx0 = fmaxf(mx0, x0);
          mx1 = fmaxf(mx1, x1);
        }
      }
      // The 4 lanes of a quad hold one row's keys.
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      const float mn0 = fmaxf(m[a][0], mx0);
      const float mn1 = fmaxf(m[a][1], mx1);
      const float alpha0 = exp2f(m[a][0] - mn0);  // 0 on the first tile (m = -inf)
      const float alpha1 = exp2f(m[a][1] - mn1);
      m[a][0] = mn0;
      m[a][1] = mn1;
      float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt) {
        const float p00 = exp2f(sc[a][nt][0] - mn0);
        const float p01 = exp2f(sc[a][nt][1] - mn0);
        const float p10 = exp2f(sc[a][nt][2] - mn1);
        const float p11 = exp2f(sc[a][nt][3] - mn1);
        rs0 += p00 + p01;
        rs1 += p10 + p11;
        pa[a][nt / 2][(nt & 1) * 2 + 0] = pack_bf16x2(p00, p01);
        pa[a][nt / 2][(nt & 1) * 2 + 1] = pack_bf16x2(p10, p11);
      }
      l[a][0] = l[a][0] * alpha0 + rs0;
      l[a][1] = l[a][1] * alpha1 + rs1;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        o[a][dt][0] *= alpha0;
        o[a][dt][1] *= alpha0;
        o[a][dt][2] *= alpha1;
        o[a][dt][3] *= alpha1;
      }
    }
  }

  // One K/V tile in shared memory (ks, vs: [BN][LD]) holding keys n0 + [0, BN).
  // q_frag(a, kk, f) gives m-tile a's A fragment for k-step kk. With
  // need_mask, keys past lim[a][half] are masked for that row. Each row must
  // see a finite score in its first tile.
  template <typename QFrag>
  __device__ __forceinline__ void tile(QFrag q_frag, const bf16* ks, const bf16* vs, int n0,
                                       float scale_log2, bool need_mask, const int (&lim)[MA][2]) {
    constexpr int BN = Cfg::BN;
    constexpr int LD = Cfg::LD;
    const int lane = threadIdx.x & 31;
    // S = Q K^T: n-tile nt covers keys [8 nt, 8 nt + 8) of the tile. One
    // ldmatrix.x4 gives the B fragments of n-tiles nt, nt + 1 for k-step kk
    // (for every m-tile): matrix i has keys 8 (nt + (i >> 1)) .. + 8 and dims
    // 16 kk + 8 (i & 1) .. + 8 (b0 = K[key lane / 4][dims 2t, 2t + 1], b1 the
    // same 8 dims on).
    float sc[MA][BN / 8][4];
#pragma unroll
    for (int a = 0; a < MA; ++a)
#pragma unroll
      for (int nt = 0; nt < BN / 8; ++nt)
        sc[a][nt][0] = sc[a][nt][1] = sc[a][nt][2] = sc[a][nt][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t qa[MA][4];
#pragma unroll
      for (int a = 0; a < MA; ++a)
        q_frag(a, kk, qa[a]);
#pragma unroll
      for (int nt = 0; nt < BN / 8; nt += 2) {
        uint32_t b[4];
        const int key = nt * 8 + (lane >> 4) * 8 + (lane & 7);
        const int dim = kk * 16 + ((lane >> 3) & 1) * 8;
        ldmatrix_x4(b, ks + key * LD + dim);
#pragma unroll
        for (int a = 0; a < MA; ++a) {
          mma_16816(sc[a][nt], qa[a], b[0], b[1]);
          mma_16816(sc[a][nt + 1], qa[a], b[2], b[3]);
        }
      }
    }

    uint32_t pa[MA][BN / 16][4];
    softmax(sc, n0, scale_log2, need_mask, lim, pa);

    // O += P V. One ldmatrix.x4.trans gives the B fragments of two n-tiles
    // (dims [8 dt, 8 dt + 16)) for keys [16 j, 16 j + 16): matrix i has keys
    // 16 j + 8 (i & 1) .. + 8 and dims 8 dt + 8 (i >> 1) .. + 8.
#pragma unroll
    for (int j = 0; j < BN / 16; ++j) {
#pragma unroll
      for (int dt = 0; dt < D / 8; dt += 2) {
        uint32_t b[4];
        const int key = j * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int dim = dt * 8 + (lane >> 4) * 8;
        ldmatrix_x4<true>(b, vs + key * LD + dim);
#pragma unroll
        for (int a = 0; a < MA; ++a) {
          mma_16816(o[a][dt], pa[a][j], b[0], b[1]);
          mma_16816(o[a][dt + 1], pa[a][j], b[2], b[3]);
        }
      }
    }
  }

  // The full row sums: l summed over the quad (every lane gets them).
  __device__ __forceinline__ void finish() {
#pragma unroll
    for (int a = 0; a < MA; ++a) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        l[a][h] += __shfl_xor_sync(0xffffffffu, l[a][h], 1);
        l[a][h] += __shfl_xor_sync(0xffffffffu, l[a][h], 2);
      }
    }
  }

  // Row (a, half) unnormalised into op [D] and ml [2] (max, sum); after finish().
  __device__ __forceinline__ void store_partial(int a, int half, float* __restrict__ op,
                                                float* __restrict__ ml) const {
    const int t = threadIdx.x & 3;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
      *reinterpret_cast<float2*>(op + dt * 8 + 2 * t) =
          make_float2(o[a][dt][2 * half], o[a][dt][2 * half + 1]);
    if (t == 0) {
      ml[0] = m[a][half];
      ml[1] = l[a][half];
    }
  }

  // Row (a, half) as O / l in bf16 into orow [D]; after finish() (l >= 1:
  // the max term contributes 1).
  __device__ __forceinline__ void store_out(int a, int half, bf16* __restrict__ orow) const {
    const int t = threadIdx.x & 3;
    const float inv = 1.f / l[a][half];
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<__nv_bfloat162*>(orow + dt * 8 + 2 * t) =
          __floats2bfloat162_rn(o[a][dt][2 * half] * inv, o[a][dt][2 * half + 1] * inv);
    }
  }
};

// Walks K/V tiles [tile0, n_tiles) of keys below k_end through the two
// shared stages: gather(tile, stage) issues a tile's copies, body(ks, vs,
// tile) computes it. Called by every thread of the CTA; smem is free again
// on return.
template <class Cfg, typename Gather, typename Body>
__device__ __forceinline__ void for_each_kv_tile(bf16* smem, int tile0, int n_tiles, Gather gather,
                                                 Body body) {
  gather(tile0, 0);  // tile it lives in stage (it - tile0) & 1
  cp_async_commit();
  for (int it = tile0; it < n_tiles; ++it) {
    if (it + 1 < n_tiles) {
      gather(it + 1, (it + 1 - tile0) & 1);
      cp_async_commit();
      cp_async_wait<1>();  // tile it has landed (this thread's copies)
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // ... and every thread's
    const bf16* ks = smem + ((it - tile0) & 1) * 2 * Cfg::TILE;
    body(ks, ks + Cfg::TILE, it);
    __syncthreads();  // this stage is free for tile it + 2
  }
}

}  // namespace cartserve::ops::cuda

#endif  // CARTSERVE_WITH_CUDA
