#include "cartridge/device_allocator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/logging.h"

namespace cartserve {

HostDeviceAllocator::~HostDeviceAllocator() {
  if (!live_.empty()) {
    LOG_WARN("host device allocator destroyed with {} live allocations ({} bytes)", live_.size(),
             in_use_);
  }
  for (auto& [p, n] : live_)
    std::free(p);
}

Result<void*> HostDeviceAllocator::allocate(uint64_t nbytes) {
  std::lock_guard<std::mutex> lock(mu_);
  if (fail_allocations_ > 0) {
    --fail_allocations_;
    return make_error(ErrorCode::kResourceExhausted,
                      "device allocation of {} bytes failed (injected)", nbytes);
  }
  if (capacity_ != 0 && nbytes > capacity_ - in_use_) {
    return make_error(ErrorCode::kResourceExhausted,
                      "device out of memory: {} bytes requested, {} of {} in use", nbytes, in_use_,
                      capacity_);
  }
  const uint64_t rounded = (std::max<uint64_t>(nbytes, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) {
    return make_error(ErrorCode::kResourceExhausted, "host allocation of {} bytes failed", nbytes);
  }
  live_.emplace(p, nbytes);
  in_use_ += nbytes;
  peak_ = std::max(peak_, in_use_);
  ++total_allocations_;
  return p;
}

void HostDeviceAllocator::free(void* ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) {
    LOG_ERROR("host device allocator: free of unknown pointer {}", ptr);
    return;
  }
  in_use_ -= it->second;
  live_.erase(it);
  std::free(ptr);
}

Status HostDeviceAllocator::copy_from_host(void* dst_device, const void* src_host,
                                           uint64_t nbytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (fail_copies_ > 0) {
      --fail_copies_;
      return make_error(ErrorCode::kIo, "host-to-device copy of {} bytes failed (injected)",
                        nbytes);
    }
    copied_in_ += nbytes;
  }
  if (nbytes) std::memcpy(dst_device, src_host, nbytes);
  return {};
}

Status HostDeviceAllocator::copy_to_host(void* dst_host, const void* src_device, uint64_t nbytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (fail_copies_ > 0) {
      --fail_copies_;
      return make_error(ErrorCode::kIo, "device-to-host copy of {} bytes failed (injected)",
                        nbytes);
    }
    copied_out_ += nbytes;
  }
  if (nbytes) std::memcpy(dst_host, src_device, nbytes);
  return {};
}

void HostDeviceAllocator::fail_next_allocations(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_allocations_ = n;
}

void HostDeviceAllocator::fail_next_copies(int n) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_copies_ = n;
}

uint64_t HostDeviceAllocator::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

uint64_t HostDeviceAllocator::peak_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}

size_t HostDeviceAllocator::live_allocations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return live_.size();
}

uint64_t HostDeviceAllocator::total_allocations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_allocations_;
}

uint64_t HostDeviceAllocator::bytes_copied_from_host() const {
  std::lock_guard<std::mutex> lock(mu_);
  return copied_in_;
}

uint64_t HostDeviceAllocator::bytes_copied_to_host() const {
  std::lock_guard<std::mutex> lock(mu_);
  return copied_out_;
}

}  // namespace cartserve
