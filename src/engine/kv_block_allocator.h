// The residency manager's device tier placed inside the engine's KV cache: a
// cartridge's device copy is ceil(T / B) blocks of the BlockPool (each held
// with one reference), written and read through the backend, so a resident
// cartridge is exactly the shared, read-only blocks every request using it
// puts first in its block table. No per-request copy.
//
// The DeviceAllocator contract deals in addresses: each allocation gets a
// synthetic base address (never dereferenced) and the residency manager's
// per-tensor offsets ([layer][K, V] x [T, kv_dim] fp32, token-major) map to
// (layer, K or V).
//
// NOTE: engine thread only: the pool and the KV cache belong to it. Every
// residency call that can touch the device tier runs there.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "cartridge/device_allocator.h"
#include "engine/backend.h"
#include "kv/block_pool.h"

namespace cartserve {

class KvBlockAllocator final : public DeviceAllocator {
 public:
  KvBlockAllocator(int32_t num_layers, int32_t kv_dim, int32_t block_size);
  // Must be called (by the engine) before the first allocation; (nullptr,
  // nullptr) when the engine stops: frees then forget their blocks.
  void bind(BlockPool* pool, Backend* backend);

  Result<void*> allocate(uint64_t nbytes) override;
  void free(void* ptr) override;
  Status copy_from_host(void* dst_device, const void* src_host, uint64_t nbytes) override;
  Status copy_to_host(void* dst_host, const void* src_device, uint64_t nbytes) override;
  const char* name() const override { return "kv-blocks"; }

  // Blocks of the allocation starting at `base`, in token order.
  Result<std::vector<int32_t>> blocks_of(const void* base) const;
  int32_t num_blocks_held() const;

 private:
  struct Alloc {
    uint64_t nbytes = 0;
    int32_t num_tokens = 0;
    std::vector<int32_t> blocks;  // [ceil(num_tokens / block_size)]
  };
  // The allocation containing `addr` and the tensor (layer, value) at it.
  Result<const Alloc*> locate(const void* addr, uint64_t nbytes, int32_t& layer, bool& value) const;
  std::vector<int32_t> slots(const Alloc& a) const;

  int32_t num_layers_, kv_dim_, block_size_;
  BlockPool* pool_ = nullptr;
  Backend* backend_ = nullptr;
  std::map<uintptr_t, Alloc> allocs_;  // by base address
  uintptr_t next_base_ = uintptr_t{1} << 44;
};

}  // namespace cartserve
