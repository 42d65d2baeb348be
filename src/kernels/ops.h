// One declaration per op. ops::cpu is the plain fp32 reference (host
// pointers) and the CPU backend's kernels. The bf16 CUDA ops live in
// kernels/cuda_ops.h; each has an fp32 twin here (the fused ops below) that
// computes the same function. Shapes are row-major; see each comment.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace cartserve::ops {

// One sequence of a batch, as attention sees it.
//
// NOTE: KV position p of the sequence sits at slot
// block_table[p / block_size] * block_size + p % block_size. The q_len
// queries are the last q_len positions; query j attends to positions
// [0, kv_len - q_len + j] (causal).
struct AttnSeq {
  int32_t q_start = 0;                   // first row of this sequence in q/out
  int32_t q_len = 0;                     // number of query tokens
  int32_t kv_len = 0;                    // logical KV entries incl. the queries' own
  const int32_t* block_table = nullptr;  // [n_blocks]
  int32_t n_blocks = 0;
};

// Rotary embedding frequencies for dims [0, head_dim/2), with the model's
// scaling already applied (see model/rope.h).
struct RopeTable {
  const float* inv_freq = nullptr;  // [head_dim / 2]
  int32_t head_dim = 0;
};

namespace cpu {

// out[n, dim] = x / rms(x) * w
void rms_norm(const float* x, const float* w, float* out, int n, int dim, float eps);

// Which kernel a dense layer runs. The per-row kernel reads each weight row
// once for all rows of x (decode); sgemm (with BLAS) is faster for many rows
// (prefill). They sum in different orders, so the same row gets slightly
// different floats from each: kAuto picks by the row count, which makes a
// row's result depend on its batch; a caller that needs batch-independent
// results names the kernel by the kind of rows instead
// (runtime/cpu/llama_forward.cpp: generated tokens per row, prompt tokens
// sgemm). Either kernel alone gives a row the same result in any batch.
enum class LinearKernel { kAuto, kPerRow, kGemm };

// y[n, out_dim] = x[n, in_dim] @ w[out_dim, in_dim]^T (+ bias[out_dim] if non-null)
void linear(const float* x, const float* w, const float* bias, float* y, int n, int in_dim,
            int out_dim, LinearKernel kernel = LinearKernel::kAuto);
// The same with bf16 weights w[out_dim, in_dim] (fp32 accumulation).
void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int n, int in_dim,
                 int out_dim, LinearKernel kernel = LinearKernel::kAuto);

// In place, HF "rotate_half" layout: pairs (i, i + head_dim/2).
// x: [n, n_heads, head_dim]; positions: [n]
void rope(float* x, const int32_t* positions, const RopeTable& rope, int n, int n_heads);

// out[i] = silu(gate[i]) * up[i] for i < n
void silu_mul(const float* gate, const float* up, float* out, int64_t n);

// out[n, dim] = table[ids[i], :]
void embedding(const float* table, const int32_t* ids, float* out, int n, int dim);

// x[i] += y[i]
void add_inplace(float* x, const float* y, int64_t n);

// Writes k/v rows into one layer of the paged cache.
// k, v: [n, kv_dim]; slots: [n]; cache: [num_slots, kv_dim] (slot = block * block_size + offset)
void kv_write(const float* k, const float* v, const int32_t* slots, float* k_cache, float* v_cache,
              int n, int kv_dim);

// Causal paged attention with grouped-query heads.
// q: [n_tokens, n_heads, head_dim]; caches: [num_blocks, block_size, n_kv_heads, head_dim];
// out: [n_tokens, n_heads, head_dim]
void paged_attention(const float* q, const float* k_cache, const float* v_cache,
                     const AttnSeq* seqs, int n_seqs, float* out, int n_heads, int n_kv_heads,
                     int head_dim, int block_size, float scale);

// ---- Fused ops: the fp32 twins of the CUDA ops (kernels/cuda_ops.h) ------

// x += delta (when delta is non-null), then out = x / rms(x) * w (as
// rms_norm). x: [n, dim] in/out; delta, out: [n, dim]; w: [dim].
void add_rms_norm(float* x, const float* delta, const float* w, float* out, int n, int dim,
                  float eps);

// The fused QKV projection's output, in place: bias added to the whole row
// (when non-null), then RoPE on the q and k heads (same math as rope).
// qkv: [n, (n_heads + 2 * n_kv_heads) * head_dim], each row q | k | v;
// bias: [(n_heads + 2 * n_kv_heads) * head_dim]; positions: [n].
void rope_qkv(float* qkv, const float* bias, const int32_t* positions, const RopeTable& rope, int n,
              int n_heads, int n_kv_heads);

// out[i, j] = silu(gate_up[i, j]) * gate_up[i, ff + j].
// gate_up: [n, 2 * ff]; out: [n, ff].
void silu_mul_fused(const float* gate_up, float* out, int n, int ff);

// out[i, :] = x[rows[i], :] for i < n. out: [n, dim].
void gather_rows(const float* x, const int32_t* rows, float* out, int n, int dim);

// ---- KV movement between a cartridge's file layout and an fp32 pool -------
//
// File layout: [num_kv_heads, total_tokens, head_dim] of `elem` (kF32, kF16
// or kBF16; another type, or a range outside [0, total_tokens), aborts: the
// callers validate first). Pool: one layer's K (or V) base `dst`/`src`;
// position p lives at blocks[p / block_size] * block_stride + (p %
// block_size) * kv_dim (kv_dim = num_kv_heads * head_dim, elements). For the
// CPU backend's per-layer caches [num_blocks * block_size, kv_dim],
// block_stride = block_size * kv_dim.

// Positions [first, first + count) of src into the pool (converted to fp32).
void kv_import(const void* src, DType elem, int total_tokens, int first, int count,
               const int32_t* blocks, float* dst, int64_t block_stride, int block_size,
               int num_kv_heads, int head_dim);
// Positions [first, first + count) of the pool into dst (converted to
// `elem`, round to nearest even); the rest of dst is left untouched.
void kv_export(const float* src, int64_t block_stride, int block_size, int num_kv_heads,
               int head_dim, const int32_t* blocks, int total_tokens, int first, int count,
               void* dst, DType elem);

}  // namespace cpu

}  // namespace cartserve::ops
