// In-memory cartridge: per-layer key and value tensors for `num_tokens`
// virtual tokens (frozen tokens first, then trainable ones), in file layout.
//
// NOTE: keys are stored after RoPE for positions 0..num_tokens-1 (HF
// rotate_half layout), as the Cartridges training code and the seed's canary
// produce them. The batch dimension of the .pt files (always 1) is dropped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace cartserve {

struct CartridgeData {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t num_tokens = 0;         // frozen + trainable
  int32_t num_frozen_tokens = 0;  // leading tokens that were not trained (BOS / sink)
  DType dtype = DType::kBF16;     // element type of keys/values as loaded

  std::vector<Tensor> keys;    // [num_layers] x [num_kv_heads, num_tokens, head_dim]
  std::vector<Tensor> values;  // [num_layers] x [num_kv_heads, num_tokens, head_dim]

  // Token ids behind the KV when it was prefilled from text (empty for
  // trained cartridges). Used by `prefix` mode to verify a prompt match.
  std::vector<int32_t> token_ids;

  // Bytes of keys + values.
  uint64_t nbytes() const;
  // Checks counts and shapes agree (every layer [H, T, D], dtype uniform).
  Status validate() const;
};

}  // namespace cartserve
