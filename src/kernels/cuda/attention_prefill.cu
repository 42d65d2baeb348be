// Causal paged attention over a flat batch of query rows (prefill chunks and
// decode rows mixed), bf16 in and out, fp32 softmax and accumulation.
//
// Warpgroup-MMA kernel (prefill_wgmma_kernel, Hopper, head_dim 128; the
// default there, prefill_tile): the tile walk, GQA packing, split-KV and
// epilogue of the mma.sync kernel below on 128-row CTAs of two warpgroups,
// with S = Q K^T and O += P V on wgmma (operand layouts in
// attention_wgmma.cuh). H100, 3B shape: an 8192-token prompt 1.52 ms per
// layer (271 TFLOP/s), the TTFT shape 25.4 us
// (bench/results/gpu-h100-2026-12-07-1605.json).
//
// Tensor-core kernel (prefill_mma_kernel), FlashAttention-2 style:
//  - CTA shapes (PrefillTile): 64 or 128 rows (4 or 8 warps of 16 rows, or
//    4 of 32) by 32 or 64 keys per K/V tile at head_dim 128 (64 keys at 64),
//    in dynamic shared memory. The default without wgmma, 64 x 32 (64 x 64 at head_dim 64):
//    on an H100 (3B shape), an 8192-token causal prompt takes 2.05 ms per
//    layer (201 TFLOP/s; 2.32 before K came by ldmatrix and the tiles went
//    heaviest first), the best shape 128 x 64 on 4 warps of 32 rows 1.97;
//    the TTFT shape (64 queries after 2048 keys) 28.6 us, the default the
//    best there (bench/results/gpu-h100-2026-12-07-0445.json). Below, the
//    default's numbers.
//  - A CTA (128 threads, 4 warps) owns one KV head of one sequence and a tile
//    of kBM = 64 rows. The rows pack the GQA group: row r is query
//    q0 + r / group of the tile, query head kv_head * group + r % group, so
//    each K/V tile is gathered once for all heads of the group (and a decode
//    row in a mixed batch fills `group` rows, not one). A tile covers
//    P = 64 / group queries (rows P * group .. 63 are padding).
//  - Grid: x = flat tiles, y = KV heads. Sequence s owns the tiles
//    [query_start[s] / P + s, query_start[s + 1] / P + s + 1), which always
//    holds ceil(q_len / P) tiles; a CTA finds its sequence by binary search
//    and exits when its tile starts past the sequence's queries. The grid is
//    num_tokens / P + num_seqs wide: host data only, no device sizes. CTA x
//    takes flat tile gridDim.x - 1 - x: the heaviest causal tiles go first.
//  - Warp w owns rows [16w, 16w + 16). Q is staged through shared memory
//    once and kept in registers as mma A fragments (the 128-row tile with
//    32 rows per warp keeps Q in shared memory instead). K/V tiles of BN
//    positions (64 at head_dim 64, 32 at head_dim 128) are gathered through
//    the block table with cp.async (16-byte chunks, positions past the last
//    key zero-filled) into two shared stages: tile i + 1 loads while tile i
//    is computed.
//  - Per tile: S = Q K^T with mma.sync m16n8k16 (bf16 in, fp32 out), scaled
//    to log2 units, causal mask (only on tiles that reach past the tile's
//    first query's limit), online softmax per row (max over the quad of
//    lanes sharing a row), P rounded to bf16 and fed straight from the S
//    accumulators as A fragments, O += P V (V B fragments by ldmatrix.trans).
//  - Epilogue: O / l, rounded to bf16, written only for real rows.
//  - Split-KV (num_splits > 1, for few rows over long contexts): grid z
//    splits each sequence's keys as decode does (decode_split_len); a CTA
//    walks only its split's tiles and writes O, m and l unnormalised to the
//    workspace; prefill_merge_kernel combines a row's splits in split order.
// Every row sees key 0 (its causal limit is >= 0), so each row's running max
// is finite after the first tile and masked scores give exp2(-inf) = 0;
// padding rows use a zero query and the tile's last key as their limit, so
// they stay finite too and are never stored.
//
// CUDA-core kernel (prefill_simple_kernel): one warp per (query row, head),
// lane i owning head_dim / 32 dimensions, keys visited one at a time (warp
// dot product, online softmax). The fallback for unaligned inputs and the
// second implementation the tests compare.
//
// Determinism: every sum has a fixed order (fixed thread -> data mapping,
// fixed shuffle trees), no atomics; the same launch gives the same bits.
// No allocation, no host synchronisation: graph-capturable.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda/attention_wgmma.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ---- tensor-core kernel ----------------------------------------------------

constexpr int kBM = kMmaRows;  // rows of the default CTA (and the widest GQA group it takes)
// Split-KV (prefill_num_splits): as many splits as fit one wave of
// kPrefillResidentCtas CTAs per SM (what the kernel's ~200 registers per
// thread allow; the wgmma kernel's CTA takes a whole SM), each split at least
// kPrefillMinSplitLen keys so that the Q tile load and the partial write stay
// small beside the K/V it reads.
constexpr int kPrefillResidentCtas = 2;
constexpr int kPrefillMinSplitLen = 256;

// The sequence owning flat tile b: the largest s with query_start[s] / P + s
// <= b (that quantity strictly increases with s, and is 0 at s = 0).
__device__ __forceinline__ int tile_sequence(const int32_t* query_start, int num_seqs, int P,
                                             int b) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (query_start[mid] / P + mid <= b) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// The work of one tensor-core CTA: flat tile gridDim.x - 1 - blockIdx.x
// (a causal sequence's last tiles see the most keys, so they start in the
// first wave and the short ones fill the tail) of P queries x group heads,
// KV head blockIdx.y, and with SPLIT the keys of split blockIdx.z.
struct TileWork {
  bool active;    // false: the CTA has nothing to do (CTA-uniform)
  int64_t row0;   // flat row of the tile's first query
  int n_rows;     // real rows [0, n_rows) (query r / group, head r % group)
  int first_lim;  // causal limit (last visible key) of the tile's first query
  int k_begin;    // this CTA's keys [k_begin, k_end), k_begin a multiple of 64
  int k_end;
  const int32_t* bt;  // the sequence's block table row
};

template <bool SPLIT>
__device__ __forceinline__ TileWork tile_work(const AttnBatch& batch, int group, int P,
                                              int num_splits, const int32_t* skip) {
  TileWork w{};
  const int b = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int s = tile_sequence(batch.query_start, batch.num_seqs, P, b);
  const int q_begin = batch.query_start[s];
  const int q_len = batch.query_start[s + 1] - q_begin;
  const int q0 = (b - (q_begin / P + s)) * P;            // first query of the tile
  w.active = q0 < q_len;                                 // else a spare tile of this sequence
  if (skip != nullptr && skip[s] > 0) w.active = false;  // another op attends for it
  if (!w.active) return w;
  const int ctx = batch.context_lens[s];
  const int q_hi = min(q0 + P, q_len);  // the tile's queries: [q0, q_hi)
  w.row0 = q_begin + q0;
  w.n_rows = (q_hi - q0) * group;  // <= the CTA's rows
  w.first_lim = ctx - q_len + q0;
  const int kv_hi = ctx - q_len + q_hi;  // keys the tile needs: [0, kv_hi)
  w.k_begin = 0;
  w.k_end = kv_hi;
  if constexpr (SPLIT) {
    const int len = decode_split_len(ctx, num_splits);
    w.k_begin = static_cast<int>(blockIdx.z) * len;
    if (w.k_begin >= kv_hi) w.active = false;  // no key of this split is visible to the tile
    w.k_end = min(kv_hi, w.k_begin + len);
  }
  w.bt = batch.block_table + static_cast<int64_t>(s) * batch.max_blocks;
  return w;
}

// This thread's rows: m-tile a, half h is row warp * 16 MA + 16 a + g + 8 h
// (g = lane / 4), with its causal limit (last visible key, inclusive). A row
// with no key in [k_begin, k_end) (a split past it) computes over the whole
// split instead, and its partial is neither written nor merged.
template <int MA>
struct RowLimits {
  int rows[MA][2], lim[MA][2];
  bool real[MA][2];

  __device__ __forceinline__ RowLimits(const TileWork& w, int group) {
    const int warp = threadIdx.x >> 5;
    const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
    for (int a = 0; a < MA; ++a) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = warp * 16 * MA + 16 * a + g + 8 * h;
        rows[a][h] = r;
        real[a][h] = r < w.n_rows && w.first_lim + r / group >= w.k_begin;
        lim[a][h] = real[a][h] ? w.first_lim + r / group : w.k_end - 1;
      }
    }
  }
};

// The epilogue of both tensor-core kernels: each real row of this thread as
// O / l into out, or with SPLIT unnormalised into the workspace.
template <bool SPLIT, class Cfg>
__device__ __forceinline__ void store_rows(MmaRows<Cfg>& acc, const RowLimits<Cfg::MA>& rl,
                                           const TileWork& w, int kvh, int n_heads, int group,
                                           int num_splits, bf16* __restrict__ out,
                                           float* __restrict__ o_part,
                                           float* __restrict__ ml_part) {
  constexpr int D = Cfg::D;
  acc.finish();
  const int64_t out_stride = static_cast<int64_t>(n_heads) * D;
#pragma unroll
  for (int a = 0; a < Cfg::MA; ++a) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = rl.rows[a][h];
      const int64_t row = w.row0 + r / group;
      const int head = kvh * group + r % group;
      if constexpr (SPLIT) {
        if (!rl.real[a][h]) continue;
        const int64_t slot = (row * n_heads + head) * num_splits + blockIdx.z;
        acc.store_partial(a, h, o_part + slot * D, ml_part + 2 * slot);
      } else {
        if (r >= w.n_rows) continue;
        acc.store_out(a, h, out + row * out_stride + head * D);
      }
    }
  }
}

// SPLIT: blockIdx.z is a split of the keys (split_active in
// attention_internal.cuh); the CTA writes unnormalised partials to o_part /
// ml_part ([num_tokens, n_heads, num_splits, D] / [..., 2]) instead of out.
template <class Cfg, bool SPLIT>
__global__ void __launch_bounds__(Cfg::THREADS)
    prefill_mma_kernel(const bf16* __restrict__ q /* [num_tokens] rows of q_row_stride */,
                       int64_t q_row_stride, KvLayer kv, AttnBatch batch,
                       bf16* __restrict__ out /* [num_tokens, n_heads * D] */, int n_heads,
                       int group, int P, float scale_log2, int num_splits,
                       float* __restrict__ o_part, float* __restrict__ ml_part,
                       const int32_t* __restrict__ skip /* [num_seqs] or null */) {
  constexpr int BN = Cfg::BN;
  // Before the KV loop: the Q tile [ROWS][LD]. Then stage i (0, 1) holds
  // K [BN][LD] at i * 2 * TILE and V [BN][LD] right after it. Dynamic
  // (Cfg::SMEM_BYTES): past the 48 KB of static shared memory at BN 64.
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  bf16* smem = reinterpret_cast<bf16*>(dyn_smem);

  const TileWork w = tile_work<SPLIT>(batch, group, P, num_splits, skip);
  if (!w.active) return;  // CTA-uniform, before any barrier
  const int kvh = blockIdx.y;

  // Q tile -> shared (zero rows for padding) -> A fragments: kept in
  // registers (MA = 1), or read from shared memory per K/V tile (MA = 2).
  auto q_row = [&](int r) -> const bf16* {
    if (r >= w.n_rows) return nullptr;
    return q + (w.row0 + r / group) * q_row_stride + (kvh * group + r % group) * Cfg::D;
  };
  uint32_t qa[Cfg::Q_IN_SMEM ? 1 : Cfg::D / 16][4];
  if constexpr (Cfg::Q_IN_SMEM) {
    stage_q<Cfg>(smem + Cfg::Q_OFF, q_row);
  } else {
    load_q_fragments<Cfg>(smem, q_row, qa);
  }
  auto q_frag = [&](int a, int kk, uint32_t(&f)[4]) {
    if constexpr (Cfg::Q_IN_SMEM) {
      q_fragment<Cfg>(smem + Cfg::Q_OFF, a, kk, f);
    } else {
      copy4(f, qa[kk]);
    }
  };

  const RowLimits<Cfg::MA> rl(w, group);
  // Every row sees key k_begin, so its running max is finite after the first tile.
  MmaRows<Cfg> acc;
  acc.init();
  for_each_kv_tile<Cfg>(
      smem, w.k_begin / BN, (w.k_end + BN - 1) / BN,
      [&](int tile, int stage) { gather_kv_tile<Cfg>(smem, tile, stage, w.k_end, w.bt, kv, kvh); },
      [&](const bf16* ks, const bf16* vs, int it) {
        const int n0 = it * BN;
        // Masking only on tiles that reach past some row's limit.
        acc.tile(q_frag, ks, vs, n0, scale_log2, n0 + BN - 1 > w.first_lim, rl.lim);
      });
  store_rows<SPLIT>(acc, rl, w, kvh, n_heads, group, num_splits, out, o_part, ml_part);
}

// The wgmma kernel (head_dim 128; attention_wgmma.cuh): the same function
// as prefill_mma_kernel over 128 rows per CTA, warpgroup wg owning rows
// [64 wg, 64 wg + 64). Q stays in shared memory (swizzled); K/V tiles of BN
// positions are gathered by cp.async into STAGES swizzled stages. Per tile
// and warpgroup: S = Q K^T (8 wgmma k-steps over the dims), MmaRows' softmax
// on the accumulators, O += P V (4 k-steps over the positions, P from
// registers). Tile i + 1 loads while tile i is computed.
template <bool SPLIT>
__global__ void __launch_bounds__(WgmmaCfg::THREADS, 1)
    prefill_wgmma_kernel(const bf16* __restrict__ q /* [num_tokens] rows of q_row_stride */,
                         int64_t q_row_stride, KvLayer kv, AttnBatch batch,
                         bf16* __restrict__ out /* [num_tokens, n_heads * D] */, int n_heads,
                         int group, int P, float scale_log2, int num_splits,
                         float* __restrict__ o_part, float* __restrict__ ml_part,
                         const int32_t* __restrict__ skip /* [num_seqs] or null */) {
  using Cfg = WgmmaCfg;
  constexpr int D = Cfg::D;
  constexpr int BN = Cfg::BN;
  constexpr int CHUNKS = Cfg::CHUNKS;
  // [Q: Q_BYTES][stage 0: K, V][stage 1: K, V]..., from a 1024-byte boundary.
  extern __shared__ __align__(1024) unsigned char dyn_smem[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(dyn_smem));
  const uint32_t pad = (1024u - (raw & 1023u)) & 1023u;
  unsigned char* smem = dyn_smem + pad;
  const uint32_t sbase = raw + pad;

  const TileWork w = tile_work<SPLIT>(batch, group, P, num_splits, skip);
  if (!w.active) return;  // CTA-uniform, before any barrier
  const int kvh = blockIdx.y;
  const int tid = threadIdx.x;
  const int wg = tid >> 7;

  // Q rows (zero for padding), swizzled, in the first cp.async group.
  for (int i = tid; i < Cfg::ROWS * CHUNKS; i += Cfg::THREADS) {
    const int r = i / CHUNKS;
    const int c = i % CHUNKS;
    const bool real = r < w.n_rows;
    const bf16* src = q;
    if (real) src = q + (w.row0 + r / group) * q_row_stride + (kvh * group + r % group) * D + c * 8;
    cp_async_16(smem + sw128_offset(Cfg::ROWS, r, c), src, real);
  }
  const int tile0 = w.k_begin / BN;
  const int n_tiles = (w.k_end + BN - 1) / BN;
  // Tile `tile` lives in stage (tile - tile0) % 2: K at k_off, V after it.
  auto k_off = [&](int tile) {
    return Cfg::Q_BYTES + static_cast<uint32_t>((tile - tile0) % Cfg::STAGES) * 2 * Cfg::KV_BYTES;
  };
  // K and V positions [tile * BN, + BN) into their stage, swizzled.
  auto gather = [&](int tile) {
    unsigned char* ks = smem + k_off(tile);
    gather_kv_chunks<D, BN, Cfg::THREADS>(
        ks, ks + Cfg::KV_BYTES, [](int r, int c) { return sw128_offset(BN, r, c); }, tile, w.k_end,
        w.bt, kv, kvh);
  };

  // This warpgroup's Q rows: half kk / 4, rows 64 wg .., 32 (kk % 4) bytes in.
  const uint32_t q_base = sbase + static_cast<uint32_t>(wg * 64 * 128);
  // Issues S = Q K^T of `tile` into sc (zeroed here) and commits the group.
  auto issue_s = [&](float(&sc)[1][BN / 8][4], int tile) {
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt)
      sc[0][nt][0] = sc[0][nt][1] = sc[0][nt][2] = sc[0][nt][3] = 0.f;
    wgmma_fence();
    const uint32_t k_base = sbase + k_off(tile);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t step = static_cast<uint32_t>((kk & 3) * 32);
      const uint64_t da = sw128_desc(q_base + (kk >> 2) * (Cfg::ROWS * 128) + step, 16, 1024);
      const uint64_t db = sw128_desc(k_base + (kk >> 2) * (BN * 128) + step, 16, 1024);
      wgmma_64x64_ss(sc[0], da, db);
    }
    wgmma_commit();
  };
  // Issues O += P V of `tile` and commits the group.
  auto issue_pv = [&](MmaRows<Cfg>& acc, uint32_t(&pa)[1][BN / 16][4], int tile) {
    wgmma_fence();
    const uint32_t v_base = sbase + k_off(tile) + Cfg::KV_BYTES;
#pragma unroll
    for (int j = 0; j < BN / 16; ++j)
      wgmma_64x128_rs(acc.o[0], pa[0][j], sw128_desc(v_base + j * 16 * 128, BN * 128, 1024));
    wgmma_commit();
  };

  const RowLimits<1> rl(w, group);
  MmaRows<Cfg> acc;
  acc.init();
  float sc[1][BN / 8][4];
  uint32_t pa[1][BN / 16][4];
  gather(tile0);
  cp_async_commit();
  for (int it = tile0; it < n_tiles; ++it) {
    if (it + 1 < n_tiles) {
      gather(it + 1);
      cp_async_commit();
      cp_async_wait<1>();  // Q and tile it have landed (this thread's copies)
    } else {
      cp_async_wait<0>();
    }
    fence_proxy_async();
    __syncthreads();  // ... and every thread's, visible to the tensor cores
    issue_s(sc, it);
    wgmma_wait<0>();
    const int n0 = it * BN;
    acc.softmax(sc, n0, scale_log2, n0 + BN - 1 > w.first_lim, rl.lim, pa);
    issue_pv(acc, pa, it);
    wgmma_wait<0>();
    __syncthreads();  // this stage is free for tile it + 2
  }
  store_rows<SPLIT>(acc, rl, w, kvh, n_heads, group, num_splits, out, o_part, ml_part);
}

// ---- CUDA-core kernel ------------------------------------------------------

constexpr int kSimpleWarps = 4;

template <int D>
__global__ void __launch_bounds__(kSimpleWarps * 32)
    prefill_simple_kernel(const bf16* __restrict__ q /* [num_tokens] rows of q_row_stride */,
                          int64_t q_row_stride, KvLayer kv, AttnBatch batch,
                          bf16* __restrict__ out /* [num_tokens, n_heads * D] */, int n_heads,
                          float scale) {
  constexpr int VPL = D / 32;  // dims per lane
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kSimpleWarps + (threadIdx.x >> 5);
  if (item >= static_cast<int64_t>(batch.num_tokens) * n_heads) return;  // warp-uniform
  const int row = static_cast<int>(item / n_heads);
  const int h = static_cast<int>(item % n_heads);

  const int s = row_sequence(batch.query_start, batch.num_seqs, row);
  const int q_begin = batch.query_start[s];
  const int q_len = batch.query_start[s + 1] - q_begin;
  const int lim = batch.context_lens[s] - q_len + (row - q_begin);  // last visible key
  const int kvh = h / (n_heads / kv.num_kv_heads);
  const int64_t kv_dim = static_cast<int64_t>(kv.num_kv_heads) * D;
  const int bs = kv.block_size;
  const int32_t* bt = batch.block_table + static_cast<int64_t>(s) * batch.max_blocks;

  float qf[VPL];
  const bf16* qr = q + static_cast<int64_t>(row) * q_row_stride + h * D + lane * VPL;
#pragma unroll
  for (int i = 0; i < VPL; ++i)
    qf[i] = __bfloat162float(qr[i]);

  float m = -INFINITY, l = 0.f;
  float acc[VPL];
#pragma unroll
  for (int i = 0; i < VPL; ++i)
    acc[i] = 0.f;
  for (int p = 0; p <= lim; ++p) {
    const int64_t off = static_cast<int64_t>(bt[p / bs]) * kv.block_stride +
                        static_cast<int64_t>(p % bs) * kv_dim + kvh * D + lane * VPL;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < VPL; ++i)
      dot += qf[i] * __bfloat162float(kv.k[off + i]);
    const float x = warp_sum(dot) * scale;
    const float mn = fmaxf(m, x);
    const float alpha = expf(m - mn);  // 0 for the first key
    const float w = expf(x - mn);
    l = l * alpha + w;
#pragma unroll
    for (int i = 0; i < VPL; ++i)
      acc[i] = acc[i] * alpha + w * __bfloat162float(kv.v[off + i]);
    m = mn;
  }
  const float inv = 1.f / l;
  bf16* orow = out + static_cast<int64_t>(row) * n_heads * D + h * D + lane * VPL;
#pragma unroll
  for (int i = 0; i < VPL; ++i)
    orow[i] = __float2bfloat16_rn(acc[i] * inv);
}

// Merge of the split-KV prefill: one warp per (query row, head), over the
// splits that hold the row's visible keys (all written by the split kernel).
constexpr int kMergeWarps = 4;

template <int D>
__global__ void __launch_bounds__(kMergeWarps * 32)
    prefill_merge_kernel(const float* __restrict__ o_part /* [num_tokens, n_heads, splits, D] */,
                         const float* __restrict__ ml_part /* [num_tokens, n_heads, splits, 2] */,
                         AttnBatch batch, bf16* __restrict__ out /* [num_tokens, n_heads * D] */,
                         int n_heads, int num_splits, const int32_t* __restrict__ skip) {
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kMergeWarps + (threadIdx.x >> 5);
  if (item >= static_cast<int64_t>(batch.num_tokens) * n_heads) return;  // warp-uniform
  const int row = static_cast<int>(item / n_heads);
  const int s = row_sequence(batch.query_start, batch.num_seqs, row);
  if (skip != nullptr && skip[s] > 0) return;  // warp-uniform
  const int q_begin = batch.query_start[s];
  const int q_len = batch.query_start[s + 1] - q_begin;
  const int ctx = batch.context_lens[s];
  const int lim = ctx - q_len + (row - q_begin);  // last visible key, >= 0
  const int n_active = split_active(lim, decode_split_len(ctx, num_splits), num_splits);
  const int64_t slot0 = item * num_splits;
  merge_partials<D>(o_part + slot0 * D, ml_part + 2 * slot0, n_active, out + item * D, lane);
}

// Shape checks shared by both paths; returns the GQA group size.
int check_shapes(const char* op, const KvLayer& kv, int n_heads) {
  if (kv.head_dim != 64 && kv.head_dim != 128) op_fail(op, "head_dim must be 64 or 128");
  if (kv.num_kv_heads <= 0 || n_heads <= 0 || n_heads % kv.num_kv_heads != 0)
    op_fail(op, "n_heads must be a positive multiple of num_kv_heads");
  if (kv.block_size <= 0) op_fail(op, "block_size must be positive");
  return n_heads / kv.num_kv_heads;
}

}  // namespace

void paged_attention_prefill_simple(const bf16* q, int64_t q_row_stride, const KvLayer& kv,
                                    const AttnBatch& batch, bf16* out, int n_heads, float scale,
                                    cudaStream_t s) {
  check_shapes("paged_attention_prefill_simple", kv, n_heads);
  if (batch.num_seqs <= 0 || batch.num_tokens <= 0) return;
  const long long items = static_cast<long long>(batch.num_tokens) * n_heads;
  const unsigned grid = static_cast<unsigned>((items + kSimpleWarps - 1) / kSimpleWarps);
  if (kv.head_dim == 64) {
    prefill_simple_kernel<64>
        <<<grid, kSimpleWarps * 32, 0, s>>>(q, q_row_stride, kv, batch, out, n_heads, scale);
  } else {
    prefill_simple_kernel<128>
        <<<grid, kSimpleWarps * 32, 0, s>>>(q, q_row_stride, kv, batch, out, n_heads, scale);
  }
  check_launch("paged_attention_prefill_simple");
}

int prefill_num_splits(int num_tokens, int num_seqs, int n_heads, int num_kv_heads,
                       int max_context_len, int max_splits, int num_sms, int head_dim,
                       PrefillTile tile) {
  if (max_splits <= 1 || num_tokens <= 0 || num_seqs <= 0 || num_kv_heads <= 0 || n_heads <= 0 ||
      n_heads % num_kv_heads != 0 || max_context_len <= 0)
    return 1;
  const int group = n_heads / num_kv_heads;
  if (group > kBM) return 1;  // the CUDA-core path, which does not split
  if (tile.rows == 0) tile = prefill_tile(num_tokens, num_seqs, head_dim);
  if (tile.rows < group) return 1;
  // Tensor-core CTAs of the unsplit launch (its grid), and how many fit on
  // the GPU at once: the wgmma kernel takes a whole SM.
  const long long ctas =
      (static_cast<long long>(num_tokens) / (tile.rows / group) + num_seqs) * num_kv_heads;
  const long long target =
      static_cast<long long>(tile.wgmma ? 1 : kPrefillResidentCtas) * (num_sms > 0 ? num_sms : 1);
  // At most one wave: one CTA past it runs alone afterwards (H100, 3B, 64
  // queries after 2112 keys: 9 splits of 16 wgmma CTAs 25.3 us, 8 splits 21.5).
  long long splits = target / ctas;
  const long long by_len =
      (static_cast<long long>(max_context_len) + kPrefillMinSplitLen - 1) / kPrefillMinSplitLen;
  splits = std::min({splits, by_len, static_cast<long long>(max_splits)});
  return static_cast<int>(std::max(1LL, splits));
}

#ifdef CARTSERVE_CUDA_SM90A
constexpr bool kHaveWgmma = true;
#else
constexpr bool kHaveWgmma = false;  // CMAKE_CUDA_ARCHITECTURES without 90a
#endif

PrefillTile prefill_tile(int /*num_tokens*/, int /*num_seqs*/, int head_dim) {
  // CARTSERVE_PREFILL_WIDE=1: 128 rows on 4 warps of 32 (H100, 3B: 8192-token
  // prompt 136.9 vs 140.4 ms, but slower at the TTFT shape; opt-in).
  static const bool wide = env_flag("CARTSERVE_PREFILL_WIDE");
  // At head_dim 128 on Hopper (compute capability 9; the build targets
  // sm_90a) the warpgroup-MMA kernel, unless CARTSERVE_PREFILL_WGMMA=0
  // (H100, 3B: an 8192-token prompt 121.3 vs 140.3 ms, 271 vs 207 TFLOP/s in
  // attention; the TTFT shape 25.4 vs 27.7 us per layer;
  // bench/results/gpu-h100-2026-12-07-1605.json). Never by batch shape: a
  // row's bits depend on the kernel.
  static const bool wgmma = [] {
    if (!kHaveWgmma) return false;
    const char* v = std::getenv("CARTSERVE_PREFILL_WGMMA");
    if (v != nullptr && std::strcmp(v, "0") == 0) return false;
    int dev = 0, major = 0;
    return cudaGetDevice(&dev) == cudaSuccess &&
           cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
           major == 9;
  }();
  if (wgmma && head_dim == 128) return {WgmmaCfg::ROWS, WgmmaCfg::BN, 16, true};
  if (wide) return {128, head_dim == 64 ? 64 : 32, 32};
  return {kBM, head_dim == 64 ? 64 : 32, 16};
}

namespace {

// The tensor-core launch and its merge for one CTA shape.
struct PrefillLaunch {
  const bf16* q;
  int64_t q_row_stride;
  KvLayer kv;
  AttnBatch batch;
  bf16* out;
  int n_heads, group;
  float scale_log2;
  int num_splits;
  void* workspace;
  const int32_t* skip;
};

// Cfg: the CTA shape; WGMMA: prefill_wgmma_kernel (Cfg = WgmmaCfg), else
// prefill_mma_kernel<Cfg>.
template <class Cfg, bool WGMMA = false>
void launch_prefill(const PrefillLaunch& a, cudaStream_t s) {
  constexpr int D = Cfg::D;
  const int P = Cfg::ROWS / a.group;  // queries per tile
  const bool split = a.num_splits > 1;
  const dim3 grid(static_cast<unsigned>(a.batch.num_tokens / P + a.batch.num_seqs),
                  static_cast<unsigned>(a.kv.num_kv_heads), static_cast<unsigned>(a.num_splits));
  float* o_part = static_cast<float*>(a.workspace);
  float* ml_part = split ? o_part + static_cast<size_t>(a.batch.num_tokens) *
                                        static_cast<size_t>(a.n_heads) *
                                        static_cast<size_t>(a.num_splits) * static_cast<size_t>(D)
                         : nullptr;
  decltype(&prefill_wgmma_kernel<true>) kernel = nullptr;  // both kernels' signature
  if constexpr (WGMMA) {
    kernel = split ? prefill_wgmma_kernel<true> : prefill_wgmma_kernel<false>;
  } else {
    kernel = split ? prefill_mma_kernel<Cfg, true> : prefill_mma_kernel<Cfg, false>;
  }
  if (Cfg::SMEM_BYTES > 48 * 1024 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::SMEM_BYTES) !=
          cudaSuccess)
    op_fail("paged_attention_prefill", "cannot raise the kernel's shared memory limit");
  kernel<<<grid, Cfg::THREADS, Cfg::SMEM_BYTES, s>>>(a.q, a.q_row_stride, a.kv, a.batch, a.out,
                                                     a.n_heads, a.group, P, a.scale_log2,
                                                     a.num_splits, o_part, ml_part, a.skip);
  if (!split) return;
  check_launch("paged_attention_prefill (split)");
  const long long items = static_cast<long long>(a.batch.num_tokens) * a.n_heads;
  const unsigned merge_grid = static_cast<unsigned>((items + kMergeWarps - 1) / kMergeWarps);
  prefill_merge_kernel<D><<<merge_grid, kMergeWarps * 32, 0, s>>>(o_part, ml_part, a.batch, a.out,
                                                                  a.n_heads, a.num_splits, a.skip);
}

}  // namespace

void paged_attention_prefill(const bf16* q, int64_t q_row_stride, const KvLayer& kv,
                             const AttnBatch& batch, bf16* out, int n_heads, float scale,
                             int num_splits, void* workspace, cudaStream_t s, const int32_t* skip,
                             PrefillTile tile) {
  constexpr const char* kOp = "paged_attention_prefill";
  const int group = check_shapes(kOp, kv, n_heads);
  if (batch.num_seqs <= 0 || batch.num_tokens <= 0) return;
  if (tile.rows == 0) tile = prefill_tile(batch.num_tokens, batch.num_seqs, kv.head_dim);
  // The tensor-core path reads Q, K and V in 16-byte chunks and writes bf16
  // pairs; anything else (or a GQA group wider than a tile) takes the
  // CUDA-core path, which computes the same function.
  const bool aligned = aligned16(q) && q_row_stride % 8 == 0 && aligned16(kv.k) &&
                       aligned16(kv.v) && kv.block_stride % 8 == 0 && aligned16(out);
  if (!aligned || group > kBM) {
    if (skip != nullptr) op_fail(kOp, "skip needs the tensor-core path");
    paged_attention_prefill_simple(q, q_row_stride, kv, batch, out, n_heads, scale, s);
    return;
  }
  if (num_splits > 1 && (workspace == nullptr || !aligned16(workspace)))
    op_fail(kOp, "a split launch needs a 16-byte aligned workspace");
  if (num_splits < 1 || num_splits > 65535) op_fail(kOp, "num_splits must be in [1, 65535]");
  const PrefillLaunch a{q,     q_row_stride,   kv,         batch,     out, n_heads,
                        group, scale * kLog2e, num_splits, workspace, skip};
  const int D = kv.head_dim;
  if (tile.wgmma) {
    if (!kHaveWgmma) op_fail(kOp, "the wgmma kernel needs a build for sm_90a");
    if (D != 128 || tile.rows != WgmmaCfg::ROWS || tile.bn != WgmmaCfg::BN)
      op_fail(kOp, "the wgmma tile is 128 rows x 64 keys at head_dim 128");
    launch_prefill<WgmmaCfg, true>(a, s);
    check_launch(kOp);
    return;
  }
  const bool wide = tile.warp_rows == 32;  // two m-tiles per warp (4 warps of 32 rows)
  if (tile.warp_rows != 16 && !(wide && tile.rows == 128))
    op_fail(kOp, "unsupported tile (32 rows per warp needs 128 rows per CTA)");
  if (D == 64 && tile.bn == 64 && tile.rows == 64) {
    launch_prefill<MmaCfg<64, 64, 4>>(a, s);
  } else if (D == 64 && tile.bn == 64 && tile.rows == 128) {
    wide ? launch_prefill<MmaCfg<64, 64, 4, 2>>(a, s) : launch_prefill<MmaCfg<64, 64, 8>>(a, s);
  } else if (D == 128 && tile.bn == 32 && tile.rows == 64) {
    launch_prefill<MmaCfg<128, 32, 4>>(a, s);
  } else if (D == 128 && tile.bn == 32 && tile.rows == 128) {
    wide ? launch_prefill<MmaCfg<128, 32, 4, 2>>(a, s) : launch_prefill<MmaCfg<128, 32, 8>>(a, s);
  } else if (D == 128 && tile.bn == 64 && tile.rows == 64) {
    launch_prefill<MmaCfg<128, 64, 4>>(a, s);
  } else if (D == 128 && tile.bn == 64 && tile.rows == 128) {
    wide ? launch_prefill<MmaCfg<128, 64, 4, 2>>(a, s) : launch_prefill<MmaCfg<128, 64, 8>>(a, s);
  } else {
    op_fail(kOp, "unsupported tile (rows 64 or 128; keys 32 or 64 at head_dim 128, 64 at 64)");
  }
  check_launch(kOp);
}

}  // namespace cartserve::ops::cuda
