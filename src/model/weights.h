// fp32 weights of a Llama-family model in HF layout: linear weights are
// [out_features, in_features]; q/k rows in HF order (rotate_half RoPE), i.e.
// GGUF llama checkpoints are un-permuted at load.
#pragma once

#include <vector>

#include "core/tensor.h"

namespace cartserve {

struct LayerWeights {
  Tensor attn_norm;   // [hidden]
  Tensor wq;          // [n_heads * head_dim, hidden]
  Tensor wk;          // [n_kv_heads * head_dim, hidden]
  Tensor wv;          // [n_kv_heads * head_dim, hidden]
  Tensor wo;          // [hidden, n_heads * head_dim]
  Tensor bq, bk, bv;  // [q_dim], [kv_dim], [kv_dim] when attention_bias, else empty
  Tensor q_norm;      // [head_dim] when qk_norm (Qwen3), else empty
  Tensor k_norm;      // [head_dim] when qk_norm (Qwen3), else empty
  Tensor ffn_norm;    // [hidden]
  Tensor w_gate;      // [intermediate, hidden]
  Tensor w_up;        // [intermediate, hidden]
  Tensor w_down;      // [hidden, intermediate]
};

struct ModelWeights {
  Tensor embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor final_norm;                     // [hidden]
  Tensor lm_head;                        // [vocab, hidden]; shares storage with embed when tied
  std::vector<float> rope_freq_factors;  // [head_dim / 2] or empty (GGUF rope_freqs)

  size_t nbytes() const;
};

}  // namespace cartserve
