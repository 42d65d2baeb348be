#include "engine/kv_block_allocator.h"

namespace cartserve {

KvBlockAllocator::KvBlockAllocator(int32_t num_layers, int32_t kv_dim, int32_t block_size)
    : num_layers_(num_layers), kv_dim_(kv_dim), block_size_(block_size) {}

void KvBlockAllocator::bind(BlockPool* pool, Backend* backend) {
  pool_ = pool;
  backend_ = backend;
}

Result<void*> KvBlockAllocator::allocate(uint64_t nbytes) {
  if (!pool_ || !backend_) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "KV block allocator is not bound to an engine");
  }
  const uint64_t per_token = 2ull * num_layers_ * kv_dim_ * sizeof(float);
  if (nbytes == 0 || nbytes % per_token != 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "{} bytes is not a whole number of fp32 KV tokens ({} bytes each)", nbytes,
                      per_token);
  }
  Alloc a;
  a.nbytes = nbytes;
  a.num_tokens = static_cast<int32_t>(nbytes / per_token);
  const int32_t n = (a.num_tokens + block_size_ - 1) / block_size_;
  auto blocks = pool_->allocate(n);
  if (!blocks) {
    return make_error(ErrorCode::kResourceExhausted,
                      "no {} free KV blocks for a cartridge of {} tokens ({} free)", n,
                      a.num_tokens, pool_->num_free_blocks());
  }
  a.blocks = std::move(*blocks);
  const uintptr_t base = next_base_;
  // Bases are spaced beyond any allocation size, so offsets never collide.
  next_base_ += (nbytes + (uint64_t{1} << 20)) & ~((uint64_t{1} << 20) - 1);
  allocs_.emplace(base, std::move(a));
  return reinterpret_cast<void*>(base);
}

void KvBlockAllocator::free(void* ptr) {
  auto it = allocs_.find(reinterpret_cast<uintptr_t>(ptr));
  if (it == allocs_.end()) return;
  // Unbound: the engine (and its pool) is gone; the blocks went with it.
  if (pool_) {
    for (int32_t b : it->second.blocks)
      pool_->release(b);
  }
  allocs_.erase(it);
}

Result<const KvBlockAllocator::Alloc*> KvBlockAllocator::locate(const void* addr, uint64_t nbytes,
                                                                int32_t& layer, bool& value) const {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  auto it = allocs_.upper_bound(a);
  if (it == allocs_.begin()) {
    return make_error(ErrorCode::kInvalidArgument, "address is not in a KV block allocation");
  }
  --it;
  const Alloc& alloc = it->second;
  const uint64_t off = a - it->first;
  const uint64_t tensor = static_cast<uint64_t>(alloc.num_tokens) * kv_dim_ * sizeof(float);
  if (off >= alloc.nbytes || off % tensor != 0 || nbytes != tensor) {
    return make_error(ErrorCode::kInvalidArgument,
                      "KV block copies move one whole K or V tensor ({} bytes), not {} at {}",
                      tensor, nbytes, off);
  }
  const uint64_t index = off / tensor;  // [layer][K, V]
  layer = static_cast<int32_t>(index / 2);
  value = index % 2 == 1;
  return &alloc;
}

std::vector<int32_t> KvBlockAllocator::slots(const Alloc& a) const {
  std::vector<int32_t> s(static_cast<size_t>(a.num_tokens));
  for (int32_t t = 0; t < a.num_tokens; ++t) {
    s[t] = a.blocks[static_cast<size_t>(t / block_size_)] * block_size_ + t % block_size_;
  }
  return s;
}

Status KvBlockAllocator::copy_from_host(void* dst_device, const void* src_host, uint64_t nbytes) {
  if (!backend_) return make_error(ErrorCode::kUnavailable, "the engine has stopped");
  int32_t layer = 0;
  bool value = false;
  CS_ASSIGN_OR_RETURN(const Alloc* a, locate(dst_device, nbytes, layer, value));
  const auto s = slots(*a);
  return backend_->write_cache(layer, value, static_cast<const float*>(src_host), s.data(),
                               a->num_tokens);
}

Status KvBlockAllocator::copy_to_host(void* dst_host, const void* src_device, uint64_t nbytes) {
  if (!backend_) return make_error(ErrorCode::kUnavailable, "the engine has stopped");
  int32_t layer = 0;
  bool value = false;
  CS_ASSIGN_OR_RETURN(const Alloc* a, locate(src_device, nbytes, layer, value));
  const auto s = slots(*a);
  return backend_->read_cache(layer, value, s.data(), a->num_tokens, static_cast<float*>(dst_host));
}

Result<std::vector<int32_t>> KvBlockAllocator::blocks_of(const void* base) const {
  auto it = allocs_.find(reinterpret_cast<uintptr_t>(base));
  if (it == allocs_.end()) {
    return make_error(ErrorCode::kNotFound, "no KV block allocation at this address");
  }
  return it->second.blocks;
}

int32_t KvBlockAllocator::num_blocks_held() const {
  int32_t n = 0;
  for (const auto& [base, a] : allocs_)
    n += static_cast<int32_t>(a.blocks.size());
  return n;
}

}  // namespace cartserve
