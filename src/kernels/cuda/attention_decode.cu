// Paged attention for decode batches (one query row per sequence), split-KV
// in the style of Flash-Decoding, bf16 in and out, fp32 math.
//
// Split kernel (decode_split_kernel), grid (num_seqs, num_kv_heads *
// group / HG, num_splits), 128 threads:
//  - A CTA owns HG query heads of one KV head (HG = the GQA group, or the
//    largest divisor <= 8 of a wider group) and one split: a contiguous run
//    of the sequence's KV positions (decode_split_len: the keys divided
//    evenly, rounded to 64 positions). Each K/V row is read from
//    global memory once for all HG heads. With prefix partials the keys are
//    [prefix_len[s], ctx): the shared prefix before them was attended by
//    cascade_prefix_attention.
//  - Thread layout: a K/V row of head_dim bf16 is TPR = head_dim / 8 lanes,
//    each owning one 16-byte chunk (dims [8c, 8c + 8)); RPP = 128 / TPR rows
//    per pass. The split is walked in stages of BN positions (64 at
//    head_dim 64, 32 at 128; R = 4 rows per thread), gathered through the
//    block table by cp.async (16-byte, coalesced: a row is 128 or 256
//    contiguous bytes) into a shared ring of KS stages (2 by default;
//    CARTSERVE_DECODE_STAGES): stages i + 1 .. i + KS - 1 are in flight
//    while stage i is computed, and the next one's block ids were loaded one
//    stage earlier still. Each thread copies exactly the pieces it later reads, so
//    the ring needs cp.async waits but no barrier; no registers hold loads.
//  - Per stage: (A) each thread dots its 8 dims of q (registers, fp32) with
//    its K rows for the HG heads; a reduce-scatter butterfly over the TPR
//    lanes of a row leaves head c's score on lane c, which stores it (log2
//    units) to shared [HG][BN], -inf past the split's end. (B) warp w takes
//    heads w, w + 4, ...: stage max, new running max, rescale factor,
//    p = exp2(s - m) written back, running sum. (C) each thread rescales its
//    accumulators and adds p * V for its rows. Two barriers per stage (after
//    A and B); the score and rescale arrays alternate between two buffers
//    by stage parity, so C needs none.
//  - End: the per-thread partial outputs (one per row slot) are summed by a
//    butterfly inside each warp, then over the 4 warps in a fixed order via
//    shared memory; the CTA writes its unnormalised output [HG][head_dim],
//    its running max and sum to the workspace.
// Merge kernel (decode_merge_kernel): one warp per (sequence, query head)
// combines the prefix partials (if any) and then the non-empty splits, in
// order: M = max m_i, O = sum_i
// exp2(m_i - M) o_i / sum_i exp2(m_i - M) l_i, rounded to bf16.
// Fused merge (merge counters given, prefix partials if any written earlier
// on the same stream): each CTA counts itself on its (sequence, CTA row)
// counter after its partials are visible; the last active split merges the
// HG heads as the merge kernel would and zeroes the counter. One launch less per layer (a decode
// step at batch 1 runs ~10 kernels per layer, each paying a launch gap).
//
// Workspace (floats), for the launch's num_seqs S, n_heads H, num_splits N:
//   o_part [S, H, N, head_dim], then ml_part [S, H, N, 2] (max, sum);
// it fits in decode_workspace_bytes(max_seqs, H, head_dim, max_splits)
// whenever S <= max_seqs and N <= max_splits.
//
// Determinism: fixed thread -> data mapping, fixed reduction trees, the
// merge in split order, no atomics: the same batch and num_splits give the
// same bits. No allocation, no host synchronisation: graph-capturable.
#include <cstdlib>

#include "kernels/cascade_split.h"
#include "kernels/cuda/attention_internal.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
// KV positions a split should at least cover: one chunk. At batch 1 the
// splits are what fills the GPU (8 KV heads x 2 splits of 256 left 16 CTAs
// on 132 SMs: 16.4 us per layer for a 513-position context on an H100).
constexpr int kMinSplitLen = kDecodeChunk;
constexpr int kMergeWarps = 4;
constexpr int kResidentCtas = 2;  // split-kernel CTAs resident per SM, for decode_num_splits

// Stages of the split kernel's K/V ring: CARTSERVE_DECODE_STAGES (2, 3 or 4;
// default 2), read once. More stages keep more bytes in flight per CTA (a
// 32 KB ring per 2 stages) at the cost of resident CTAs.
int decode_stages() {
  static const int stages = [] {
    const char* v = std::getenv("CARTSERVE_DECODE_STAGES");
    const int n = v != nullptr ? std::atoi(v) : 2;
    return n == 3 || n == 4 ? n : 2;
  }();
  return stages;
}

__device__ __forceinline__ void bf16x8_to_f32(const uint4& u, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// Sum over the W lanes of an aligned lane group (W a power of two) of N
// values per lane (N a power of two, N <= W), scattered: on return lane l
// holds the total of value l % N. Recursive halving: at the step with n
// values left, lanes exchange (xor n / 2) the half they give away and keep
// the half selected by lane bit n / 2; then a butterfly over the remaining
// lane bits. N - 1 + log2(W / N) shuffles instead of N log2(W); the order of
// the additions depends only on the lane, so the result is deterministic.
template <int N, int W>
__device__ __forceinline__ float reduce_scatter_sum(float (&v)[N], int lane) {
#pragma unroll
  for (int n = N; n > 1; n /= 2) {
    const int half = n / 2;
    const bool upper = (lane & half) != 0;
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const float give = upper ? v[i] : v[i + half];
      const float keep = upper ? v[i + half] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, give, half);
    }
  }
  float r = v[0];
#pragma unroll
  for (int o = N; o < W; o *= 2)
    r += __shfl_xor_sync(0xffffffffu, r, o);
  return r;
}

// Position p of a sequence -> (block-table index, offset in the block):
// shifts when block_size is a power of two (bs_shift >= 0), else division.
struct BlockMap {
  int bs;
  int bs_shift;
  __device__ __forceinline__ int index(int p) const {
    return bs_shift >= 0 ? p >> bs_shift : p / bs;
  }
  __device__ __forceinline__ int offset(int p) const {
    return bs_shift >= 0 ? p & (bs - 1) : p % bs;
  }
};

template <int D, int HG, int KS>
struct DecodeCfg {
  static constexpr int TPR = D / 8;           // lanes per K/V row (one 16-byte chunk each)
  static constexpr int RPP = kThreads / TPR;  // rows per pass
  // Positions per pipeline stage (a 32 KB ring either way; 64-position
  // stages at head_dim 128 were measured slower: more registers, fewer CTAs).
  static constexpr int BN = D == 64 ? 64 : 32;
  static constexpr int R = BN / RPP;  // rows per thread per stage
  static constexpr int kStages = KS;  // shared ring: stages i + 1 .. i + KS - 1 load during stage i
  static constexpr int RING_BYTES = static_cast<int>(sizeof(bf16)) * kStages * 2 * BN * D;
  static_assert(32 % TPR == 0 && BN % RPP == 0 && BN % 32 == 0, "thread layout");
  static_assert(kDecodeChunk % BN == 0, "splits start on stage boundaries");
  static_assert(sizeof(float) * kWarps * HG * D <= sizeof(bf16) * kStages * 2 * BN * D,
                "s_red fits in the ring");
};

// Splits holding any of `keys` keys cut in pieces of split_len (the rest are empty).
__device__ __forceinline__ int active_splits(int keys, int split_len) {
  return keys > 0 ? (keys + split_len - 1) / split_len : 0;
}

// The merge of (sequence, query head) `item` into orow [D] by one warp: its
// shared-prefix partials first when prefix > 0 (their keys come first), then
// its n_active splits. COHERENT: see merge_partials.
template <int D, bool COHERENT>
__device__ __forceinline__ void merge_item(int64_t item, int prefix, int n_active, int num_splits,
                                           const float* o_part, const float* ml_part,
                                           const float* c_o, const float* c_ml, bf16* orow,
                                           int lane) {
  const int64_t slot0 = item * num_splits;
  if (prefix > 0) {
    const int64_t c0 = item * kMaxCascadeSplits;
    merge_partials<D, COHERENT>(c_o + c0 * D, c_ml + 2 * c0, cascade_num_splits(prefix), orow, lane,
                                o_part + slot0 * D, ml_part + 2 * slot0, n_active);
  } else {
    merge_partials<D, COHERENT>(o_part + slot0 * D, ml_part + 2 * slot0, n_active, orow, lane);
  }
}

template <int D, int HG, int KS>
__global__ void __launch_bounds__(kThreads)
    decode_split_kernel(const bf16* __restrict__ q /* [num_seqs] rows of q_row_stride */,
                        int64_t q_row_stride, KvLayer kv, AttnBatch batch,
                        const int32_t* __restrict__ kv_begin /* [num_seqs] or null */,
                        bool prefixed_only, int n_heads, float scale_log2, int num_splits,
                        int bs_shift,
                        float* __restrict__ o_part /* [num_seqs, n_heads, num_splits, D] */,
                        float* __restrict__ ml_part /* [num_seqs, n_heads, num_splits, 2] */,
                        unsigned* __restrict__ merge_count /* [num_seqs, gridDim.y] or null */,
                        bf16* __restrict__ out /* [num_tokens, n_heads * D] (merge_count) */,
                        const float* __restrict__ c_o /* [num_seqs, n_heads, NC, D] or null */,
                        const float* __restrict__ c_ml /* [num_seqs, n_heads, NC, 2] */) {
  using Cfg = DecodeCfg<D, HG, KS>;
  constexpr int TPR = Cfg::TPR;
  constexpr int RPP = Cfg::RPP;
  constexpr int BN = Cfg::BN;
  constexpr int R = Cfg::R;
  constexpr int NP = HG <= 1 ? 1 : HG <= 2 ? 2 : HG <= 4 ? 4 : 8;  // HG rounded up to 2^k
  static_assert(HG >= 1 && HG <= 8 && NP <= TPR, "heads per CTA");

  // K/V ring [KS][K, V][BN][D] (dynamic: Cfg::RING_BYTES): thread (rg, c)
  // copies and later reads only its own 16-byte pieces (rows rg + i RPP,
  // dims [8c, 8c + 8)), so the ring needs no barrier, only cp.async waits.
  // After the loop it holds the cross-warp reduction buffer [kWarps][HG][D]
  // floats.
  extern __shared__ __align__(16) uint8_t s_ring[];
  auto s_kv = reinterpret_cast<bf16(*)[2][BN][D]>(s_ring);
  // Double-buffered by stage parity, so a stage's phase A can overwrite them
  // while slower threads still read the previous stage's in phase C.
  __shared__ float s_p[2][HG][BN + 1];  // scores, then probabilities (+1: banks)
  __shared__ float s_alpha[2][HG];      // rescale factor of the stage
  __shared__ float s_m[HG];             // running max (log2 units)
  __shared__ float s_l[HG];             // running sum
  pdl_wait();
  pdl_trigger();
  const int s = blockIdx.x;
  const int group = n_heads / kv.num_kv_heads;
  const int n_sub = group / HG;
  const int kvh = static_cast<int>(blockIdx.y) / n_sub;
  const int head0 = kvh * group + (static_cast<int>(blockIdx.y) % n_sub) * HG;
  const int split = blockIdx.z;
  const int ctx = batch.context_lens[s];
  const int first = kv_begin != nullptr ? kv_begin[s] : 0;  // keys [first, ctx), first < ctx
  if (prefixed_only && first == 0) return;  // the prefill op's sequence (CTA-uniform)
  const int split_len = decode_split_len(ctx - first, num_splits);
  const int begin = first + split * split_len;
  const int n_active = active_splits(ctx - first, split_len);
  // The fused merge of the HG heads (decode_merge_kernel's), reading the
  // partials other CTAs wrote through L2.
  auto merge_heads = [&] {
    for (int h = threadIdx.x >> 5; h < HG; h += kWarps) {
      merge_item<D, true>(static_cast<int64_t>(s) * n_heads + head0 + h, first, n_active,
                          num_splits, o_part, ml_part, c_o, c_ml,
                          out + static_cast<int64_t>(batch.query_start[s]) * n_heads * D +
                              static_cast<int64_t>(head0 + h) * D,
                          threadIdx.x & 31);
    }
  };
  if (begin >= ctx) {  // empty split (CTA-uniform): the merge skips it
    // No keys at all: split 0 merges (zeros, or the prefix partials alone).
    if (merge_count != nullptr && split == 0 && n_active == 0) merge_heads();
    return;
  }
  const int end = min(ctx, begin + split_len);
  const int n_stages = (end - begin + BN - 1) / BN;  // >= 1

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int c = tid % TPR;   // this thread's 16-byte chunk of a row: dims [8c, 8c + 8)
  const int rg = tid / TPR;  // this thread's row slot in a pass

  const int32_t* bt = batch.block_table + static_cast<int64_t>(s) * batch.max_blocks;
  const BlockMap bm{kv.block_size, bs_shift};
  const int64_t kv_dim = static_cast<int64_t>(kv.num_kv_heads) * D;
  const int64_t head_off = static_cast<int64_t>(kvh) * D + c * 8;

  // Block ids of this thread's rows of a stage (0 past `end`: not read).
  auto load_blocks = [&](int stage, int(&blk)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int p = begin + stage * BN + rg + i * RPP;
      blk[i] = p < end ? __ldg(bt + bm.index(p)) : 0;
    }
  };
  // This thread's pieces of a stage into ring slot stage % kStages; rows
  // past `end` are zero-filled.
  auto issue = [&](int stage, const int(&blk)[R]) {
    const int slot = stage % Cfg::kStages;
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int row = rg + i * RPP;
      const int p = begin + stage * BN + row;
      const bool valid = p < end;
      const int64_t off = valid ? static_cast<int64_t>(blk[i]) * kv.block_stride +
                                      static_cast<int64_t>(bm.offset(p)) * kv_dim + head_off
                                : 0;
      cp_async_16(&s_kv[slot][0][row][c * 8], kv.k + off, valid);
      cp_async_16(&s_kv[slot][1][row][c * 8], kv.v + off, valid);
    }
  };

  // Pipeline prologue: stages 0 .. KS - 2 in flight (one commit group each,
  // empty past the split), then the block ids of stage KS - 1.
  int blk[R];
  load_blocks(0, blk);
#pragma unroll
  for (int st = 0; st < KS - 1; ++st) {
    if (st < n_stages) issue(st, blk);
    cp_async_commit();
    load_blocks(st + 1, blk);
  }

  // q of the HG heads, this thread's 8 dims (fp32).
  float qf[HG][8];
  {
    const bf16* qr = q + static_cast<int64_t>(batch.query_start[s]) * q_row_stride + c * 8;
#pragma unroll
    for (int h = 0; h < HG; ++h)
      load_bf16x8(qr + (head0 + h) * D, qf[h]);
  }
  float acc[HG][8];  // sum over this thread's rows of p * v (relative to the running max)
#pragma unroll
  for (int h = 0; h < HG; ++h) {
#pragma unroll
    for (int e = 0; e < 8; ++e)
      acc[h][e] = 0.f;
  }
  if (tid < HG) {
    s_m[tid] = -INFINITY;
    s_l[tid] = 0.f;
  }
  // (visible after the first stage's first barrier)

  for (int st = 0; st < n_stages; ++st) {
    // Stages st + 1 .. st + KS - 1 in flight while st is computed; the
    // newest one goes into the slot stage st - 1 used (this thread is done
    // with its pieces there). Its block ids were loaded one stage earlier,
    // the next ones now.
    if (st + KS - 1 < n_stages) {
      issue(st + KS - 1, blk);
      load_blocks(st + KS, blk);
    }
    cp_async_commit();        // (empty groups near the end keep the count uniform)
    cp_async_wait<KS - 1>();  // this thread's pieces of stage st have landed
    const int slot = st % Cfg::kStages;
    const int buf = st & 1;
    const int p0 = begin + st * BN;

    // (A) scores of the stage.
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int row = rg + i * RPP;
      float kf[8];
      bf16x8_to_f32(*reinterpret_cast<const uint4*>(&s_kv[slot][0][row][c * 8]), kf);
      float part[NP];  // heads >= HG are padding (0)
#pragma unroll
      for (int h = 0; h < NP; ++h) {
        float d = 0.f;
        if (h < HG) {
#pragma unroll
          for (int e = 0; e < 8; ++e)
            d = fmaf(qf[h][e], kf[e], d);
        }
        part[h] = d;
      }
      // Lane c now holds the score of head c % NP of this row.
      const float score = reduce_scatter_sum<NP, TPR>(part, lane);
      if (c < HG) s_p[buf][c][row] = p0 + row < end ? score * scale_log2 : -INFINITY;
    }
    __syncthreads();

    // (B) softmax statistics, one warp per head.
    for (int h = warp; h < HG; h += kWarps) {
      const float m_old = s_m[h];
      float x[BN / 32];
      float mx = -INFINITY;
#pragma unroll
      for (int k = 0; k < BN / 32; ++k) {
        x[k] = s_p[buf][h][lane + 32 * k];
        mx = fmaxf(mx, x[k]);
      }
      mx = warp_max(mx);
      const float m_new = fmaxf(m_old, mx);  // finite: the stage has a valid position
      float sum = 0.f;
#pragma unroll
      for (int k = 0; k < BN / 32; ++k) {
        x[k] = exp2f(x[k] - m_new);
        s_p[buf][h][lane + 32 * k] = x[k];
        sum += x[k];
      }
      sum = warp_sum(sum);
      __syncwarp();  // every lane has read s_m[h] before lane 0 updates it
      if (lane == 0) {
        const float alpha = exp2f(m_old - m_new);  // 0 on the first stage
        s_alpha[buf][h] = alpha;
        s_l[h] = s_l[h] * alpha + sum;
        s_m[h] = m_new;
      }
    }
    __syncthreads();

    // (C) acc = acc * alpha + p V.
#pragma unroll
    for (int h = 0; h < HG; ++h) {
      const float a = s_alpha[buf][h];
#pragma unroll
      for (int e = 0; e < 8; ++e)
        acc[h][e] *= a;
    }
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int row = rg + i * RPP;
      float vf[8];
      bf16x8_to_f32(*reinterpret_cast<const uint4*>(&s_kv[slot][1][row][c * 8]), vf);
#pragma unroll
      for (int h = 0; h < HG; ++h) {
        const float pw = s_p[buf][h][row];  // 0 past the split's end (and vf is 0 there)
#pragma unroll
        for (int e = 0; e < 8; ++e)
          acc[h][e] = fmaf(pw, vf[e], acc[h][e]);
      }
    }
    // No barrier here: the next stage writes the other s_p / s_alpha
    // buffers, and the one after reaches this buffer only past two barriers
    // that every thread passes after finishing this phase.
  }
  cp_async_wait<0>();  // (only empty groups can be pending)
  __syncthreads();     // every thread is done reading the ring

  // Sum the row slots: inside the warp (lanes with the same c), then over warps.
#pragma unroll
  for (int o = TPR; o < 32; o <<= 1) {
#pragma unroll
    for (int h = 0; h < HG; ++h) {
#pragma unroll
      for (int e = 0; e < 8; ++e)
        acc[h][e] += __shfl_xor_sync(0xffffffffu, acc[h][e], o);
    }
  }
  // The ring is free (barrier above, no copy pending): reduction buffer.
  auto s_red = reinterpret_cast<float(*)[HG][D]>(&s_kv[0][0][0][0]);
  if (lane < TPR) {  // then c == lane
#pragma unroll
    for (int h = 0; h < HG; ++h) {
      float4* dst = reinterpret_cast<float4*>(&s_red[warp][h][c * 8]);
      dst[0] = make_float4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]);
      dst[1] = make_float4(acc[h][4], acc[h][5], acc[h][6], acc[h][7]);
    }
  }
  __syncthreads();
  const int64_t slot0 = (static_cast<int64_t>(s) * n_heads + head0) * num_splits + split;
  for (int i = tid; i < HG * D; i += kThreads) {
    const int h = i / D;
    const int d = i % D;
    float v = s_red[0][h][d];
#pragma unroll
    for (int w = 1; w < kWarps; ++w)
      v += s_red[w][h][d];
    o_part[(slot0 + static_cast<int64_t>(h) * num_splits) * D + d] = v;
  }
  if (tid < HG) {
    const int64_t slot = slot0 + static_cast<int64_t>(tid) * num_splits;
    ml_part[2 * slot] = s_m[tid];
    ml_part[2 * slot + 1] = s_l[tid];
  }
  if (merge_count == nullptr) return;  // decode_merge_kernel merges
  // The last of the sequence's active splits to finish merges its HG heads
  // (the merge kernel's function, in split order). Release: every thread's
  // partial writes are made visible before the CTA is counted.
  __shared__ int s_last;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    unsigned* count = merge_count + static_cast<int64_t>(s) * gridDim.y + blockIdx.y;
    s_last = atomicAdd(count, 1u) + 1 == static_cast<unsigned>(n_active);
    if (s_last) *count = 0;  // every active split has counted: the next launch starts at 0
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();  // acquire: the other splits' partials
  merge_heads();
}

template <int D>
__global__ void __launch_bounds__(kMergeWarps * 32)
    decode_merge_kernel(const float* __restrict__ o_part /* [num_seqs, n_heads, num_splits, D] */,
                        const float* __restrict__ ml_part /* [num_seqs, n_heads, num_splits, 2] */,
                        AttnBatch batch, bf16* __restrict__ out /* [num_tokens, n_heads * D] */,
                        int n_heads, int num_splits, const int32_t* __restrict__ prefix_len,
                        bool prefixed_only,
                        const float* __restrict__ c_o /* [num_seqs, n_heads, NC, D] */,
                        const float* __restrict__ c_ml /* [num_seqs, n_heads, NC, 2] */) {
  pdl_wait();
  pdl_trigger();
  const int lane = threadIdx.x & 31;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kMergeWarps + (threadIdx.x >> 5);
  if (item >= static_cast<int64_t>(batch.num_seqs) * n_heads) return;  // warp-uniform
  const int s = static_cast<int>(item / n_heads);
  const int h = static_cast<int>(item % n_heads);
  const int prefix = prefix_len != nullptr ? prefix_len[s] : 0;
  if (prefixed_only && prefix == 0) return;  // warp-uniform
  const int keys = batch.context_lens[s] - prefix;
  const int n_active = active_splits(keys, decode_split_len(keys, num_splits));
  merge_item<D, false>(
      item, prefix, n_active, num_splits, o_part, ml_part, c_o, c_ml,
      out + static_cast<int64_t>(batch.query_start[s]) * n_heads * D + static_cast<int64_t>(h) * D,
      lane);
}

// The split kernel's arguments past its template parameters.
struct SplitArgs {
  const bf16* q;
  int64_t q_row_stride;
  KvLayer kv;
  AttnBatch batch;
  const int32_t* kv_begin;
  bool prefixed_only;
  int n_heads;
  float scale_log2;
  int num_splits;
  int bs_shift;
  float* o_part;
  float* ml_part;
  unsigned* merge_count;
  bf16* out;
  const float* c_o;
  const float* c_ml;
};

template <int D, int HG, int KS>
void launch_split(const dim3& grid, cudaStream_t st, const SplitArgs& a) {
  constexpr int kSmem = DecodeCfg<D, HG, KS>::RING_BYTES;
  const auto kernel = decode_split_kernel<D, HG, KS>;
  // Static and dynamic shared memory together may not pass 48 KB without the
  // opt-in; the 2-stage ring (32 KB at head_dim 128) stays under it.
  if (KS > 2 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem) !=
                    cudaSuccess)
    op_fail("paged_attention_decode", "cannot raise the split kernel's shared memory limit");
  launch(kernel, grid, kThreads, kSmem, st, a.q, a.q_row_stride, a.kv, a.batch, a.kv_begin,
         a.prefixed_only, a.n_heads, a.scale_log2, a.num_splits, a.bs_shift, a.o_part, a.ml_part,
         a.merge_count, a.out, a.c_o, a.c_ml);
}

template <int D, int HG>
void launch_split_ks(const dim3& grid, cudaStream_t st, const SplitArgs& a) {
  switch (decode_stages()) {
    case 3:
      return launch_split<D, HG, 3>(grid, st, a);
    case 4:
      return launch_split<D, HG, 4>(grid, st, a);
    default:
      return launch_split<D, HG, 2>(grid, st, a);
  }
}

template <int D>
void launch_split_hg(int hg, const dim3& grid, cudaStream_t st, const SplitArgs& a) {
  switch (hg) {
    case 1:
      return launch_split_ks<D, 1>(grid, st, a);
    case 2:
      return launch_split_ks<D, 2>(grid, st, a);
    case 3:
      return launch_split_ks<D, 3>(grid, st, a);
    case 4:
      return launch_split_ks<D, 4>(grid, st, a);
    case 5:
      return launch_split_ks<D, 5>(grid, st, a);
    case 6:
      return launch_split_ks<D, 6>(grid, st, a);
    case 7:
      return launch_split_ks<D, 7>(grid, st, a);
    default:
      return launch_split_ks<D, 8>(grid, st, a);
  }
}

}  // namespace

size_t decode_workspace_bytes(int max_seqs, int n_heads, int head_dim, int max_splits) {
  if (max_seqs <= 0 || n_heads <= 0 || head_dim <= 0 || max_splits <= 0) return 0;
  return static_cast<size_t>(max_seqs) * static_cast<size_t>(n_heads) *
         static_cast<size_t>(max_splits) * (static_cast<size_t>(head_dim) + 2) * sizeof(float);
}

int decode_num_splits(int num_seqs, int num_kv_heads, int max_context_len, int max_splits,
                      int num_sms) {
  if (max_splits <= 1 || num_seqs <= 0 || num_kv_heads <= 0 || max_context_len <= 0) return 1;
  const long long ctas = static_cast<long long>(num_seqs) * num_kv_heads;
  // A wave is kResidentCtas CTAs on each SM (what the split kernel's
  // registers allow at GQA group 8; more fit at smaller groups). An unsplit
  // grid of a wave or more stays unsplit: on an H100, 64 sequences over
  // 513-position contexts (512 CTAs) took 56.4 us per layer unsplit against
  // 64.3 split in two (bench/results/gpu-h100-2026-12-07-0044.json). Smaller
  // grids are split toward ~2 waves.
  const long long wave = static_cast<long long>(kResidentCtas) * (num_sms > 0 ? num_sms : 1);
  if (ctas >= wave) return 1;
  const long long target = 2LL * wave;
  long long splits = (target + ctas - 1) / ctas;
  const long long by_len =
      (static_cast<long long>(max_context_len) + kMinSplitLen - 1) / kMinSplitLen;  // >= 1
  if (splits > by_len) splits = by_len;
  if (splits > max_splits) splits = max_splits;
  if (splits < 1) splits = 1;
  return static_cast<int>(splits);
}

void paged_attention_decode(const bf16* q, int64_t q_row_stride, const KvLayer& kv,
                            const AttnBatch& batch, bf16* out, int n_heads, float scale,
                            int num_splits, void* workspace, cudaStream_t s,
                            const PrefixPartials* prefix, unsigned* merge_counters) {
  constexpr const char* kOp = "paged_attention_decode";
  const int D = kv.head_dim;
  if (D != 64 && D != 128) op_fail(kOp, "head_dim must be 64 or 128");
  if (kv.num_kv_heads <= 0 || n_heads <= 0 || n_heads % kv.num_kv_heads != 0)
    op_fail(kOp, "n_heads must be a positive multiple of num_kv_heads");
  if (kv.block_size <= 0) op_fail(kOp, "block_size must be positive");
  if (num_splits < 1 || num_splits > 65535) op_fail(kOp, "num_splits must be in [1, 65535]");
  if (batch.num_seqs <= 0) return;
  if (workspace == nullptr || !aligned16(workspace))
    op_fail(kOp, "workspace must be non-null and 16-byte aligned");
  // The split kernel reads q, K and V in 16-byte chunks; otherwise the
  // CUDA-core prefill kernel computes the same function.
  if (prefix != nullptr && (prefix->prefix_len == nullptr || prefix->workspace == nullptr))
    op_fail(kOp, "prefix partials need prefix_len and a workspace");
  if (!(aligned16(q) && q_row_stride % 8 == 0 && aligned16(kv.k) && aligned16(kv.v) &&
        kv.block_stride % 8 == 0)) {
    if (prefix != nullptr) op_fail(kOp, "prefix partials need 16-byte aligned q and KV");
    paged_attention_prefill_simple(q, q_row_stride, kv, batch, out, n_heads, scale, s);
    return;
  }
  const int group = n_heads / kv.num_kv_heads;
  int hg = 8;  // heads per CTA: the largest divisor of the group that is <= 8
  while (group % hg != 0)
    --hg;
  const long long grid_y = static_cast<long long>(kv.num_kv_heads) * (group / hg);
  if (grid_y > 65535) op_fail(kOp, "too many KV heads");

  float* o_part = static_cast<float*>(workspace);
  float* ml_part = o_part + static_cast<size_t>(batch.num_seqs) * static_cast<size_t>(n_heads) *
                                static_cast<size_t>(num_splits) * static_cast<size_t>(D);
  const float scale_log2 = scale * kLog2e;
  int bs_shift = -1;  // log2(block_size) when it is a power of two
  if ((kv.block_size & (kv.block_size - 1)) == 0) {
    bs_shift = 0;
    while ((1 << bs_shift) < kv.block_size)
      ++bs_shift;
  }
  const dim3 grid(static_cast<unsigned>(batch.num_seqs), static_cast<unsigned>(grid_y),
                  static_cast<unsigned>(num_splits));
  const long long items = static_cast<long long>(batch.num_seqs) * n_heads;
  const unsigned merge_grid = static_cast<unsigned>((items + kMergeWarps - 1) / kMergeWarps);
  const int32_t* prefix_len = prefix != nullptr ? prefix->prefix_len : nullptr;
  const float* c_o = prefix != nullptr ? static_cast<const float*>(prefix->workspace) : nullptr;
  const float* c_ml = c_o != nullptr ? c_o + items * kMaxCascadeSplits * D : nullptr;
  const bool prefixed_only = prefix != nullptr && prefix->prefixed_only;
  // The merge in the split kernel's last CTA, unless the prefix partials
  // come from another stream (they may land after the split kernel starts).
  unsigned* fused = prefix == nullptr || prefix->ready == nullptr ? merge_counters : nullptr;
  const SplitArgs args{q,       q_row_stride, kv,         batch,    prefix_len, prefixed_only,
                       n_heads, scale_log2,   num_splits, bs_shift, o_part,     ml_part,
                       fused,   out,          c_o,        c_ml};
  auto run = [&](auto split_hg, auto merge) {
    split_hg(hg, grid, s, args);
    check_launch("paged_attention_decode (split)");
    if (fused != nullptr) return;
    if (prefix != nullptr && prefix->ready != nullptr &&
        cudaStreamWaitEvent(s, prefix->ready, 0) != cudaSuccess)
      op_fail(kOp, "cannot wait for the prefix partials' event");
    launch(merge, merge_grid, kMergeWarps * 32, 0, s, o_part, ml_part, batch, out, n_heads,
           num_splits, prefix_len, prefixed_only, c_o, c_ml);
  };
  if (D == 64) {
    run(launch_split_hg<64>, decode_merge_kernel<64>);
  } else {
    run(launch_split_hg<128>, decode_merge_kernel<128>);
  }
  check_launch("paged_attention_decode (merge)");
}

}  // namespace cartserve::ops::cuda
