#include "engine/kv_block_allocator.h"

#include <gtest/gtest.h>

#include "fake_backend.h"

namespace cartserve {
namespace {

constexpr int32_t kLayers = 2, kKvDim = 4, kBs = 4;

uint64_t bytes_for(int32_t tokens) {
  return 2ull * kLayers * tokens * kKvDim * sizeof(float);
}
uint64_t tensor_bytes(int32_t tokens) {
  return 1ull * tokens * kKvDim * sizeof(float);
}

TEST(KvBlockAllocator, AllocatesWholeBlocksAndWritesEveryTensorToItsSlots) {
  testing::FakeBackend be(kLayers, 16, kBs, kKvDim);
  auto pool = BlockPool::create(16);
  ASSERT_TRUE(pool.ok());
  KvBlockAllocator a(kLayers, kKvDim, kBs);
  a.bind(&*pool, &be);
  const int32_t T = 6;  // 2 blocks, the second partial
  auto p = a.allocate(bytes_for(T));
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  auto blocks = a.blocks_of(*p);
  ASSERT_TRUE(blocks.ok());
  ASSERT_EQ(blocks->size(), 2u);
  for (int32_t b : *blocks)
    EXPECT_EQ(pool->ref_count(b), 1);
  // Layout: [layer][K, V] x [T, kv_dim]; tensor i filled with 100 * i + t.
  for (int32_t i = 0; i < 2 * kLayers; ++i) {
    std::vector<float> rows(static_cast<size_t>(T) * kKvDim);
    for (int32_t t = 0; t < T; ++t) {
      for (int32_t d = 0; d < kKvDim; ++d)
        rows[t * kKvDim + d] = 100.f * i + t;
    }
    auto* dst = static_cast<uint8_t*>(*p) + i * tensor_bytes(T);
    ASSERT_TRUE(a.copy_from_host(dst, rows.data(), tensor_bytes(T)).ok());
  }
  for (int32_t i = 0; i < 2 * kLayers; ++i) {
    for (int32_t t = 0; t < T; ++t) {
      const int32_t slot = (*blocks)[t / kBs] * kBs + t % kBs;
      EXPECT_EQ(be.row(i / 2, i % 2 == 1, slot)[0], 100.f * i + t);
    }
    std::vector<float> back(static_cast<size_t>(T) * kKvDim);
    auto* src = static_cast<uint8_t*>(*p) + i * tensor_bytes(T);
    ASSERT_TRUE(a.copy_to_host(back.data(), src, tensor_bytes(T)).ok());
    EXPECT_EQ(back[(T - 1) * kKvDim], 100.f * i + T - 1);
  }
  a.free(*p);
  for (int32_t b : *blocks)
    EXPECT_EQ(pool->ref_count(b), 0);
  EXPECT_EQ(a.num_blocks_held(), 0);
}

TEST(KvBlockAllocator, RefusesBadSizesPartialCopiesAndExhaustion) {
  testing::FakeBackend be(kLayers, 4, kBs, kKvDim);
  auto pool = BlockPool::create(4);  // 3 usable blocks
  KvBlockAllocator a(kLayers, kKvDim, kBs);
  EXPECT_EQ(a.allocate(bytes_for(2)).status().code(), ErrorCode::kFailedPrecondition);  // unbound
  a.bind(&*pool, &be);
  EXPECT_EQ(a.allocate(bytes_for(2) + 4).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(a.allocate(bytes_for(13)).status().code(), ErrorCode::kResourceExhausted);
  auto p = a.allocate(bytes_for(5));
  ASSERT_TRUE(p.ok());
  std::vector<float> rows(64);
  EXPECT_FALSE(a.copy_from_host(*p, rows.data(), tensor_bytes(5) - 4).ok());  // not a whole tensor
  EXPECT_FALSE(a.copy_from_host(static_cast<uint8_t*>(*p) + 8, rows.data(), tensor_bytes(5)).ok());
  EXPECT_FALSE(a.copy_from_host(reinterpret_cast<void*>(16), rows.data(), tensor_bytes(5)).ok());
  // After unbind (engine gone) frees forget blocks and copies fail cleanly.
  a.bind(nullptr, nullptr);
  EXPECT_EQ(a.copy_from_host(*p, rows.data(), tensor_bytes(5)).code(), ErrorCode::kUnavailable);
  a.free(*p);
}

}  // namespace
}  // namespace cartserve
