// What the engine needs from a device: run a batch over the paged KV cache,
// copy KV slots between blocks, and write externally provided KV (cartridges)
// into blocks. The CPU reference backend implements it here; the CUDA backend
// implements the same interface.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "model/llama.h"

namespace cartserve {

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;
  virtual int32_t num_blocks() const = 0;
  virtual int32_t block_size() const = 0;
  virtual uint64_t kv_cache_bytes() const = 0;

  // logits: [batch.logit_rows.size(), vocab]
  virtual Status forward(const ForwardBatch& batch, std::vector<float>& logits) = 0;

  // The first num_slots slots of block src copied to block dst, every layer, K and V.
  virtual void copy_slots(int32_t src_block, int32_t dst_block, int32_t num_slots) = 0;

  // Writes rows of one layer's K (value = false) or V cache at the given slots.
  // rows: [n, kv_dim] float32; slots: [n]
  virtual Status write_cache(int32_t layer, bool value, const float* rows, const int32_t* slots,
                             int32_t n) = 0;
  // Reads them back (cartridge demotion and building). rows: [n, kv_dim]
  virtual Status read_cache(int32_t layer, bool value, const int32_t* slots, int32_t n,
                            float* rows) const = 0;
  virtual int32_t num_layers() const = 0;
  virtual int32_t kv_dim() const = 0;
};

}  // namespace cartserve
