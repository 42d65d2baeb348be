// A model's weights on the GPU, in bf16, in one allocation: QKV fused into
// one matrix [q_dim + 2 * kv_dim, hidden] (rows q | k | v), gate and up into
// one [2 * ff, hidden] with their rows alternating in blocks of
// ops::cuda::gate_up_block(ff) (8: a skinny_gemm m-tile holds matching gate and
// up features, so SwiGLU fits its epilogue). From any host weights (fp32 or
// bf16; GGUF files are dequantized at load). With fold_norms, wqkv and wgu
// carry their RMSNorm weights (column j times attn_norm[j] / ffn_norm[j],
// rounded once): the norm-folded forward of runtime/cuda/cuda_backend.cpp.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "model/model.h"

namespace cartserve::cuda {

using bf16 = __nv_bfloat16;

struct DeviceLayer {
  const bf16* attn_norm = nullptr;  // [hidden]
  const bf16* wqkv = nullptr;       // [q_dim + 2 * kv_dim, hidden]
  const bf16* bqkv = nullptr;       // [q_dim + 2 * kv_dim] or null
  const bf16* wo = nullptr;         // [hidden, q_dim]
  const bf16* ffn_norm = nullptr;   // [hidden]
  const bf16* wgu = nullptr;        // [2 * ff, hidden], gate/up in blocks (above)
  const bf16* wdown = nullptr;      // [hidden, ff]
};

class DeviceWeights {
 public:
  // Bytes the upload will take (to size the KV cache before it happens).
  static uint64_t bytes_needed(const Model& model);
  static Result<DeviceWeights> upload(const Model& model, bool fold_norms = false);
  DeviceWeights(DeviceWeights&& o) noexcept;
  DeviceWeights& operator=(DeviceWeights&& o) noexcept;
  DeviceWeights(const DeviceWeights&) = delete;
  DeviceWeights& operator=(const DeviceWeights&) = delete;
  ~DeviceWeights();

  const bf16* embed = nullptr;       // [vocab, hidden]
  const bf16* lm_head = nullptr;     // [vocab, hidden] (== embed when tied)
  const bf16* final_norm = nullptr;  // [hidden]
  const float* inv_freq = nullptr;   // [head_dim / 2] RoPE table, scaling applied
  std::vector<DeviceLayer> layers;
  bool folded_norms = false;  // wqkv and wgu carry the norm weights
  uint64_t nbytes() const { return bytes_; }

 private:
  DeviceWeights() = default;
  void* base_ = nullptr;
  uint64_t bytes_ = 0;
};

}  // namespace cartserve::cuda
