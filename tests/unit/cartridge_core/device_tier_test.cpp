// DeviceKvTier (cartridge/device_tier.h) over a real BlockPool, without a
// backend: the tests play the connector's worker by taking the load jobs and
// reporting load_done().
#include "cartridge/device_tier.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <set>

#include "kv/block_pool.h"
#include "kv/prefix_hash.h"

namespace cartserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using State = DeviceKvTier::State;
using LoadJob = DeviceKvTier::LoadJob;

constexpr int32_t kB = 4;       // block size (tokens)
constexpr uint64_t kBpb = 100;  // bytes per block

DeviceCartridge cart(const std::string& id, int32_t tokens, std::string content = "") {
  return DeviceCartridge{id, content.empty() ? "sha-" + id : std::move(content), tokens};
}

int32_t blocks_for(int32_t tokens) {
  return (tokens + kB - 1) / kB;
}

Status load_error() {
  return Status(ErrorCode::kIo, "simulated copy failure");
}

class DeviceTierTest : public ::testing::Test {
 protected:
  // `usable` pool blocks (plus the null block); budget in blocks.
  void make(int32_t usable, int32_t budget_blocks) {
    tier_.reset();
    auto p = BlockPool::create(usable + 1);
    ASSERT_TRUE(p.ok());
    pool_ = std::make_unique<BlockPool>(std::move(p).value());
    DeviceTierConfig cfg;
    cfg.block_size = kB;
    cfg.bytes_per_block = kBpb;
    cfg.budget_bytes = static_cast<uint64_t>(budget_blocks) * kBpb;
    tier_ = std::make_unique<DeviceKvTier>(*pool_, cfg);
  }
  void TearDown() override {
    if (tier_) {
      EXPECT_TRUE(consistent()) << "at the end of the test";
    }
    tier_.reset();  // before the pool it points to
    pool_.reset();
  }

  // Both sides' invariants, plus the counters' own arithmetic.
  ::testing::AssertionResult consistent() const {
    Status t = tier_->check_invariants();
    if (!t.ok()) return ::testing::AssertionFailure() << "tier: " << t.to_string();
    Status p = pool_->check_invariants();
    if (!p.ok()) return ::testing::AssertionFailure() << "pool: " << p.to_string();
    const TierCounters c = tier_->counters();
    if (c.bytes_promoted - c.bytes_evicted != c.bytes_resident || c.bytes_resident > c.budget_bytes)
      return ::testing::AssertionFailure() << "bytes: promoted " << c.bytes_promoted << " evicted "
                                           << c.bytes_evicted << " resident " << c.bytes_resident;
    if (c.promotions - c.evictions != c.entries)
      return ::testing::AssertionFailure()
             << "entries: promotions " << c.promotions << " evictions " << c.evictions
             << " entries " << c.entries;
    return ::testing::AssertionSuccess();
  }

  // The one job queued for `id`, checked for shape; fails the test otherwise.
  LoadJob take_one(const std::string& id) {
    std::vector<LoadJob> jobs = tier_->take_load_jobs();
    EXPECT_EQ(jobs.size(), 1u);
    if (jobs.empty()) return {};
    EXPECT_EQ(jobs[0].cartridge_id, id);
    EXPECT_EQ(jobs[0].block_ids.size(), jobs[0].block_index.size());
    return jobs[0];
  }
  // Takes the one job for `id` and reports it done.
  void finish(const std::string& id, const Status& s = Status()) {
    (void)take_one(id);
    EXPECT_TRUE(consistent()) << "loading " << id;
    tier_->load_done(id, s);
    EXPECT_TRUE(consistent()) << "loaded " << id;
  }
  // Every queued job done (ok).
  void finish_all() {
    for (const LoadJob& j : tier_->take_load_jobs()) {
      tier_->load_done(j.cartridge_id, Status());
      EXPECT_TRUE(consistent()) << "loaded " << j.cartridge_id;
    }
  }
  // Acquire that hits, or loads and finishes: the cartridge ends ready and held.
  void acquire_ready(const DeviceCartridge& c) {
    auto r = tier_->acquire(c);
    ASSERT_TRUE(r.ok()) << c.cartridge_id << ": " << r.status().to_string();
    EXPECT_TRUE(consistent()) << "acquired " << c.cartridge_id;
    if (*r == State::kLoading) finish(c.cartridge_id);
    auto s = tier_->state(c.cartridge_id);
    ASSERT_TRUE(s.ok()) << s.status().to_string();
    ASSERT_EQ(*s, State::kReady);
  }
  // Acquire + load + release: the cartridge ends idle and cached.
  void load_idle(const DeviceCartridge& c) {
    acquire_ready(c);
    ASSERT_TRUE(tier_->release(c.cartridge_id).ok());
    EXPECT_TRUE(consistent()) << "released " << c.cartridge_id;
  }
  // Blocks of `c` found cached in the pool, by block index (-1: not cached).
  std::vector<int32_t> cached_blocks(const DeviceCartridge& c) const {
    std::vector<int32_t> out;
    for (int32_t i = 0; i < blocks_for(c.num_tokens); ++i) {
      auto b = pool_->lookup(DeviceKvTier::block_key(c, kB, i));
      out.push_back(b ? *b : -1);
    }
    return out;
  }
  bool everything_free() const {
    return pool_->num_free_blocks() == pool_->num_usable_blocks() && pool_->usage() == 0.0;
  }

  std::unique_ptr<BlockPool> pool_;
  std::unique_ptr<DeviceKvTier> tier_;
};

// ---- a first acquire, a load, a release, a hit ----

TEST_F(DeviceTierTest, FirstAcquireQueuesOneJobForEveryBlock) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);  // 3 blocks
  EXPECT_FALSE(tier_->is_resident("A"));
  auto r = tier_->acquire(a);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(*r, State::kLoading);
  EXPECT_TRUE(tier_->is_loading("A"));
  EXPECT_FALSE(tier_->is_resident("A"));
  EXPECT_EQ(tier_->ref_count("A"), 1);
  EXPECT_TRUE(tier_->blocks("A").empty());  // not ready yet
  auto st = tier_->state("A");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, State::kLoading);
  EXPECT_TRUE(consistent());

  std::vector<LoadJob> jobs = tier_->take_load_jobs();
  ASSERT_EQ(jobs.size(), 1u);
  const LoadJob& j = jobs[0];
  EXPECT_EQ(j.cartridge_id, "A");
  EXPECT_EQ(j.num_tokens, 12);
  EXPECT_THAT(j.block_index, ElementsAre(0, 1, 2));
  ASSERT_EQ(j.block_ids.size(), 3u);
  EXPECT_EQ(std::set<int32_t>(j.block_ids.begin(), j.block_ids.end()).size(), 3u);
  for (int32_t b : j.block_ids) {
    EXPECT_NE(b, BlockPool::kNullBlock);
    EXPECT_EQ(pool_->ref_count(b), 1) << b;            // the tier's reference
    EXPECT_FALSE(pool_->hash_of(b).has_value()) << b;  // not cached while written
  }
  EXPECT_TRUE(tier_->take_load_jobs().empty());  // taken once
  const TierCounters c = tier_->counters();
  EXPECT_EQ(c.misses, 1u);
  EXPECT_EQ(c.hits, 0u);
  EXPECT_EQ(c.promotions, 0u);  // not until the load is done
  EXPECT_EQ(c.entries, 0u);
  EXPECT_EQ(c.bytes_resident, 3 * kBpb);  // reserved for the load
  EXPECT_EQ(c.referenced, 1u);
  EXPECT_EQ(pool_->num_free_blocks(), 13);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, SecondAcquireWhileLoadingJoinsTheLoad) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  auto second = tier_->acquire(a);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*second, State::kLoading);
  EXPECT_EQ(tier_->ref_count("A"), 2);
  std::vector<LoadJob> jobs = tier_->take_load_jobs();
  ASSERT_EQ(jobs.size(), 1u);  // one load for both
  for (int32_t b : jobs[0].block_ids)
    EXPECT_EQ(pool_->ref_count(b), 1);  // one reference per block, not per user
  EXPECT_EQ(tier_->counters().misses, 1u);
  EXPECT_EQ(tier_->counters().hits, 0u);
  // A third one after the jobs were taken still joins.
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  EXPECT_TRUE(tier_->take_load_jobs().empty());
  EXPECT_EQ(pool_->num_free_blocks(), 13);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, LoadDoneMakesItReady) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  const LoadJob j = take_one("A");
  tier_->load_done("A", Status());
  auto st = tier_->state("A");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(*st, State::kReady);
  EXPECT_FALSE(tier_->is_loading("A"));
  EXPECT_TRUE(tier_->is_resident("A"));
  const std::vector<int32_t> blocks = tier_->blocks("A");
  ASSERT_EQ(blocks.size(), 3u);
  EXPECT_EQ(std::set<int32_t>(blocks.begin(), blocks.end()).size(), 3u);
  for (size_t k = 0; k < j.block_ids.size(); ++k) {
    EXPECT_EQ(blocks[static_cast<size_t>(j.block_index[k])], j.block_ids[k]);  // in block order
  }
  for (int32_t i = 0; i < 3; ++i) {
    const int32_t b = blocks[static_cast<size_t>(i)];
    EXPECT_EQ(pool_->ref_count(b), 1) << i;  // the tier's one reference while held
    ASSERT_TRUE(pool_->hash_of(b).has_value()) << i;
    EXPECT_EQ(*pool_->hash_of(b), DeviceKvTier::block_key(a, kB, i)) << i;
  }
  const TierCounters c = tier_->counters();
  EXPECT_EQ(c.promotions, 1u);
  EXPECT_EQ(c.entries, 1u);
  EXPECT_EQ(c.referenced, 1u);
  EXPECT_EQ(c.bytes_promoted, 3 * kBpb);
  EXPECT_EQ(c.bytes_resident, 3 * kBpb);
  EXPECT_EQ(tier_->ref_count("A"), 2);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, ReleaseOfTheLastUserLeavesTheBlocksCached) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  finish("A");
  const std::vector<int32_t> blocks = tier_->blocks("A");
  ASSERT_TRUE(tier_->release("A").ok());
  for (int32_t b : blocks)
    EXPECT_EQ(pool_->ref_count(b), 1);  // one user left
  ASSERT_TRUE(tier_->release("A").ok());
  EXPECT_EQ(tier_->ref_count("A"), 0);
  for (int32_t b : blocks)
    EXPECT_EQ(pool_->ref_count(b), 0);
  EXPECT_EQ(cached_blocks(a), blocks);  // found under cartridge_block_hash
  EXPECT_EQ(pool_->num_evictable_blocks(), 3);
  EXPECT_EQ(pool_->num_free_blocks(), 16);  // cached blocks can be reclaimed
  EXPECT_TRUE(tier_->is_resident("A"));
  EXPECT_TRUE(tier_->blocks("A").empty());  // not held
  auto st = tier_->state("A");
  EXPECT_EQ(st.status().code(), ErrorCode::kFailedPrecondition);
  const TierCounters c = tier_->counters();
  EXPECT_EQ(c.entries, 1u);
  EXPECT_EQ(c.referenced, 0u);
  EXPECT_EQ(c.bytes_resident, 3 * kBpb);  // idle cartridges count against the budget
  EXPECT_EQ(c.evictions, 0u);
  EXPECT_EQ(tier_->release("A").code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, LaterAcquireIsAHitOnTheSameBlocks) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  load_idle(a);
  const std::vector<int32_t> cached = cached_blocks(a);
  auto r = tier_->acquire(a);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, State::kReady);
  EXPECT_TRUE(tier_->take_load_jobs().empty());
  EXPECT_EQ(tier_->blocks("A"), cached);
  for (int32_t b : cached)
    EXPECT_EQ(pool_->ref_count(b), 1);
  EXPECT_EQ(pool_->num_evictable_blocks(), 0);
  const TierCounters c = tier_->counters();
  EXPECT_EQ(c.hits, 1u);
  EXPECT_EQ(c.misses, 1u);
  EXPECT_EQ(c.promotions, 1u);
  EXPECT_EQ(c.bytes_promoted, 3 * kBpb);
  // A hit while another user holds it.
  ASSERT_EQ(*tier_->acquire(a), State::kReady);
  EXPECT_EQ(tier_->counters().hits, 2u);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, UnknownIds) {
  make(8, 8);
  EXPECT_EQ(tier_->state("nope").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(tier_->release("nope").code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(tier_->unpin("nope").code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(tier_->evict("nope").code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(tier_->remove("nope").ok());
  EXPECT_TRUE(tier_->blocks("nope").empty());
  EXPECT_FALSE(tier_->is_resident("nope"));
  EXPECT_FALSE(tier_->is_loading("nope"));
  EXPECT_FALSE(tier_->is_pinned("nope"));
  EXPECT_EQ(tier_->ref_count("nope"), 0);
  tier_->load_done("nope", Status());  // logged and ignored
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, LoadDoneWithoutALoadIsIgnored) {
  make(8, 8);
  load_idle(cart("A", 8));
  tier_->load_done("A", load_error());  // nothing running: ignored
  EXPECT_TRUE(tier_->is_resident("A"));
  EXPECT_TRUE(tier_->acquire(cart("A", 8)).ok());
  EXPECT_TRUE(consistent());
}

// ---- partial blocks ----

TEST_F(DeviceTierTest, PartialLastBlock) {
  make(16, 16);
  for (const auto& [id, tokens] : std::vector<std::pair<std::string, int32_t>>{
           {"one", 1}, {"exact", 8}, {"over", 9}, {"tail", 15}}) {
    SCOPED_TRACE(id);
    ASSERT_EQ(*tier_->acquire(cart(id, tokens)), State::kLoading);
    const LoadJob j = take_one(id);
    EXPECT_EQ(j.num_tokens, tokens);
    EXPECT_EQ(static_cast<int32_t>(j.block_ids.size()), blocks_for(tokens));
    EXPECT_EQ(j.block_index.back(), blocks_for(tokens) - 1);
    tier_->load_done(id, Status());
    EXPECT_EQ(static_cast<int32_t>(tier_->blocks(id).size()), blocks_for(tokens));
    EXPECT_TRUE(consistent());
  }
  // 1 + 2 + 3 + 4 blocks.
  EXPECT_EQ(tier_->counters().bytes_resident, 10 * kBpb);
  EXPECT_EQ(pool_->num_free_blocks(), 6);
}

// ---- the pool's LRU reclaims idle cartridges ----

TEST_F(DeviceTierTest, PoolReclaimingIdleBlocksEvictsAndReloadsOnlyTheMissing) {
  make(7, 7);
  const DeviceCartridge a = cart("A", 12);  // 3 blocks
  load_idle(a);
  const std::vector<int32_t> before = cached_blocks(a);
  // The 4 free blocks go first: nothing of A is touched.
  auto req = pool_->allocate(4);
  ASSERT_TRUE(req.has_value());
  EXPECT_TRUE(tier_->is_resident("A"));
  EXPECT_EQ(tier_->counters().evictions, 0u);
  // One more comes off the LRU: A's tail block (released first).
  auto more = pool_->allocate(1);
  ASSERT_TRUE(more.has_value());
  EXPECT_EQ((*more)[0], before[2]);
  EXPECT_FALSE(tier_->is_resident("A"));
  TierCounters c = tier_->counters();
  EXPECT_EQ(c.evictions, 1u);
  EXPECT_EQ(c.bytes_evicted, kBpb);
  EXPECT_EQ(c.bytes_resident, 2 * kBpb);
  EXPECT_EQ(c.entries, 0u);
  EXPECT_TRUE(consistent());
  // Make room for one block and ask again: a miss that loads block 2 only.
  pool_->release((*req)[0]);
  auto r = tier_->acquire(a);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(*r, State::kLoading);
  const LoadJob j = take_one("A");
  EXPECT_THAT(j.block_index, ElementsAre(2));
  ASSERT_EQ(j.block_ids.size(), 1u);
  EXPECT_EQ(j.num_tokens, 12);
  // The cached blocks are held (off the LRU) during the load.
  EXPECT_EQ(pool_->ref_count(before[0]), 1);
  EXPECT_EQ(pool_->ref_count(before[1]), 1);
  EXPECT_TRUE(consistent());
  tier_->load_done("A", Status());
  const std::vector<int32_t> after = tier_->blocks("A");
  ASSERT_EQ(after.size(), 3u);
  EXPECT_EQ(after[0], before[0]);
  EXPECT_EQ(after[1], before[1]);
  EXPECT_EQ(after[2], j.block_ids[0]);
  c = tier_->counters();
  EXPECT_EQ(c.misses, 2u);
  EXPECT_EQ(c.promotions, 2u);
  EXPECT_EQ(c.evictions, 1u);
  EXPECT_EQ(c.entries, 1u);
  EXPECT_EQ(c.bytes_promoted, 4 * kBpb);
  EXPECT_EQ(c.bytes_resident, 3 * kBpb);
  EXPECT_TRUE(consistent());
  for (size_t k = 1; k < req->size(); ++k)
    pool_->release((*req)[k]);
  pool_->release((*more)[0]);
  ASSERT_TRUE(tier_->release("A").ok());
  EXPECT_TRUE(everything_free());
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, FullyReclaimedCartridgeCountsOneEvictionAndReloadsEverything) {
  make(6, 6);
  const DeviceCartridge a = cart("A", 12);
  load_idle(a);
  auto req = pool_->allocate(6);  // 3 free + A's 3 cached
  ASSERT_TRUE(req.has_value());
  EXPECT_FALSE(tier_->is_resident("A"));
  EXPECT_EQ(cached_blocks(a), std::vector<int32_t>(3, -1));
  TierCounters c = tier_->counters();
  EXPECT_EQ(c.evictions, 1u);  // one cartridge left, block by block
  EXPECT_EQ(c.bytes_evicted, 3 * kBpb);
  EXPECT_EQ(c.bytes_resident, 0u);
  EXPECT_TRUE(consistent());
  for (int32_t b : *req)
    pool_->release(b);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  EXPECT_THAT(take_one("A").block_index, ElementsAre(0, 1, 2));
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, PoolWithoutFreeBlocksIsCannotFitNow) {
  make(5, 16);
  auto req = pool_->allocate(3);  // 2 left, A needs 3
  ASSERT_TRUE(req.has_value());
  auto r = tier_->acquire(cart("A", 12));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("free KV blocks"));
  EXPECT_EQ(tier_->ref_count("A"), 0);
  EXPECT_FALSE(tier_->is_loading("A"));
  EXPECT_TRUE(tier_->take_load_jobs().empty());
  EXPECT_EQ(pool_->num_free_blocks(), 2);  // nothing held
  EXPECT_EQ(tier_->counters().bytes_resident, 0u);
  EXPECT_TRUE(consistent());
  pool_->release((*req)[0]);
  ASSERT_EQ(*tier_->acquire(cart("A", 12)), State::kLoading);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, PoolWithoutFreeBlocksKeepsTheCachedPart) {
  make(5, 16);
  const DeviceCartridge a = cart("A", 12);
  load_idle(a);
  const std::vector<int32_t> before = cached_blocks(a);
  auto req = pool_->allocate(3);  // 2 free + A's tail block
  ASSERT_TRUE(req.has_value());
  ASSERT_EQ(cached_blocks(a)[2], -1);
  auto r = tier_->acquire(a);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_EQ(tier_->ref_count("A"), 0);
  EXPECT_TRUE(tier_->take_load_jobs().empty());
  // Blocks 0 and 1 were taken off the LRU and given back: still cached, idle.
  EXPECT_EQ(cached_blocks(a)[0], before[0]);
  EXPECT_EQ(cached_blocks(a)[1], before[1]);
  EXPECT_EQ(pool_->ref_count(before[0]), 0);
  EXPECT_EQ(pool_->ref_count(before[1]), 0);
  EXPECT_EQ(pool_->num_evictable_blocks(), 2);
  EXPECT_TRUE(consistent());
}

// ---- the budget ----

TEST_F(DeviceTierTest, BudgetDropsIdleCartridgesLeastRecentlyUsedFirst) {
  make(32, 6);
  const DeviceCartridge a = cart("A", 12), b = cart("B", 12), c = cart("C", 12);
  load_idle(a);
  load_idle(b);
  ASSERT_EQ(*tier_->acquire(c), State::kLoading);
  EXPECT_FALSE(tier_->is_resident("A"));  // the oldest went
  EXPECT_EQ(cached_blocks(a), std::vector<int32_t>(3, -1));
  EXPECT_TRUE(tier_->is_resident("B"));
  const TierCounters k = tier_->counters();
  EXPECT_EQ(k.evictions, 1u);
  EXPECT_EQ(k.bytes_resident, 6 * kBpb);
  EXPECT_TRUE(consistent());
  finish("C");
  ASSERT_TRUE(tier_->release("C").ok());
  // Use B again: now C is the oldest.
  ASSERT_EQ(*tier_->acquire(b), State::kReady);
  ASSERT_TRUE(tier_->release("B").ok());
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  EXPECT_FALSE(tier_->is_resident("C"));
  EXPECT_TRUE(tier_->is_resident("B"));
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, BudgetDropsOnlyWhatIsNeeded) {
  make(32, 7);
  const DeviceCartridge a = cart("A", 8), b = cart("B", 8), c = cart("C", 8),
                        d = cart("D", 20);  // 2 + 2 + 2 blocks, then 5
  load_idle(a);
  load_idle(b);
  load_idle(c);
  ASSERT_EQ(*tier_->acquire(d), State::kLoading);  // 4 blocks over: drops A and B, not C
  EXPECT_FALSE(tier_->is_resident("A"));
  EXPECT_FALSE(tier_->is_resident("B"));
  EXPECT_TRUE(tier_->is_resident("C"));
  EXPECT_EQ(tier_->counters().evictions, 2u);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, ReferencedCartridgesAreNeverDropped) {
  make(32, 6);
  const DeviceCartridge a = cart("A", 12), b = cart("B", 12), c = cart("C", 12);
  acquire_ready(a);
  ASSERT_EQ(*tier_->acquire(b), State::kLoading);  // held while loading
  const int32_t free_before = pool_->num_free_blocks();
  auto r = tier_->acquire(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("cannot fit in the device tier now"));
  EXPECT_TRUE(tier_->is_resident("A"));
  EXPECT_TRUE(tier_->is_loading("B"));
  EXPECT_EQ(tier_->ref_count("C"), 0);
  EXPECT_EQ(pool_->num_free_blocks(), free_before);  // nothing held for C
  EXPECT_EQ(tier_->counters().evictions, 0u);
  EXPECT_EQ(tier_->prefetch(c).code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(consistent());
  finish("B");
  ASSERT_TRUE(tier_->release("B").ok());
  ASSERT_EQ(*tier_->acquire(c), State::kLoading);  // now B is idle and goes
  EXPECT_FALSE(tier_->is_resident("B"));
  EXPECT_TRUE(tier_->is_resident("A"));
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, PinnedCartridgesAreNeverDropped) {
  make(32, 6);
  const DeviceCartridge a = cart("A", 12), b = cart("B", 12), c = cart("C", 12);
  ASSERT_TRUE(tier_->pin(a).ok());
  ASSERT_TRUE(tier_->pin(b).ok());
  finish_all();
  auto r = tier_->acquire(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kFailedPrecondition);  // only an unpin helps
  EXPECT_THAT(r.status().message(), HasSubstr("2 pinned"));
  EXPECT_EQ(tier_->prefetch(c).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(tier_->pin(c).code(), ErrorCode::kFailedPrecondition);
  EXPECT_FALSE(tier_->is_pinned("C"));
  EXPECT_TRUE(tier_->is_resident("A"));
  EXPECT_TRUE(tier_->is_resident("B"));
  EXPECT_EQ(tier_->ref_count("C"), 0);
  EXPECT_TRUE(consistent());
  ASSERT_TRUE(tier_->unpin("B").ok());
  EXPECT_TRUE(tier_->is_resident("B"));  // unpinning does not drop
  ASSERT_EQ(*tier_->acquire(c), State::kLoading);
  EXPECT_FALSE(tier_->is_resident("B"));
  EXPECT_TRUE(tier_->is_resident("A"));
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, PinPlusReferenceIsCannotFitNow) {
  make(32, 6);
  ASSERT_TRUE(tier_->pin(cart("A", 12)).ok());
  finish_all();
  acquire_ready(cart("B", 12));
  EXPECT_EQ(tier_->acquire(cart("C", 12)).status().code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, BiggerThanTheBudgetWillNeverFit) {
  make(32, 6);
  auto r = tier_->acquire(cart("A", 25));  // 7 blocks
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kOutOfRange);
  EXPECT_THAT(r.status().message(), HasSubstr("will never fit in the device tier"));
  EXPECT_THAT(r.status().message(), HasSubstr("700 bytes"));
  EXPECT_EQ(tier_->pin(cart("A", 25)).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(tier_->prefetch(cart("A", 25)).code(), ErrorCode::kOutOfRange);
  EXPECT_FALSE(tier_->is_pinned("A"));
  EXPECT_EQ(tier_->ref_count("A"), 0);
  EXPECT_TRUE(tier_->take_load_jobs().empty());
  EXPECT_TRUE(everything_free());
  // Exactly the budget fits.
  ASSERT_EQ(*tier_->acquire(cart("B", 24)), State::kLoading);
  EXPECT_TRUE(consistent());
}

// ---- load failures ----

TEST_F(DeviceTierTest, LoadFailureReachesEveryHolderAndFreesTheBlocks) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  const LoadJob j = take_one("A");
  tier_->load_done("A", load_error());
  for (int holder = 0; holder < 2; ++holder) {
    auto st = tier_->state("A");
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.status().code(), ErrorCode::kIo);
    EXPECT_THAT(st.status().message(), HasSubstr("simulated copy failure"));
  }
  EXPECT_FALSE(tier_->is_loading("A"));
  EXPECT_FALSE(tier_->is_resident("A"));
  EXPECT_TRUE(tier_->blocks("A").empty());
  for (int32_t b : j.block_ids) {
    EXPECT_EQ(pool_->ref_count(b), 0);
    EXPECT_FALSE(pool_->hash_of(b).has_value());
  }
  EXPECT_TRUE(everything_free());
  EXPECT_EQ(pool_->num_cached_blocks(), 0);
  TierCounters c = tier_->counters();
  EXPECT_EQ(c.bytes_resident, 0u);
  EXPECT_EQ(c.promotions, 0u);
  EXPECT_EQ(c.entries, 0u);
  EXPECT_TRUE(consistent());
  // While the holders are there, a new user gets the error too (and no reference).
  auto again = tier_->acquire(a);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), ErrorCode::kIo);
  EXPECT_EQ(tier_->ref_count("A"), 2);
  EXPECT_TRUE(tier_->take_load_jobs().empty());
  ASSERT_TRUE(tier_->release("A").ok());
  EXPECT_EQ(tier_->state("A").status().code(), ErrorCode::kIo);  // one holder left
  EXPECT_EQ(tier_->acquire(a).status().code(), ErrorCode::kIo);
  ASSERT_TRUE(tier_->release("A").ok());
  // Everyone let go: the next acquire tries again.
  EXPECT_EQ(tier_->state("A").status().code(), ErrorCode::kFailedPrecondition);
  auto retry = tier_->acquire(a);
  ASSERT_TRUE(retry.ok()) << retry.status().to_string();
  EXPECT_EQ(*retry, State::kLoading);
  EXPECT_THAT(take_one("A").block_index, ElementsAre(0, 1, 2));
  EXPECT_TRUE(consistent());
  tier_->load_done("A", Status());
  EXPECT_TRUE(tier_->is_resident("A"));
  c = tier_->counters();
  EXPECT_EQ(c.misses, 2u);
  EXPECT_EQ(c.promotions, 1u);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, FailedReloadKeepsTheCachedBlocks) {
  make(7, 7);
  const DeviceCartridge a = cart("A", 12);
  load_idle(a);
  const std::vector<int32_t> before = cached_blocks(a);
  auto req = pool_->allocate(5);  // 4 free + A's tail
  ASSERT_TRUE(req.has_value());
  pool_->release((*req)[0]);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  const LoadJob j = take_one("A");
  ASSERT_THAT(j.block_index, ElementsAre(2));
  tier_->load_done("A", load_error());
  EXPECT_EQ(tier_->state("A").status().code(), ErrorCode::kIo);
  EXPECT_FALSE(pool_->hash_of(j.block_ids[0]).has_value());
  EXPECT_EQ(pool_->ref_count(j.block_ids[0]), 0);  // the block being written is free again
  EXPECT_EQ(cached_blocks(a)[0], before[0]);       // the cached ones stay cached
  EXPECT_EQ(cached_blocks(a)[1], before[1]);
  EXPECT_EQ(pool_->ref_count(before[0]), 0);
  EXPECT_EQ(tier_->counters().bytes_resident, 2 * kBpb);
  EXPECT_TRUE(consistent());
  ASSERT_TRUE(tier_->release("A").ok());
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  EXPECT_THAT(take_one("A").block_index, ElementsAre(2));
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, FailedLoadOfAPinnedCartridgeIsReportedUntilTheUnpin) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 8);
  ASSERT_TRUE(tier_->pin(a).ok());
  finish("A", load_error());
  EXPECT_TRUE(tier_->is_pinned("A"));  // the pin is a holder: it sees the error
  EXPECT_EQ(tier_->state("A").status().code(), ErrorCode::kIo);
  EXPECT_FALSE(tier_->is_resident("A"));
  EXPECT_TRUE(everything_free());
  EXPECT_EQ(tier_->acquire(a).status().code(), ErrorCode::kIo);
  EXPECT_EQ(tier_->ref_count("A"), 0);
  EXPECT_TRUE(consistent());
  ASSERT_TRUE(tier_->unpin("A").ok());  // the last holder let go
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  EXPECT_EQ(take_one("A").block_ids.size(), 2u);
  EXPECT_TRUE(consistent());
}

// ---- prefetch ----

TEST_F(DeviceTierTest, PrefetchHoldsUntilLoadedThenLeavesItIdle) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_TRUE(tier_->prefetch(a).ok());
  EXPECT_TRUE(tier_->is_loading("A"));
  EXPECT_EQ(tier_->ref_count("A"), 0);
  const LoadJob j = take_one("A");
  EXPECT_THAT(j.block_index, ElementsAre(0, 1, 2));
  for (int32_t b : j.block_ids)
    EXPECT_EQ(pool_->ref_count(b), 1);  // held during the load
  EXPECT_EQ(tier_->evict("A").code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(tier_->remove("A").code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(consistent());
  tier_->load_done("A", Status());
  EXPECT_TRUE(tier_->is_resident("A"));
  EXPECT_FALSE(tier_->is_loading("A"));
  for (int32_t b : j.block_ids)
    EXPECT_EQ(pool_->ref_count(b), 0);  // idle, cached
  EXPECT_EQ(cached_blocks(a), j.block_ids);
  TierCounters c = tier_->counters();
  EXPECT_EQ(c.hits + c.misses, 0u);  // prefetches are no requests
  EXPECT_EQ(c.promotions, 1u);
  EXPECT_TRUE(consistent());
  // The next acquire is a hit.
  ASSERT_EQ(*tier_->acquire(a), State::kReady);
  EXPECT_EQ(tier_->counters().hits, 1u);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, PrefetchOfAResidentCartridgeRefreshesItWithoutALoad) {
  make(32, 6);
  const DeviceCartridge a = cart("A", 12), b = cart("B", 12), c = cart("C", 12);
  load_idle(a);
  load_idle(b);
  ASSERT_TRUE(tier_->prefetch(a).ok());
  EXPECT_TRUE(tier_->take_load_jobs().empty());
  EXPECT_FALSE(tier_->is_loading("A"));
  for (int32_t blk : cached_blocks(a))
    EXPECT_EQ(pool_->ref_count(blk), 0);  // still idle
  ASSERT_EQ(*tier_->acquire(c), State::kLoading);
  EXPECT_TRUE(tier_->is_resident("A"));  // refreshed: B was older
  EXPECT_FALSE(tier_->is_resident("B"));
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, PrefetchJoinsAnAcquiresLoad) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  ASSERT_TRUE(tier_->prefetch(a).ok());
  const LoadJob j = take_one("A");
  tier_->load_done("A", Status());
  EXPECT_EQ(tier_->ref_count("A"), 1);
  for (int32_t b : j.block_ids)
    EXPECT_EQ(pool_->ref_count(b), 1);  // the user still holds it
  ASSERT_TRUE(tier_->release("A").ok());
  for (int32_t b : j.block_ids)
    EXPECT_EQ(pool_->ref_count(b), 0);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, FailedPrefetchLeavesNothingHeld) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_TRUE(tier_->prefetch(a).ok());
  finish("A", load_error());
  EXPECT_FALSE(tier_->is_resident("A"));
  EXPECT_TRUE(everything_free());
  EXPECT_EQ(tier_->state("A").status().code(), ErrorCode::kFailedPrecondition);  // nobody holds it
  EXPECT_TRUE(consistent());
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);  // tries again at once
  EXPECT_EQ(take_one("A").block_ids.size(), 3u);
  EXPECT_TRUE(consistent());
}

// ---- pin / unpin ----

TEST_F(DeviceTierTest, PinHoldsTheBlocksUntilUnpinned) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_TRUE(tier_->pin(a).ok());
  EXPECT_TRUE(tier_->is_pinned("A"));
  EXPECT_TRUE(tier_->is_loading("A"));
  EXPECT_EQ(tier_->ref_count("A"), 0);
  ASSERT_TRUE(tier_->pin(a).ok());  // idempotent: no second load
  EXPECT_EQ(take_one("A").block_ids.size(), 3u);
  tier_->load_done("A", Status());
  EXPECT_TRUE(tier_->is_resident("A"));
  const std::vector<int32_t> blocks = tier_->blocks("A");  // held by the pin
  ASSERT_EQ(blocks.size(), 3u);
  for (int32_t b : blocks)
    EXPECT_EQ(pool_->ref_count(b), 1);
  TierCounters c = tier_->counters();
  EXPECT_EQ(c.pinned, 1u);
  EXPECT_EQ(c.hits + c.misses, 0u);
  // A user comes and goes: the pin keeps holding.
  ASSERT_EQ(*tier_->acquire(a), State::kReady);
  ASSERT_TRUE(tier_->release("A").ok());
  for (int32_t b : blocks)
    EXPECT_EQ(pool_->ref_count(b), 1);
  EXPECT_EQ(tier_->evict("A").code(), ErrorCode::kFailedPrecondition);
  // Pinned blocks are not reclaimable by the pool.
  EXPECT_EQ(pool_->num_free_blocks(), 13);
  EXPECT_TRUE(consistent());
  ASSERT_TRUE(tier_->unpin("A").ok());
  EXPECT_FALSE(tier_->is_pinned("A"));
  EXPECT_TRUE(tier_->is_resident("A"));
  for (int32_t b : blocks)
    EXPECT_EQ(pool_->ref_count(b), 0);  // idle, cached
  Status s = tier_->unpin("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not pinned"));
  EXPECT_EQ(tier_->counters().pinned, 0u);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, UnpinWhileLoadingKeepsTheLoad) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_TRUE(tier_->pin(a).ok());
  ASSERT_TRUE(tier_->unpin("A").ok());
  EXPECT_TRUE(tier_->is_loading("A"));
  const LoadJob j = take_one("A");
  for (int32_t b : j.block_ids)
    EXPECT_EQ(pool_->ref_count(b), 1);  // the load still writes them
  tier_->load_done("A", Status());
  EXPECT_TRUE(tier_->is_resident("A"));
  for (int32_t b : j.block_ids)
    EXPECT_EQ(pool_->ref_count(b), 0);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, PinOfAnIdleCachedCartridgeIsNoLoad) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  load_idle(a);
  ASSERT_TRUE(tier_->pin(a).ok());
  EXPECT_TRUE(tier_->take_load_jobs().empty());
  EXPECT_EQ(tier_->blocks("A"), cached_blocks(a));
  EXPECT_EQ(tier_->counters().promotions, 1u);
  EXPECT_TRUE(consistent());
}

// ---- evict / remove ----

TEST_F(DeviceTierTest, EvictRules) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  Status s = tier_->evict("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not resident"));
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  EXPECT_EQ(tier_->evict("A").code(), ErrorCode::kFailedPrecondition);  // loading
  finish("A");
  s = tier_->evict("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);  // in use
  EXPECT_THAT(s.message(), HasSubstr("in use"));
  ASSERT_TRUE(tier_->release("A").ok());
  ASSERT_TRUE(tier_->pin(a).ok());
  EXPECT_EQ(tier_->evict("A").code(), ErrorCode::kFailedPrecondition);  // pinned
  ASSERT_TRUE(tier_->unpin("A").ok());
  EXPECT_TRUE(consistent());
  ASSERT_TRUE(tier_->evict("A").ok());
  EXPECT_FALSE(tier_->is_resident("A"));
  EXPECT_EQ(cached_blocks(a), std::vector<int32_t>(3, -1));
  EXPECT_TRUE(everything_free());
  EXPECT_EQ(pool_->num_cached_blocks(), 0);
  const TierCounters c = tier_->counters();
  EXPECT_EQ(c.evictions, 1u);
  EXPECT_EQ(c.bytes_evicted, 3 * kBpb);
  EXPECT_EQ(c.bytes_resident, 0u);
  EXPECT_EQ(tier_->evict("A").code(), ErrorCode::kFailedPrecondition);  // gone already
  EXPECT_TRUE(consistent());
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);  // comes back by a load
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, EvictOfAPartlyReclaimedCartridge) {
  make(7, 7);
  const DeviceCartridge a = cart("A", 12);
  load_idle(a);
  auto req = pool_->allocate(5);  // takes A's tail
  ASSERT_TRUE(req.has_value());
  ASSERT_TRUE(tier_->evict("A").ok());  // the rest goes
  EXPECT_EQ(cached_blocks(a), std::vector<int32_t>(3, -1));
  EXPECT_EQ(tier_->counters().evictions, 1u);  // still one cartridge
  EXPECT_EQ(tier_->counters().bytes_resident, 0u);
  EXPECT_EQ(tier_->evict("A").code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(consistent());
}

TEST_F(DeviceTierTest, RemoveRules) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 12);
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);
  Status s = tier_->remove("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);  // loading and in use
  finish("A");
  EXPECT_EQ(tier_->remove("A").code(), ErrorCode::kFailedPrecondition);  // in use
  ASSERT_TRUE(tier_->release("A").ok());
  ASSERT_TRUE(tier_->pin(a).ok());
  EXPECT_EQ(tier_->remove("A").code(), ErrorCode::kFailedPrecondition);  // pinned
  EXPECT_TRUE(tier_->is_resident("A"));
  ASSERT_TRUE(tier_->unpin("A").ok());
  ASSERT_TRUE(tier_->remove("A").ok());
  EXPECT_FALSE(tier_->is_resident("A"));
  EXPECT_EQ(tier_->state("A").status().code(), ErrorCode::kNotFound);  // forgotten
  EXPECT_EQ(cached_blocks(a), std::vector<int32_t>(3, -1));
  EXPECT_TRUE(everything_free());
  const TierCounters c = tier_->counters();
  EXPECT_EQ(c.evictions, 1u);
  EXPECT_EQ(c.bytes_resident, 0u);
  EXPECT_TRUE(consistent());
  EXPECT_TRUE(tier_->remove("A").ok());            // unknown: nothing to do
  ASSERT_EQ(*tier_->acquire(a), State::kLoading);  // known again, loads again
  EXPECT_THAT(take_one("A").block_index, ElementsAre(0, 1, 2));
  EXPECT_TRUE(consistent());
}

// ---- new content under the same id ----

TEST_F(DeviceTierTest, ReRegisteredContentGetsFreshBlocks) {
  make(16, 16);
  const DeviceCartridge v1 = cart("A", 12, "sha-v1"), v2 = cart("A", 12, "sha-v2");
  load_idle(v1);
  const std::vector<int32_t> old_blocks = cached_blocks(v1);
  auto r = tier_->acquire(v2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, State::kLoading);  // not a hit on v1's blocks
  const LoadJob j = take_one("A");
  EXPECT_THAT(j.block_index, ElementsAre(0, 1, 2));
  EXPECT_EQ(cached_blocks(v1), std::vector<int32_t>(3, -1));  // v1's KV is gone
  EXPECT_EQ(tier_->counters().evictions, 1u);
  tier_->load_done("A", Status());
  const std::vector<int32_t> blocks = tier_->blocks("A");
  ASSERT_EQ(blocks.size(), 3u);
  for (int32_t i = 0; i < 3; ++i) {
    EXPECT_EQ(*pool_->hash_of(blocks[static_cast<size_t>(i)]), DeviceKvTier::block_key(v2, kB, i));
  }
  EXPECT_EQ(tier_->counters().bytes_resident, 3 * kBpb);
  EXPECT_TRUE(consistent());
  ASSERT_TRUE(tier_->release("A").ok());
  // A different length under the same content hash is other KV as well.
  const DeviceCartridge v3 = cart("A", 16, "sha-v2");
  ASSERT_EQ(*tier_->acquire(v3), State::kLoading);
  EXPECT_THAT(take_one("A").block_index, ElementsAre(0, 1, 2, 3));
  EXPECT_TRUE(consistent());
}

// ---- the destructor ----

TEST_F(DeviceTierTest, DestructorDropsEveryPoolReference) {
  make(32, 32);
  load_idle(cart("D", 16));                        // idle, cached
  acquire_ready(cart("A", 12));                    // held, ready
  ASSERT_TRUE(tier_->acquire(cart("B", 8)).ok());  // held, loading
  ASSERT_TRUE(tier_->pin(cart("C", 4)).ok());      // pinned, loading
  EXPECT_GT(pool_->usage(), 0.0);
  tier_.reset();
  EXPECT_TRUE(everything_free());
  EXPECT_TRUE(pool_->check_invariants().ok());
  // The pool no longer calls into the dead tier when it reclaims cached blocks.
  auto all = pool_->allocate(pool_->num_usable_blocks());
  ASSERT_TRUE(all.has_value());
  EXPECT_EQ(pool_->num_cached_blocks(), 0);
  for (int32_t b : *all)
    pool_->release(b);
  EXPECT_TRUE(pool_->check_invariants().ok());
}

// ---- regressions (found by these tests, fixed in device_tier.cpp) ----

// BUG(device_tier): BlockPool::reset_prefix_cache() drops the hash of every
// block, in use or not, and calls the drop listener for each. on_dropped()
// then sets e.blocks[i] = -1 even for a cartridge the tier holds (it holds a
// pool reference on that block). Expected (header: "While a cartridge is held
// ... the tier holds one pool reference per block"; blocks() is "valid while
// held and ready"): blocks() keeps returning the 3 block ids, and releasing
// the cartridge gives the blocks back (nothing leaks). Actual: blocks()
// returns -1 ids while the cartridge is held and ready, and release() calls
// pool.release(-1) (logged, ignored) so the 3 blocks keep ref_count 1 forever.
TEST_F(DeviceTierTest, PrefixCacheResetWhileHeldKeepsTheBlocks) {
  make(16, 16);
  acquire_ready(cart("A", 12));
  const std::vector<int32_t> held = tier_->blocks("A");
  ASSERT_EQ(held.size(), 3u);
  pool_->reset_prefix_cache();
  EXPECT_EQ(tier_->blocks("A"), held) << "a held cartridge lost its block ids";
  for (int32_t b : held)
    EXPECT_EQ(pool_->ref_count(b), 1);
  ASSERT_TRUE(tier_->release("A").ok());
  EXPECT_TRUE(everything_free()) << "free " << pool_->num_free_blocks() << " of "
                                 << pool_->num_usable_blocks();
  EXPECT_TRUE(consistent());
}

// BUG(device_tier): two cartridge ids with the same content hash (the catalog
// uses the file's sha256, so the same file registered under two ids) share
// the keys cartridge_block_hash(content, B, i). by_hash_ maps each key to the
// last id registered, and load_done()'s register_hash() is a no-op for the
// second id ("another block already caches this content"). Expected: both
// ids stay usable and consistent; after both are released everything is
// reclaimable. Actual: the second id's blocks are never cached under their
// hash (check_invariants: "block ... is not cached under its hash"); when it
// is released its blocks go to the free list while the tier still lists them
// as resident (and counts them in bytes_resident), and the first id no longer
// hears about its own blocks being reclaimed (by_hash_ points at the other
// id), so it keeps stale block ids.
TEST_F(DeviceTierTest, TwoIdsWithTheSameContentStayConsistent) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 8, "same-file-sha"), b = cart("B", 8, "same-file-sha");
  load_idle(a);
  acquire_ready(b);
  EXPECT_TRUE(consistent());
  ASSERT_TRUE(tier_->release("B").ok());
  EXPECT_TRUE(consistent());
  // Reclaim everything cached: neither id may keep blocks it lost.
  auto all = pool_->allocate(pool_->num_free_blocks());
  ASSERT_TRUE(all.has_value());
  EXPECT_FALSE(tier_->is_resident("A"));
  EXPECT_FALSE(tier_->is_resident("B"));
  EXPECT_EQ(tier_->counters().bytes_resident, 0u);
  EXPECT_TRUE(consistent());
  for (int32_t blk : *all)
    pool_->release(blk);
  EXPECT_TRUE(everything_free());
}

TEST_F(DeviceTierTest, ShortOfPoolBlocksDropsNoIdleCartridge) {
  // 5 usable blocks, a budget of 3: A (2 blocks) idle, requests hold 3.
  make(5, 3);
  load_idle(cart("A", 8));
  auto own = pool_->allocate(3);
  ASSERT_TRUE(own.has_value());
  auto b = tier_->acquire(cart("B", 12));  // 3 blocks: only A's 2 could be had
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(tier_->is_resident("A"));  // nothing changed
  EXPECT_TRUE(consistent());
  for (int32_t blk : *own)
    pool_->release(blk);
}

TEST_F(DeviceTierTest, PinOfAPinnedCartridgeReportsItsFailedLoad) {
  make(16, 16);
  const DeviceCartridge a = cart("A", 8);
  ASSERT_TRUE(tier_->pin(a).ok());
  finish("A", Status(ErrorCode::kIo, "disk on fire"));
  EXPECT_EQ(tier_->pin(a).code(), ErrorCode::kIo);
  ASSERT_TRUE(tier_->unpin("A").ok());
  ASSERT_TRUE(tier_->pin(a).ok());  // a retry
  finish("A");
  EXPECT_TRUE(tier_->is_resident("A"));
  EXPECT_TRUE(consistent());
}

// ---- randomized ----

// A model of what the test holds; the tier must agree with it, and the tier
// and the pool must be consistent after every operation.
class DeviceTierRandom : public ::testing::TestWithParam<uint32_t> {};

TEST_P(DeviceTierRandom, InvariantsHoldAndNothingLeaks) {
  constexpr int32_t kUsable = 40, kBudget = 24;  // blocks
  auto made = BlockPool::create(kUsable + 1);
  ASSERT_TRUE(made.ok());
  BlockPool pool = std::move(made).value();
  DeviceTierConfig cfg;
  cfg.block_size = kB;
  cfg.bytes_per_block = kBpb;
  cfg.budget_bytes = kBudget * kBpb;
  auto tier = std::make_unique<DeviceKvTier>(pool, cfg);

  // 1, 1, 3, 4, 5, 8, 10 and 25 (never fits) blocks.
  const std::vector<int32_t> tokens = {3, 4, 9, 16, 17, 30, 40, 100};
  struct Model {
    int32_t tokens = 0;
    int version = 0;       // content changes when re-registered
    int tier_version = 0;  // the content the tier last saw
    int64_t refs = 0;
    bool pinned = false;
    bool loading = false;
    bool failed = false;  // the last load failed and it is still held
    bool wanted() const { return refs > 0 || pinned || loading; }
  };
  std::vector<std::string> ids;
  std::map<std::string, Model> m;
  for (size_t i = 0; i < tokens.size(); ++i) {
    ids.push_back(fmt::format("c{}", i));
    m[ids.back()].tokens = tokens[i];
  }
  auto dc = [&](const std::string& id) {
    return DeviceCartridge{id, fmt::format("sha-{}-v{}", id, m[id].version), m[id].tokens};
  };
  auto cached_all = [&](const std::string& id) {
    const DeviceCartridge c = dc(id);
    for (int32_t i = 0; i < blocks_for(c.num_tokens); ++i) {
      if (!pool.lookup(DeviceKvTier::block_key(c, kB, i))) return false;
    }
    return true;
  };
  // Any block of the content the tier knows for `id` still cached.
  auto cached_any = [&](const std::string& id) {
    const DeviceCartridge c{id, fmt::format("sha-{}-v{}", id, m[id].tier_version), m[id].tokens};
    for (int32_t i = 0; i < blocks_for(m[id].tokens); ++i) {
      if (pool.lookup(DeviceKvTier::block_key(c, kB, i))) return true;
    }
    return false;
  };
  // A successful hold: loading unless every block was cached (or it was held).
  auto held_now = [&](const std::string& id, bool was_wanted, bool was_loading, bool was_cached) {
    m[id].loading = was_wanted ? was_loading : !was_cached;
  };
  // Refusals must be errors of the documented kinds.
  auto check_refusal = [&](const Status& s, const std::string& id) {
    const int32_t n = blocks_for(m[id].tokens);
    if (m[id].failed) {
      EXPECT_EQ(s.code(), ErrorCode::kIo) << s.to_string();
      return;
    }
    if (n > kBudget) {
      EXPECT_EQ(s.code(), ErrorCode::kOutOfRange) << s.to_string();
      return;
    }
    EXPECT_TRUE(s.code() == ErrorCode::kResourceExhausted ||
                s.code() == ErrorCode::kFailedPrecondition)
        << s.to_string();
    if (s.code() == ErrorCode::kFailedPrecondition) {
      int32_t pinned = 0;  // pins must fill the budget
      for (const auto& other : ids) {
        if (other != id && m[other].pinned) pinned += blocks_for(m[other].tokens);
      }
      EXPECT_GT(pinned + n, kBudget) << s.to_string();
    }
  };

  std::vector<LoadJob> jobs;        // taken, not done yet
  std::vector<int32_t> req_blocks;  // blocks of "requests"
  std::mt19937 rng(GetParam());
  int ready_acquires = 0, loads_ok = 0, loads_failed = 0, refusals = 0, pool_allocs = 0;
  for (int step = 0; step < 5000; ++step) {
    const std::string id = ids[rng() % ids.size()];
    Model& x = m[id];
    // Weights: releases outnumber acquires so that cartridges keep coming and going.
    static constexpr int kOps[] = {0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 7, 8, 9, 9, 10, 11, 11, 12};
    const int op = kOps[rng() % std::size(kOps)];
    SCOPED_TRACE(::testing::Message() << "step " << step << " op " << op << " " << id);
    const bool was_wanted = x.wanted(), was_loading = x.loading, was_cached = cached_all(id);
    switch (op) {
      case 0:
      case 1: {                      // acquire
        x.tier_version = x.version;  // (re-)registers it with its current content
        auto r = tier->acquire(dc(id));
        if (r.ok()) {
          ASSERT_FALSE(x.failed);
          ++x.refs;
          held_now(id, was_wanted, was_loading, was_cached);
          EXPECT_EQ(*r == State::kLoading, x.loading);
          if (*r == State::kReady) {
            ++ready_acquires;
            const std::vector<int32_t> blocks = tier->blocks(id);
            ASSERT_EQ(static_cast<int32_t>(blocks.size()), blocks_for(x.tokens));
            for (size_t i = 0; i < blocks.size(); ++i) {
              ASSERT_GE(pool.ref_count(blocks[i]), 1);
              ASSERT_EQ(pool.hash_of(blocks[i]), std::optional<BlockHash>(DeviceKvTier::block_key(
                                                     dc(id), kB, static_cast<int32_t>(i))));
            }
          }
        } else {
          ++refusals;
          check_refusal(r.status(), id);
        }
        break;
      }
      case 2: {  // release one of ours (or, rarely, something not held: refused)
        std::vector<std::string> held;
        for (const auto& hid : ids) {
          if (m[hid].refs > 0) held.push_back(hid);
        }
        std::string rid = id;
        if (!held.empty() && rng() % 5 != 0) rid = held[rng() % held.size()];
        Status s = tier->release(rid);
        if (m[rid].refs > 0) {
          ASSERT_TRUE(s.ok()) << s.to_string();
          --m[rid].refs;
          if (!m[rid].wanted()) m[rid].failed = false;
        } else {
          EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
        }
        break;
      }
      case 3: {                // pin
        if (rng() % 2) break;  // rarer
        x.tier_version = x.version;
        Status s = tier->pin(dc(id));
        if (x.pinned) {
          // Idempotent, but a failed load of the pinned cartridge is reported.
          EXPECT_EQ(s.ok(), !x.failed) << s.to_string();
        } else if (s.ok()) {
          ASSERT_FALSE(x.failed);
          x.pinned = true;
          held_now(id, was_wanted, was_loading, was_cached);
        } else {
          ++refusals;
          check_refusal(s, id);
        }
        break;
      }
      case 4: {  // unpin
        Status s = tier->unpin(id);
        EXPECT_EQ(s.ok(), x.pinned) << s.to_string();
        x.pinned = false;
        if (!x.wanted()) x.failed = false;
        break;
      }
      case 5: {  // prefetch
        x.tier_version = x.version;
        Status s = tier->prefetch(dc(id));
        if (s.ok()) {
          ASSERT_FALSE(x.failed);
          held_now(id, was_wanted, was_loading, was_cached);
        } else {
          ++refusals;
          check_refusal(s, id);
        }
        break;
      }
      case 6: {  // evict
        const bool any = cached_any(id);
        Status s = tier->evict(id);
        if (x.wanted()) {
          EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
        } else {
          EXPECT_EQ(s.ok(), any) << s.to_string();
          EXPECT_FALSE(cached_any(id));
        }
        break;
      }
      case 7: {  // the worker takes the queued jobs
        for (LoadJob& j : tier->take_load_jobs()) {
          const Model& jm = m[j.cartridge_id];
          EXPECT_TRUE(jm.loading) << j.cartridge_id;
          EXPECT_EQ(j.num_tokens, jm.tokens);
          const int32_t n = blocks_for(jm.tokens);
          EXPECT_TRUE(std::is_sorted(j.block_index.begin(), j.block_index.end()));
          EXPECT_EQ(std::set<int32_t>(j.block_index.begin(), j.block_index.end()).size(),
                    j.block_index.size());
          EXPECT_EQ(std::set<int32_t>(j.block_ids.begin(), j.block_ids.end()).size(),
                    j.block_ids.size());
          ASSERT_EQ(j.block_ids.size(), j.block_index.size());
          for (size_t k = 0; k < j.block_ids.size(); ++k) {
            EXPECT_GE(j.block_index[k], 0);
            EXPECT_LT(j.block_index[k], n);
            EXPECT_EQ(pool.ref_count(j.block_ids[k]), 1);
            EXPECT_FALSE(pool.hash_of(j.block_ids[k]).has_value());
          }
          jobs.push_back(std::move(j));
        }
        break;
      }
      case 8:
      case 9: {  // the worker finishes one job
        if (jobs.empty()) break;
        const size_t k = rng() % jobs.size();
        const std::string jid = jobs[k].cartridge_id;
        jobs.erase(jobs.begin() + static_cast<std::ptrdiff_t>(k));
        const bool ok = rng() % 5 != 0;
        tier->load_done(jid, ok ? Status() : load_error());
        Model& jm = m[jid];
        jm.loading = false;
        if (ok) {
          ++loads_ok;
          EXPECT_TRUE(tier->is_resident(jid));
          EXPECT_TRUE(cached_all(jid));
        } else {
          ++loads_failed;
          jm.failed = jm.wanted();
          EXPECT_FALSE(tier->is_resident(jid));
        }
        break;
      }
      case 10: {  // a request allocates blocks (may reclaim cached ones)
        const auto n = static_cast<int32_t>(1 + rng() % 6);
        auto got = pool.allocate(n);
        if (got) {
          ++pool_allocs;
          req_blocks.insert(req_blocks.end(), got->begin(), got->end());
        } else {
          EXPECT_LT(pool.num_free_blocks(), n);
        }
        break;
      }
      case 11: {  // a request frees some blocks
        for (int k = 0; k < 4 && !req_blocks.empty(); ++k) {
          const size_t i = rng() % req_blocks.size();
          pool.release(req_blocks[i]);
          req_blocks.erase(req_blocks.begin() + static_cast<std::ptrdiff_t>(i));
        }
        break;
      }
      case 12: {  // remove, or re-register with new content
        if (rng() % 2) {
          Status s = tier->remove(id);
          EXPECT_EQ(s.ok(), !x.wanted()) << s.to_string();
          if (s.ok()) {
            x.failed = false;
            EXPECT_FALSE(cached_any(id));  // its blocks are dropped
          }
        } else if (!x.wanted()) {
          ++x.version;  // the next use sees other content
        }
        break;
      }
    }
    // After every operation.
    ASSERT_TRUE(tier->check_invariants().ok()) << tier->check_invariants().to_string();
    ASSERT_TRUE(pool.check_invariants().ok()) << pool.check_invariants().to_string();
    const TierCounters c = tier->counters();
    ASSERT_EQ(c.bytes_promoted - c.bytes_evicted, c.bytes_resident);
    ASSERT_LE(c.bytes_resident, c.budget_bytes);
    ASSERT_EQ(c.promotions - c.evictions, c.entries);
    size_t n_pinned = 0, n_referenced = 0;
    for (const auto& cid : ids) {
      const Model& cm = m[cid];
      ASSERT_EQ(tier->ref_count(cid), cm.refs) << cid;
      ASSERT_EQ(tier->is_pinned(cid), cm.pinned) << cid;
      ASSERT_EQ(tier->is_loading(cid), cm.loading) << cid;
      if (cm.failed) {
        ASSERT_EQ(tier->state(cid).status().code(), ErrorCode::kIo) << cid;
      } else if (cm.wanted()) {
        auto st = tier->state(cid);
        ASSERT_TRUE(st.ok()) << cid << " " << st.status().to_string();
        ASSERT_EQ(*st == State::kLoading, cm.loading) << cid;
        if (!cm.loading) {
          // Held and ready: every block there, referenced, under its key.
          ASSERT_TRUE(tier->is_resident(cid)) << cid;
          const std::vector<int32_t> blocks = tier->blocks(cid);
          ASSERT_EQ(static_cast<int32_t>(blocks.size()), blocks_for(cm.tokens)) << cid;
          for (int32_t blk : blocks)
            ASSERT_GE(pool.ref_count(blk), 1) << cid;
        }
      }
      n_pinned += cm.pinned ? 1 : 0;
      n_referenced += cm.refs > 0 ? 1 : 0;
    }
    ASSERT_EQ(c.pinned, n_pinned);
    ASSERT_EQ(c.referenced, n_referenced);
  }
  // Every path was taken.
  const TierCounters c = tier->counters();
  EXPECT_GT(ready_acquires, 100);
  EXPECT_GT(loads_ok, 100);
  EXPECT_GT(loads_failed, 20);
  EXPECT_GT(refusals, 50);
  EXPECT_GT(pool_allocs, 100);
  EXPECT_GT(c.evictions, 50u);
  EXPECT_GT(c.hits, 50u);

  // Wind down: finish every load, let go of everything.
  for (LoadJob& j : tier->take_load_jobs())
    jobs.push_back(std::move(j));
  for (const LoadJob& j : jobs) {
    tier->load_done(j.cartridge_id, Status());
    m[j.cartridge_id].loading = false;
  }
  EXPECT_TRUE(tier->take_load_jobs().empty());
  for (const auto& id : ids) {
    for (; m[id].refs > 0; --m[id].refs)
      ASSERT_TRUE(tier->release(id).ok());
    if (m[id].pinned) {
      ASSERT_TRUE(tier->unpin(id).ok());
    }
    ASSERT_TRUE(tier->check_invariants().ok()) << tier->check_invariants().to_string();
  }
  for (int32_t b : req_blocks)
    pool.release(b);
  ASSERT_TRUE(pool.check_invariants().ok());
  EXPECT_EQ(pool.num_free_blocks(), pool.num_usable_blocks());
  EXPECT_EQ(pool.usage(), 0.0);
  EXPECT_EQ(tier->counters().referenced, 0u);
  EXPECT_EQ(tier->counters().bytes_resident,
            static_cast<uint64_t>(pool.num_cached_blocks()) * kBpb);  // idle cartridges only
  // Evicting every idle cartridge empties the cache.
  for (const auto& id : ids)
    (void)tier->evict(id);
  EXPECT_EQ(pool.num_cached_blocks(), 0);
  EXPECT_EQ(tier->counters().bytes_resident, 0u);
  ASSERT_TRUE(tier->check_invariants().ok());
  tier.reset();
  EXPECT_EQ(pool.num_free_blocks(), pool.num_usable_blocks());
}

INSTANTIATE_TEST_SUITE_P(Seeds, DeviceTierRandom, ::testing::Values(1u, 7u, 42u, 2026u));

}  // namespace
}  // namespace cartserve
