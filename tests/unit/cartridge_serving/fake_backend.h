// A Backend whose KV cache is plain vectors (no model): for tests of the
// cartridge device tier and the connector.
#pragma once

#include <cstring>
#include <vector>

#include "engine/backend.h"

namespace cartserve::testing {

class FakeBackend final : public Backend {
 public:
  FakeBackend(int32_t layers, int32_t blocks, int32_t block_size, int32_t kv_dim)
      : layers_(layers),
        blocks_(blocks),
        bs_(block_size),
        kv_dim_(kv_dim),
        cache_(static_cast<size_t>(layers) * 2,
               std::vector<float>(static_cast<size_t>(blocks) * block_size * kv_dim, 0.f)) {}

  std::string name() const override { return "fake"; }
  int32_t num_blocks() const override { return blocks_; }
  int32_t block_size() const override { return bs_; }
  uint64_t kv_cache_bytes() const override { return 0; }
  int32_t num_layers() const override { return layers_; }
  int32_t kv_dim() const override { return kv_dim_; }
  Status forward(const ForwardBatch&, std::vector<float>&) override {
    return Status(ErrorCode::kUnsupported, "fake backend has no model");
  }
  void copy_slots(int32_t src, int32_t dst, int32_t n) override {
    for (auto& c : cache_) {
      std::memcpy(&c[static_cast<size_t>(dst) * bs_ * kv_dim_],
                  &c[static_cast<size_t>(src) * bs_ * kv_dim_], sizeof(float) * n * kv_dim_);
    }
  }
  Status write_cache(int32_t layer, bool value, const float* rows, const int32_t* slots,
                     int32_t n) override {
    ++writes;
    auto& c = cache_[static_cast<size_t>(layer) * 2 + value];
    for (int32_t i = 0; i < n; ++i) {
      std::memcpy(&c[static_cast<size_t>(slots[i]) * kv_dim_], rows + i * kv_dim_,
                  sizeof(float) * kv_dim_);
    }
    return {};
  }
  Status read_cache(int32_t layer, bool value, const int32_t* slots, int32_t n,
                    float* rows) const override {
    const auto& c = cache_[static_cast<size_t>(layer) * 2 + value];
    for (int32_t i = 0; i < n; ++i) {
      std::memcpy(rows + i * kv_dim_, &c[static_cast<size_t>(slots[i]) * kv_dim_],
                  sizeof(float) * kv_dim_);
    }
    return {};
  }
  // Row of the cache at `slot`: [kv_dim]
  const float* row(int32_t layer, bool value, int32_t slot) const {
    return &cache_[static_cast<size_t>(layer) * 2 + value][static_cast<size_t>(slot) * kv_dim_];
  }
  int writes = 0;

 private:
  int32_t layers_, blocks_, bs_, kv_dim_;
  std::vector<std::vector<float>> cache_;  // [layers * 2][blocks * bs * kv_dim]
};

}  // namespace cartserve::testing
