// Shared-prefix ("cascade") attention for decode rows, bf16 in, fp32
// partials out: the prefix half of paged_attention_decode's split (see
// kernels/cuda_ops.h).
//
// Kernel (cascade_prefix_kernel), grid (grid_ctas, num_kv_heads), 128 threads:
//  - CTA x walks work items x, x + grid_ctas, ... < *num_items. An item is
//    one tile of one group of sequences sharing their first P keys and one
//    key split [split * L, min(P, split * L + L)), L = cascade_split_len(P).
//  - The tile's rows pack the GQA group as the prefill kernel does: row r is
//    member r / group, query head kv_head * group + r % group, so each K/V
//    tile of the shared prefix is gathered once for every query head of every
//    member (attention_mma.cuh's pipeline and mma loop).
//  - No mask: every member's query comes after the prefix. Rows past the
//    members are zero queries; they compute finite values and are never
//    stored.
//  - Each real row writes its unnormalised partial (o, max, sum) to slot
//    (sequence, head, split) of the workspace; paged_attention_decode's merge
//    reads it.
// Determinism: an item's rows are computed independently of each other and
// of which CTA runs the item, so a sequence's partials are the same bits
// whatever it is batched with and whatever grid_ctas is. No allocation, no
// host synchronisation: graph-capturable (the item count is read on the
// device).
#include "kernels/cascade_split.h"
#include "kernels/cuda/attention_mma.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr float kLog2e = 1.4426950408889634f;

template <int D>
__global__ void __launch_bounds__(kMmaThreads)
    cascade_prefix_kernel(const bf16* __restrict__ q /* decode rows of q_row_stride */,
                          int64_t q_row_stride, KvLayer kv, AttnBatch batch, CascadeWork work,
                          int n_heads, int group, float scale_log2,
                          float* __restrict__ o_part /* [num_seqs, n_heads, NC, D] */,
                          float* __restrict__ ml_part /* [num_seqs, n_heads, NC, 2] */) {
  using Cfg = MmaCfg<D>;
  static_assert(Cfg::ROWS == kCascadeTileRows, "a cascade item is one tensor-core tile");
  constexpr int BN = Cfg::BN;
  constexpr int NC = kMaxCascadeSplits;
  __shared__ __align__(16) bf16 smem[Cfg::SMEM];
  pdl_wait();
  pdl_trigger();
  const int n_items = *work.num_items;
  const int kvh = blockIdx.y;
  const int warp = threadIdx.x >> 5;
  const int g = (threadIdx.x & 31) >> 2;
  const int r0 = warp * 16 + g;  // this thread's rows: r0, r0 + 8
  for (int item = blockIdx.x; item < n_items; item += gridDim.x) {
    const int4 it = reinterpret_cast<const int4*>(work.items)[item];
    const int32_t* members = work.members + it.x;
    const int n_rows = it.y * group;  // real rows: [0, n_rows), <= kMmaRows
    const int prefix = it.w;
    const int len = cascade_split_len(prefix);
    const int k_begin = it.z * len;  // a multiple of 64, < prefix
    const int k_end = min(prefix, k_begin + len);
    // Blocks [0, prefix / block_size) are the same in every member's table.
    const int32_t* bt = batch.block_table + static_cast<int64_t>(members[0]) * batch.max_blocks;

    uint32_t qa[D / 16][4];
    load_q_fragments<Cfg>(
        smem,
        [&](int r) -> const bf16* {
          if (r >= n_rows) return nullptr;
          const int64_t row = batch.query_start[members[r / group]];
          return q + row * q_row_stride + (kvh * group + r % group) * D;
        },
        qa);
    MmaRows<Cfg> acc;
    acc.init();
    for_each_kv_tile<Cfg>(
        smem, k_begin / BN, (k_end + BN - 1) / BN,
        [&](int tile, int stage) { gather_kv_tile<Cfg>(smem, tile, stage, k_end, bt, kv, kvh); },
        [&](const bf16* ks, const bf16* vs, int t) {
          // Only the split's last tile can reach past k_end (zero-filled keys).
          const int n0 = t * BN;
          const int lim[1][2] = {{k_end - 1, k_end - 1}};
          acc.tile([&](int, int kk, uint32_t(&f)[4]) { copy4(f, qa[kk]); }, ks, vs, n0, scale_log2,
                   n0 + BN > k_end, lim);
        });
    acc.finish();
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = r0 + 8 * half;
      if (r >= n_rows) continue;
      const int64_t slot =
          (static_cast<int64_t>(members[r / group]) * n_heads + kvh * group + r % group) * NC +
          it.z;
      acc.store_partial(0, half, o_part + slot * D, ml_part + 2 * slot);
    }
    // (for_each_kv_tile ends on a barrier: smem is free for the next item's Q)
  }
}

}  // namespace

size_t cascade_workspace_bytes(int max_seqs, int n_heads, int head_dim) {
  if (max_seqs <= 0 || n_heads <= 0 || head_dim <= 0) return 0;
  return static_cast<size_t>(max_seqs) * static_cast<size_t>(n_heads) * kMaxCascadeSplits *
         (static_cast<size_t>(head_dim) + 2) * sizeof(float);
}

bool cascade_supported(const bf16* q, int64_t q_row_stride, const KvLayer& kv, int n_heads) {
  return (kv.head_dim == 64 || kv.head_dim == 128) && kv.num_kv_heads > 0 && n_heads > 0 &&
         n_heads % kv.num_kv_heads == 0 && n_heads / kv.num_kv_heads <= kCascadeTileRows &&
         kv.block_size > 0 && aligned16(q) && q_row_stride % 8 == 0 && aligned16(kv.k) &&
         aligned16(kv.v) && kv.block_stride % 8 == 0;
}

void cascade_prefix_attention(const bf16* q, int64_t q_row_stride, const KvLayer& kv,
                              const AttnBatch& batch, const CascadeWork& work, int grid_ctas,
                              int n_heads, float scale, const PrefixPartials& parts,
                              cudaStream_t s) {
  constexpr const char* kOp = "cascade_prefix_attention";
  if (!cascade_supported(q, q_row_stride, kv, n_heads))
    op_fail(kOp, "unsupported shape or unaligned buffers (check cascade_supported first)");
  if (batch.num_seqs <= 0) return;
  if (grid_ctas < 1 || grid_ctas > 65535) op_fail(kOp, "grid_ctas must be in [1, 65535]");
  if (work.num_items == nullptr || work.items == nullptr || work.members == nullptr ||
      parts.workspace == nullptr || !aligned16(parts.workspace) || !aligned16(work.items))
    op_fail(kOp, "null work list, or workspace / items not 16-byte aligned");
  const int group = n_heads / kv.num_kv_heads;
  float* o_part = static_cast<float*>(parts.workspace);
  float* ml_part = o_part + static_cast<size_t>(batch.num_seqs) * static_cast<size_t>(n_heads) *
                                kMaxCascadeSplits * static_cast<size_t>(kv.head_dim);
  const dim3 grid(static_cast<unsigned>(grid_ctas), static_cast<unsigned>(kv.num_kv_heads));
  const float scale_log2 = scale * kLog2e;
  if (kv.head_dim == 64) {
    launch(cascade_prefix_kernel<64>, grid, kMmaThreads, 0, s, q, q_row_stride, kv, batch, work,
           n_heads, group, scale_log2, o_part, ml_part);
  } else {
    launch(cascade_prefix_kernel<128>, grid, kMmaThreads, 0, s, q, q_row_stride, kv, batch, work,
           n_heads, group, scale_log2, o_part, ml_part);
  }
  check_launch(kOp);
}

}  // namespace cartserve::ops::cuda
