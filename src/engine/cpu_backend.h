// The fp32 CPU reference backend: LlamaForward over a host KvCache.
#pragma once

#include <memory>

#include "engine/backend.h"
#include "model/kv_cache.h"
#include "model/llama.h"

namespace cartserve {

class CpuBackend final : public Backend {
 public:
  CpuBackend(const Model& model, int32_t num_blocks, int32_t block_size);

  std::string name() const override { return "cpu"; }
  int32_t num_blocks() const override { return cache_.num_blocks(); }
  int32_t block_size() const override { return cache_.block_size(); }
  uint64_t kv_cache_bytes() const override { return cache_.nbytes(); }
  Status forward(const ForwardBatch& batch, std::vector<float>& logits) override;
  void copy_slots(int32_t src_block, int32_t dst_block, int32_t num_slots) override;
  Status write_cache(int32_t layer, bool value, const float* rows, const int32_t* slots,
                     int32_t n) override;
  Status read_cache(int32_t layer, bool value, const int32_t* slots, int32_t n,
                    float* rows) const override;
  int32_t num_layers() const override { return cache_.num_layers(); }
  int32_t kv_dim() const override { return cache_.kv_dim(); }

 private:
  Status check_slots(int32_t layer, const int32_t* slots, int32_t n) const;
  LlamaForward forward_;
  KvCache cache_;
};

}  // namespace cartserve
