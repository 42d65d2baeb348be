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

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Spec> files_;
  std::set<std::string> failing_;
  bool hold_ = false;
  int loads_ = 0;
  int waiting_ = 0;
};

// 2 layers x 2 heads x 8 tokens x 4 dims: 512 bytes in bf16, 1024 in fp32.
constexpr uint64_t kBf16 = 512, kF32 = 1024;

class ResidencyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* id : {"A", "B", "C", "D"}) {
      disk_.put(path(id), Spec{2, 2, 8, 4, DType::kBF16, id[0] - 'A' + 1});
    }
  }
  static std::string path(const std::string& id) { return fmt::format("/carts/{}.pt", id); }

  // Budgets in cartridges' worth (host in bf16, device in fp32 by default).
  void make(uint64_t host_bytes, uint64_t device_bytes,
            std::optional<DType> device_dtype = DType::kF32,
            KvLayout layout = KvLayout::kTokenMajor) {
    ResidencyConfig cfg;
    cfg.host_budget_bytes = host_bytes;
    cfg.device_budget_bytes = device_bytes;
    cfg.device_dtype = device_dtype;
    cfg.device_layout = layout;
    alloc_ = std::make_shared<HostDeviceAllocator>();
    mgr_ = std::make_unique<ResidencyManager>(cfg, disk_.loader(), alloc_);
    for (const char* id : {"A", "B", "C", "D"}) {
      ASSERT_TRUE(mgr_->add_cartridge(id, path(id)).ok());
    }
  }

  // Per tier: promoted - evicted == resident, within budget, nothing in
  // flight, LRU lists match entries, device bytes match the allocator.
  void check_invariants() const {
    const ResidencyCounters c = mgr_->counters();
    for (Tier t : {Tier::kHost, Tier::kDevice}) {
      const TierCounters& tc = c.tier(t);
      EXPECT_EQ(tc.bytes_promoted - tc.bytes_evicted, tc.bytes_resident) << tier_name(t);
      EXPECT_LE(tc.bytes_resident, tc.budget_bytes) << tier_name(t);
      EXPECT_EQ(tc.bytes_reserved, 0u) << tier_name(t);
      EXPECT_EQ(mgr_->lru_order(t).size(), tc.entries) << tier_name(t);
      EXPECT_EQ(tc.promotions - tc.evictions, tc.entries) << tier_name(t);
    }
    EXPECT_EQ(alloc_->bytes_in_use(), c.device.bytes_resident);
    EXPECT_EQ(alloc_->live_allocations(), c.device.entries);
  }

  FakeDisk disk_;
  std::shared_ptr<HostDeviceAllocator> alloc_;
  std::unique_ptr<ResidencyManager> mgr_;
};

// ---- basics ----

TEST_F(ResidencyTest, NothingIsResidentUntilAsked) {
  make(100 * kBf16, 5 * kF32);
  for (int i = 0; i < 100; ++i) {
    const std::string id = fmt::format("x{}", i);
    disk_.put(path(id), Spec{});
    ASSERT_TRUE(mgr_->add_cartridge(id, path(id)).ok());
  }
  const ResidencyCounters c = mgr_->counters();
  EXPECT_EQ(c.host.entries, 0u);
  EXPECT_EQ(c.device.entries, 0u);
  EXPECT_EQ(c.device.bytes_resident, 0u);
  EXPECT_EQ(disk_.loads(), 0);
  EXPECT_EQ(alloc_->total_allocations(), 0u);
}

TEST_F(ResidencyTest, FirstAcquirePromotesDiskToHostToDevice) {
  make(4 * kBf16, 4 * kF32);
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
  auto r = mgr_->acquire("A");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kHost));
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kDevice));
  const ResidencyCounters c = mgr_->counters();
  EXPECT_EQ(c.disk_loads, 1u);
  EXPECT_EQ(c.device.misses, 1u);
  EXPECT_EQ(c.device.hits, 0u);
  EXPECT_EQ(c.host.misses, 1u);
  EXPECT_EQ(c.device.promotions, 1u);
  EXPECT_EQ(c.host.promotions, 1u);
  EXPECT_EQ(c.device.bytes_promoted, kF32);
  EXPECT_EQ(c.host.bytes_promoted, kBf16);
  EXPECT_EQ(c.device.referenced, 1u);
  EXPECT_EQ(r->nbytes, kF32);
  EXPECT_EQ(r->nbytes, expected_kv_bytes(2, 2, 8, 4, DType::kF32));
  check_invariants();
}

TEST_F(ResidencyTest, SecondAcquireHitsWithoutCopying) {
  make(4 * kBf16, 4 * kF32);
  auto first = mgr_->acquire("A");
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(mgr_->release("A").ok());
  auto second = mgr_->acquire("A");
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->data, first->data);  // same device copy
  const ResidencyCounters c = mgr_->counters();
  EXPECT_EQ(c.device.misses, 1u);
  EXPECT_EQ(c.device.hits, 1u);
  EXPECT_EQ(c.device.promotions, 1u);
  EXPECT_EQ(c.device.bytes_promoted, kF32);
  EXPECT_EQ(disk_.loads(), 1);
  EXPECT_EQ(alloc_->bytes_copied_from_host(), kF32);
  ASSERT_TRUE(mgr_->release("A").ok());
  check_invariants();
}

TEST_F(ResidencyTest, HitMissCountersOverRepeatedUse) {
  make(4 * kBf16, 4 * kF32);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(mgr_->acquire("A").ok());
    ASSERT_TRUE(mgr_->release("A").ok());
  }
  const ResidencyCounters c = mgr_->counters();
  EXPECT_EQ(c.device.misses, 1u);
  EXPECT_EQ(c.device.hits, 2u);
  EXPECT_EQ(c.device.promotions, 1u);
  EXPECT_EQ(c.host.misses, 1u);
  EXPECT_EQ(c.host.hits, 0u);  // the host was not asked again
}

// ---- device copy contents and layout ----

TEST_F(ResidencyTest, TokenMajorFp32CopyHoldsTheFileValues) {
  make(4 * kBf16, 4 * kF32, DType::kF32, KvLayout::kTokenMajor);
  auto r = mgr_->acquire("B");  // seed 2
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->dtype, DType::kF32);
  EXPECT_EQ(r->layout, KvLayout::kTokenMajor);
  EXPECT_EQ(r->tensor_bytes(), 2u * 8 * 4 * 4);
  int checked = 0;
  for (int l = 0; l < 2; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const float* p = static_cast<const float*>(kind == 0 ? r->keys(l) : r->values(l));
      for (int t = 0; t < 8; ++t) {
        for (int h = 0; h < 2; ++h) {
          for (int d = 0; d < 4; ++d) {
            // [T, H, D] on the device, [H, T, D] in the file.
            ASSERT_EQ(p[(t * 2 + h) * 4 + d], cartridge_value(2, l, kind, h, t, d))
                << l << kind << t << h << d;
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_EQ(checked, 2 * 2 * 8 * 2 * 4);
}

TEST_F(ResidencyTest, HeadMajorSameDtypeIsAByteCopy) {
  make(4 * kBf16, 4 * kBf16, std::nullopt, KvLayout::kHeadMajor);
  auto host = mgr_->acquire_host("C");
  ASSERT_TRUE(host.ok());
  auto r = mgr_->acquire("C");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->dtype, DType::kBF16);
  EXPECT_EQ(r->nbytes, kBf16);
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(std::memcmp(r->keys(l), (*host)->keys[l].raw(), r->tensor_bytes()), 0);
    EXPECT_EQ(std::memcmp(r->values(l), (*host)->values[l].raw(), r->tensor_bytes()), 0);
  }
}

TEST_F(ResidencyTest, Fp16FileBecomesBf16OnTheDevice) {
  disk_.put(path("H"), Spec{1, 3, 5, 4, DType::kF16, 7});
  make(4 * kBf16, 4 * kF32, DType::kBF16, KvLayout::kTokenMajor);
  ASSERT_TRUE(mgr_->add_cartridge("H", path("H")).ok());
  auto r = mgr_->acquire("H");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->dtype, DType::kBF16);
  const auto* p = static_cast<const uint16_t*>(r->values(0));
  for (int t = 0; t < 5; ++t) {
    for (int h = 0; h < 3; ++h) {
      for (int d = 0; d < 4; ++d) {
        ASSERT_EQ(bf16_to_f32(p[(t * 3 + h) * 4 + d]), cartridge_value(7, 0, 1, h, t, d));
      }
    }
  }
}

TEST_F(ResidencyTest, ManyCartridgesKeepTheirOwnData) {
  make(4 * kBf16, 4 * kF32);
  std::map<std::string, ResidentCartridge> held;
  for (const char* id : {"A", "B", "C", "D"}) {
    auto r = mgr_->acquire(id);
    ASSERT_TRUE(r.ok());
    held[id] = *r;
  }
  std::set<const void*> ptrs;
  for (const auto& [id, r] : held) {
    ptrs.insert(r.data);
    const int seed = id[0] - 'A' + 1;
    EXPECT_EQ(static_cast<const float*>(r.keys(1))[0], cartridge_value(seed, 1, 0, 0, 0, 0)) << id;
  }
  EXPECT_EQ(ptrs.size(), 4u);
}

TEST_F(ResidencyTest, DeviceDtypeDefaultsToTheFileDtype) {
  make(4 * kBf16, 4 * kF32, std::nullopt);
  auto r = mgr_->acquire("A");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->dtype, DType::kBF16);
  EXPECT_EQ(r->nbytes, kBf16);
}

TEST_F(ResidencyTest, DeviceCopyQueryNeedsResidency) {
  make(4 * kBf16, 4 * kF32);
  auto none = mgr_->device_copy("A");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(none.status().message(), HasSubstr("not resident"));
  auto r = mgr_->acquire("A");
  ASSERT_TRUE(r.ok());
  auto q = mgr_->device_copy("A");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->data, r->data);
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 1);  // the query took no reference
}

// ---- references ----

TEST_F(ResidencyTest, UnknownIdsAreNotFound) {
  make(4 * kBf16, 4 * kF32);
  auto r = mgr_->acquire("nope");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("'nope'"));
  EXPECT_EQ(mgr_->release("nope").code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->pin("nope", Tier::kDevice).code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->prefetch("nope", Tier::kHost).code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->evict("nope", Tier::kHost).code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->remove_cartridge("nope").code(), ErrorCode::kNotFound);
  EXPECT_EQ(mgr_->acquire_host("nope").status().code(), ErrorCode::kNotFound);
}

TEST_F(ResidencyTest, ReleaseWithoutAcquireIsAnError) {
  make(4 * kBf16, 4 * kF32);
  Status s = mgr_->release("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("without a matching acquire"));
  ASSERT_TRUE(mgr_->acquire("A").ok());
  EXPECT_EQ(mgr_->release("A", Tier::kHost).code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(mgr_->release("A").ok());
  EXPECT_FALSE(mgr_->release("A").ok());
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 0);
}

TEST_F(ResidencyTest, RefCountsAddUp) {
  make(4 * kBf16, 4 * kF32);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->acquire("A").ok());
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 2);
  EXPECT_EQ(mgr_->ref_count("A", Tier::kHost), 0);  // a device reference holds only the device copy
  ASSERT_TRUE(mgr_->release("A").ok());
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 1);
  ASSERT_TRUE(mgr_->release("A").ok());
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 0);
}

TEST_F(ResidencyTest, LeaseReleasesWhenDestroyedAndMoves) {
  make(4 * kBf16, 4 * kF32);
  {
    auto lease = mgr_->lease("A");
    ASSERT_TRUE(lease.ok());
    EXPECT_TRUE(lease->valid());
    EXPECT_EQ(lease->cartridge().cartridge_id, "A");
    EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 1);
    ResidencyLease moved = std::move(*lease);
    EXPECT_FALSE(lease->valid());
    EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 1);
    ResidencyLease other;
    other = std::move(moved);
    EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 1);
  }
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 0);
  auto l2 = mgr_->lease("B");
  ASSERT_TRUE(l2.ok());
  l2->reset();
  EXPECT_EQ(mgr_->ref_count("B", Tier::kDevice), 0);
  EXPECT_FALSE(mgr_->lease("nope").ok());
}

// ---- LRU ----

TEST_F(ResidencyTest, LruEvictsTheOldestIdleCartridge) {
  make(8 * kBf16, 2 * kF32);
  for (const char* id : {"A", "B"}) {
    ASSERT_TRUE(mgr_->acquire(id).ok());
    ASSERT_TRUE(mgr_->release(id).ok());
  }
  EXPECT_THAT(mgr_->lru_order(Tier::kDevice), ElementsAre("A", "B"));
  ASSERT_TRUE(mgr_->acquire("C").ok());
  ASSERT_TRUE(mgr_->release("C").ok());
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
  EXPECT_TRUE(mgr_->is_resident("B", Tier::kDevice));
  EXPECT_TRUE(mgr_->is_resident("C", Tier::kDevice));
  EXPECT_THAT(mgr_->lru_order(Tier::kDevice), ElementsAre("B", "C"));
  EXPECT_EQ(mgr_->counters().device.evictions, 1u);
  EXPECT_EQ(mgr_->counters().device.bytes_evicted, kF32);
  check_invariants();
}

TEST_F(ResidencyTest, UseMovesToMostRecentlyUsed) {
  make(8 * kBf16, 2 * kF32);
  for (const char* id : {"A", "B", "A"}) {
    ASSERT_TRUE(mgr_->acquire(id).ok());
    ASSERT_TRUE(mgr_->release(id).ok());
  }
  EXPECT_THAT(mgr_->lru_order(Tier::kDevice), ElementsAre("B", "A"));
  ASSERT_TRUE(mgr_->acquire("C").ok());
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kDevice));
  EXPECT_FALSE(mgr_->is_resident("B", Tier::kDevice));
}

TEST_F(ResidencyTest, ReleaseCountsAsUse) {
  make(8 * kBf16, 3 * kF32);
  ASSERT_TRUE(mgr_->acquire("A").ok());  // a long request on A
  ASSERT_TRUE(mgr_->acquire("B").ok());
  ASSERT_TRUE(mgr_->release("B").ok());
  ASSERT_TRUE(mgr_->release("A").ok());  // A finished last
  EXPECT_THAT(mgr_->lru_order(Tier::kDevice), ElementsAre("B", "A"));
}

TEST_F(ResidencyTest, ReplacedCartridgeComesBackCleanly) {
  make(8 * kBf16, kF32 + kF32 / 2);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->acquire("B").ok());
  ASSERT_TRUE(mgr_->release("B").ok());
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
  const uint64_t before = mgr_->counters().device.promotions;
  auto r = mgr_->acquire("A");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(mgr_->counters().device.promotions, before + 1);
  EXPECT_EQ(static_cast<const float*>(r->keys(0))[0], cartridge_value(1, 0, 0, 0, 0, 0));
  EXPECT_EQ(disk_.loads(), 2);  // A's host copy survived: only A and B were read
  check_invariants();
}

TEST_F(ResidencyTest, HostTierHasItsOwnLru) {
  make(2 * kBf16, 8 * kF32);
  for (const char* id : {"A", "B", "C"}) {
    ASSERT_TRUE(mgr_->acquire(id).ok());
    ASSERT_TRUE(mgr_->release(id).ok());
  }
  EXPECT_THAT(mgr_->lru_order(Tier::kHost), ElementsAre("B", "C"));
  EXPECT_THAT(mgr_->lru_order(Tier::kDevice), ElementsAre("A", "B", "C"));
  check_invariants();
}

// ---- protection: references and pins ----

TEST_F(ResidencyTest, ReferencedCartridgeIsNeverEvicted) {
  make(8 * kBf16, kF32 + kF32 / 2);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  auto b = mgr_->acquire("B");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("cannot fit in the device tier now"));
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kDevice));
  EXPECT_FALSE(mgr_->is_resident("B", Tier::kDevice));
  EXPECT_EQ(mgr_->counters().device.evictions, 0u);
  check_invariants();
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->acquire("B").ok());  // now A is idle and goes
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
}

TEST_F(ResidencyTest, EvictionSkipsReferencedAndTakesTheNextIdle) {
  make(8 * kBf16, 2 * kF32);
  ASSERT_TRUE(mgr_->acquire("A").ok());  // oldest, but referenced
  ASSERT_TRUE(mgr_->acquire("B").ok());
  ASSERT_TRUE(mgr_->release("B").ok());
  ASSERT_TRUE(mgr_->acquire("C").ok());
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kDevice));
  EXPECT_FALSE(mgr_->is_resident("B", Tier::kDevice));
  EXPECT_TRUE(mgr_->is_resident("C", Tier::kDevice));
}

TEST_F(ResidencyTest, PinnedCartridgeSurvivesPressure) {
  make(8 * kBf16, 2 * kF32);
  ASSERT_TRUE(mgr_->pin("A", Tier::kDevice).ok());
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kDevice));
  EXPECT_TRUE(mgr_->is_pinned("A", Tier::kDevice));
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 0);
  for (const char* id : {"B", "C", "D", "B", "C"}) {
    ASSERT_TRUE(mgr_->acquire(id).ok()) << id;
    ASSERT_TRUE(mgr_->release(id).ok());
  }
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kDevice));
  ASSERT_TRUE(mgr_->unpin("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->acquire("D").ok());
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));  // oldest idle now
  check_invariants();
}

TEST_F(ResidencyTest, AllPinnedMeansNoRoomUntilAnUnpin) {
  // Pins never go away by themselves: not "cannot fit now" (wait) but a
  // precondition only an unpin changes.
  make(8 * kBf16, 2 * kF32);
  ASSERT_TRUE(mgr_->pin("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->pin("B", Tier::kDevice).ok());
  auto c = mgr_->acquire("C");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(c.status().message(), HasSubstr("2 pinned"));
  EXPECT_FALSE(mgr_->is_resident("C", Tier::kDevice));
  EXPECT_EQ(mgr_->ref_count("C", Tier::kDevice), 0);
  check_invariants();
}

TEST_F(ResidencyTest, PinIsIdempotentAndUnpinNeedsAPin) {
  make(8 * kBf16, 2 * kF32);
  ASSERT_TRUE(mgr_->pin("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->pin("A", Tier::kDevice).ok());
  EXPECT_EQ(mgr_->counters().device.promotions, 1u);
  ASSERT_TRUE(mgr_->unpin("A", Tier::kDevice).ok());
  Status s = mgr_->unpin("A", Tier::kDevice);
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not pinned in the device tier"));
  EXPECT_EQ(mgr_->unpin("B", Tier::kHost).code(), ErrorCode::kFailedPrecondition);
}

TEST_F(ResidencyTest, HostPinProtectsTheHostCopy) {
  make(2 * kBf16, 8 * kF32);
  ASSERT_TRUE(mgr_->pin("A", Tier::kHost).ok());
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kHost));
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
  for (const char* id : {"B", "C", "D"})
    ASSERT_TRUE(mgr_->prefetch(id, Tier::kHost).ok()) << id;
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kHost));
  EXPECT_THAT(mgr_->lru_order(Tier::kHost), ElementsAre("A", "D"));
  check_invariants();
}

// ---- budgets: will never fit vs cannot fit now ----

TEST_F(ResidencyTest, TooBigForTheDeviceWillNeverFit) {
  make(8 * kBf16, kF32 / 2);
  auto r = mgr_->acquire("A");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kOutOfRange);
  EXPECT_THAT(r.status().message(), HasSubstr("will never fit in the device tier"));
  EXPECT_THAT(r.status().message(), HasSubstr("1024 bytes"));
  EXPECT_THAT(r.status().message(), HasSubstr("budget is 512"));
  check_invariants();
}

TEST_F(ResidencyTest, NeverFitIsKnownWithoutReadingWhenAManifestIsGiven) {
  make(8 * kBf16, kF32 / 2);
  disk_.put(path("M"), Spec{});
  const CartridgeManifest m = testing::manifest_for("M", make_cartridge(2, 2, 8, 4));
  ASSERT_TRUE(mgr_->add_cartridge("M", path("M"), m).ok());
  auto r = mgr_->acquire("M");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(disk_.loads(), 0);
}

TEST_F(ResidencyTest, NeverFitsTheHost) {
  make(kBf16 / 2, 8 * kF32);
  auto r = mgr_->acquire_host("A");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kOutOfRange);
  EXPECT_THAT(r.status().message(), HasSubstr("will never fit in the host tier"));
  EXPECT_EQ(mgr_->prefetch("A", Tier::kHost).code(), ErrorCode::kOutOfRange);
  EXPECT_EQ(mgr_->pin("A", Tier::kHost).code(), ErrorCode::kOutOfRange);
  EXPECT_FALSE(mgr_->is_pinned("A", Tier::kHost));
  check_invariants();
}

TEST_F(ResidencyTest, DeviceStillWorksThroughATransientHostCopy) {
  make(0, 8 * kF32);  // no host caching at all
  auto r = mgr_->acquire("A");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kHost));
  EXPECT_EQ(static_cast<const float*>(r->values(1))[3], cartridge_value(1, 1, 1, 0, 0, 3));
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->evict("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->acquire("A").ok());
  EXPECT_EQ(disk_.loads(), 2);  // nothing kept in between
  EXPECT_EQ(mgr_->counters().host.bytes_resident, 0u);
  check_invariants();
}

TEST_F(ResidencyTest, CannotFitNowThenFitsAfterRelease) {
  make(8 * kBf16, 2 * kF32);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->acquire("B").ok());
  EXPECT_EQ(mgr_->acquire("C").status().code(), ErrorCode::kResourceExhausted);
  ASSERT_TRUE(mgr_->release("B").ok());
  EXPECT_TRUE(mgr_->acquire("C").ok());
  check_invariants();
}

// ---- prefetch ----

TEST_F(ResidencyTest, PrefetchPromotesWithoutAReference) {
  make(8 * kBf16, 4 * kF32);
  ASSERT_TRUE(mgr_->prefetch("A", Tier::kDevice).ok());
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kDevice));
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 0);
  const ResidencyCounters c = mgr_->counters();
  EXPECT_EQ(c.device.hits + c.device.misses, 0u);  // prefetches are not requests
  ASSERT_TRUE(mgr_->acquire("A").ok());
  EXPECT_EQ(mgr_->counters().device.hits, 1u);
  EXPECT_EQ(mgr_->counters().device.misses, 0u);
}

TEST_F(ResidencyTest, PrefetchNeverEvictsPinnedOrReferenced) {
  make(8 * kBf16, kF32 + kF32 / 2);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  Status s = mgr_->prefetch("B", Tier::kDevice);
  EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kDevice));
  EXPECT_FALSE(mgr_->is_resident("B", Tier::kDevice));
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->pin("A", Tier::kDevice).ok());
  EXPECT_EQ(mgr_->prefetch("B", Tier::kDevice).code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kDevice));
  check_invariants();
}

TEST_F(ResidencyTest, PrefetchMayEvictIdleEntries) {
  make(8 * kBf16, kF32 + kF32 / 2);
  ASSERT_TRUE(mgr_->prefetch("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->prefetch("B", Tier::kDevice).ok());
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
  EXPECT_TRUE(mgr_->is_resident("B", Tier::kDevice));
}

TEST_F(ResidencyTest, PrefetchIntoTheHostOnly) {
  make(8 * kBf16, 4 * kF32);
  ASSERT_TRUE(mgr_->prefetch("A", Tier::kHost).ok());
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kHost));
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
  ASSERT_TRUE(mgr_->acquire("A").ok());
  const ResidencyCounters c = mgr_->counters();
  EXPECT_EQ(c.host.hits, 1u);  // the device promotion found the prefetched host copy
  EXPECT_EQ(c.disk_loads, 1u);
}

TEST_F(ResidencyTest, PrefetchOfAResidentCartridgeRefreshesIt) {
  make(8 * kBf16, 2 * kF32);
  ASSERT_TRUE(mgr_->prefetch("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->prefetch("B", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->prefetch("A", Tier::kDevice).ok());
  EXPECT_THAT(mgr_->lru_order(Tier::kDevice), ElementsAre("B", "A"));
  EXPECT_EQ(mgr_->counters().device.promotions, 2u);
}

// ---- demotion ----

TEST_F(ResidencyTest, DeviceEvictionDemotesToTheHostWhenItHasRoom) {
  make(4 * kBf16, 4 * kF32);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->evict("A", Tier::kHost).ok());  // only the device copy is left
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kHost));
  ASSERT_TRUE(mgr_->evict("A", Tier::kDevice).ok());
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kHost));
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
  ResidencyCounters c = mgr_->counters();
  EXPECT_EQ(c.host.demotions, 1u);
  EXPECT_EQ(c.host.promotions, 2u);
  EXPECT_EQ(c.host.bytes_promoted, 2 * kBf16);
  EXPECT_EQ(alloc_->bytes_copied_to_host(), kF32);
  check_invariants();
  // The demoted copy is bit-identical to the file data (bf16 -> fp32 -> bf16).
  auto host = mgr_->acquire_host("A");
  ASSERT_TRUE(host.ok());
  const CartridgeData want = make_cartridge(2, 2, 8, 4, DType::kBF16, 0, 1);
  EXPECT_EQ((*host)->dtype, DType::kBF16);
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(std::memcmp((*host)->keys[l].raw(), want.keys[l].raw(), want.keys[l].nbytes()), 0);
    EXPECT_EQ(std::memcmp((*host)->values[l].raw(), want.values[l].raw(), want.values[l].nbytes()),
              0);
  }
  ASSERT_TRUE(mgr_->release("A", Tier::kHost).ok());
  // Coming back to the device needs no disk read.
  ASSERT_TRUE(mgr_->acquire("A").ok());
  EXPECT_EQ(disk_.loads(), 1);
}

TEST_F(ResidencyTest, LruEvictionAlsoDemotes) {
  make(4 * kBf16, kF32);
  ASSERT_TRUE(mgr_->prefetch("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->evict("A", Tier::kHost).ok());
  ASSERT_TRUE(mgr_->prefetch("B", Tier::kDevice).ok());  // pushes A out of the device
  EXPECT_TRUE(mgr_->is_resident("A", Tier::kHost));
  EXPECT_EQ(mgr_->counters().host.demotions, 1u);
  check_invariants();
}

TEST_F(ResidencyTest, NoDemotionWhenTheHostIsFull) {
  make(kBf16, 4 * kF32);
  ASSERT_TRUE(mgr_->prefetch("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->prefetch("B", Tier::kHost).ok());  // host full with B (A's host copy went)
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kHost));
  ASSERT_TRUE(mgr_->evict("A", Tier::kDevice).ok());
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kHost));
  EXPECT_TRUE(mgr_->is_resident("B", Tier::kHost));  // demotion never evicts
  EXPECT_EQ(mgr_->counters().host.demotions, 0u);
  check_invariants();
}

TEST_F(ResidencyTest, NoDemotionWhenTheDeviceDtypeIsNarrower) {
  disk_.put(path("F"), Spec{2, 2, 8, 4, DType::kF32, 9});
  make(8 * kBf16, 8 * kF32, DType::kBF16);
  ASSERT_TRUE(mgr_->add_cartridge("F", path("F")).ok());
  ASSERT_TRUE(mgr_->prefetch("F", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->evict("F", Tier::kHost).ok());
  ASSERT_TRUE(mgr_->evict("F", Tier::kDevice).ok());
  EXPECT_FALSE(mgr_->is_resident("F", Tier::kHost));  // fp32 -> bf16 lost bits: reread instead
  EXPECT_EQ(mgr_->counters().host.demotions, 0u);
  check_invariants();
}

TEST_F(ResidencyTest, NoDemotionWhenTheCopyBackFails) {
  make(4 * kBf16, 4 * kF32);
  ASSERT_TRUE(mgr_->prefetch("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->evict("A", Tier::kHost).ok());
  alloc_->fail_next_copies(1);
  ASSERT_TRUE(mgr_->evict("A", Tier::kDevice).ok());
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kHost));
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
  check_invariants();
}

// ---- failures ----

TEST_F(ResidencyTest, LoadFailureLeavesNothingBehind) {
  make(8 * kBf16, 8 * kF32);
  disk_.fail(path("A"), true);
  auto r = mgr_->acquire("A");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kIo);
  EXPECT_THAT(r.status().message(), HasSubstr("loading cartridge 'A' from '/carts/A.pt'"));
  EXPECT_THAT(r.status().message(), HasSubstr("read error"));
  EXPECT_EQ(mgr_->counters().load_failures, 1u);
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), 0);
  check_invariants();
  disk_.fail(path("A"), false);
  EXPECT_TRUE(mgr_->acquire("A").ok());
}

TEST_F(ResidencyTest, ManifestDtypeIsCheckedAtLoad) {
  make(8 * kBf16, 8 * kF32);
  disk_.put(path("M"), Spec{2, 2, 8, 4, DType::kF32});
  CartridgeManifest m = testing::manifest_for("M", make_cartridge(2, 2, 8, 4, DType::kBF16));
  ASSERT_TRUE(mgr_->add_cartridge("M", path("M"), m).ok());
  auto r = mgr_->acquire("M");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(r.status().message(), HasSubstr("dtype: manifest has bfloat16, data has float32"));
  check_invariants();
}

TEST_F(ResidencyTest, ManifestChecksumIsVerifiedAtLoad) {
  make(8 * kBf16, 8 * kF32);
  testing::TempDir dir;
  const std::string file = dir.file("m.pt");
  testing::write_bytes(file, "abc");
  disk_.put(file, Spec{});
  CartridgeManifest m = testing::manifest_for("M", make_cartridge(2, 2, 8, 4));
  m.checksum = std::string(64, '0');
  ASSERT_TRUE(mgr_->add_cartridge("M", file, m).ok());
  auto bad = mgr_->acquire("M");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(bad.status().message(), HasSubstr("checksum"));
  EXPECT_EQ(disk_.loads(), 0);  // refused before the loader ran

  m.cartridge_id = "M2";
  m.checksum = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";  // sha256("abc")
  ASSERT_TRUE(mgr_->add_cartridge("M2", file, m).ok());
  EXPECT_TRUE(mgr_->acquire("M2").ok());
}

TEST_F(ResidencyTest, DeviceAllocationFailureIsCannotFitNow) {
  make(8 * kBf16, 8 * kF32);
  alloc_->fail_next_allocations(1);
  auto r = mgr_->acquire("A");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("promoting cartridge 'A' to the device"));
  EXPECT_FALSE(mgr_->is_resident("A", Tier::kDevice));
  check_invariants();
  EXPECT_TRUE(mgr_->acquire("A").ok());
  check_invariants();
}

TEST_F(ResidencyTest, DeviceCopyFailureFreesTheAllocation) {
  make(8 * kBf16, 8 * kF32);
  alloc_->fail_next_copies(1);
  auto r = mgr_->acquire("A");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kIo);
  EXPECT_EQ(alloc_->live_allocations(), 0u);
  check_invariants();
}

TEST_F(ResidencyTest, RealDeviceSmallerThanTheBudget) {
  ResidencyConfig cfg;
  cfg.host_budget_bytes = 8 * kBf16;
  cfg.device_budget_bytes = 8 * kF32;
  cfg.device_dtype = DType::kF32;
  auto small = std::make_shared<HostDeviceAllocator>(kF32);  // the device holds one
  ResidencyManager mgr(cfg, disk_.loader(), small);
  ASSERT_TRUE(mgr.add_cartridge("A", path("A")).ok());
  ASSERT_TRUE(mgr.add_cartridge("B", path("B")).ok());
  ASSERT_TRUE(mgr.acquire("A").ok());
  auto b = mgr.acquire("B");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("device out of memory"));
  EXPECT_EQ(mgr.counters().device.bytes_resident, kF32);
}

// ---- explicit eviction and removal ----

TEST_F(ResidencyTest, ExplicitEvictRules) {
  make(8 * kBf16, 8 * kF32);
  EXPECT_THAT(mgr_->evict("A", Tier::kDevice).message(), HasSubstr("not resident"));
  ASSERT_TRUE(mgr_->acquire("A").ok());
  EXPECT_THAT(mgr_->evict("A", Tier::kDevice).message(), HasSubstr("in use"));
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->pin("A", Tier::kDevice).ok());
  EXPECT_THAT(mgr_->evict("A", Tier::kDevice).message(), HasSubstr("pinned"));
  EXPECT_EQ(mgr_->evict("A", Tier::kDevice).code(), ErrorCode::kFailedPrecondition);
  ASSERT_TRUE(mgr_->unpin("A", Tier::kDevice).ok());
  EXPECT_TRUE(mgr_->evict("A", Tier::kDevice).ok());
  EXPECT_TRUE(mgr_->evict("A", Tier::kHost).ok());
  EXPECT_EQ(mgr_->counters().device.evictions, 1u);
  check_invariants();
}

TEST_F(ResidencyTest, RemoveCartridge) {
  make(8 * kBf16, 8 * kF32);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  Status s = mgr_->remove_cartridge("A");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("in use in the device tier"));
  ASSERT_TRUE(mgr_->release("A").ok());
  ASSERT_TRUE(mgr_->pin("A", Tier::kHost).ok());
  EXPECT_THAT(mgr_->remove_cartridge("A").message(), HasSubstr("pinned in the host tier"));
  ASSERT_TRUE(mgr_->unpin("A", Tier::kHost).ok());
  ASSERT_TRUE(mgr_->remove_cartridge("A").ok());
  EXPECT_FALSE(mgr_->knows("A"));
  EXPECT_EQ(mgr_->counters().host.demotions, 0u);  // removal does not demote
  check_invariants();
  EXPECT_EQ(alloc_->bytes_in_use(), 0u);
  // The id can be added again.
  EXPECT_TRUE(mgr_->add_cartridge("A", path("A")).ok());
}

TEST_F(ResidencyTest, AddRules) {
  make(8 * kBf16, 8 * kF32);
  EXPECT_EQ(mgr_->add_cartridge("A", path("A")).code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(mgr_->add_cartridge("", path("A")).code(), ErrorCode::kInvalidArgument);
  CartridgeManifest bad = testing::manifest_for("X", make_cartridge(1, 1, 8, 4));
  bad.num_blocks = 9;
  Status s = mgr_->add_cartridge("X", path("X"), bad);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("num_blocks"));
  EXPECT_FALSE(mgr_->knows("X"));
}

TEST_F(ResidencyTest, DestructorFreesDeviceMemory) {
  make(8 * kBf16, 8 * kF32);
  ASSERT_TRUE(mgr_->prefetch("A", Tier::kDevice).ok());
  ASSERT_TRUE(mgr_->pin("B", Tier::kDevice).ok());
  EXPECT_EQ(alloc_->bytes_in_use(), 2 * kF32);
  mgr_.reset();
  EXPECT_EQ(alloc_->bytes_in_use(), 0u);
  EXPECT_EQ(alloc_->live_allocations(), 0u);
}

// ---- the invariant under a random sequence ----

// Model of what callers hold; the manager must agree with it after every
// operation, and every refusal must be justified by the model.
class ResidencyRandom : public ::testing::TestWithParam<uint32_t> {};

TEST_P(ResidencyRandom, InvariantsHoldAfterEveryOperation) {
  // 2 layers x 2 heads x T tokens x 4 dims: 64*T bytes in bf16 / 128*T in fp32.
  const std::vector<std::pair<int, DType>> shapes = {
      {4, DType::kBF16},  {8, DType::kBF16},  {12, DType::kF32},
      {16, DType::kBF16}, {24, DType::kF16},  {32, DType::kBF16},
      {48, DType::kF32},  {80, DType::kBF16}, {100, DType::kBF16}};
  FakeDisk disk;
  std::vector<std::string> ids;
  std::map<std::string, uint64_t> host_size, dev_size;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string id = fmt::format("r{}", i);
    const auto [tokens, dtype] = shapes[i];
    disk.put(id, Spec{2, 2, tokens, 4, dtype, static_cast<int>(i)});
    ids.push_back(id);
    host_size[id] = expected_kv_bytes(2, 2, tokens, 4, dtype);
    dev_size[id] = expected_kv_bytes(2, 2, tokens, 4, DType::kF32);
  }
  ResidencyConfig cfg;
  cfg.host_budget_bytes = 6144;
  cfg.device_budget_bytes = 8192;
  cfg.device_dtype = DType::kF32;
  auto alloc = std::make_shared<HostDeviceAllocator>();
  ResidencyManager mgr(cfg, disk.loader(), alloc);
  for (const auto& id : ids)
    ASSERT_TRUE(mgr.add_cartridge(id, id).ok());

  std::map<std::string, int64_t> refs[2];
  std::map<std::string, bool> pinned[2];
  auto ti = [](Tier t) { return t == Tier::kHost ? 0 : 1; };
  auto size_in = [&](Tier t, const std::string& id) {
    return t == Tier::kHost ? host_size[id] : dev_size[id];
  };
  // Bytes in `t` that nothing may evict (referenced or pinned).
  auto protected_bytes = [&](Tier t) {
    uint64_t b = 0;
    for (const auto& id : ids) {
      if (mgr.is_resident(id, t) && (refs[ti(t)][id] > 0 || pinned[ti(t)][id])) b += size_in(t, id);
    }
    return b;
  };
  // A refusal to bring `id` into `t` must be justified.
  auto check_refusal = [&](const Status& s, Tier t, const std::string& id) {
    const uint64_t budget = t == Tier::kHost ? cfg.host_budget_bytes : cfg.device_budget_bytes;
    if (s.code() == ErrorCode::kOutOfRange) {
      EXPECT_GT(size_in(t, id), budget) << id << " " << s.message();
    } else if (s.code() == ErrorCode::kResourceExhausted) {
      EXPECT_GT(protected_bytes(t) + size_in(t, id), budget) << id << " " << s.message();
    } else if (s.code() == ErrorCode::kFailedPrecondition) {
      // Pinned bytes alone leave no room.
      uint64_t pinned_bytes = 0;
      for (const auto& other : ids) {
        if (mgr.is_resident(other, t) && pinned[ti(t)][other]) pinned_bytes += size_in(t, other);
      }
      EXPECT_GT(pinned_bytes + size_in(t, id), budget) << id << " " << s.message();
    } else {
      ADD_FAILURE() << "unexpected refusal: " << s.to_string();
    }
  };

  std::mt19937 rng(GetParam());
  int successes = 0, refusals = 0;
  for (int step = 0; step < 6000; ++step) {
    const std::string& id = ids[rng() % ids.size()];
    const Tier tier = (rng() % 3 == 0) ? Tier::kHost : Tier::kDevice;
    const int op = static_cast<int>(rng() % 8);
    SCOPED_TRACE(::testing::Message()
                 << "step " << step << " op " << op << " " << id << " " << tier_name(tier));
    switch (op) {
      case 0: {  // acquire
        if (tier == Tier::kDevice) {
          auto r = mgr.acquire(id);
          if (r.ok()) {
            ++refs[1][id];
            ++successes;
            EXPECT_EQ(r->nbytes, dev_size[id]);
          } else {
            check_refusal(r.status(), tier, id);
            ++refusals;
          }
        } else {
          auto r = mgr.acquire_host(id);
          if (r.ok()) {
            ++refs[0][id];
            ++successes;
          } else {
            check_refusal(r.status(), tier, id);
            ++refusals;
          }
        }
        break;
      }
      case 1:
      case 2: {  // release: mostly something held, sometimes anything (must be refused)
        std::string rid = id;
        std::vector<std::string> held;
        for (const auto& [hid, n] : refs[ti(tier)]) {
          if (n > 0) held.push_back(hid);
        }
        if (!held.empty() && rng() % 4 != 0) rid = held[rng() % held.size()];
        Status s = mgr.release(rid, tier);
        if (refs[ti(tier)][rid] > 0) {
          EXPECT_TRUE(s.ok()) << s.to_string();
          --refs[ti(tier)][rid];
        } else {
          EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
        }
        break;
      }
      case 3: {                // pin
        if (rng() % 2) break;  // pins are rarer
        Status s = mgr.pin(id, tier);
        if (s.ok()) {
          pinned[ti(tier)][id] = true;
        } else {
          check_refusal(s, tier, id);
        }
        break;
      }
      case 4: {  // unpin
        Status s = mgr.unpin(id, tier);
        EXPECT_EQ(s.ok(), pinned[ti(tier)][id]) << s.to_string();
        pinned[ti(tier)][id] = false;
        break;
      }
      case 5: {  // prefetch
        Status s = mgr.prefetch(id, tier);
        if (!s.ok()) check_refusal(s, tier, id);
        break;
      }
      case 6: {  // explicit eviction
        const bool was = mgr.is_resident(id, tier);
        Status s = mgr.evict(id, tier);
        const bool protected_now = refs[ti(tier)][id] > 0 || pinned[ti(tier)][id];
        EXPECT_EQ(s.ok(), was && !protected_now) << s.to_string();
        if (s.ok()) {
          EXPECT_FALSE(mgr.is_resident(id, tier));
        }
        break;
      }
      case 7: {  // read the device copy of something held
        if (refs[1][id] > 0) {
          auto c = mgr.device_copy(id);
          ASSERT_TRUE(c.ok());
          const int seed = std::stoi(id.substr(1));
          EXPECT_EQ(static_cast<const float*>(c->values(1))[1],
                    cartridge_value(seed, 1, 1, 0, 0, 1));
        }
        break;
      }
    }
    // Invariants after every operation.
    const ResidencyCounters c = mgr.counters();
    for (Tier t : {Tier::kHost, Tier::kDevice}) {
      const TierCounters& tc = c.tier(t);
      ASSERT_EQ(tc.bytes_promoted - tc.bytes_evicted, tc.bytes_resident) << tier_name(t);
      ASSERT_LE(tc.bytes_resident, tc.budget_bytes) << tier_name(t);
      uint64_t sum = 0;
      for (const auto& rid : mgr.lru_order(t))
        sum += size_in(t, rid);
      ASSERT_EQ(sum, tc.bytes_resident) << tier_name(t);
      for (const auto& rid : ids) {
        ASSERT_EQ(mgr.ref_count(rid, t), refs[ti(t)][rid]) << rid;
        ASSERT_EQ(mgr.is_pinned(rid, t), pinned[ti(t)][rid]) << rid;
        if (refs[ti(t)][rid] > 0 || pinned[ti(t)][rid]) {
          ASSERT_TRUE(mgr.is_resident(rid, t)) << rid << " was evicted while protected";
        }
      }
    }
    ASSERT_EQ(alloc->bytes_in_use(), c.device.bytes_resident);
  }
  // The sequence exercised both outcomes and every kind of movement.
  const ResidencyCounters c = mgr.counters();
  EXPECT_GT(successes, 300);
  EXPECT_GT(refusals, 100);
  EXPECT_GT(c.device.evictions, 150u);
  EXPECT_GT(c.host.evictions, 150u);
  EXPECT_GT(c.host.demotions, 5u);
}

INSTANTIATE_TEST_SUITE_P(Seeds, ResidencyRandom, ::testing::Values(1u, 42u, 2026u));

// ---- threads ----

TEST_F(ResidencyTest, ConcurrentAcquiresOfOneCartridgePromoteOnce) {
  make(8 * kBf16, 8 * kF32);
  disk_.hold(true);
  constexpr int kThreads = 8;
  std::vector<std::thread> ts;
  std::atomic<int> ok{0};
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&] {
      auto r = mgr_->acquire("A");
      if (r.ok() && static_cast<const float*>(r->keys(0))[0] == cartridge_value(1, 0, 0, 0, 0, 0)) {
        ++ok;
      }
    });
  }
  disk_.wait_loading(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the others queue up
  disk_.hold(false);
  for (auto& th : ts)
    th.join();
  EXPECT_EQ(ok.load(), kThreads);
  const ResidencyCounters c = mgr_->counters();
  EXPECT_EQ(c.disk_loads, 1u);
  EXPECT_EQ(c.device.promotions, 1u);
  EXPECT_EQ(c.device.hits + c.device.misses, static_cast<uint64_t>(kThreads));
  EXPECT_EQ(mgr_->ref_count("A", Tier::kDevice), kThreads);
  EXPECT_EQ(alloc_->total_allocations(), 1u);
}

TEST_F(ResidencyTest, SlowLoadDoesNotBlockOtherCartridges) {
  make(8 * kBf16, 8 * kF32);
  ASSERT_TRUE(mgr_->acquire("A").ok());
  ASSERT_TRUE(mgr_->release("A").ok());
  disk_.hold(true);
  std::thread slow([&] { EXPECT_TRUE(mgr_->acquire("B").ok()); });
  disk_.wait_loading(1);
  // B is being read from disk; A is served meanwhile.
  auto a = mgr_->acquire("A");
  EXPECT_TRUE(a.ok());
  EXPECT_TRUE(mgr_->release("A").ok());
  EXPECT_FALSE(mgr_->is_resident("B", Tier::kDevice));
  EXPECT_EQ(mgr_->evict("B", Tier::kHost).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(mgr_->remove_cartridge("B").code(), ErrorCode::kFailedPrecondition);
  disk_.hold(false);
  slow.join();
  EXPECT_TRUE(mgr_->is_resident("B", Tier::kDevice));
  check_invariants();
}

TEST_F(ResidencyTest, MultiThreadedStress) {
  // Six cartridges, room for three on the device and four on the host.
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) {
    ids.push_back(fmt::format("s{}", i));
    disk_.put(path(ids.back()), Spec{2, 2, 8, 4, DType::kBF16, 10 + i});
  }
  make(4 * kBf16, 3 * kF32);
  for (const auto& id : ids)
    ASSERT_TRUE(mgr_->add_cartridge(id, path(id)).ok());
  constexpr int kThreads = 6, kOps = 1500;
  std::atomic<int> errors{0}, served{0}, refused{0};
  std::latch start(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      start.arrive_and_wait();
      std::mt19937 rng(77 + t);
      for (int op = 0; op < kOps; ++op) {
        const int k = static_cast<int>(rng() % ids.size());
        const std::string& id = ids[k];
        switch (rng() % 4) {
          case 0:
          case 1: {
            auto r = mgr_->acquire(id);
            if (!r.ok()) {
              if (r.status().code() != ErrorCode::kResourceExhausted) ++errors;
              ++refused;
              break;
            }
            ++served;
            // While held, the copy is this cartridge's and stays put.
            for (int l = 0; l < 2; ++l) {
              const float* kp = static_cast<const float*>(r->keys(l));
              // [T, H, D] = [8, 2, 4]: t=2, h=1, d=1 is element (2 * 2 + 1) * 4 + 1.
              if (kp[21] != cartridge_value(10 + k, l, 0, 1, 2, 1)) ++errors;
            }
            std::this_thread::yield();
            if (!mgr_->release(id).ok()) ++errors;
            break;
          }
          case 2: {
            Status s = mgr_->prefetch(id, rng() % 2 ? Tier::kDevice : Tier::kHost);
            if (!s.ok() && s.code() != ErrorCode::kResourceExhausted) ++errors;
            break;
          }
          case 3: {
            Status s = mgr_->evict(id, rng() % 2 ? Tier::kDevice : Tier::kHost);
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
  for (const auto& id : ids)
    EXPECT_EQ(mgr_->ref_count(id, Tier::kDevice), 0) << id;
  check_invariants();
  const ResidencyCounters c = mgr_->counters();
  EXPECT_EQ(c.device.hits + c.device.misses, static_cast<uint64_t>(served + refused));
}

}  // namespace
}  // namespace cartserve
