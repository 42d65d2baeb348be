// The CUDA ops: bf16 storage, fp32 accumulation, device pointers, every
// launch on the given stream. No allocation and no host synchronisation
// inside an op (all of them can be captured in a CUDA graph), and no float
// atomics: the same inputs give the same bits.
//
// Each op has a CPU twin (kernels/ops.h, fp32) computing the same function;
// tests/gpu compares them on random data.
//
// NOTE: the paged KV pool of the CUDA backend is block-major:
//   pool [num_blocks][num_layers][2 (K, V)][block_size][num_kv_heads][head_dim]
// so one block of one cartridge is one contiguous chunk (one copy per block
// when a cartridge moves between host and device). An op that reads or
// writes one layer gets that layer's K and V bases and the block stride:
//   k_cache = pool + layer * 2 * block_size * kv_dim
//   v_cache = k_cache + block_size * kv_dim
//   block_stride = num_layers * 2 * block_size * kv_dim   (elements)
// and slot s (block s / block_size, offset s % block_size) of that layer is
//   k_cache + (s / block_size) * block_stride + (s % block_size) * kv_dim.
#pragma once

#ifdef CARTSERVE_WITH_CUDA

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/persistent_plan.h"

namespace cartserve::ops::cuda {

using bf16 = __nv_bfloat16;

// Where one layer's K and V live in the pool (see the NOTE above).
struct KvLayer {
  bf16* k = nullptr;
  bf16* v = nullptr;
  int64_t block_stride = 0;  // elements between consecutive blocks
  int32_t block_size = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
};

// The attention metadata of one step, flat and on the device.
//
// NOTE: sequence s owns query rows [query_start[s], query_start[s + 1]); its
// KV positions are [0, context_lens[s]) (the queries' own included, written
// before attention), position p at slot
// block_table[s * max_blocks + p / block_size] * block_size + p % block_size.
// Query j of the sequence attends to positions [0, context_lens[s] - q_len + j]
// (causal; a cartridge's positions are simply the first ones).
struct AttnBatch {
  const int32_t* query_start = nullptr;   // [num_seqs + 1]
  const int32_t* context_lens = nullptr;  // [num_seqs]
  const int32_t* block_table = nullptr;   // [num_seqs, max_blocks]
  int32_t num_seqs = 0;
  int32_t max_blocks = 0;       // row stride of block_table
  int32_t num_tokens = 0;       // query_start[num_seqs]
  int32_t max_query_len = 0;    // upper bound of q_len over the sequences
  int32_t max_context_len = 0;  // upper bound of context_lens (sizes split-KV work)
};

// x[n, dim] (fp32 residual stream) = table[ids[i], :]
void embedding(const bf16* table, const int32_t* ids, float* x, int n, int dim, cudaStream_t s);
// The same into a bf16 residual stream (a copy of the rows).
void embedding(const bf16* table, const int32_t* ids, bf16* x, int n, int dim, cudaStream_t s);

// RMSNorm folded into the linear layer after it (the norm-folded forward,
// runtime/cuda/cuda_backend.cpp): the layer's weight columns carry the norm
// weight, so its output is W (x * w) = inv_rms(x) * (W' x), and the kernel
// that consumes that output multiplies each row by inv_rms of the residual
// row it came from: 1 / sqrt(mean(x^2) + eps), x the bf16 residual [n, dim]
// read in fp32 (the same formula as add_rms_norm's).
struct RowRmsScale {
  const bf16* x = nullptr;  // [n, dim] residual rows, or null: no scaling
  int dim = 0;
  float eps = 0.f;
};

// Queues the L2 fetch of [p, p + bytes) (its 16-byte aligned part) and
// returns: a hint for a later reader of immutable data (weights); it
// changes no memory.
void prefetch_l2(const void* p, uint64_t bytes, cudaStream_t s);

// out[i, :] = x[rows[i], :] for i < n (rows of the residual stream that feed the LM head).
void gather_rows(const float* x, const int32_t* rows, float* out, int n, int dim, cudaStream_t s);

// Residual add fused with RMSNorm: x += delta (when delta is non-null), then
// out = bf16(x / sqrt(mean(x^2) + eps) * w). x: [n, dim] fp32 in/out;
// delta, out: [n, dim]; w: [dim].
void add_rms_norm(float* x, const bf16* delta, const bf16* w, bf16* out, int n, int dim, float eps,
                  cudaStream_t s);

// The fused QKV projection's output, in place: bias added (when non-null),
// RoPE applied to the q and k heads (HF rotate_half pairs (i, i + head_dim/2),
// angle = float(position) * inv_freq[i] in fp32), then each row's rotated k
// and its v written to the KV cache at slot_mapping[row] (a negative slot
// writes nothing: padding rows).
// qkv: [n, (n_heads + 2 * n_kv_heads) * head_dim], each row q | k | v;
// bias: [(n_heads + 2 * n_kv_heads) * head_dim]; positions, slot_mapping: [n];
// inv_freq: [head_dim / 2].
// With scale.x set, each row is first multiplied by its residual row's
// inv_rms (before the bias; see RowRmsScale) and v is stored back scaled.
void rope_qkv_write(bf16* qkv, const bf16* bias, const int32_t* positions, const float* inv_freq,
                    const int32_t* slot_mapping, const KvLayer& kv, int n, int n_heads,
                    cudaStream_t s, RowRmsScale scale = {});

// SwiGLU over the fused gate/up projection: out[i, j] = silu(g) * u, where a
// row of gate_up [n, 2 * ff] holds gate and up features in alternating blocks
// of `block` (which divides ff; 0 means ff, the plain [gate | up] layout):
// g = gate_up[i, gate_up_offset(j, block)], u = the element `block` after it.
// out: [n, ff].
void silu_mul(const bf16* gate_up, bf16* out, int n, int ff, cudaStream_t s, int block = 0);
// The same with g and u of row i first multiplied by inv_rms of residual row
// i (RowRmsScale; scale.x non-null): out = silu(g * r) * (u * r).
void silu_mul_scaled(const bf16* gate_up, bf16* out, int n, int ff, const RowRmsScale& scale,
                     cudaStream_t s, int block = 0);
// Where gate feature j sits in a gate/up row interleaved in blocks of `block`.
constexpr int64_t gate_up_offset(int64_t j, int64_t block) {
  return 2 * (j / block) * block + j % block;
}
// The block the CUDA backend interleaves gate and up rows in: 8 (one m-tile of
// skinny_gemm holds 8 gate and the matching 8 up features) when it divides ff.
constexpr int gate_up_block(int ff) {
  return ff % 8 == 0 ? 8 : ff;
}

// A linear layer of a few rows (decode at small batch; twin: cpu linear_bf16):
// y[n, out] = x[n, in] @ w[out, in]^T, fp32 accumulation, y fp32 when y_fp32
// else bf16, for 1 <= n <= kGemvMaxRows, in % 8 == 0 and 16-byte aligned x
// and w (gemv_supports); a row's bits do not depend on n. A stream over w:
// at n = 1 it reads the 3B shape's layers at 68-105% of the device copy rate
// (H100, weights not in L2; cuBLASLt 52-98%); on CUDA cores it falls behind
// cuBLASLt from 3-4 rows. Gemm uses it when asked to (CARTSERVE_DECODE_GEMV).
constexpr int kGemvMaxRows = 16;
bool gemv_supports(const void* x, const void* w, int n, int in);
void gemv(const bf16* x, const bf16* w, void* y, bool y_fp32, int n, int in, int out,
          cudaStream_t s);
// The gate/up projection with SwiGLU in gemv's epilogue: act[n, ff] =
// silu_mul of x @ w_gate_up^T, w_gate_up [2 * ff, in] interleaved in blocks of
// 8 (ff % 8 == 0). The same bits as gemv into a bf16 projection followed by
// silu_mul(..., 8), for 1 <= n <= kGemvMaxRows.
void gemv_swiglu(const bf16* x, const bf16* w_gate_up, bf16* act, int n, int in, int ff,
                 cudaStream_t s);

// The linear layer of decode rows at any batch (twin: cpu linear_bf16): y[n,
// out] = x[n, in] @ w[out, in]^T on tensor cores (mma.sync, bf16 in, fp32
// accumulation), y fp32 when y_fp32 else bf16, for n >= 1, in % 32 == 0 and
// 16-byte aligned x and w (skinny_gemm_supports). Batch-invariant: a row's bits
// depend only on its own x, w and `in` (skinny_gemm_split(in) warps add their
// k ranges in a fixed order), never on n or the other rows. A stream over w
// with x rows in groups of 64 per CTA; past a few groups cuBLASLt is faster.
int skinny_gemm_split(int in);
bool skinny_gemm_supports(const void* x, const void* w, int in);
void skinny_gemm(const bf16* x, const bf16* w, void* y, bool y_fp32, int n, int in, int out,
                 cudaStream_t s);
// skinny_gemm with its launch shape given (benchmarks, tests): wk warps split
// k (1..8; the bits depend on it: skinny_gemm uses skinny_gemm_split(in)) and
// mt m-tiles of 16 features per CTA (1, 2, 4; 0: by n; never the bits).
void skinny_gemm_shaped(const bf16* x, const bf16* w, void* y, bool y_fp32, int n, int in, int out,
                        cudaStream_t s, int wk, int mt);
// The gate/up projection of decode rows with SwiGLU in its epilogue:
// act[n, ff] = silu_mul of x @ w_gate_up^T, w_gate_up [2 * ff, in] interleaved
// in blocks of 8 (gate_up_block(ff) == 8, i.e. ff % 8 == 0). The same bits as
// skinny_gemm into a bf16 projection followed by silu_mul(..., 8), batch-invariant.
void skinny_gemm_swiglu(const bf16* x, const bf16* w_gate_up, bf16* act, int n, int in, int ff,
                        cudaStream_t s);

// Causal paged attention over any mix of prefill chunks and decode rows.
// q: [num_tokens] rows of n_heads * head_dim, row i at q + i * q_row_stride
// (it may point into the fused qkv buffer); out: [num_tokens, n_heads *
// head_dim]. GQA: query head h reads KV head h / (n_heads / num_kv_heads).
// head_dim 64 or 128. Tiled with an online softmax in fp32.
// num_splits > 1 (split-KV, for few query rows over long contexts such as a
// question after a cartridge): the keys of each tile are split over that many
// CTAs as in decode, and a second kernel merges the partial softmaxes in a
// fixed order; workspace: decode_workspace_bytes(num_tokens, n_heads,
// head_dim, num_splits) bytes. num_splits == 1 needs no workspace.
// skip ([num_seqs] device, or null): sequences with skip[s] > 0 are left out
// (their rows not written: a mixed step's shared-prefix decode rows, which
// paged_attention_decode with prefixed_only attends).
// tile: the tensor-core kernel's CTA shape, {rows per CTA (64 or 128), keys
// per K/V tile (32 or 64 at head_dim 128, 64 at head_dim 64), rows per warp
// (16, or 32 at 128 rows: two m-tiles per warp, Q read from shared memory)};
// {0, 0}: the default (prefill_tile). A row's bits depend on the keys per
// tile and, with wgmma, on the kernel (its tensor-core sums run in another
// order), not on the rows per CTA or per warp.
struct PrefillTile {
  int rows = 0;
  int bn = 0;
  int warp_rows = 16;
  bool wgmma = false;  // the Hopper warpgroup-MMA kernel: 128 rows x 64 keys, head_dim 128
};
void paged_attention_prefill(const bf16* q, int64_t q_row_stride, const KvLayer& kv,
                             const AttnBatch& batch, bf16* out, int n_heads, float scale,
                             int num_splits, void* workspace, cudaStream_t s,
                             const int32_t* skip = nullptr, PrefillTile tile = {});
// The CTA shape paged_attention_prefill takes by default for this batch.
PrefillTile prefill_tile(int num_tokens, int num_seqs, int head_dim);
// A split count that fills the GPU with at most one wave of `tile`'s CTAs
// for this batch shape (1 when the unsplit grid already fills it, or when the
// contexts are short). tile.rows == 0: the default tile at this head_dim.
int prefill_num_splits(int num_tokens, int num_seqs, int n_heads, int num_kv_heads,
                       int max_context_len, int max_splits, int num_sms, int head_dim,
                       PrefillTile tile = {});

// The same for a batch where every sequence has one query row (decode):
// the KV length is split over `num_splits` CTAs per (sequence, KV head), the
// query heads of one KV head processed together so each KV block is read
// once; a second kernel merges the partial softmaxes in a fixed order.
// workspace: decode_workspace_bytes(...) bytes, from the caller.
size_t decode_workspace_bytes(int max_seqs, int n_heads, int head_dim, int max_splits);
// A split count that fills the GPU for this batch shape (1 for long batches).
int decode_num_splits(int num_seqs, int num_kv_heads, int max_context_len, int max_splits,
                      int num_sms);
// Shared-prefix ("cascade") decode attention splits a sequence's keys in
// two: [0, prefix_len[s]) is attended by cascade_prefix_attention below,
// [prefix_len[s], context_lens[s]) by paged_attention_decode, whose merge
// then combines the prefix partials (first) with its own splits.
struct PrefixPartials {
  const int32_t* prefix_len = nullptr;  // [num_seqs] device; 0: no prefix part
  // cascade_workspace_bytes(max_seqs >= num_seqs, ...): o [num_seqs, n_heads,
  // kMaxCascadeSplits, head_dim] then ml [..., 2] (max, sum) floats.
  void* workspace = nullptr;
  // Only the sequences with a prefix (one row each); the others are left
  // alone: a mixed step, whose other rows paged_attention_prefill attends.
  bool prefixed_only = false;
  // Recorded after the prefix partials' writes when they come from another
  // stream: the merge waits for it (null: they were written earlier on s).
  cudaEvent_t ready = nullptr;
};
// merge_counters (decode_merge_counters(...) zeroed uint32 the caller keeps,
// or null): without prefix partials, the last split of each (sequence, KV
// head) to finish merges in the split kernel (one launch instead of two, the
// same bits) and sets its counter back to zero. One launch at a time may use
// a counter array.
void paged_attention_decode(const bf16* q, int64_t q_row_stride, const KvLayer& kv,
                            const AttnBatch& batch, bf16* out, int n_heads, float scale,
                            int num_splits, void* workspace, cudaStream_t s,
                            const PrefixPartials* prefix = nullptr,
                            unsigned* merge_counters = nullptr);
// Counters paged_attention_decode's fused merge needs for up to max_seqs sequences.
inline size_t decode_merge_counters(int max_seqs, int n_heads) {
  return max_seqs > 0 && n_heads > 0 ? static_cast<size_t>(max_seqs) * n_heads : 0;
}

// ---- persistent decode (CudaOptions::persistent_decode) ---------------------
// Every layer of a decode step of up to kPersistentMaxRows rows in one
// cooperative launch (decode_persistent.cu): the norm-folded forward of
// runtime/cuda/cuda_backend.cpp (bf16 residual x, norm weights folded into
// wqkv and wgu), five phases per layer between grid-wide barriers.
constexpr int kPersistentMaxRows = 4;
struct PersistentLayer {
  const bf16* wqkv = nullptr;   // [q_dim + 2 kv_dim, hidden], attn_norm folded in
  const bf16* bqkv = nullptr;   // [q_dim + 2 kv_dim] or null
  const bf16* wo = nullptr;     // [hidden, q_dim]
  const bf16* wgu = nullptr;    // [2 ff, hidden], gate/up in blocks of 8, ffn_norm folded in
  const bf16* wdown = nullptr;  // [hidden, ff]
};
struct PersistentDecode {
  const PersistentLayer* layers = nullptr;  // device [num_layers]
  int num_layers = 0, hidden = 0, ff = 0, n_heads = 0;
  KvLayer kv;                   // layer 0's; layer l's K and V lie kv_layer_stride further
  int64_t kv_layer_stride = 0;  // elements
  // Row t is sequence t, one decode row at position positions[t] ==
  // context_lens[t] - 1 (its own K/V written to slot_mapping[t] unless < 0).
  AttnBatch batch;                        // num_seqs = the rows
  const int32_t* positions = nullptr;     // [rows]
  const int32_t* slot_mapping = nullptr;  // [rows]
  const float* inv_freq = nullptr;        // [head_dim / 2]
  float eps = 0.f;                        // RMSNorm
  float scale = 0.f;                      // softmax scale (1 / sqrt(head_dim))
  bf16* x = nullptr;          // [rows, hidden] residual stream (in: embeddings; out: final)
  bf16* qkv = nullptr;        // [rows, q_dim + 2 kv_dim] scratch
  bf16* attn = nullptr;       // [rows, q_dim] scratch
  bf16* act = nullptr;        // [rows, ff] scratch
  void* workspace = nullptr;  // persistent_decode_workspace_bytes(n_heads, head_dim)
  // persistent_decode_counters(num_kv_heads) uint32 (the grid barrier's, then
  // 128 bytes on, the merge counters), set to zero by the launch.
  unsigned* counters = nullptr;
  // Bytes of the next phase's weight slice each CTA asks L2 for before a
  // barrier (0: none).
  int prefetch_bytes = 0;
  // Or null. Else [events, 2, ctas] global-timer ns (persistent_timeline.h):
  // event 0 each CTA's start, event k (1 .. 5 L - 1) its arrival at barrier k
  // and its release from it, event 5 L its end (arrivals only).
  unsigned long long* timeline = nullptr;
};
size_t persistent_decode_workspace_bytes(int n_heads, int head_dim);
constexpr int kMergeCounters = 32;  // offset of the merge counters (own cache line)
inline size_t persistent_decode_counters(int num_kv_heads) {
  return kMergeCounters + static_cast<size_t>(kPersistentMaxRows) * num_kv_heads;
}
// Whether the shapes fit the kernel on `ctas` CTAs of the current device:
// head_dim 64 or 128, hidden, q_dim and ff multiples of 64, the GQA group at
// most 16, 1 <= ctas <= the SM count (one CTA per SM), the phases' shared
// memory within the device's limit.
bool persistent_decode_supported(int hidden, int ff, int n_heads, int n_kv_heads, int head_dim,
                                 int ctas);
// One step's layers for `rows` (1..kPersistentMaxRows, == batch.num_seqs)
// decode rows on `ctas` CTAs (all resident: a cooperative launch).
// Capturable (a memset and a cooperative kernel node). A row's bits do not
// depend on the other rows nor on `rows` (they do on ctas). False: the
// cooperative launch was refused (nothing ran but the memset).
bool decode_layers_persistent(const PersistentDecode& p, int rows, int ctas, cudaStream_t s);

// ---- shared-prefix (cascade) attention ----------------------------------------
// Decode sequences whose first keys lie in the same physical KV blocks (a
// cartridge, a cached prompt prefix) attend over those keys together: one
// tensor-core tile holds the query heads of up to kCascadeTileRows / group
// sequences against each K/V tile, which is read once per tile instead of
// once per sequence. The work is a device list of items, each one tile of
// one group and one key split (cascade_split.h):
struct CascadeWork {
  const int32_t* num_items = nullptr;  // [1] device: items of this launch
  // [num_items, 4] device: first member, member count (<= kCascadeTileRows /
  // group), key split, prefix length P (a multiple of block_size). The
  // members' block tables agree on blocks [0, P / block_size).
  const int32_t* items = nullptr;
  const int32_t* members = nullptr;  // sequence indices (one decode row each)
};
size_t cascade_workspace_bytes(int max_seqs, int n_heads, int head_dim);
// Whether cascade_prefix_attention runs on these buffers (16-byte aligned q
// rows and KV, GQA group <= kCascadeTileRows); the caller plans no prefix
// otherwise.
bool cascade_supported(const bf16* q, int64_t q_row_stride, const KvLayer& kv, int n_heads);
// Writes the unnormalised partial of every (member, head, split) of the
// items to parts.workspace; decode rows only (query row query_start[s]).
// grid_ctas: CTAs per KV head, each walking items blockIdx.x, + grid_ctas,
// ... (any value >= 1 gives the same bits; a captured graph fixes it).
// Batch-invariant: a sequence's partials depend only on its own query, its
// keys [0, P) and P, never on the other members of its tile.
void cascade_prefix_attention(const bf16* q, int64_t q_row_stride, const KvLayer& kv,
                              const AttnBatch& batch, const CascadeWork& work, int grid_ctas,
                              int n_heads, float scale, const PrefixPartials& parts,
                              cudaStream_t s);

// ---- tensor parallelism ------------------------------------------------------

// out[i] = bf16(inputs[0][i] + inputs[1][i] + ...) for i < count, added in
// input order in fp32 (twin: InProcessComm's rank-ordered sum). inputs is a
// host array of n_inputs (1..kMaxSumInputs) device pointers; out may be one
// of them.
constexpr int kMaxSumInputs = 8;
void sum_bf16(const bf16* const* inputs, int n_inputs, bf16* out, int64_t count, cudaStream_t s);

// ---- KV movement (cartridge promotion / demotion, export, partial blocks) --

// Element type of host-side KV in file layout.
enum class KvElem : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Positions [first, first + count) of one layer's K (or V) in file layout
// src [num_kv_heads, total_tokens, head_dim] (elements of `elem`) written to
// the pool: position p goes to slot blocks[p / block_size] * block_size +
// p % block_size of the layer `dst` points at (dst = that layer's k or v
// base, strides as in KvLayer). Converts to bf16 (round to nearest even).
void kv_import(const void* src, KvElem elem, int total_tokens, int first, int count,
               const int32_t* blocks, bf16* dst, const KvLayer& layout, cudaStream_t s);
// The reverse: positions [first, first + count) of the pool into dst
// [num_kv_heads, total_tokens, head_dim] of `elem`.
void kv_export(const bf16* src, const KvLayer& layout, const int32_t* blocks, int total_tokens,
               int first, int count, void* dst, KvElem elem, cudaStream_t s);

// For each i < n: the first num_slots[i] slots of block src[i] copied to
// block dst[i], every layer, K and V. pool: the whole pool; block_elems =
// num_layers * 2 * block_size * kv_dim; slot_elems = kv_dim.
void copy_block_prefixes(bf16* pool, const int32_t* src, const int32_t* dst,
                         const int32_t* num_slots, int n, int num_layers, int block_size,
                         int kv_dim, cudaStream_t s);

}  // namespace cartserve::ops::cuda

#endif  // CARTSERVE_WITH_CUDA
