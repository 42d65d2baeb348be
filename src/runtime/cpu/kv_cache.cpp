#include "runtime/cpu/kv_cache.h"

namespace cartserve {

KvCache::KvCache(int num_layers, int num_blocks, int block_size, int kv_dim)
    : num_layers_(num_layers),
      num_blocks_(num_blocks),
      block_size_(block_size),
      kv_dim_(kv_dim),
      layer_elems_(static_cast<size_t>(num_blocks) * block_size * kv_dim),
      k_(static_cast<size_t>(num_layers), std::vector<float>(layer_elems_)),
      v_(static_cast<size_t>(num_layers), std::vector<float>(layer_elems_)) {}

}  // namespace cartserve
