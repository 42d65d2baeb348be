// Paged KV storage for the CPU backend. Per layer, K and V are
// [num_blocks * block_size, kv_dim] (kv_dim = n_kv_heads * head_dim), so
// slot = block * block_size + offset indexes a row. Block metadata (ref
// counts, hashes) lives in kv/block_pool; this is storage only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace cartserve {

class KvCache {
 public:
  KvCache(int num_layers, int num_blocks, int block_size, int kv_dim);

  int num_layers() const { return num_layers_; }
  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  int kv_dim() const { return kv_dim_; }
  size_t nbytes() const {
    return 2 * static_cast<size_t>(num_layers_) * layer_elems_ * sizeof(float);
  }

  float* k(int layer) { return k_[static_cast<size_t>(layer)].data(); }  // [slots, kv_dim]
  float* v(int layer) { return v_[static_cast<size_t>(layer)].data(); }  // [slots, kv_dim]
  const float* k(int layer) const { return k_[static_cast<size_t>(layer)].data(); }
  const float* v(int layer) const { return v_[static_cast<size_t>(layer)].data(); }

 private:
  int num_layers_, num_blocks_, block_size_, kv_dim_;
  size_t layer_elems_;
  std::vector<std::vector<float>> k_, v_;  // [num_layers][num_blocks * block_size * kv_dim]
};

}  // namespace cartserve
