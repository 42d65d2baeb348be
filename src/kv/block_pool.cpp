#include "kv/block_pool.h"

#include "core/logging.h"

namespace cartserve {

Result<BlockPool> BlockPool::create(int32_t num_blocks, bool enable_caching) {
  if (num_blocks < 2) {
    return make_error(ErrorCode::kInvalidArgument,
                      "KV block pool needs at least 2 blocks (1 null + 1 usable), got {}",
                      num_blocks);
  }
  return BlockPool(num_blocks, enable_caching);
}

BlockPool::BlockPool(int32_t num_blocks, bool enable_caching)
    : enable_caching_(enable_caching),
      ref_count_(static_cast<size_t>(num_blocks), 0),
      hash_(static_cast<size_t>(num_blocks)),
      lru_prev_(static_cast<size_t>(num_blocks), -1),
      lru_next_(static_cast<size_t>(num_blocks), -1),
      in_lru_(static_cast<size_t>(num_blocks), 0) {
  for (int32_t id = 1; id < num_blocks; ++id)
    free_.push_back(id);
}

double BlockPool::usage() const {
  return num_usable_blocks() == 0 ? 0.0 : static_cast<double>(num_in_use_) / num_usable_blocks();
}

void BlockPool::lru_push_back(int32_t id) {
  const auto i = static_cast<size_t>(id);
  lru_prev_[i] = lru_tail_;
  lru_next_[i] = -1;
  if (lru_tail_ >= 0) {
    lru_next_[static_cast<size_t>(lru_tail_)] = id;
  } else {
    lru_head_ = id;
  }
  lru_tail_ = id;
  in_lru_[i] = 1;
  ++num_evictable_;
}

void BlockPool::lru_remove(int32_t id) {
  const auto i = static_cast<size_t>(id);
  const int32_t p = lru_prev_[i], n = lru_next_[i];
  if (p >= 0) {
    lru_next_[static_cast<size_t>(p)] = n;
  } else {
    lru_head_ = n;
  }
  if (n >= 0) {
    lru_prev_[static_cast<size_t>(n)] = p;
  } else {
    lru_tail_ = p;
  }
  lru_prev_[i] = lru_next_[i] = -1;
  in_lru_[i] = 0;
  --num_evictable_;
}

void BlockPool::forget_hash(int32_t id) {
  auto& h = hash_[static_cast<size_t>(id)];
  const BlockHash dropped = *h;
  cached_.erase(dropped);
  h.reset();
  if (on_drop_) on_drop_(id, dropped);
}

int32_t BlockPool::evict_lru_head() {
  const int32_t id = lru_head_;
  lru_remove(id);
  forget_hash(id);
  ++stats_.evictions;
  return id;
}

bool BlockPool::drop_cached(int32_t id) {
  if (!valid_id(id) || ref_count_[static_cast<size_t>(id)] != 0 ||
      !in_lru_[static_cast<size_t>(id)]) {
    return false;
  }
  lru_remove(id);
  forget_hash(id);
  free_.push_back(id);
  return true;
}

std::optional<std::vector<int32_t>> BlockPool::allocate(int32_t n) {
  if (n < 0 || n > num_free_blocks()) return std::nullopt;
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  for (int32_t k = 0; k < n; ++k) {
    int32_t id;
    if (!free_.empty()) {
      id = free_.front();
      free_.pop_front();
    } else {
      id = evict_lru_head();
    }
    ref_count_[static_cast<size_t>(id)] = 1;
    ++num_in_use_;
    out.push_back(id);
  }
  return out;
}

void BlockPool::ref(int32_t id) {
  if (!valid_id(id)) {
    LOG_ERROR("BlockPool::ref: invalid block id {}", id);
    return;
  }
  const auto i = static_cast<size_t>(id);
  if (ref_count_[i] == 0) {
    if (!in_lru_[i]) {
      LOG_ERROR("BlockPool::ref: block {} is free, not in use or cached", id);
      return;
    }
    lru_remove(id);
    ++num_in_use_;
  }
  ++ref_count_[i];
}

void BlockPool::release(int32_t id) {
  if (!valid_id(id) || ref_count_[static_cast<size_t>(id)] <= 0) {
    LOG_ERROR("BlockPool::release: block {} is not in use", id);
    return;
  }
  const auto i = static_cast<size_t>(id);
  if (--ref_count_[i] > 0) return;
  --num_in_use_;
  if (hash_[i]) {
    lru_push_back(id);
  } else {
    free_.push_back(id);
  }
}

std::optional<int32_t> BlockPool::lookup(const BlockHash& hash) const {
  const auto it = cached_.find(hash);
  if (it == cached_.end()) return std::nullopt;
  return it->second;
}

void BlockPool::register_hash(int32_t id, const BlockHash& hash) {
  if (!valid_id(id) || ref_count_[static_cast<size_t>(id)] <= 0) {
    LOG_ERROR("BlockPool::register_hash: block {} is not in use", id);
    return;
  }
  auto& h = hash_[static_cast<size_t>(id)];
  if (h) return;
  if (!cached_.emplace(hash, id).second) return;  // another block holds this content
  h = hash;
}

void BlockPool::reset_prefix_cache() {
  while (lru_head_ >= 0) {
    const int32_t id = lru_head_;
    lru_remove(id);
    free_.push_back(id);
  }
  for (int32_t id = 0; id < num_blocks(); ++id) {
    if (hash_[static_cast<size_t>(id)]) forget_hash(id);
  }
  cached_.clear();
}

int32_t BlockPool::ref_count(int32_t id) const {
  return id >= 0 && id < num_blocks() ? ref_count_[static_cast<size_t>(id)] : 0;
}

std::optional<BlockHash> BlockPool::hash_of(int32_t id) const {
  if (id < 0 || id >= num_blocks()) return std::nullopt;
  return hash_[static_cast<size_t>(id)];
}

void BlockPool::record_prefix_query(int64_t queried_tokens, int64_t hit_tokens) {
  stats_.queries += queried_tokens;
  stats_.hits += hit_tokens;
}

Status BlockPool::check_invariants() const {
  const int32_t n = num_blocks();
  if (ref_count_[0] != 0 || hash_[0] || in_lru_[0]) {
    return make_error(ErrorCode::kInternal, "null block is in use, cached or evictable");
  }
  std::vector<int> on_free(static_cast<size_t>(n), 0);
  for (int32_t id : free_) {
    if (!valid_id(id)) return make_error(ErrorCode::kInternal, "free list holds id {}", id);
    ++on_free[static_cast<size_t>(id)];
  }
  std::vector<int> on_lru(static_cast<size_t>(n), 0);
  int32_t count = 0, prev = -1;
  for (int32_t id = lru_head_; id >= 0; id = lru_next_[static_cast<size_t>(id)]) {
    if (!valid_id(id) || ++count > n) {
      return make_error(ErrorCode::kInternal, "LRU list is corrupt at {}", id);
    }
    if (lru_prev_[static_cast<size_t>(id)] != prev) {
      return make_error(ErrorCode::kInternal, "LRU back link of {} is wrong", id);
    }
    ++on_lru[static_cast<size_t>(id)];
    prev = id;
  }
  if (prev != lru_tail_ || count != num_evictable_) {
    return make_error(ErrorCode::kInternal, "LRU tail/count mismatch");
  }
  int32_t in_use = 0;
  for (int32_t id = 1; id < n; ++id) {
    const auto i = static_cast<size_t>(id);
    const int rc = ref_count_[i];
    if (rc < 0) return make_error(ErrorCode::kInternal, "block {} has ref_count {}", id, rc);
    if (rc > 0) ++in_use;
    const bool want_free = rc == 0 && !hash_[i];
    const bool want_lru = rc == 0 && hash_[i].has_value();
    if (on_free[i] != (want_free ? 1 : 0)) {
      return make_error(ErrorCode::kInternal, "block {} (ref {}) is {} times on the free list", id,
                        rc, on_free[i]);
    }
    if (on_lru[i] != (want_lru ? 1 : 0) || (in_lru_[i] != 0) != want_lru) {
      return make_error(ErrorCode::kInternal, "block {} (ref {}) LRU membership is wrong", id, rc);
    }
    if (hash_[i]) {
      const auto it = cached_.find(*hash_[i]);
      if (it == cached_.end() || it->second != id) {
        return make_error(ErrorCode::kInternal, "block {} has a hash not mapped to it", id);
      }
    }
  }
  if (in_use != num_in_use_) {
    return make_error(ErrorCode::kInternal, "in-use count {} != {}", num_in_use_, in_use);
  }
  for (const auto& [h, id] : cached_) {
    if (!valid_id(id) || !hash_[static_cast<size_t>(id)] ||
        !(*hash_[static_cast<size_t>(id)] == h)) {
      return make_error(ErrorCode::kInternal, "hash map entry for block {} is stale", id);
    }
  }
  return Status::ok_status();
}

}  // namespace cartserve
