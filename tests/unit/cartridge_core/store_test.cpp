#include "cartridge/store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <latch>
#include <map>
#include <random>
#include <thread>

#include "cartridge_test_util.h"

namespace cartserve {
namespace {

using testing::expected_kv_bytes;
using ::testing::HasSubstr;
using testing::make_cartridge;

// A fake disk: path -> cartridge shape. Counts loads; can fail or block.
class FakeDisk {
 public:
  FakeDisk() {
    shapes_["/c/small.pt"] = {2, 2, 32, 4, 1};
    shapes_["/c/four.pt"] = {4, 2, 64, 4, 2};
  }
  CartridgeLoader loader() {
    return [this](const std::string& path) -> Result<CartridgeData> {
      ++loads;
      {
        std::unique_lock<std::mutex> lk(mu_);
        if (block_) {
          entered_ = true;
          cv_.notify_all();
          cv_.wait(lk, [&] { return !block_; });
        }
      }
      auto it = shapes_.find(path);
      if (it == shapes_.end()) {
        return make_error(ErrorCode::kNotFound, "no such file '{}'", path);
      }
      const auto& s = it->second;
      return make_cartridge(s[0], s[1], s[2], s[3], DType::kF32, 0, s[4]);
    };
  }
  void set_blocking(bool b) {
    std::lock_guard<std::mutex> lk(mu_);
    block_ = b;
    entered_ = false;
    cv_.notify_all();
  }
  void wait_entered() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return entered_; });
  }
  std::atomic<int> loads{0};

 private:
  std::map<std::string, std::array<int, 5>> shapes_;  // layers, heads, tokens, dim, seed
  std::mutex mu_;
  std::condition_variable cv_;
  bool block_ = false;
  bool entered_ = false;
};

class StoreTest : public ::testing::Test {
 protected:
  FakeDisk disk_;
  CartridgeStore store_{disk_.loader()};
};

const uint64_t kSmallBytes = expected_kv_bytes(2, 2, 32, 4, DType::kF32);  // 4096

// ---- load / get / evict ----

TEST_F(StoreTest, LoadAndGet) {
  ASSERT_TRUE(store_.load("cart_01", "/c/small.pt").ok());
  EXPECT_EQ(disk_.loads.load(), 1);
  EXPECT_TRUE(store_.contains("cart_01"));
  auto d = store_.get("cart_01");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->num_layers, 2);
  EXPECT_EQ((*d)->keys[0].shape(), (Shape{2, 32, 4}));
  EXPECT_EQ((*d)->keys[1].data<float>()[5], testing::cartridge_value(1, 1, 0, 0, 1, 1));
}

TEST_F(StoreTest, DuplicateIdIsAnErrorWithoutLoadingAgain) {
  ASSERT_TRUE(store_.load("cart_01", "/c/small.pt").ok());
  Status s = store_.load("cart_01", "/c/four.pt");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kAlreadyExists);
  EXPECT_THAT(s.message(), HasSubstr("'cart_01'"));
  EXPECT_THAT(s.message(), HasSubstr("/c/small.pt"));
  EXPECT_EQ(disk_.loads.load(), 1);
  EXPECT_EQ((*store_.get("cart_01"))->num_layers, 2);  // the first one stays
}

TEST_F(StoreTest, DuplicateAddIsAnError) {
  ASSERT_TRUE(store_.add("m", make_cartridge(1, 1, 4, 4)).ok());
  EXPECT_EQ(store_.add("m", make_cartridge(1, 1, 4, 4)).code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(store_.load("m", "/c/small.pt").code(), ErrorCode::kAlreadyExists);
}

TEST_F(StoreTest, LoaderErrorCarriesContextAndLeavesNoEntry) {
  Status s = store_.load("ghost", "/c/missing.pt");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("'ghost'"));
  EXPECT_THAT(s.message(), HasSubstr("/c/missing.pt"));
  EXPECT_FALSE(store_.contains("ghost"));
  // The id is free again.
  EXPECT_TRUE(store_.load("ghost", "/c/small.pt").ok());
}

TEST_F(StoreTest, InvalidDataIsRefused) {
  CartridgeData bad = make_cartridge(2, 2, 8, 4);
  bad.keys[1] = Tensor(DType::kBF16, {2, 7, 4});
  Status s = store_.add("bad", std::move(bad));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kCorrupt);
  EXPECT_THAT(s.message(), HasSubstr("'bad'"));
  EXPECT_FALSE(store_.contains("bad"));
  EXPECT_EQ(store_.bytes(), 0u);
}

TEST_F(StoreTest, EmptyIdIsRefused) {
  EXPECT_EQ(store_.load("", "/c/small.pt").code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_.add("", make_cartridge(1, 1, 4, 4)).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(disk_.loads.load(), 0);
}

TEST(Store, WithoutLoaderLoadFailsButAddWorks) {
  CartridgeStore store(nullptr);
  EXPECT_EQ(store.load("a", "/x").code(), ErrorCode::kFailedPrecondition);
  EXPECT_TRUE(store.add("a", make_cartridge(1, 1, 4, 4)).ok());
}

TEST_F(StoreTest, GetMissingIsNotFound) {
  auto d = store_.get("nonexistent");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(d.status().message(), HasSubstr("'nonexistent'"));
  EXPECT_FALSE(store_.contains("nonexistent"));
}

TEST_F(StoreTest, EvictRemovesAndAllowsReload) {
  ASSERT_TRUE(store_.load("cart_01", "/c/small.pt").ok());
  ASSERT_TRUE(store_.evict("cart_01").ok());
  EXPECT_FALSE(store_.contains("cart_01"));
  EXPECT_EQ(store_.get("cart_01").status().code(), ErrorCode::kNotFound);
  EXPECT_TRUE(store_.load("cart_01", "/c/small.pt").ok());
  EXPECT_EQ(disk_.loads.load(), 2);
}

TEST_F(StoreTest, EvictMissingIsNotFound) {
  EXPECT_EQ(store_.evict("nonexistent").code(), ErrorCode::kNotFound);
}

TEST_F(StoreTest, EvictOneKeepsOther) {
  ASSERT_TRUE(store_.load("a", "/c/small.pt").ok());
  ASSERT_TRUE(store_.load("b", "/c/four.pt").ok());
  ASSERT_TRUE(store_.evict("a").ok());
  EXPECT_TRUE(store_.contains("b"));
  EXPECT_EQ((*store_.get("b"))->num_tokens, 64);
}

// ---- references ----

TEST_F(StoreTest, AcquireReleaseCounts) {
  ASSERT_TRUE(store_.load("c", "/c/small.pt").ok());
  auto d = store_.acquire("c");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->num_tokens, 32);
  EXPECT_EQ(store_.info("c")->ref_count, 1);
  ASSERT_TRUE(store_.acquire("c").ok());
  ASSERT_TRUE(store_.acquire("c").ok());
  EXPECT_EQ(store_.info("c")->ref_count, 3);
  ASSERT_TRUE(store_.release("c").ok());
  ASSERT_TRUE(store_.release("c").ok());
  EXPECT_EQ(store_.info("c")->ref_count, 1);
}

TEST_F(StoreTest, ReleaseWithoutAcquireIsAnErrorNotACrash) {
  ASSERT_TRUE(store_.load("c", "/c/small.pt").ok());
  Status s = store_.release("c");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("without a matching acquire"));
  EXPECT_EQ(store_.info("c")->ref_count, 0);
  ASSERT_TRUE(store_.acquire("c").ok());
  ASSERT_TRUE(store_.release("c").ok());
  EXPECT_FALSE(store_.release("c").ok());
}

TEST_F(StoreTest, AcquireAndReleaseUnknownAreNotFound) {
  EXPECT_EQ(store_.acquire("x").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(store_.release("x").code(), ErrorCode::kNotFound);
}

TEST_F(StoreTest, EvictRefusedWhileReferencedUnlessForced) {
  ASSERT_TRUE(store_.load("c", "/c/small.pt").ok());
  auto held = store_.acquire("c");
  ASSERT_TRUE(held.ok());
  Status s = store_.evict("c");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("in use (1 references)"));
  EXPECT_TRUE(store_.contains("c"));
  ASSERT_TRUE(store_.evict("c", /*force=*/true).ok());
  EXPECT_FALSE(store_.contains("c"));
  // The holder's data is still alive and intact.
  EXPECT_EQ((*held)->keys[0].data<float>()[0], testing::cartridge_value(1, 0, 0, 0, 0, 0));
  // Its late release is an error, not a crash.
  EXPECT_EQ(store_.release("c").code(), ErrorCode::kNotFound);
}

// ---- pins ----

TEST_F(StoreTest, PinPreventsEvictionUntilUnpinned) {
  ASSERT_TRUE(store_.load("c", "/c/small.pt").ok());
  ASSERT_TRUE(store_.pin("c").ok());
  EXPECT_TRUE(store_.info("c")->pinned);
  Status s = store_.evict("c");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("pinned"));
  ASSERT_TRUE(store_.unpin("c").ok());
  EXPECT_TRUE(store_.evict("c").ok());
}

TEST_F(StoreTest, ForcedEvictIgnoresPin) {
  ASSERT_TRUE(store_.load("c", "/c/small.pt").ok());
  ASSERT_TRUE(store_.pin("c").ok());
  EXPECT_TRUE(store_.evict("c", true).ok());
}

TEST_F(StoreTest, PinIsIdempotentAndUnpinNeedsAPin) {
  ASSERT_TRUE(store_.load("c", "/c/small.pt").ok());
  ASSERT_TRUE(store_.pin("c").ok());
  ASSERT_TRUE(store_.pin("c").ok());
  ASSERT_TRUE(store_.unpin("c").ok());
  Status s = store_.unpin("c");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not pinned"));
}

TEST_F(StoreTest, PinUnpinUnknownAreNotFound) {
  EXPECT_EQ(store_.pin("x").code(), ErrorCode::kNotFound);
  EXPECT_EQ(store_.unpin("x").code(), ErrorCode::kNotFound);
}

TEST_F(StoreTest, EvictUnusedKeepsPinnedAndReferenced) {
  ASSERT_TRUE(store_.load("idle", "/c/small.pt").ok());
  ASSERT_TRUE(store_.load("pinned", "/c/small.pt").ok());
  ASSERT_TRUE(store_.load("busy", "/c/four.pt").ok());
  ASSERT_TRUE(store_.pin("pinned").ok());
  ASSERT_TRUE(store_.acquire("busy").ok());
  EXPECT_EQ(store_.evict_unused(), 1u);
  EXPECT_FALSE(store_.contains("idle"));
  EXPECT_TRUE(store_.contains("pinned"));
  EXPECT_TRUE(store_.contains("busy"));
}

// ---- listing and memory ----

TEST_F(StoreTest, ListIsSortedWithDetails) {
  ASSERT_TRUE(store_.load("b", "/c/four.pt").ok());
  ASSERT_TRUE(store_.load("a", "/c/small.pt").ok());
  ASSERT_TRUE(store_.add("c", make_cartridge(1, 1, 4, 4, DType::kBF16)).ok());
  ASSERT_TRUE(store_.pin("a").ok());
  ASSERT_TRUE(store_.acquire("b").ok());
  const auto l = store_.list();
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l[0].cartridge_id, "a");
  EXPECT_TRUE(l[0].pinned);
  EXPECT_EQ(l[0].path, "/c/small.pt");
  EXPECT_EQ(l[1].cartridge_id, "b");
  EXPECT_EQ(l[1].ref_count, 1);
  EXPECT_EQ(l[1].num_layers, 4);
  EXPECT_EQ(l[1].num_tokens, 64);
  EXPECT_EQ(l[2].cartridge_id, "c");
  EXPECT_EQ(l[2].path, "");
  EXPECT_EQ(l[2].dtype, DType::kBF16);
  EXPECT_EQ(store_.size(), 3u);
}

TEST_F(StoreTest, MemoryAccounting) {
  EXPECT_EQ(store_.bytes(), 0u);
  ASSERT_TRUE(store_.load("a", "/c/small.pt").ok());
  EXPECT_EQ(store_.bytes(), kSmallBytes);
  EXPECT_EQ(kSmallBytes, 4096u);  // 2 layers * 2 (K,V) * 2 heads * 32 tokens * 4 dims * 4 bytes
  ASSERT_TRUE(store_.load("b", "/c/four.pt").ok());
  EXPECT_EQ(store_.bytes(), kSmallBytes + expected_kv_bytes(4, 2, 64, 4, DType::kF32));
  EXPECT_EQ(store_.info("b")->nbytes, expected_kv_bytes(4, 2, 64, 4, DType::kF32));
  ASSERT_TRUE(store_.evict("b").ok());
  EXPECT_EQ(store_.bytes(), kSmallBytes);
  ASSERT_TRUE(store_.evict("a").ok());
  EXPECT_EQ(store_.bytes(), 0u);
}

// ---- threads ----

TEST_F(StoreTest, LoaderRunsOutsideTheLock) {
  ASSERT_TRUE(store_.load("ready", "/c/small.pt").ok());
  disk_.set_blocking(true);
  std::thread loader([&] { EXPECT_TRUE(store_.load("slow", "/c/four.pt").ok()); });
  disk_.wait_entered();
  // While "slow" is being read, everything else proceeds.
  EXPECT_TRUE(store_.get("ready").ok());
  EXPECT_TRUE(store_.acquire("ready").ok());
  EXPECT_TRUE(store_.release("ready").ok());
  EXPECT_FALSE(store_.contains("slow"));
  // A second load of the same id is refused at once.
  Status dup = store_.load("slow", "/c/four.pt");
  EXPECT_EQ(dup.code(), ErrorCode::kAlreadyExists);
  EXPECT_THAT(dup.message(), HasSubstr("being loaded"));
  EXPECT_EQ(store_.add("slow", make_cartridge(1, 1, 4, 4)).code(), ErrorCode::kAlreadyExists);
  disk_.set_blocking(false);
  loader.join();
  EXPECT_TRUE(store_.contains("slow"));
}

TEST_F(StoreTest, ConcurrentReadsSeeConsistentData) {
  ASSERT_TRUE(store_.load("c", "/c/small.pt").ok());
  std::atomic<int> errors{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        auto d = store_.get("c");
        if (!d.ok() || (*d)->keys[0].shape() != Shape{2, 32, 4}) ++errors;
      }
    });
  }
  for (auto& th : ts)
    th.join();
  EXPECT_EQ(errors.load(), 0);
}

TEST_F(StoreTest, ConcurrentAcquireReleaseBalances) {
  ASSERT_TRUE(store_.load("c", "/c/small.pt").ok());
  std::vector<std::thread> ts;
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        EXPECT_TRUE(store_.acquire("c").ok());
        EXPECT_TRUE(store_.release("c").ok());
      }
    });
  }
  for (auto& th : ts)
    th.join();
  EXPECT_EQ(store_.info("c")->ref_count, 0);
}

// Eight threads run random operations on a few ids. Each thread remembers
// the references it holds and the data it was given; at every step that
// data must still read back its own seed (no entry ever hands out another's
// memory, and nothing a thread holds is freed under it). At the end the
// store's counts must equal what the threads say they hold.
TEST_F(StoreTest, MultiThreadedStress) {
  const std::vector<std::string> ids = {"s0", "s1", "s2", "s3", "s4"};
  constexpr int kThreads = 8, kOps = 20000;
  std::atomic<int> errors{0}, acquired{0}, evicted{0};
  std::vector<std::map<std::string, int>> held(kThreads);
  std::vector<std::thread> ts;
  std::latch start(kThreads);  // all threads begin together, for contention
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      start.arrive_and_wait();
      std::mt19937 rng(1234 + t);
      std::vector<std::pair<std::string, std::shared_ptr<const CartridgeData>>> mine;
      for (int op = 0; op < kOps; ++op) {
        const std::string& id = ids[rng() % ids.size()];
        const int seed = static_cast<int>(id[1] - '0');
        switch (rng() % 8) {
          case 0: {  // load (may race with others: AlreadyExists is fine)
            Status s = store_.add(id, make_cartridge(1, 1, 4, 4, DType::kF32, 0, seed));
            if (!s.ok() && s.code() != ErrorCode::kAlreadyExists) ++errors;
            break;
          }
          case 1: {
            if (mine.size() >= 2) break;  // hold few references so entries do go idle
            auto d = store_.acquire(id);
            if (d.ok()) {
              mine.emplace_back(id, *d);
              held[t][id]++;
              ++acquired;
            } else if (d.status().code() != ErrorCode::kNotFound) {
              ++errors;
            }
            break;
          }
          case 2:
          case 3: {
            if (mine.empty()) break;
            const size_t k = rng() % mine.size();
            Status s = store_.release(mine[k].first);
            if (!s.ok()) ++errors;  // never evicted while held (no forced evictions here)
            held[t][mine[k].first]--;
            mine.erase(mine.begin() + static_cast<long>(k));
            break;
          }
          case 4:
          case 7: {
            Status s = store_.evict(id);
            if (s.ok()) ++evicted;
            if (!s.ok() && s.code() != ErrorCode::kFailedPrecondition &&
                s.code() != ErrorCode::kNotFound) {
              ++errors;
            }
            break;
          }
          case 5: {
            (void)store_.pin(id);
            (void)store_.unpin(id);
            break;
          }
          case 6: {
            (void)store_.list();
            (void)store_.bytes();
            break;
          }
        }
        for (const auto& [hid, data] : mine) {
          const int hseed = static_cast<int>(hid[1] - '0');
          if (data->keys[0].data<float>()[0] != testing::cartridge_value(hseed, 0, 0, 0, 0, 0)) {
            ++errors;
          }
        }
      }
    });
  }
  for (auto& th : ts)
    th.join();
  EXPECT_EQ(errors.load(), 0);
  // The mix really exercised both paths.
  EXPECT_GT(acquired.load(), 1000);
  EXPECT_GT(evicted.load(), 50);
  uint64_t listed_bytes = 0;
  for (const auto& info : store_.list()) {
    int64_t want = 0;
    for (int t = 0; t < kThreads; ++t) {
      auto it = held[t].find(info.cartridge_id);
      if (it != held[t].end()) want += it->second;
    }
    EXPECT_EQ(info.ref_count, want) << info.cartridge_id;
    EXPECT_FALSE(info.pinned) << info.cartridge_id;
    listed_bytes += info.nbytes;
  }
  EXPECT_EQ(listed_bytes, store_.bytes());
  // Every id some thread still holds must be present.
  for (int t = 0; t < kThreads; ++t) {
    for (const auto& [id, n] : held[t]) {
      if (n > 0) {
        EXPECT_TRUE(store_.contains(id)) << id;
      }
    }
  }
}

}  // namespace
}  // namespace cartserve
