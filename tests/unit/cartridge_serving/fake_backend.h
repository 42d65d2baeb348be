// A Backend with a KV cache and no model: per-layer fp32 storage [blocks *
// block_size, kv_dim] and the CPU KV movement ops, for tests of the device
// tier and the connector. Transfers finish when polled, or stay in flight
// while `hold_transfers` is set.
#pragma once

#include <map>
#include <vector>

#include "kernels/ops.h"
#include "runtime/backend.h"

namespace cartserve::testing {

class FakeBackend final : public Backend {
 public:
  FakeBackend(int32_t layers, int32_t blocks, int32_t block_size, int32_t heads, int32_t head_dim)
      : cache_(
            static_cast<size_t>(layers) * 2,
            std::vector<float>(static_cast<size_t>(blocks) * block_size * heads * head_dim, 0.f)) {
    spec_.dtype = DType::kF32;
    spec_.block_size = block_size;
    spec_.num_blocks = blocks;
    spec_.num_layers = layers;
    spec_.num_kv_heads = heads;
    spec_.head_dim = head_dim;
  }

  std::string name() const override { return "fake"; }
  const KvSpec& kv_spec() const override { return spec_; }
  Status execute(const StepInput&, StepOutput&) override {
    return Status(ErrorCode::kUnsupported, "fake backend has no model");
  }
  Status logits(const StepInput&, std::vector<float>&) override {
    return Status(ErrorCode::kUnsupported, "fake backend has no model");
  }
  Result<TransferId> start_kv_load(const HostKv& src, const KvBlockList& blocks) override {
    ++loads;
    if (fail_next_load) {
      fail_next_load = false;
      return make_error(ErrorCode::kIo, "the copy engine is on fire");
    }
    move(src, blocks, /*load=*/true);
    return begin();
  }
  Result<TransferId> start_kv_save(const KvBlockList& blocks, const HostKv& dst) override {
    move(dst, blocks, /*load=*/false);
    return begin();
  }
  std::optional<Status> poll_transfer(TransferId id) override {
    if (hold_transfers) return std::nullopt;
    return wait_transfer(id);
  }
  Status wait_transfer(TransferId id) override {
    return pending_.erase(id) ? Status() : Status(ErrorCode::kNotFound, "no such transfer");
  }

  // Row of the cache at `slot`: [kv_dim]
  const float* row(int32_t layer, bool value, int32_t slot) const {
    return &cache_[static_cast<size_t>(layer) * 2 + value]
                  [static_cast<size_t>(slot) * spec_.kv_dim()];
  }
  size_t in_flight() const { return pending_.size(); }

  int loads = 0;  // start_kv_load calls
  bool hold_transfers = false;
  bool fail_next_load = false;

 private:
  TransferId begin() {
    pending_.emplace(next_, true);
    return next_++;
  }
  void move(const HostKv& kv, const KvBlockList& blocks, bool load) {
    const int32_t B = spec_.block_size;
    const int64_t stride = static_cast<int64_t>(B) * spec_.kv_dim();
    for (size_t i = 0; i < blocks.block_ids.size(); ++i) {
      const int32_t first = blocks.block_index[i] * B;
      const int32_t count = std::min(B, kv.num_tokens - first);
      const int32_t* table = &blocks.block_ids[i] - blocks.block_index[i];
      for (int32_t l = 0; l < spec_.num_layers; ++l) {
        for (int v = 0; v < 2; ++v) {
          float* cache = cache_[static_cast<size_t>(l) * 2 + v].data();
          void* host = v ? kv.values[l] : kv.keys[l];
          if (load) {
            ops::cpu::kv_import(host, kv.dtype, kv.num_tokens, first, count, table, cache, stride,
                                B, spec_.num_kv_heads, spec_.head_dim);
          } else {
            ops::cpu::kv_export(cache, stride, B, spec_.num_kv_heads, spec_.head_dim, table,
                                kv.num_tokens, first, count, host, kv.dtype);
          }
        }
      }
    }
  }

  KvSpec spec_;
  std::vector<std::vector<float>> cache_;  // [layers * 2][blocks * bs * kv_dim]
  std::map<TransferId, bool> pending_;
  TransferId next_ = 1;
};

}  // namespace cartserve::testing
