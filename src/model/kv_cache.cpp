#include "model/kv_cache.h"

#include <algorithm>

namespace cartserve {

KvCache::KvCache(int num_layers, int num_blocks, int block_size, int kv_dim)
    : num_layers_(num_layers),
      num_blocks_(num_blocks),
      block_size_(block_size),
      kv_dim_(kv_dim),
      layer_elems_(static_cast<size_t>(num_blocks) * block_size * kv_dim),
      k_(static_cast<size_t>(num_layers), std::vector<float>(layer_elems_)),
      v_(static_cast<size_t>(num_layers), std::vector<float>(layer_elems_)) {}

void KvCache::copy_block(int src, int dst) {
  const size_t n = static_cast<size_t>(block_size_) * kv_dim_;
  for (int l = 0; l < num_layers_; ++l) {
    std::copy_n(k_[l].begin() + src * n, n, k_[l].begin() + dst * n);
    std::copy_n(v_[l].begin() + src * n, n, v_[l].begin() + dst * n);
  }
}

}  // namespace cartserve
