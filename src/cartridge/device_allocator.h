// Where the residency manager's device tier gets its memory. The CUDA
// allocator (cudaMalloc + cudaMemcpy) comes with the CUDA backend; the host
// one below serves the CPU backend (its "device" is host memory) and the
// tests (it counts bytes and can be told to fail).
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "core/status.h"

namespace cartserve {

class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  // ResourceExhausted when the device is out of memory.
  virtual Result<void*> allocate(uint64_t nbytes) = 0;
  // `ptr` came from allocate() and is freed once.
  virtual void free(void* ptr) = 0;
  // Copies `nbytes` from host memory into device memory (or back).
  virtual Status copy_from_host(void* dst_device, const void* src_host, uint64_t nbytes) = 0;
  virtual Status copy_to_host(void* dst_host, const void* src_device, uint64_t nbytes) = 0;
  virtual const char* name() const = 0;
};

// Device memory that is plain host memory (64-byte aligned). Thread-safe.
class HostDeviceAllocator final : public DeviceAllocator {
 public:
  // `capacity_bytes` 0: unlimited; otherwise allocations beyond it fail as a
  // real device would (to test "the budget said yes but the device said no").
  explicit HostDeviceAllocator(uint64_t capacity_bytes = 0) : capacity_(capacity_bytes) {}
  ~HostDeviceAllocator() override;

  Result<void*> allocate(uint64_t nbytes) override;
  void free(void* ptr) override;
  Status copy_from_host(void* dst_device, const void* src_host, uint64_t nbytes) override;
  Status copy_to_host(void* dst_host, const void* src_device, uint64_t nbytes) override;
  const char* name() const override { return "host"; }

  // The next `n` allocations fail with ResourceExhausted.
  void fail_next_allocations(int n);
  // The next `n` copies (either direction) fail with Io.
  void fail_next_copies(int n);

  uint64_t bytes_in_use() const;
  uint64_t peak_bytes() const;
  size_t live_allocations() const;
  uint64_t total_allocations() const;
  uint64_t bytes_copied_from_host() const;
  uint64_t bytes_copied_to_host() const;

 private:
  mutable std::mutex mu_;
  uint64_t capacity_;
  std::unordered_map<void*, uint64_t> live_;  // ptr -> bytes
  uint64_t in_use_ = 0;
  uint64_t peak_ = 0;
  uint64_t total_allocations_ = 0;
  uint64_t copied_in_ = 0;
  uint64_t copied_out_ = 0;
  int fail_allocations_ = 0;
  int fail_copies_ = 0;
};

}  // namespace cartserve
