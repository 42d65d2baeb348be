#include "kv/block_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace cartserve {
namespace {

BlockHash h(uint64_t v) {
  return BlockHash{v, ~v};
}

BlockPool make(int32_t n, bool caching = true) {
  auto p = BlockPool::create(n, caching);
  EXPECT_TRUE(p.ok()) << p.status().to_string();
  return std::move(p).value();
}

TEST(BlockPool, RejectsTooSmall) {
  EXPECT_FALSE(BlockPool::create(1).ok());
  EXPECT_FALSE(BlockPool::create(0).ok());
  EXPECT_NE(BlockPool::create(-3).status().message().find("at least 2"), std::string::npos);
}

TEST(BlockPool, AllocateFreeRefcountNeverNullBlock) {
  BlockPool p = make(9);
  EXPECT_EQ(p.num_usable_blocks(), 8);
  EXPECT_EQ(p.num_free_blocks(), 8);
  auto a = p.allocate(8);
  ASSERT_TRUE(a);
  std::set<int32_t> ids(a->begin(), a->end());
  EXPECT_EQ(ids.size(), 8u);
  EXPECT_EQ(ids.count(BlockPool::kNullBlock), 0u);
  EXPECT_EQ(*ids.begin(), 1);
  EXPECT_EQ(*ids.rbegin(), 8);
  EXPECT_DOUBLE_EQ(p.usage(), 1.0);
  // Exhausted: all or nothing.
  EXPECT_FALSE(p.allocate(1));
  EXPECT_TRUE(p.allocate(0));
  EXPECT_TRUE(p.check_invariants().ok());

  p.ref((*a)[0]);
  EXPECT_EQ(p.ref_count((*a)[0]), 2);
  p.release((*a)[0]);
  EXPECT_EQ(p.ref_count((*a)[0]), 1);
  EXPECT_EQ(p.num_free_blocks(), 0);
  p.release((*a)[0]);
  EXPECT_EQ(p.num_free_blocks(), 1);
  EXPECT_DOUBLE_EQ(p.usage(), 7.0 / 8.0);
  // Misuse is ignored, not a crash or a corruption.
  p.release((*a)[0]);
  p.release(BlockPool::kNullBlock);
  p.release(99);
  p.ref(BlockPool::kNullBlock);
  p.ref((*a)[0]);  // free, not cached: refused
  EXPECT_EQ(p.ref_count((*a)[0]), 0);
  EXPECT_TRUE(p.check_invariants().ok()) << p.check_invariants().to_string();

  for (size_t i = 1; i < a->size(); ++i)
    p.release((*a)[i]);
  EXPECT_EQ(p.num_free_blocks(), 8);
  // A second round never returns the null block either.
  auto b = p.allocate(8);
  ASSERT_TRUE(b);
  EXPECT_EQ(std::count(b->begin(), b->end(), 0), 0);
  EXPECT_TRUE(p.check_invariants().ok());
}

TEST(BlockPool, HashHitAfterFreeAndRefBringsBlockBack) {
  BlockPool p = make(5);
  auto a = p.allocate(2);
  ASSERT_TRUE(a);
  p.register_hash((*a)[0], h(1));
  p.register_hash((*a)[1], h(2));
  EXPECT_EQ(p.lookup(h(1)), (*a)[0]);
  EXPECT_EQ(p.num_cached_blocks(), 2);
  p.release((*a)[1]);
  p.release((*a)[0]);
  // Cached and evictable, still counted as free.
  EXPECT_EQ(p.num_evictable_blocks(), 2);
  EXPECT_EQ(p.num_free_blocks(), 4);
  EXPECT_EQ(p.lookup(h(2)), (*a)[1]);
  p.ref((*a)[1]);  // a hit: back in use with its content
  EXPECT_EQ(p.ref_count((*a)[1]), 1);
  EXPECT_EQ(p.num_evictable_blocks(), 1);
  EXPECT_EQ(p.hash_of((*a)[1]), h(2));
  EXPECT_TRUE(p.check_invariants().ok());
  // A duplicate content registered on another block stays uncached.
  auto c = p.allocate(1);
  ASSERT_TRUE(c);
  p.register_hash((*c)[0], h(2));
  EXPECT_FALSE(p.hash_of((*c)[0]));
  EXPECT_EQ(p.lookup(h(2)), (*a)[1]);
  // Registering a second hash on a hashed block is a no-op.
  p.register_hash((*a)[1], h(3));
  EXPECT_FALSE(p.lookup(h(3)));
  EXPECT_TRUE(p.check_invariants().ok());
}

TEST(BlockPool, FreeUncachedBlocksGoFirstThenLruEviction) {
  BlockPool p = make(6);  // 5 usable
  auto a = p.allocate(5);
  ASSERT_TRUE(a);
  // Cache blocks 1..4, release them in the order 3, 1, 4, 2 (LRU order), and 5 uncached.
  for (int i = 0; i < 4; ++i)
    p.register_hash((*a)[static_cast<size_t>(i)], h(100 + i));
  for (int32_t id : {3, 1, 4, 2, 5})
    p.release(id);
  EXPECT_EQ(p.num_free_blocks(), 5);
  EXPECT_EQ(p.num_evictable_blocks(), 4);
  // The uncached block first: no eviction.
  auto x = p.allocate(1);
  ASSERT_TRUE(x);
  EXPECT_EQ((*x)[0], 5);
  EXPECT_EQ(p.stats().evictions, 0);
  EXPECT_EQ(p.num_cached_blocks(), 4);
  // A hit on block 1 takes it out of the LRU list: not evicted next.
  p.ref(1);
  // Then least recently released first: 3, 4, 2.
  auto y = p.allocate(3);
  ASSERT_TRUE(y);
  EXPECT_EQ(*y, (std::vector<int32_t>{3, 4, 2}));
  EXPECT_EQ(p.stats().evictions, 3);
  EXPECT_FALSE(p.lookup(h(102)));  // block 3's content is gone
  EXPECT_FALSE(p.hash_of(3));
  EXPECT_EQ(p.lookup(h(100)), 1);  // block 1 survived
  EXPECT_TRUE(p.check_invariants().ok());
}

TEST(BlockPool, NoReuseAcrossSalts) {
  BlockPool p = make(4);
  const std::vector<int32_t> tokens = {5, 6, 7, 8};
  const BlockHash with_a = hash_block(prefix_hash_root("cartridge-A"), tokens);
  const BlockHash with_b = hash_block(prefix_hash_root("cartridge-B"), tokens);
  const BlockHash none = hash_block(prefix_hash_root(""), tokens);
  auto a = p.allocate(1);
  ASSERT_TRUE(a);
  p.register_hash((*a)[0], with_a);
  p.release((*a)[0]);
  EXPECT_EQ(p.lookup(with_a), (*a)[0]);
  EXPECT_FALSE(p.lookup(with_b));
  EXPECT_FALSE(p.lookup(none));
}

TEST(BlockPool, CachingDisabledAndReset) {
  // Prefix caching off is the scheduler's switch: the pool still caches the
  // hashes it is given (cartridge blocks use them).
  BlockPool off = make(4, false);
  EXPECT_FALSE(off.caching_enabled());
  auto a = off.allocate(1);
  ASSERT_TRUE(a);
  off.register_hash((*a)[0], h(1));
  EXPECT_EQ(off.lookup(h(1)), (*a)[0]);
  off.release((*a)[0]);
  EXPECT_EQ(off.num_evictable_blocks(), 1);

  BlockPool p = make(4);
  auto b = p.allocate(3);
  ASSERT_TRUE(b);
  for (int i = 0; i < 3; ++i)
    p.register_hash((*b)[static_cast<size_t>(i)], h(10 + i));
  p.release((*b)[0]);
  p.release((*b)[1]);
  p.reset_prefix_cache();
  EXPECT_EQ(p.num_cached_blocks(), 0);
  EXPECT_EQ(p.num_evictable_blocks(), 0);
  EXPECT_EQ(p.num_free_blocks(), 2);
  EXPECT_FALSE(p.lookup(h(12)));
  p.release((*b)[2]);  // its hash was dropped: plain free
  EXPECT_EQ(p.num_free_blocks(), 3);
  EXPECT_TRUE(p.check_invariants().ok());
}

TEST(BlockPool, UsageAndStats) {
  BlockPool p = make(11);
  auto a = p.allocate(4);
  ASSERT_TRUE(a);
  EXPECT_DOUBLE_EQ(p.usage(), 0.4);
  p.record_prefix_query(100, 32);
  p.record_prefix_query(50, 0);
  EXPECT_EQ(p.stats().queries, 150);
  EXPECT_EQ(p.stats().hits, 32);
}

}  // namespace
}  // namespace cartserve
