// The paged KV cache a backend owns, as the backend declares it. The block
// pool (kv/block_pool) is sized from num_blocks; cartridge budgets and the
// start-up log count bytes with bytes_per_block().
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace cartserve {

struct KvSpec {
  DType dtype = DType::kF32;  // element type of the stored K and V
  int32_t block_size = 16;    // positions per block
  int32_t num_blocks = 0;     // including the null block 0
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;

  int32_t kv_dim() const { return num_kv_heads * head_dim; }
  // K plus V of one position over every layer.
  uint64_t bytes_per_token() const {
    return 2ull * static_cast<uint64_t>(num_layers) * static_cast<uint64_t>(kv_dim()) *
           dtype_size(dtype);
  }
  uint64_t bytes_per_block() const { return bytes_per_token() * static_cast<uint64_t>(block_size); }
  // Positions the usable blocks hold (the null block excluded).
  int64_t num_tokens() const { return static_cast<int64_t>(num_blocks - 1) * block_size; }
  uint64_t total_bytes() const {
    return bytes_per_block() * static_cast<uint64_t>(num_blocks > 0 ? num_blocks : 0);
  }
};

// How much KV cache a backend allocates: `tokens` positions (plus the null
// block) when set, else as many blocks as `bytes` holds in its dtype.
struct KvBudget {
  uint64_t bytes = 0;
  int64_t tokens = 0;
  // Blocks for `spec` (spec.dtype, block_size and shape set; num_blocks ignored).
  int64_t num_blocks(const KvSpec& spec) const {
    if (tokens > 0) return (tokens + spec.block_size - 1) / spec.block_size + 1;
    return static_cast<int64_t>(bytes / spec.bytes_per_block());
  }
};

}  // namespace cartserve
