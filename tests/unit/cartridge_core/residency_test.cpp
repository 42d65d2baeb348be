// ResidencyManager: the disk and host tiers (cartridge/residency.h). The
// device tier (KV blocks) is tested in device_tier_test.cpp.
#include "cartridge/residency.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <latch>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "cartridge_test_util.h"
#include "test_util.h"

namespace cartserve {
namespace {

using testing::cartridge_value;
using ::testing::ElementsAre;
using testing::expected_kv_bytes;
using ::testing::HasSubstr;
using testing::make_cartridge;

struct Spec {
  int layers = 2, heads = 2, tokens = 8, dim = 4;
  DType dtype = DType::kBF16;
  int seed = 0;
  int frozen = 0;
};

// keys (kind 0) or values (kind 1) of `c` at [layer][h, t, d], as a float.
float value_at(const CartridgeData& c, int layer, int kind, int h, int t, int d) {
  const Tensor& x = (kind == 0 ? c.keys : c.values).at(static_cast<size_t>(layer));
  const Tensor f = x.to(DType::kF32);
  return f.data<float>()[(h * c.num_tokens + t) * c.head_dim + d];
}

// A fake disk: path -> cartridge. Counts loads; a path can fail; loads can
// be held at a gate to create overlap between threads.
class FakeDisk {
 public:
  void put(const std::string& path, Spec s) {
    std::lock_guard<std::mutex> lk(mu_);
    files_[path] = s;
  }
  void fail(const std::string& path, bool f) {
    std::lock_guard<std::mutex> lk(mu_);
    if (f) {
      failing_.insert(path);
    } else {
      failing_.erase(path);
    }
  }
  void hold(bool h) {
    std::lock_guard<std::mutex> lk(mu_);
    hold_ = h;
    cv_.notify_all();
  }
  void wait_loading(int n) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return waiting_ >= n; });
  }
  CartridgeLoader loader() {
    return [this](const std::string& path) -> Result<CartridgeData> {
      Spec s;
      {
        std::unique_lock<std::mutex> lk(mu_);
        ++loads_;
        ++waiting_;
        cv_.notify_all();
        cv_.wait(lk, [&] { return !hold_; });
        --waiting_;
        if (failing_.count(path)) return make_error(ErrorCode::kIo, "read error on '{}'", path);
        auto it = files_.find(path);
        if (it == files_.end()) return make_error(ErrorCode::kNotFound, "no file '{}'", path);
        s = it->second;
      }
      return make_cartridge(s.layers, s.heads, s.tokens, s.dim, s.dtype, s.frozen, s.seed);
    };
  }
  int loads() const {
    std::lock_guard<std::mutex> lk(mu_);
    return loads_;
  }
  // Bytes of the cartridge at `path` (0 when there is none).
  uint64_t bytes(const std::string& path) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = files_.find(path);
    if (it == files_.end()) return 0;
    const Spec& s = it->second;
    return expected_kv_bytes(s.layers, s.heads, s.tokens, s.dim, s.dtype);
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Spec> files_;
  std::set<std::string> failing_;
  bool hold_ = false;
  int loads_ = 0;
  int waiting_ = 0;
};

// 2 layers x 2 heads x 8 tokens x 4 dims in bf16.
constexpr uint64_t kBf16 = 512;

class ResidencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* id : {"A", "B", "C", "D"}) {
      disk_.put(path(id), Spec{2, 2, 8, 4, DType::kBF16, id[0] - 'A' + 1});
    }
  }
  static std::string path(const std::string& id) { return fmt::format("/carts/{}.pt", id); }

  void make(uint64_t host_bytes, bool verify_checksums = true) {
    ResidencyConfig cfg;
    cfg.host_budget_bytes = host_bytes;
    cfg.verify_checksums = verify_checksums;
    mgr_ = std::make_unique<ResidencyManager>(cfg, disk_.loader());
    for (const char* id : {"A", "B", "C", "D"}) {
      ASSERT_TRUE(add(id, path(id)).ok());
    }
  }
  Status add(const std::string& id, const std::string& p,
             std::optional<CartridgeManifest> m = std::nullopt) {
    Status s = mgr_->add_cartridge(id, p, std::move(m));
    if (s.ok()) paths_[id] = p;
    return s;
  }

  // promoted - evicted == resident, within budget, the LRU list matches the
  // entries and their sizes, promotions - evictions == entries.
  void check_invariants() const {
    const HostCounters c = mgr_->counters();
    const TierCounters& h = c.host;
    EXPECT_EQ(h.budget_bytes, mgr_->config().host_budget_bytes);
    EXPECT_EQ(h.bytes_promoted - h.bytes_evicted, h.bytes_resident);
    EXPECT_LE(h.bytes_resident, h.budget_bytes);
    const std::vector<std::string> lru = mgr_->lru_order();
    EXPECT_EQ(lru.size(), h.entries);
    EXPECT_EQ(h.promotions - h.evictions, h.entries);
    uint64_t sum = 0;
    for (const auto& id : lru) {
      EXPECT_TRUE(mgr_->is_resident(id)) << id;
      sum += disk_.bytes(paths_.at(id));
    }
    EXPECT_EQ(sum, h.bytes_resident);
  }

  FakeDisk disk_;
  std::unique_ptr<ResidencyManager> mgr_;
  std::map<std::string, std::string> paths_;  // id -> path, as added
};

// ---- basics ----

TEST_F(ResidencyTest, TierNames) {
  EXPECT_STREQ(tier_name(Tier::kHost), "host");
  EXPECT_STREQ(tier_name(Tier::kDevice), "device");
}

TEST_F(ResidencyTest, NothingIsResidentUntilAsked) {
  make(100 * kBf16);
  for (int i = 0; i < 100; ++i) {
    const std::string id = fmt::format("x{}", i);
    disk_.put(path(id), Spec{});
    ASSERT_TRUE(add(id, path(id)).ok());
    EXPECT_TRUE(mgr_->knows(id));
  }
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.host.entries, 0u);
  EXPECT_EQ(c.host.bytes_resident, 0u);
  EXPECT_EQ(c.host.budget_bytes, 100 * kBf16);
  EXPECT_EQ(c.disk_loads, 0u);
  EXPECT_EQ(disk_.loads(), 0);
  EXPECT_TRUE(mgr_->lru_order().empty());
  EXPECT_FALSE(mgr_->knows("x100"));
}

TEST_F(ResidencyTest, FirstAcquireLoadsFromDisk) {
  make(4 * kBf16);
  EXPECT_FALSE(mgr_->is_resident("A"));
  auto r = mgr_->acquire("A");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_NE(*r, nullptr);
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_EQ(mgr_->ref_count("A"), 1);
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.disk_loads, 1u);
  EXPECT_EQ(c.load_failures, 0u);
  EXPECT_EQ(c.host.misses, 1u);
  EXPECT_EQ(c.host.hits, 0u);
  EXPECT_EQ(c.host.promotions, 1u);
  EXPECT_EQ(c.host.bytes_promoted, kBf16);
  EXPECT_EQ(c.host.bytes_resident, kBf16);
  EXPECT_EQ(c.host.entries, 1u);
  EXPECT_EQ(c.host.referenced, 1u);
  EXPECT_EQ((*r)->nbytes(), expected_kv_bytes(2, 2, 8, 4, DType::kBF16));
  EXPECT_EQ((*r)->dtype, DType::kBF16);  // the file's dtype, unchanged
  EXPECT_EQ((*r)->num_tokens, 8);
  EXPECT_EQ(value_at(**r, 1, 1, 1, 7, 3), cartridge_value(1, 1, 1, 1, 7, 3));
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("A"));
  check_invariants();
}

TEST_F(ResidencyTest, SecondAcquireHitsWithoutReading) {
  make(4 * kBf16);
  auto first = mgr_->acquire("A");
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(mgr_->release("A").ok());
  auto second = mgr_->acquire("A");
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->get(), first->get());  // the same host copy
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.host.misses, 1u);
  EXPECT_EQ(c.host.hits, 1u);
  EXPECT_EQ(c.host.promotions, 1u);
  EXPECT_EQ(c.host.bytes_promoted, kBf16);
  EXPECT_EQ(disk_.loads(), 1);
  ASSERT_TRUE(mgr_->release("A").ok());
  check_invariants();
}

TEST_F(ResidencyTest, HitMissCountersOverRepeatedUse) {
  make(4 * kBf16);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(mgr_->acquire("A").ok());
    ASSERT_TRUE(mgr_->release("A").ok());
  }
  ASSERT_TRUE(mgr_->acquire("B").ok());
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.host.misses, 2u);
  EXPECT_EQ(c.host.hits, 2u);
  EXPECT_EQ(c.host.promotions, 2u);
  EXPECT_EQ(c.disk_loads, 2u);
}

TEST_F(ResidencyTest, ManyCartridgesKeepTheirOwnData) {
  make(4 * kBf16);
  std::map<std::string, std::shared_ptr<const CartridgeData>> held;
  for (const char* id : {"A", "B", "C", "D"}) {
    auto r = mgr_->acquire(id);
    ASSERT_TRUE(r.ok());
    held[id] = *r;
  }
  std::set<const void*> ptrs;
  for (const auto& [id, r] : held) {
    ptrs.insert(r.get());
    const int seed = id[0] - 'A' + 1;
    EXPECT_EQ(value_at(*r, 1, 0, 0, 0, 0), cartridge_value(seed, 1, 0, 0, 0, 0)) << id;
    EXPECT_EQ(value_at(*r, 0, 1, 1, 5, 2), cartridge_value(seed, 0, 1, 1, 5, 2)) << id;
  }
  EXPECT_EQ(ptrs.size(), 4u);
  EXPECT_EQ(mgr_->counters().host.bytes_resident, 4 * kBf16);
  check_invariants();
}

// ---- references ----

TEST_F(ResidencyTest, UnknownIdsAreNotFound) {
  make(4 * kBf16);
  auto r = mgr_->acquire("nope");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("'nope'"));
  EXPECT_EQ(mgr_->release("nope").code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->pin("nope").code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->unpin("nope").code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->prefetch("nope").code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->evict("nope").code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->remove_cartridge("nope").code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->lease_for_load("nope").status().code(), ErrorCode::kNotFound);
  EXPECT_FALSE(mgr_->is_resident("nope"));
  EXPECT_FALSE(mgr_->is_pinned("nope"));
  EXPECT_EQ(mgr_->ref_count("nope"), 0);
  EXPECT_EQ(disk_.loads(), 0);
}

TEST_F(ResidencyTest, ReleaseWithoutAcquireIsAnError) {
  make(4 * kBf16);
  Status s = mgr_->release("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("without a matching acquire"));
  ASSERT_TRUE(mgr_->acquire("A").ok());
  EXPECT_TRUE(mgr_->release("A").ok());
  EXPECT_EQ(mgr_->release("A").code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  // A pin or a prefetch is no reference either.
  ASSERT_TRUE(mgr_->pin("B").ok());
  ASSERT_TRUE(mgr_->prefetch("C").ok());
  EXPECT_EQ(mgr_->release("B").code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(mgr_->release("C").code(), ErrorCode::kFailedPrecondition);
  check_invariants();
}

TEST_F(ResidencyTest, RefCountsAddUp) {
  make(4 * kBf16);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->acquire("B").ok());
  EXPECT_EQ(mgr_->ref_count("A"), 2);
  EXPECT_EQ(mgr_->ref_count("B"), 1);
  EXPECT_EQ(mgr_->ref_count("C"), 0);
  EXPECT_EQ(mgr_->counters().host.referenced, 2u);
  ASSERT_TRUE(mgr_->release("A").ok());
  EXPECT_EQ(mgr_->ref_count("A"), 1);
  ASSERT_TRUE(mgr_->release("A").ok());
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  EXPECT_EQ(mgr_->counters().host.referenced, 1u);
  EXPECT_TRUE(mgr_->is_resident("A"));  // idle, still cached
  check_invariants();
}

// ---- lease_for_load ----

TEST_F(ResidencyTest, LeaseOfAPlacedCopyHoldsAReferenceUntilItDies) {
  make(2 * kBf16);
  {
    auto lease = mgr_->lease_for_load("A");
    ASSERT_TRUE(lease.ok()) << lease.status().to_string();
    ASSERT_NE(lease->data(), nullptr);
    EXPECT_EQ(value_at(*lease->data(), 0, 0, 1, 3, 2), cartridge_value(1, 0, 0, 1, 3, 2));
    EXPECT_TRUE(mgr_->is_resident("A"));
    EXPECT_EQ(mgr_->ref_count("A"), 1);
    // It is the host copy itself.
    auto a = mgr_->acquire("A");
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a->get(), lease->data().get());
    ASSERT_TRUE(mgr_->release("A").ok());
    // Referenced: not evictable, explicitly or under pressure.
    EXPECT_EQ(mgr_->evict("A").code(), ErrorCode::kFailedPrecondition);
    ASSERT_TRUE(mgr_->prefetch("B").ok());
    ASSERT_TRUE(mgr_->prefetch("C").ok());  // evicts B, not A
    EXPECT_TRUE(mgr_->is_resident("A"));
    EXPECT_FALSE(mgr_->is_resident("B"));
    check_invariants();
  }
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  EXPECT_TRUE(mgr_->is_resident("A"));  // idle now, still cached
  EXPECT_TRUE(mgr_->evict("A").ok());
  check_invariants();
}

TEST_F(ResidencyTest, LeaseOfAResidentCartridgeIsAHit) {
  make(2 * kBf16);
  ASSERT_TRUE(mgr_->prefetch("A").ok());
  auto lease = mgr_->lease_for_load("A");
  ASSERT_TRUE(lease.ok());
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.host.hits, 1u);
  EXPECT_EQ(c.host.misses, 0u);
  EXPECT_EQ(c.disk_loads, 1u);
  EXPECT_EQ(mgr_->ref_count("A"), 1);
}

TEST_F(ResidencyTest, LeaseReleasesAfterMoves) {
  make(4 * kBf16);
  {
    auto lease = mgr_->lease_for_load("A");
    ASSERT_TRUE(lease.ok());
    const CartridgeData* data = lease->data().get();
    HostLease moved(std::move(*lease));
    EXPECT_EQ(lease->data(), nullptr);
    EXPECT_EQ(moved.data().get(), data);
    EXPECT_EQ(mgr_->ref_count("A"), 1);
    lease->reset();  // the moved-from lease owns nothing
    EXPECT_EQ(mgr_->ref_count("A"), 1);
    HostLease other;
    other = std::move(moved);
    EXPECT_EQ(moved.data(), nullptr);
    EXPECT_EQ(other.data().get(), data);
    EXPECT_EQ(mgr_->ref_count("A"), 1);
    // Assigning over a live lease releases what it held.
    auto b = mgr_->lease_for_load("B");
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(mgr_->ref_count("B"), 1);
    other = std::move(*b);
    EXPECT_EQ(mgr_->ref_count("A"), 0);
    EXPECT_EQ(mgr_->ref_count("B"), 1);
    auto& self = other;
    other = std::move(self);  // self-move keeps it
    EXPECT_EQ(mgr_->ref_count("B"), 1);
    EXPECT_NE(other.data(), nullptr);
  }
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  EXPECT_EQ(mgr_->ref_count("B"), 0);
  auto c = mgr_->lease_for_load("C");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(mgr_->ref_count("C"), 1);
  c->reset();
  EXPECT_EQ(c->data(), nullptr);
  EXPECT_EQ(mgr_->ref_count("C"), 0);
  c->reset();  // twice: still one release only
  EXPECT_EQ(mgr_->ref_count("C"), 0);
  EXPECT_EQ(mgr_->release("C").code(), ErrorCode::kFailedPrecondition);
  check_invariants();
}

TEST_F(ResidencyTest, LeaseOfACartridgeTooBigForTheHostIsTransient) {
  make(kBf16 / 2);
  {
    auto lease = mgr_->lease_for_load("B");
    ASSERT_TRUE(lease.ok()) << lease.status().to_string();
    ASSERT_NE(lease->data(), nullptr);
    EXPECT_EQ(value_at(*lease->data(), 1, 1, 0, 6, 1), cartridge_value(2, 1, 1, 0, 6, 1));
    EXPECT_FALSE(mgr_->is_resident("B"));
    EXPECT_EQ(mgr_->ref_count("B"), 0);
    const HostCounters c = mgr_->counters();
    EXPECT_EQ(c.host.bytes_resident, 0u);
    EXPECT_EQ(c.host.promotions, 0u);
    EXPECT_EQ(c.host.referenced, 0u);
    EXPECT_EQ(c.host.misses, 1u);
    EXPECT_EQ(c.disk_loads, 1u);
    check_invariants();
  }
  // Dropping it released nothing (there was nothing to release).
  EXPECT_EQ(mgr_->ref_count("B"), 0);
  EXPECT_EQ(mgr_->release("B").code(), ErrorCode::kFailedPrecondition);
  // Nothing was kept: the next one reads the disk again.
  auto again = mgr_->lease_for_load("B");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(disk_.loads(), 2);
  // An acquire still refuses it.
  EXPECT_EQ(mgr_->acquire("B").status().code(), ErrorCode::kOutOfRange);
  check_invariants();
}

TEST_F(ResidencyTest, LeaseWithAManifestTooBigStillReadsTheDisk) {
  make(kBf16 / 2);
  disk_.put(path("M"), Spec{});
  ASSERT_TRUE(add("M", path("M"), testing::manifest_for("M", make_cartridge(2, 2, 8, 4))).ok());
  EXPECT_EQ(mgr_->acquire("M").status().code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(disk_.loads(), 0);
  auto lease = mgr_->lease_for_load("M");
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  ASSERT_NE(lease->data(), nullptr);
  EXPECT_EQ(lease->data()->nbytes(), kBf16);
  EXPECT_EQ(disk_.loads(), 1);
  EXPECT_FALSE(mgr_->is_resident("M"));
  EXPECT_EQ(mgr_->ref_count("M"), 0);
}

TEST_F(ResidencyTest, LeaseWhenReferencesFillTheTierIsTransient) {
  make(kBf16 + kBf16 / 2);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  auto lease = mgr_->lease_for_load("B");
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_EQ(value_at(*lease->data(), 0, 0, 0, 0, 0), cartridge_value(2, 0, 0, 0, 0, 0));
  EXPECT_FALSE(mgr_->is_resident("B"));
  EXPECT_EQ(mgr_->ref_count("B"), 0);
  EXPECT_TRUE(mgr_->is_resident("A"));  // the referenced copy stays
  EXPECT_EQ(mgr_->ref_count("A"), 1);
  EXPECT_EQ(mgr_->counters().host.evictions, 0u);
  check_invariants();
  // B gets placed and acquired later: the transient lease dying must not
  // release that acquire's reference.
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->acquire("B").ok());
  EXPECT_EQ(mgr_->ref_count("B"), 1);
  lease->reset();
  EXPECT_EQ(mgr_->ref_count("B"), 1);
  EXPECT_TRUE(mgr_->release("B").ok());
  check_invariants();
}

TEST_F(ResidencyTest, LeaseWhenPinsFillTheTierIsTransient) {
  make(2 * kBf16);
  ASSERT_TRUE(mgr_->pin("A").ok());
  ASSERT_TRUE(mgr_->pin("B").ok());
  auto lease = mgr_->lease_for_load("C");
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_NE(lease->data(), nullptr);
  EXPECT_FALSE(mgr_->is_resident("C"));
  EXPECT_EQ(mgr_->ref_count("C"), 0);
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_TRUE(mgr_->is_resident("B"));
  check_invariants();
}

TEST_F(ResidencyTest, LeaseEvictsIdleEntriesToPlaceItsCopy) {
  make(kBf16);
  ASSERT_TRUE(mgr_->prefetch("A").ok());
  auto lease = mgr_->lease_for_load("B");
  ASSERT_TRUE(lease.ok());
  EXPECT_TRUE(mgr_->is_resident("B"));
  EXPECT_FALSE(mgr_->is_resident("A"));
  EXPECT_EQ(mgr_->ref_count("B"), 1);
  check_invariants();
}

TEST_F(ResidencyTest, LeaseLoadFailureIsReturned) {
  make(kBf16 / 2);  // even a transient read reports the failure
  disk_.fail(path("A"), true);
  auto lease = mgr_->lease_for_load("A");
  ASSERT_FALSE(lease.ok());
  EXPECT_EQ(lease.status().code(), ErrorCode::kIo);
  EXPECT_THAT(lease.status().message(), HasSubstr("loading cartridge 'A'"));
  EXPECT_EQ(mgr_->counters().load_failures, 1u);
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  check_invariants();
}

// ---- LRU ----

TEST_F(ResidencyTest, LruEvictsTheOldestIdleCartridge) {
  make(2 * kBf16);
  for (const char* id : {"A", "B"}) {
    ASSERT_TRUE(mgr_->acquire(id).ok());
    ASSERT_TRUE(mgr_->release(id).ok());
  }
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("A", "B"));
  ASSERT_TRUE(mgr_->acquire("C").ok());
  ASSERT_TRUE(mgr_->release("C").ok());
  EXPECT_FALSE(mgr_->is_resident("A"));
  EXPECT_TRUE(mgr_->is_resident("B"));
  EXPECT_TRUE(mgr_->is_resident("C"));
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("B", "C"));
  EXPECT_EQ(mgr_->counters().host.evictions, 1u);
  EXPECT_EQ(mgr_->counters().host.bytes_evicted, kBf16);
  check_invariants();
}

TEST_F(ResidencyTest, EvictsAsManyAsNeededOldestFirst) {
  // A bigger cartridge pushes out two small ones, oldest first.
  disk_.put(path("W"), Spec{2, 2, 16, 4, DType::kBF16, 9});  // 2 * kBf16
  make(3 * kBf16);
  ASSERT_TRUE(add("W", path("W")).ok());
  for (const char* id : {"A", "B", "C"})
    ASSERT_TRUE(mgr_->prefetch(id).ok());
  ASSERT_TRUE(mgr_->prefetch("W").ok());
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("C", "W"));
  EXPECT_EQ(mgr_->counters().host.evictions, 2u);
  check_invariants();
}

TEST_F(ResidencyTest, UseMovesToMostRecentlyUsed) {
  make(2 * kBf16);
  for (const char* id : {"A", "B", "A"}) {
    ASSERT_TRUE(mgr_->acquire(id).ok());
    ASSERT_TRUE(mgr_->release(id).ok());
  }
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("B", "A"));
  ASSERT_TRUE(mgr_->acquire("C").ok());
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_FALSE(mgr_->is_resident("B"));
}

TEST_F(ResidencyTest, ReleaseCountsAsUse) {
  make(3 * kBf16);
  ASSERT_TRUE(mgr_->acquire("A").ok());  // a long request on A
  ASSERT_TRUE(mgr_->acquire("B").ok());
  ASSERT_TRUE(mgr_->release("B").ok());
  ASSERT_TRUE(mgr_->release("A").ok());  // A finished last
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("B", "A"));
}

TEST_F(ResidencyTest, PinAndPrefetchCountAsUse) {
  make(3 * kBf16);
  for (const char* id : {"A", "B", "C"})
    ASSERT_TRUE(mgr_->prefetch(id).ok());
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("A", "B", "C"));
  ASSERT_TRUE(mgr_->prefetch("A").ok());
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("B", "C", "A"));
  ASSERT_TRUE(mgr_->pin("B").ok());
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("C", "A", "B"));
  EXPECT_EQ(mgr_->counters().host.promotions, 3u);
}

TEST_F(ResidencyTest, EvictedCartridgeComesBackFromDisk) {
  make(kBf16 + kBf16 / 2);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->acquire("B").ok());
  ASSERT_TRUE(mgr_->release("B").ok());
  EXPECT_FALSE(mgr_->is_resident("A"));
  const uint64_t before = mgr_->counters().host.promotions;
  auto r = mgr_->acquire("A");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(mgr_->counters().host.promotions, before + 1);
  EXPECT_EQ(value_at(**r, 0, 0, 0, 0, 0), cartridge_value(1, 0, 0, 0, 0, 0));
  EXPECT_EQ(disk_.loads(), 3);
  EXPECT_EQ(mgr_->counters().host.misses, 3u);
  check_invariants();
}

// ---- protection: references and pins ----

TEST_F(ResidencyTest, ReferencedCartridgeIsNeverEvicted) {
  make(kBf16 + kBf16 / 2);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  auto b = mgr_->acquire("B");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("cannot fit in the host tier now"));
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_FALSE(mgr_->is_resident("B"));
  EXPECT_EQ(mgr_->ref_count("B"), 0);
  EXPECT_EQ(mgr_->counters().host.evictions, 0u);
  check_invariants();
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->acquire("B").ok());  // now A is idle and goes
  EXPECT_FALSE(mgr_->is_resident("A"));
  check_invariants();
}

TEST_F(ResidencyTest, EvictionSkipsReferencedAndTakesTheNextIdle) {
  make(2 * kBf16);
  ASSERT_TRUE(mgr_->acquire("A").ok());  // oldest, but referenced
  ASSERT_TRUE(mgr_->acquire("B").ok());
  ASSERT_TRUE(mgr_->release("B").ok());
  ASSERT_TRUE(mgr_->acquire("C").ok());
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_FALSE(mgr_->is_resident("B"));
  EXPECT_TRUE(mgr_->is_resident("C"));
  check_invariants();
}

TEST_F(ResidencyTest, PinnedCartridgeSurvivesPressure) {
  make(2 * kBf16);
  ASSERT_TRUE(mgr_->pin("A").ok());
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_TRUE(mgr_->is_pinned("A"));
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  EXPECT_EQ(mgr_->counters().host.pinned, 1u);
  for (const char* id : {"B", "C", "D", "B", "C"}) {
    ASSERT_TRUE(mgr_->acquire(id).ok()) << id;
    ASSERT_TRUE(mgr_->release(id).ok());
  }
  EXPECT_TRUE(mgr_->is_resident("A"));
  ASSERT_TRUE(mgr_->unpin("A").ok());
  EXPECT_FALSE(mgr_->is_pinned("A"));
  EXPECT_TRUE(mgr_->is_resident("A"));  // unpinning does not evict
  ASSERT_TRUE(mgr_->acquire("D").ok());
  EXPECT_FALSE(mgr_->is_resident("A"));  // oldest idle now
  check_invariants();
}

TEST_F(ResidencyTest, AllPinnedMeansNoRoomUntilAnUnpin) {
  // Pins never go away by themselves: not "cannot fit now" (wait) but a
  // precondition only an unpin changes.
  make(2 * kBf16);
  ASSERT_TRUE(mgr_->pin("A").ok());
  ASSERT_TRUE(mgr_->pin("B").ok());
  auto c = mgr_->acquire("C");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(c.status().message(), HasSubstr("2 pinned"));
  EXPECT_FALSE(mgr_->is_resident("C"));
  EXPECT_EQ(mgr_->ref_count("C"), 0);
  EXPECT_EQ(mgr_->prefetch("C").code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(mgr_->pin("C").code(), ErrorCode::kFailedPrecondition);
  EXPECT_FALSE(mgr_->is_pinned("C"));
  check_invariants();
  ASSERT_TRUE(mgr_->unpin("B").ok());
  ASSERT_TRUE(mgr_->acquire("C").ok());
  EXPECT_FALSE(mgr_->is_resident("B"));
  EXPECT_TRUE(mgr_->is_resident("A"));
  check_invariants();
}

TEST_F(ResidencyTest, PinnedAndReferencedTogetherAreCannotFitNow) {
  // One pin and one reference: the reference will go, so ResourceExhausted.
  make(2 * kBf16);
  ASSERT_TRUE(mgr_->pin("A").ok());
  ASSERT_TRUE(mgr_->acquire("B").ok());
  EXPECT_EQ(mgr_->acquire("C").status().code(), ErrorCode::kResourceExhausted);
  ASSERT_TRUE(mgr_->release("B").ok());
  EXPECT_TRUE(mgr_->acquire("C").ok());
  check_invariants();
}

TEST_F(ResidencyTest, PinIsIdempotentAndUnpinNeedsAPin) {
  make(2 * kBf16);
  ASSERT_TRUE(mgr_->pin("A").ok());
  ASSERT_TRUE(mgr_->pin("A").ok());
  EXPECT_EQ(mgr_->counters().host.promotions, 1u);
  EXPECT_EQ(mgr_->counters().host.pinned, 1u);
  EXPECT_EQ(disk_.loads(), 1);
  ASSERT_TRUE(mgr_->unpin("A").ok());  // one unpin undoes both pins
  EXPECT_FALSE(mgr_->is_pinned("A"));
  Status s = mgr_->unpin("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not pinned in the host tier"));
  EXPECT_EQ(mgr_->unpin("B").code(), ErrorCode::kFailedPrecondition);
  // Pin takes no hit/miss (it is no request).
  EXPECT_EQ(mgr_->counters().host.hits + mgr_->counters().host.misses, 0u);
  check_invariants();
}

// ---- budgets: will never fit vs cannot fit now ----

TEST_F(ResidencyTest, TooBigWillNeverFit) {
  make(kBf16 / 2);
  auto r = mgr_->acquire("A");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kOutOfRange);
  EXPECT_THAT(r.status().message(), HasSubstr("will never fit in the host tier"));
  EXPECT_THAT(r.status().message(), HasSubstr("512 bytes"));
  EXPECT_THAT(r.status().message(), HasSubstr("budget is 256"));
  EXPECT_EQ(mgr_->prefetch("A").code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(mgr_->pin("A").code(), ErrorCode::kOutOfRange);
  EXPECT_FALSE(mgr_->is_pinned("A"));
  EXPECT_FALSE(mgr_->is_resident("A"));
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  // The size is known after the first read: no more disk reads to refuse it.
  EXPECT_EQ(disk_.loads(), 1);
  check_invariants();
}

TEST_F(ResidencyTest, NeverFitIsKnownWithoutReadingWhenAManifestIsGiven) {
  make(kBf16 / 2);
  disk_.put(path("M"), Spec{});
  const CartridgeManifest m = testing::manifest_for("M", make_cartridge(2, 2, 8, 4));
  ASSERT_TRUE(add("M", path("M"), m).ok());
  auto r = mgr_->acquire("M");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(mgr_->prefetch("M").code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(mgr_->pin("M").code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(disk_.loads(), 0);
  EXPECT_EQ(mgr_->counters().disk_loads, 0u);
}

TEST_F(ResidencyTest, ExactlyTheBudgetFits) {
  make(kBf16);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  EXPECT_EQ(mgr_->counters().host.bytes_resident, kBf16);
  check_invariants();
}

TEST_F(ResidencyTest, CannotFitNowThenFitsAfterRelease) {
  make(2 * kBf16);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->acquire("B").ok());
  auto c = mgr_->acquire("C");
  EXPECT_EQ(c.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_EQ(mgr_->counters().host.misses, 3u);  // the refused acquire counts as a miss
  ASSERT_TRUE(mgr_->release("B").ok());
  EXPECT_TRUE(mgr_->acquire("C").ok());
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_FALSE(mgr_->is_resident("B"));
  check_invariants();
}

// ---- prefetch ----

TEST_F(ResidencyTest, PrefetchLoadsWithoutAReference) {
  make(4 * kBf16);
  ASSERT_TRUE(mgr_->prefetch("A").ok());
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  HostCounters c = mgr_->counters();
  EXPECT_EQ(c.host.hits + c.host.misses, 0u);  // prefetches are not requests
  EXPECT_EQ(c.host.promotions, 1u);
  EXPECT_EQ(c.disk_loads, 1u);
  ASSERT_TRUE(mgr_->prefetch("A").ok());  // resident already: no read
  EXPECT_EQ(disk_.loads(), 1);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  c = mgr_->counters();
  EXPECT_EQ(c.host.hits, 1u);
  EXPECT_EQ(c.host.misses, 0u);
  check_invariants();
}

TEST_F(ResidencyTest, PrefetchNeverEvictsPinnedOrReferenced) {
  make(kBf16 + kBf16 / 2);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  Status s = mgr_->prefetch("B");
  EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_FALSE(mgr_->is_resident("B"));
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->pin("A").ok());
  EXPECT_EQ(mgr_->prefetch("B").code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(mgr_->is_resident("A"));
  EXPECT_FALSE(mgr_->is_resident("B"));
  check_invariants();
}

TEST_F(ResidencyTest, PrefetchMayEvictIdleEntries) {
  make(kBf16 + kBf16 / 2);
  ASSERT_TRUE(mgr_->prefetch("A").ok());
  ASSERT_TRUE(mgr_->prefetch("B").ok());
  EXPECT_FALSE(mgr_->is_resident("A"));
  EXPECT_TRUE(mgr_->is_resident("B"));
  check_invariants();
}

TEST_F(ResidencyTest, FailedPrefetchChangesNothing) {
  make(2 * kBf16);
  ASSERT_TRUE(mgr_->prefetch("A").ok());
  ASSERT_TRUE(mgr_->prefetch("B").ok());
  disk_.fail(path("C"), true);
  const HostCounters before = mgr_->counters();
  EXPECT_EQ(mgr_->prefetch("C").code(), ErrorCode::kIo);
  EXPECT_THAT(mgr_->lru_order(), ElementsAre("A", "B"));  // nothing evicted for it
  const HostCounters after = mgr_->counters();
  EXPECT_EQ(after.host.evictions, before.host.evictions);
  EXPECT_EQ(after.host.bytes_resident, before.host.bytes_resident);
  EXPECT_EQ(after.load_failures, before.load_failures + 1);
  check_invariants();
}

// ---- failures ----

TEST_F(ResidencyTest, LoadFailureLeavesNothingBehind) {
  make(8 * kBf16);
  disk_.fail(path("A"), true);
  auto r = mgr_->acquire("A");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kIo);
  EXPECT_THAT(r.status().message(), HasSubstr("loading cartridge 'A' from '/carts/A.pt'"));
  EXPECT_THAT(r.status().message(), HasSubstr("read error"));
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.load_failures, 1u);
  EXPECT_EQ(c.disk_loads, 0u);
  EXPECT_EQ(c.host.entries, 0u);
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  EXPECT_FALSE(mgr_->is_resident("A"));
  check_invariants();
  disk_.fail(path("A"), false);
  EXPECT_TRUE(mgr_->acquire("A").ok());
  EXPECT_EQ(mgr_->counters().disk_loads, 1u);
  check_invariants();
}

TEST_F(ResidencyTest, MissingFileIsAnError) {
  make(8 * kBf16);
  ASSERT_TRUE(add("gone", "/carts/gone.pt").ok());
  auto r = mgr_->acquire("gone");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("no file"));
  EXPECT_TRUE(mgr_->knows("gone"));  // the id stays known
}

TEST_F(ResidencyTest, ManifestDtypeIsCheckedAtLoad) {
  make(8 * kBf16);
  disk_.put(path("M"), Spec{2, 2, 8, 4, DType::kF32});
  CartridgeManifest m = testing::manifest_for("M", make_cartridge(2, 2, 8, 4, DType::kBF16));
  ASSERT_TRUE(add("M", path("M"), m).ok());
  auto r = mgr_->acquire("M");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(r.status().message(), HasSubstr("dtype: manifest has bfloat16, data has float32"));
  EXPECT_FALSE(mgr_->is_resident("M"));
  EXPECT_EQ(mgr_->counters().load_failures, 1u);
  // A lease checks it too.
  EXPECT_EQ(mgr_->lease_for_load("M").status().code(), ErrorCode::kCorrupt);
  check_invariants();
}

TEST_F(ResidencyTest, ManifestShapeIsCheckedAtLoad) {
  make(8 * kBf16);
  disk_.put(path("M"), Spec{2, 2, 12, 4});
  CartridgeManifest m = testing::manifest_for("M", make_cartridge(2, 2, 8, 4));
  ASSERT_TRUE(add("M", path("M"), m).ok());
  auto r = mgr_->acquire("M");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(r.status().message(), HasSubstr("num_tokens_raw: manifest has 8, data has 12"));
  check_invariants();
}

TEST_F(ResidencyTest, ManifestChecksumIsVerifiedAtLoad) {
  make(8 * kBf16);
  testing::TempDir dir;
  const std::string file = dir.file("m.pt");
  testing::write_bytes(file, "abc");
  disk_.put(file, Spec{});
  CartridgeManifest m = testing::manifest_for("M", make_cartridge(2, 2, 8, 4));
  m.checksum = std::string(64, '0');
  ASSERT_TRUE(add("M", file, m).ok());
  auto bad = mgr_->acquire("M");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(bad.status().message(), HasSubstr("checksum"));
  EXPECT_EQ(disk_.loads(), 0);  // refused before the loader ran
  EXPECT_EQ(mgr_->lease_for_load("M").status().code(), ErrorCode::kCorrupt);
  EXPECT_EQ(disk_.loads(), 0);

  m.cartridge_id = "M2";
  m.checksum = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";  // sha256("abc")
  ASSERT_TRUE(add("M2", file, m).ok());
  EXPECT_TRUE(mgr_->acquire("M2").ok());
  EXPECT_EQ(disk_.loads(), 1);
  check_invariants();
}

TEST_F(ResidencyTest, ChecksumIsNotVerifiedWhenTurnedOff) {
  make(8 * kBf16, /*verify_checksums=*/false);
  testing::TempDir dir;
  const std::string file = dir.file("m.pt");
  testing::write_bytes(file, "abc");
  disk_.put(file, Spec{});
  CartridgeManifest m = testing::manifest_for("M", make_cartridge(2, 2, 8, 4));
  m.checksum = std::string(64, '0');
  ASSERT_TRUE(add("M", file, m).ok());
  EXPECT_TRUE(mgr_->acquire("M").ok());
  EXPECT_EQ(disk_.loads(), 1);
}

TEST_F(ResidencyTest, NoLoaderIsAnError) {
  ResidencyConfig cfg;
  cfg.host_budget_bytes = 8 * kBf16;
  ResidencyManager mgr(cfg, CartridgeLoader{});
  ASSERT_TRUE(mgr.add_cartridge("A", path("A")).ok());
  auto r = mgr.acquire("A");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), HasSubstr("no loader"));
}

// ---- explicit eviction and removal ----

TEST_F(ResidencyTest, ExplicitEvictRules) {
  make(8 * kBf16);
  Status s = mgr_->evict("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not resident"));
  ASSERT_TRUE(mgr_->acquire("A").ok());
  EXPECT_THAT(mgr_->evict("A").message(), HasSubstr("in use"));
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->pin("A").ok());
  EXPECT_THAT(mgr_->evict("A").message(), HasSubstr("pinned"));
  EXPECT_EQ(mgr_->evict("A").code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(mgr_->is_resident("A"));
  ASSERT_TRUE(mgr_->unpin("A").ok());
  EXPECT_TRUE(mgr_->evict("A").ok());
  EXPECT_FALSE(mgr_->is_resident("A"));
  EXPECT_EQ(mgr_->evict("A").code(), ErrorCode::kFailedPrecondition);  // gone already
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.host.evictions, 1u);
  EXPECT_EQ(c.host.bytes_evicted, kBf16);
  EXPECT_EQ(c.host.bytes_resident, 0u);
  EXPECT_TRUE(mgr_->knows("A"));
  check_invariants();
  ASSERT_TRUE(mgr_->acquire("A").ok());  // comes back from disk
  EXPECT_EQ(disk_.loads(), 2);
}

TEST_F(ResidencyTest, RemoveRules) {
  make(8 * kBf16);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  Status s = mgr_->remove_cartridge("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("in use in the host tier"));
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->pin("A").ok());
  s = mgr_->remove_cartridge("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("pinned in the host tier"));
  EXPECT_TRUE(mgr_->knows("A"));
  ASSERT_TRUE(mgr_->unpin("A").ok());
  {
    auto lease = mgr_->lease_for_load("A");  // a lease is a reference too
    ASSERT_TRUE(lease.ok());
    EXPECT_EQ(mgr_->remove_cartridge("A").code(), ErrorCode::kFailedPrecondition);
  }
  ASSERT_TRUE(mgr_->remove_cartridge("A").ok());
  EXPECT_FALSE(mgr_->knows("A"));
  EXPECT_FALSE(mgr_->is_resident("A"));
  paths_.erase("A");
  HostCounters c = mgr_->counters();
  EXPECT_EQ(c.host.bytes_resident, 0u);
  EXPECT_EQ(c.host.evictions, 1u);  // removal drops the host copy
  check_invariants();
  EXPECT_EQ(mgr_->acquire("A").status().code(), ErrorCode::kNotFound);
  // A cartridge never loaded can be removed too.
  EXPECT_TRUE(mgr_->remove_cartridge("B").ok());
  EXPECT_EQ(mgr_->counters().host.evictions, 1u);
  // The id can be added again, and loads from its (new) path.
  disk_.put("/carts/A2.pt", Spec{2, 2, 8, 4, DType::kBF16, 42});
  ASSERT_TRUE(add("A", "/carts/A2.pt").ok());
  auto r = mgr_->acquire("A");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(value_at(**r, 0, 0, 0, 0, 0), cartridge_value(42, 0, 0, 0, 0, 0));
  check_invariants();
}

TEST_F(ResidencyTest, AddRules) {
  make(8 * kBf16);
  Status s = add("A", path("A"));
  EXPECT_EQ(s.code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(add("", path("A")).code(), ErrorCode::kInvalidArgument);
  CartridgeManifest bad = testing::manifest_for("X", make_cartridge(1, 1, 8, 4));
  bad.num_blocks = 9;
  s = add("X", path("X"), bad);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("num_blocks"));
  EXPECT_FALSE(mgr_->knows("X"));
  // Adding reads nothing, with or without a manifest.
  ASSERT_TRUE(add("Y", path("Y"), testing::manifest_for("Y", make_cartridge(1, 1, 8, 4))).ok());
  EXPECT_TRUE(mgr_->knows("Y"));
  EXPECT_EQ(disk_.loads(), 0);
}

// ---- the invariant under a random sequence ----

// Model of what callers hold; the manager must agree with it after every
// operation, and every refusal must be justified by the model.
class ResidencyRandom : public ::testing::TestWithParam<uint32_t> {};

TEST_P(ResidencyRandom, InvariantsHoldAfterEveryOperation) {
  // 2 layers x 2 heads x T tokens x 4 dims: 64*T bytes in bf16 / fp16, 128*T in fp32.
  const std::vector<std::pair<int, DType>> shapes = {
      {4, DType::kBF16},  {8, DType::kBF16},  {12, DType::kF32},
      {16, DType::kBF16}, {24, DType::kF16},  {32, DType::kBF16},
      {48, DType::kF32},  {80, DType::kBF16}, {100, DType::kBF16}};
  FakeDisk disk;
  std::vector<std::string> ids;
  std::map<std::string, uint64_t> size;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string id = fmt::format("r{}", i);
    const auto [tokens, dtype] = shapes[i];
    disk.put(id, Spec{2, 2, tokens, 4, dtype, static_cast<int>(i)});
    ids.push_back(id);
    size[id] = expected_kv_bytes(2, 2, tokens, 4, dtype);
  }
  ResidencyConfig cfg;
  cfg.host_budget_bytes = 6144;  // r6 fits exactly, r8 never
  ResidencyManager mgr(cfg, disk.loader());
  for (const auto& id : ids)
    ASSERT_TRUE(mgr.add_cartridge(id, id).ok());

  std::map<std::string, int64_t> refs;      // acquires and placed leases
  std::map<std::string, int64_t> acquired;  // of those, acquires
  std::map<std::string, bool> pinned;
  std::vector<std::pair<std::string, HostLease>> leases;
  uint64_t requests = 0;  // acquires and leases: each is a hit or a miss
  // Bytes that nothing may evict (referenced or pinned).
  auto protected_bytes = [&] {
    uint64_t b = 0;
    for (const auto& id : ids) {
      if (refs[id] > 0 || pinned[id]) b += size[id];
    }
    return b;
  };
  // A refusal to bring `id` in must be justified.
  auto check_refusal = [&](const Status& s, const std::string& id) {
    const uint64_t budget = cfg.host_budget_bytes;
    if (s.code() == ErrorCode::kOutOfRange) {
      EXPECT_GT(size[id], budget) << id << " " << s.message();
    } else if (s.code() == ErrorCode::kResourceExhausted) {
      EXPECT_GT(protected_bytes() + size[id], budget) << id << " " << s.message();
    } else if (s.code() == ErrorCode::kFailedPrecondition) {
      uint64_t pinned_bytes = 0;  // pinned bytes alone leave no room
      for (const auto& other : ids) {
        if (pinned[other]) pinned_bytes += size[other];
      }
      EXPECT_GT(pinned_bytes + size[id], budget) << id << " " << s.message();
    } else {
      ADD_FAILURE() << "unexpected refusal: " << s.to_string();
    }
  };
  auto check_data = [&](const std::string& id, const CartridgeData& d) {
    const int seed = std::stoi(id.substr(1));
    EXPECT_EQ(d.nbytes(), size[id]) << id;
    EXPECT_EQ(value_at(d, 1, 1, 0, 0, 1), cartridge_value(seed, 1, 1, 0, 0, 1)) << id;
  };

  std::mt19937 rng(GetParam());
  int successes = 0, refusals = 0, transient = 0, placed = 0;
  for (int step = 0; step < 6000; ++step) {
    const std::string& id = ids[rng() % ids.size()];
    const int op = static_cast<int>(rng() % 9);
    SCOPED_TRACE(::testing::Message() << "step " << step << " op " << op << " " << id);
    switch (op) {
      case 0: {  // acquire
        ++requests;
        auto r = mgr.acquire(id);
        if (r.ok()) {
          ++refs[id];
          ++acquired[id];
          ++successes;
          check_data(id, **r);
        } else {
          check_refusal(r.status(), id);
          ++refusals;
        }
        break;
      }
      case 1:
      case 2: {  // release: mostly something acquired, sometimes anything (must be refused)
        std::string rid = id;
        std::vector<std::string> held;
        for (const auto& [hid, n] : acquired) {
          if (n > 0) held.push_back(hid);
        }
        if (!held.empty() && rng() % 4 != 0) rid = held[rng() % held.size()];
        if (acquired[rid] == 0 && refs[rid] > 0) break;  // only leases hold it: theirs to release
        Status s = mgr.release(rid);
        if (acquired[rid] > 0) {
          EXPECT_TRUE(s.ok()) << s.to_string();
          --acquired[rid];
          --refs[rid];
        } else {
          EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
        }
        break;
      }
      case 3: {                // pin
        if (rng() % 2) break;  // pins are rarer
        Status s = mgr.pin(id);
        if (s.ok()) {
          pinned[id] = true;
        } else {
          check_refusal(s, id);
        }
        break;
      }
      case 4: {  // unpin
        Status s = mgr.unpin(id);
        EXPECT_EQ(s.ok(), pinned[id]) << s.to_string();
        pinned[id] = false;
        break;
      }
      case 5: {  // prefetch
        Status s = mgr.prefetch(id);
        if (!s.ok()) check_refusal(s, id);
        break;
      }
      case 6: {  // explicit eviction
        const bool was = mgr.is_resident(id);
        Status s = mgr.evict(id);
        EXPECT_EQ(s.ok(), was && refs[id] == 0 && !pinned[id]) << s.to_string();
        if (s.ok()) {
          EXPECT_FALSE(mgr.is_resident(id));
        }
        break;
      }
      case 7: {  // lease for a load
        ++requests;
        const bool was = mgr.is_resident(id);
        auto l = mgr.lease_for_load(id);
        ASSERT_TRUE(l.ok()) << l.status().to_string();  // never refused: transient at worst
        ASSERT_NE(l->data(), nullptr);
        check_data(id, *l->data());
        const bool is_placed = mgr.is_resident(id) && mgr.ref_count(id) == refs[id] + 1;
        if (is_placed) {
          ++refs[id];
          ++placed;
          leases.emplace_back(id, std::move(*l));
        } else {
          // Transient: only when the tier had no room for it.
          EXPECT_FALSE(was) << "a resident cartridge was leased as a transient copy";
          EXPECT_TRUE(size[id] > cfg.host_budget_bytes ||
                      protected_bytes() + size[id] > cfg.host_budget_bytes)
              << "a transient copy although the tier had room";
          EXPECT_EQ(mgr.ref_count(id), refs[id]);
          ++transient;
        }
        break;
      }
      case 8: {  // a lease dies
        if (leases.empty()) break;
        const size_t k = rng() % leases.size();
        const std::string lid = leases[k].first;
        leases.erase(leases.begin() + static_cast<std::ptrdiff_t>(k));
        --refs[lid];
        break;
      }
    }
    // Invariants after every operation.
    const HostCounters c = mgr.counters();
    const TierCounters& h = c.host;
    ASSERT_EQ(h.bytes_promoted - h.bytes_evicted, h.bytes_resident);
    ASSERT_LE(h.bytes_resident, h.budget_bytes);
    ASSERT_EQ(h.promotions - h.evictions, h.entries);
    ASSERT_EQ(h.hits + h.misses, requests);
    uint64_t sum = 0;
    const auto lru = mgr.lru_order();
    ASSERT_EQ(lru.size(), h.entries);
    for (const auto& rid : lru)
      sum += size[rid];
    ASSERT_EQ(sum, h.bytes_resident);
    size_t n_pinned = 0, n_referenced = 0;
    for (const auto& rid : ids) {
      ASSERT_EQ(mgr.ref_count(rid), refs[rid]) << rid;
      ASSERT_EQ(mgr.is_pinned(rid), pinned[rid]) << rid;
      if (refs[rid] > 0 || pinned[rid]) {
        ASSERT_TRUE(mgr.is_resident(rid)) << rid << " was evicted while protected";
      }
      n_pinned += pinned[rid] ? 1 : 0;
      n_referenced += refs[rid] > 0 ? 1 : 0;
    }
    ASSERT_EQ(h.pinned, n_pinned);
    ASSERT_EQ(h.referenced, n_referenced);
  }
  // The sequence exercised every outcome.
  const HostCounters c = mgr.counters();
  EXPECT_GT(successes, 300);
  EXPECT_GT(refusals, 100);
  EXPECT_GT(placed, 50);
  EXPECT_GT(transient, 20);
  EXPECT_GT(c.host.evictions, 150u);
  // Everything let go: nothing referenced remains.
  leases.clear();
  for (auto& [id, n] : acquired) {
    for (; n > 0; --n)
      ASSERT_TRUE(mgr.release(id).ok());
  }
  EXPECT_EQ(mgr.counters().host.referenced, 0u);
}

INSTANTIATE_TEST_SUITE_P(Seeds, ResidencyRandom, ::testing::Values(1u, 42u, 2026u));

// ---- threads ----

TEST_F(ResidencyTest, ConcurrentAcquiresOfOneCartridgeLoadOnce) {
  make(8 * kBf16);
  disk_.hold(true);
  constexpr int kThreads = 8;
  std::vector<std::thread> ts;
  std::atomic<int> ok{0};
  std::atomic<const CartridgeData*> first{nullptr};
  std::atomic<int> same{0};
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&] {
      auto r = mgr_->acquire("A");
      if (r.ok() && value_at(**r, 0, 0, 0, 0, 0) == cartridge_value(1, 0, 0, 0, 0, 0)) {
        ++ok;
        const CartridgeData* expected = nullptr;
        if (!first.compare_exchange_strong(expected, r->get()) && expected == r->get()) ++same;
      }
    });
  }
  disk_.wait_loading(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the others queue up
  disk_.hold(false);
  for (auto& th : ts)
    th.join();
  EXPECT_EQ(ok.load(), kThreads);
  EXPECT_EQ(same.load(), kThreads - 1);  // every thread got the one copy
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.disk_loads, 1u);
  EXPECT_EQ(disk_.loads(), 1);
  EXPECT_EQ(c.host.promotions, 1u);
  EXPECT_EQ(c.host.hits + c.host.misses, static_cast<uint64_t>(kThreads));
  EXPECT_EQ(mgr_->ref_count("A"), kThreads);
  check_invariants();
}

TEST_F(ResidencyTest, ConcurrentAcquiresOfAFailingCartridgeAllFail) {
  make(8 * kBf16);
  disk_.fail(path("A"), true);
  disk_.hold(true);
  constexpr int kThreads = 4;
  std::vector<std::thread> ts;
  std::atomic<int> io_errors{0};
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&] {
      auto r = mgr_->acquire("A");
      if (!r.ok() && r.status().code() == ErrorCode::kIo) ++io_errors;
    });
  }
  disk_.wait_loading(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the others queue up
  disk_.hold(false);
  for (auto& th : ts)
    th.join();
  EXPECT_EQ(io_errors.load(), kThreads);
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.host.hits + c.host.misses, static_cast<uint64_t>(kThreads));  // one each
  EXPECT_EQ(c.load_failures, static_cast<uint64_t>(disk_.loads()));
  EXPECT_EQ(c.disk_loads, 0u);
  EXPECT_EQ(mgr_->ref_count("A"), 0);
  EXPECT_FALSE(mgr_->is_resident("A"));
  check_invariants();
}

TEST_F(ResidencyTest, ConcurrentLeasesOfOneCartridgeLoadOnce) {
  make(8 * kBf16);
  disk_.hold(true);
  constexpr int kThreads = 6;
  std::vector<std::thread> ts;
  std::vector<HostLease> leases(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      auto l = mgr_->lease_for_load("B");
      if (l.ok()) leases[static_cast<size_t>(t)] = std::move(*l);
    });
  }
  disk_.wait_loading(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  disk_.hold(false);
  for (auto& th : ts)
    th.join();
  EXPECT_EQ(disk_.loads(), 1);
  EXPECT_EQ(mgr_->ref_count("B"), kThreads);
  for (const auto& l : leases) {
    ASSERT_NE(l.data(), nullptr);
    EXPECT_EQ(l.data(), leases[0].data());
  }
  leases.clear();
  EXPECT_EQ(mgr_->ref_count("B"), 0);
  check_invariants();
}

TEST_F(ResidencyTest, SlowLoadDoesNotBlockOtherCartridges) {
  make(8 * kBf16);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->release("A").ok());
  disk_.hold(true);
  std::thread slow([&] { EXPECT_TRUE(mgr_->acquire("B").ok()); });
  disk_.wait_loading(1);
  // B is being read from disk; A is served meanwhile.
  auto a = mgr_->acquire("A");
  EXPECT_TRUE(a.ok());
  EXPECT_TRUE(mgr_->release("A").ok());
  EXPECT_TRUE(mgr_->pin("A").ok());
  EXPECT_TRUE(mgr_->unpin("A").ok());
  EXPECT_TRUE(mgr_->knows("B"));
  EXPECT_FALSE(mgr_->is_resident("B"));
  Status ev = mgr_->evict("B");
  EXPECT_EQ(ev.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(ev.message(), HasSubstr("being loaded"));
  Status rm = mgr_->remove_cartridge("B");
  EXPECT_EQ(rm.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(rm.message(), HasSubstr("being loaded"));
  disk_.hold(false);
  slow.join();
  EXPECT_TRUE(mgr_->is_resident("B"));
  EXPECT_EQ(mgr_->ref_count("B"), 1);
  check_invariants();
}

TEST_F(ResidencyTest, MultiThreadedStress) {
  // Six cartridges, room for three.
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    ids.push_back(fmt::format("s{}", i));
    disk_.put(path(ids.back()), Spec{2, 2, 8, 4, DType::kBF16, 10 + i});
  }
  make(3 * kBf16);
  for (const auto& id : ids)
    ASSERT_TRUE(add(id, path(id)).ok());
  constexpr int kThreads = 6, kOps = 1500;
  std::atomic<int> errors{0}, served{0}, refused{0}, leased{0};
  std::latch start(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      start.arrive_and_wait();
      std::mt19937 rng(77 + t);
      for (int op = 0; op < kOps; ++op) {
        const int k = static_cast<int>(rng() % ids.size());
        const std::string& id = ids[k];
        switch (rng() % 5) {
          case 0:
          case 1: {
            auto r = mgr_->acquire(id);
            if (!r.ok()) {
              if (r.status().code() != ErrorCode::kResourceExhausted) ++errors;
              ++refused;
              break;
            }
            ++served;
            // While held, the copy is this cartridge's.
            for (int l = 0; l < 2; ++l) {
              if (value_at(**r, l, 0, 1, 2, 1) != cartridge_value(10 + k, l, 0, 1, 2, 1)) ++errors;
            }
            std::this_thread::yield();
            if (!mgr_->release(id).ok()) ++errors;
            break;
          }
          case 2: {
            auto l = mgr_->lease_for_load(id);
            if (!l.ok() || !l->data()) {
              ++errors;
              break;
            }
            ++leased;
            if (value_at(*l->data(), 1, 1, 0, 3, 2) != cartridge_value(10 + k, 1, 1, 0, 3, 2)) {
              ++errors;
            }
            break;
          }
          case 3: {
            Status s = mgr_->prefetch(id);
            if (!s.ok() && s.code() != ErrorCode::kResourceExhausted) ++errors;
            break;
          }
          case 4: {
            Status s = mgr_->evict(id);
            if (!s.ok() && s.code() != ErrorCode::kFailedPrecondition) ++errors;
            break;
          }
        }
      }
    });
  }
  for (auto& th : ts)
    th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(served.load(), 1000);
  EXPECT_GT(leased.load(), 500);
  for (const auto& id : ids)
    EXPECT_EQ(mgr_->ref_count(id), 0) << id;
  check_invariants();
  const HostCounters c = mgr_->counters();
  EXPECT_EQ(c.host.hits + c.host.misses, static_cast<uint64_t>(served + refused + leased));
  EXPECT_EQ(c.host.referenced, 0u);
}

}  // namespace
}  // namespace cartserve
