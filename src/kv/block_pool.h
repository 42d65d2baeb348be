// KV block metadata: ids, reference counts and content hashes. The storage
// ([layer][block][block_size][kv_heads][head_dim]) lives with the backend.
//
// NOTE: invariants.
// - Block 0 is the null block: reserved, never handed out, never freed (the
//   runner may point padding slots at it).
// - Every other block is in exactly one state:
//     in use      ref_count > 0 (hash optional),
//     evictable   ref_count == 0 with a hash: cached, on the LRU list,
//     free        ref_count == 0 without a hash: on the free list.
// - The hash map holds hash -> block for every block that has a hash, and
//   nothing else; a hash maps to one block at most.
// - A fresh block comes from the free list first; only when it is empty is
//   the least recently released evictable block evicted (hash dropped). This
//   one LRU governs all device KV: prompt prefixes and idle cartridge blocks
//   (cartridge/device_tier.h) alike.
// - The pool caches every hash it is given; enable_caching is the scheduler's
//   switch for automatic prefix caching of prompts.
// - Callers release a sequence's blocks from last to first, so that its tail
//   (the least shareable part) is evicted before its head.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "kv/prefix_hash.h"

namespace cartserve {

struct PrefixCacheStats {
  int64_t queries = 0;    // prompt tokens looked up (at admission)
  int64_t hits = 0;       // of those, found in the cache
  int64_t evictions = 0;  // cached blocks whose hash was dropped to reuse them
};

class BlockPool {
 public:
  static constexpr int32_t kNullBlock = 0;

  // `num_blocks` counts the null block, so at least 2.
  static Result<BlockPool> create(int32_t num_blocks, bool enable_caching = true);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_count_.size()); }
  int32_t num_usable_blocks() const { return num_blocks() - 1; }
  // Blocks a caller can get now: free plus evictable.
  int32_t num_free_blocks() const { return static_cast<int32_t>(free_.size()) + num_evictable_; }
  int32_t num_evictable_blocks() const { return num_evictable_; }
  int32_t num_cached_blocks() const { return static_cast<int32_t>(cached_.size()); }
  // Fraction of usable blocks in use (ref_count > 0).
  double usage() const;
  bool caching_enabled() const { return enable_caching_; }

  // `n` fresh blocks (ref_count 1, no hash), all or nothing: nullopt when
  // fewer than `n` are free or evictable.
  std::optional<std::vector<int32_t>> allocate(int32_t n);
  // One more reference to a block in use or cached (an evictable block leaves
  // the LRU list).
  void ref(int32_t id);
  // One reference less; at zero the block becomes evictable (with a hash) or
  // free. Misuse (null block, unknown id, ref_count 0) is logged and ignored.
  void release(int32_t id);

  // The cached block holding this content, if any (no side effect).
  std::optional<int32_t> lookup(const BlockHash& hash) const;
  // Records that block `id` (in use) holds this content. No-op when the block
  // already has a hash or when another block already caches this content (the
  // duplicate stays uncached).
  void register_hash(int32_t id, const BlockHash& hash);
  // An evictable (cached, unreferenced) block loses its hash and becomes
  // free now. False (nothing changes) for any other block.
  bool drop_cached(int32_t id);
  // Called whenever a block's hash is dropped (eviction, drop_cached, reset),
  // with the block and the hash it held.
  void set_drop_listener(std::function<void(int32_t id, const BlockHash& hash)> fn) {
    on_drop_ = std::move(fn);
  }
  // Drops every hash (an admin reset); evictable blocks become free.
  void reset_prefix_cache();

  int32_t ref_count(int32_t id) const;
  std::optional<BlockHash> hash_of(int32_t id) const;

  // Prefix-cache hit-rate counters; the scheduler records one query per admission.
  void record_prefix_query(int64_t queried_tokens, int64_t hit_tokens);
  const PrefixCacheStats& stats() const { return stats_; }

  // Full consistency check of the invariants above (tests, debugging).
  Status check_invariants() const;

 private:
  BlockPool(int32_t num_blocks, bool enable_caching);
  bool valid_id(int32_t id) const { return id > kNullBlock && id < num_blocks(); }
  void lru_push_back(int32_t id);
  void lru_remove(int32_t id);
  int32_t evict_lru_head();
  void forget_hash(int32_t id);  // drops the hash of a block that has one

  bool enable_caching_;
  std::vector<int32_t> ref_count_;                                  // [num_blocks]
  std::vector<std::optional<BlockHash>> hash_;                      // [num_blocks]
  std::deque<int32_t> free_;                                        // free blocks, allocation order
  std::unordered_map<BlockHash, int32_t, BlockHashHasher> cached_;  // hash -> block
  // Intrusive LRU list of evictable blocks: head = least recently released.
  std::vector<int32_t> lru_prev_, lru_next_;  // [num_blocks], -1 = none
  std::vector<uint8_t> in_lru_;               // [num_blocks]
  int32_t lru_head_ = -1, lru_tail_ = -1;
  int32_t num_evictable_ = 0;
  int32_t num_in_use_ = 0;
  PrefixCacheStats stats_;
  std::function<void(int32_t, const BlockHash&)> on_drop_;
};

}  // namespace cartserve
