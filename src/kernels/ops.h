// One declaration per op. ops::cpu is the plain fp32 reference (host
// pointers); ops::cuda has the same signatures over device pointers and runs
// on the current CUDA stream. Shapes are row-major; see each comment.
#pragma once

#include <cstdint>

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

// y[n, out_dim] = x[n, in_dim] @ w[out_dim, in_dim]^T (+ bias[out_dim] if non-null)
void linear(const float* x, const float* w, const float* bias, float* y, int n, int in_dim,
            int out_dim);
// The same with bf16 weights w[out_dim, in_dim] (fp32 accumulation).
void linear_bf16(const float* x, const uint16_t* w, const float* bias, float* y, int n, int in_dim,
                 int out_dim);

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

}  // namespace cpu

#ifdef CARTSERVE_WITH_CUDA
namespace cuda {
void rms_norm(const float* x, const float* w, float* out, int n, int dim, float eps);
void rope(float* x, const int32_t* positions, const RopeTable& rope, int n, int n_heads);
void silu_mul(const float* gate, const float* up, float* out, int64_t n);
void embedding(const float* table, const int32_t* ids, float* out, int n, int dim);
void add_inplace(float* x, const float* y, int64_t n);
void kv_write(const float* k, const float* v, const int32_t* slots, float* k_cache, float* v_cache,
              int n, int kv_dim);
// seqs: host array whose block_table pointers are device pointers.
void paged_attention(const float* q, const float* k_cache, const float* v_cache,
                     const AttnSeq* seqs, int n_seqs, float* out, int n_heads, int n_kv_heads,
                     int head_dim, int block_size, float scale);
}  // namespace cuda
#endif

}  // namespace cartserve::ops
