// The cartridge connector against a real residency manager whose device tier
// is KV blocks of a real BlockPool (the backend is a fake KV store).
#include "engine/cartridge_connector.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "fake_backend.h"

namespace cartserve {
namespace {

constexpr int32_t kLayers = 2, kHeads = 2, kDim = 4, kBs = 4;

// A cartridge whose key at (layer, head, token, d) is 1000 * layer + 100 * head + token.
CartridgeData synthetic(int32_t tokens, bool with_ids) {
  CartridgeData c;
  c.num_layers = kLayers;
  c.num_kv_heads = kHeads;
  c.head_dim = kDim;
  c.num_tokens = tokens;
  c.dtype = DType::kF32;
  for (int32_t l = 0; l < kLayers; ++l) {
    Tensor k(DType::kF32, {kHeads, tokens, kDim}), v(DType::kF32, {kHeads, tokens, kDim});
    for (int32_t h = 0; h < kHeads; ++h)
      for (int32_t t = 0; t < tokens; ++t)
        for (int32_t d = 0; d < kDim; ++d) {
          k.data<float>()[(h * tokens + t) * kDim + d] = 1000.f * l + 100.f * h + t;
          v.data<float>()[(h * tokens + t) * kDim + d] = -1.f;
        }
    c.keys.push_back(k);
    c.values.push_back(v);
  }
  if (with_ids) {
    for (int32_t t = 0; t < tokens; ++t)
      c.token_ids.push_back(50 + t);
  }
  return c;
}

// Paths: "ok:<tokens>:<ids 0/1>" or "fail".
Result<CartridgeData> load(const std::string& path) {
  if (path == "fail") return make_error(ErrorCode::kCorrupt, "broken cartridge file");
  const int tokens = std::stoi(path.substr(3));
  return synthetic(tokens, path.back() == '1');
}

// Bytes of KV per block in the rig (fp32, K and V, every layer).
constexpr uint64_t kBlockBytes = 2ull * kLayers * kHeads * kDim * 4 * kBs;

struct Rig {
  explicit Rig(CartridgeMode mode, int32_t device_budget_blocks = 1000, int32_t pool_blocks = 64)
      : backend(kLayers, pool_blocks, kBs, kHeads, kDim), pool(*BlockPool::create(pool_blocks)) {
    ResidencyConfig rc;
    rc.host_budget_bytes = 1ull << 30;
    host = std::make_unique<ResidencyManager>(rc, load);
    DeviceTierConfig dc;
    dc.block_size = kBs;
    dc.bytes_per_block = kBlockBytes;
    dc.budget_bytes = kBlockBytes * static_cast<uint64_t>(device_budget_blocks);
    device = std::make_unique<DeviceKvTier>(pool, dc);
    connector = std::make_unique<CartridgeConnector>(*host, *device, catalog, mode, kBs);
  }

  void add(const std::string& id, const std::string& path) {
    auto data = load(path);
    CatalogEntry e;
    e.cartridge_id = id;
    e.path = path;
    ManifestOptions o;
    o.cartridge_id = id;
    o.block_size = kBs;
    o.compute_checksum = false;
    // A file that will fail to load: describe what it claims to be.
    e.manifest = *manifest_from_cartridge(data.ok() ? *data : synthetic(5, false), "", o);
    if (data.ok()) e.token_ids = data->token_ids;
    e.content_hash = id;
    ASSERT_TRUE(host->add_cartridge(id, path, e.manifest).ok());
    ASSERT_TRUE(catalog.add(e).ok());
  }

  Request request(const std::string& rid, const std::string& cid, std::vector<int32_t> prompt,
                  int32_t virtual_tokens) {
    Request r;
    r.id = rid;
    r.cartridge_ids = {cid};
    r.prompt_token_ids = std::move(prompt);
    r.num_virtual_tokens = virtual_tokens;
    return r;
  }

  // get_blocks, running the worker side while the KV loads (as the engine
  // does between steps), until it is there or fails.
  Result<std::vector<int32_t>> blocks(const Request& r, int32_t e) {
    for (int i = 0; i < 400; ++i) {
      auto b = connector->get_blocks(r, e);
      if (b.ok() || b.status().code() != ErrorCode::kUnavailable) return b;
      connector->run_worker(backend);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return make_error(ErrorCode::kInternal, "cartridge never became resident");
  }

  // Runs the worker side until no load is in flight.
  void settle() {
    for (int i = 0; i < 400 && connector->run_worker(backend); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }

  testing::FakeBackend backend;
  BlockPool pool;
  CartridgeCatalog catalog;
  std::unique_ptr<ResidencyManager> host;
  std::unique_ptr<DeviceKvTier> device;
  std::unique_ptr<CartridgeConnector> connector;
};

TEST(CartridgeConnector, VirtualModeLoadsWhileTheRequestWaitsThenSharesBlocks) {
  Rig rig(CartridgeMode::kVirtual);
  rig.add("a", "ok:10:0");
  Request r = rig.request("r1", "a", {1, 2, 3}, 10);
  EXPECT_EQ(*rig.connector->get_num_matched_tokens(r), 10);
  // First ask: not resident, so "being loaded" while it loads.
  EXPECT_EQ(rig.connector->get_blocks(r, 10).status().code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(rig.device->is_loading("a"));
  auto blocks = rig.blocks(r, 10);
  ASSERT_TRUE(blocks.ok()) << blocks.status().to_string();
  ASSERT_EQ(blocks->size(), 3u);  // ceil(10 / 4)
  // Token t of layer 1, head 1 sits at its slot.
  for (int32_t t = 0; t < 10; ++t) {
    const int32_t slot = (*blocks)[t / kBs] * kBs + t % kBs;
    EXPECT_EQ(rig.backend.row(1, false, slot)[kDim], 1000.f + 100.f + t);
  }
  EXPECT_EQ(rig.device->ref_count("a"), 1);
  // A second request shares the same blocks; asking again for r1 takes no new reference.
  Request r2 = rig.request("r2", "a", {4}, 10);
  EXPECT_EQ(*rig.connector->get_blocks(r2, 10), *blocks);
  EXPECT_EQ(*rig.connector->get_blocks(r, 10), *blocks);
  EXPECT_EQ(rig.device->ref_count("a"), 2);
  rig.connector->on_request_finished(r);
  rig.connector->on_request_preempted(r2);
  rig.connector->on_request_finished(r2);  // finishing after preemption releases nothing twice
  EXPECT_EQ(rig.device->ref_count("a"), 0);
  EXPECT_EQ(rig.device->counters().promotions, 1u);
  EXPECT_EQ(rig.connector->num_requests_served(), 2u);
  // Idle, its blocks stay cached in the pool: the next request hits without a copy.
  EXPECT_TRUE(rig.device->is_resident("a"));
  Request r3 = rig.request("r3", "a", {5}, 10);
  EXPECT_EQ(*rig.connector->get_blocks(r3, 10), *blocks);
  EXPECT_EQ(rig.backend.loads, 1);
  rig.connector->on_request_finished(r3);
  EXPECT_TRUE(rig.device->check_invariants().ok());
}

TEST(CartridgeConnector, WorkerReportsBusyUntilTheCopyIsDone) {
  Rig rig(CartridgeMode::kVirtual);
  rig.add("a", "ok:10:0");
  Request r = rig.request("r1", "a", {1}, 10);
  rig.backend.hold_transfers = true;
  EXPECT_EQ(rig.connector->get_blocks(r, 10).status().code(), ErrorCode::kUnavailable);
  bool busy = true;
  for (int i = 0; i < 200 && rig.backend.in_flight() == 0; ++i) {
    busy = rig.connector->run_worker(rig.backend);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_EQ(rig.backend.in_flight(), 1u);
  EXPECT_TRUE(busy);
  EXPECT_TRUE(rig.connector->run_worker(rig.backend));  // still copying
  EXPECT_EQ(rig.connector->get_blocks(r, 10).status().code(), ErrorCode::kUnavailable);
  rig.backend.hold_transfers = false;
  EXPECT_FALSE(rig.connector->run_worker(rig.backend));
  EXPECT_TRUE(rig.connector->get_blocks(r, 10).ok());
  rig.connector->on_request_finished(r);
}

TEST(CartridgeConnector, NoCartridgeMeansNothingAndVirtualCountMustMatch) {
  Rig rig(CartridgeMode::kVirtual);
  rig.add("a", "ok:10:0");
  Request none = rig.request("n", "a", {1}, 0);
  none.cartridge_ids.clear();
  EXPECT_EQ(*rig.connector->get_num_matched_tokens(none), 0);
  Request wrong = rig.request("w", "a", {1}, 9);
  EXPECT_FALSE(rig.connector->get_num_matched_tokens(wrong).ok());
  Request unknown = rig.request("u", "zzz", {1}, 9);
  EXPECT_EQ(rig.connector->get_num_matched_tokens(unknown).status().code(), ErrorCode::kNotFound);
}

TEST(CartridgeConnector, PrefixModeVerifiesTokenIds) {
  Rig rig(CartridgeMode::kPrefix);
  rig.add("ids", "ok:10:1");  // token ids 50..59
  std::vector<int32_t> prompt;
  for (int32_t t = 0; t < 10; ++t)
    prompt.push_back(50 + t);
  prompt.push_back(7);
  EXPECT_EQ(*rig.connector->get_num_matched_tokens(rig.request("r", "ids", prompt, 0)), 10);
  prompt[6] = 999;  // diverges at 6: only the verified part is provided
  EXPECT_EQ(*rig.connector->get_num_matched_tokens(rig.request("r", "ids", prompt, 0)), 6);
  auto short_prompt = rig.connector->get_num_matched_tokens(rig.request("s", "ids", {50, 51}, 0));
  ASSERT_FALSE(short_prompt.ok());
  EXPECT_NE(short_prompt.status().message().find("not longer than cartridge"), std::string::npos);
}

TEST(CartridgeConnector, PrefixModeWithoutIdsUsesTheSeedRule) {
  Rig rig(CartridgeMode::kPrefix);
  rig.add("trained", "ok:10:0");
  std::vector<int32_t> prompt(11, 1);  // len 11: min(10, 10) aligned down to 4 -> 8
  EXPECT_EQ(*rig.connector->get_num_matched_tokens(rig.request("r", "trained", prompt, 0)), 8);
  prompt.resize(30, 1);  // min(10, 29) -> 8
  EXPECT_EQ(*rig.connector->get_num_matched_tokens(rig.request("r", "trained", prompt, 0)), 8);
}

TEST(CartridgeConnector, FailedLoadFailsTheRequestThenRetries) {
  Rig rig(CartridgeMode::kVirtual);
  rig.add("bad", "fail");
  Request r = rig.request("r", "bad", {1}, 5);
  auto b = rig.blocks(r, 5);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), ErrorCode::kCorrupt);
  EXPECT_NE(b.status().message().find("broken cartridge file"), std::string::npos);
  // The error is reported once and nothing is held; the next request tries again.
  EXPECT_EQ(rig.device->ref_count("bad"), 0);
  EXPECT_EQ(rig.pool.num_free_blocks(), rig.pool.num_usable_blocks());
  EXPECT_EQ(rig.connector->get_blocks(r, 5).status().code(), ErrorCode::kUnavailable);
  // A copy that cannot start fails the same way.
  rig.add("a", "ok:10:0");
  rig.backend.fail_next_load = true;
  Request ra = rig.request("ra", "a", {1}, 10);
  auto c = rig.blocks(ra, 10);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("on fire"), std::string::npos);
  EXPECT_TRUE(rig.blocks(ra, 10).ok());  // and retries
  rig.connector->on_request_finished(ra);
  EXPECT_TRUE(rig.device->check_invariants().ok());
}

TEST(CartridgeConnector, LruEvictionSparesInUseAndPinnedCartridges) {
  Rig rig(CartridgeMode::kVirtual, /*device_budget_blocks=*/6);  // two 10-token cartridges
  for (const char* id : {"a", "b", "c", "d"})
    rig.add(id, "ok:10:0");
  Request ra = rig.request("ra", "a", {1}, 10), rb = rig.request("rb", "b", {1}, 10);
  Request rc = rig.request("rc", "c", {1}, 10), rd = rig.request("rd", "d", {1}, 10);
  ASSERT_TRUE(rig.blocks(ra, 10).ok());  // a in use
  ASSERT_TRUE(rig.blocks(rb, 10).ok());
  rig.connector->on_request_finished(rb);  // b idle
  ASSERT_TRUE(rig.blocks(rc, 10).ok());    // evicts b (idle), never a (in use)
  EXPECT_TRUE(rig.device->is_resident("a"));
  EXPECT_FALSE(rig.device->is_resident("b"));
  // a and c both in use: d cannot fit now, and waits rather than fails.
  auto d = rig.connector->get_blocks(rd, 10);
  EXPECT_EQ(d.status().code(), ErrorCode::kResourceExhausted);
  rig.connector->on_request_finished(rc);
  // Pin a (still in use, then idle): it is never the victim.
  ASSERT_TRUE(rig.device->pin(*rig.connector->device_cartridge("a")).ok());
  rig.connector->on_request_finished(ra);
  ASSERT_TRUE(rig.blocks(rd, 10).ok());  // evicts c, not pinned a
  EXPECT_TRUE(rig.device->is_resident("a"));
  EXPECT_FALSE(rig.device->is_resident("c"));
  rig.connector->on_request_finished(rd);
  // The device invariant holds; a pinned and d idle-cached hold their blocks.
  const auto c = rig.device->counters();
  EXPECT_EQ(c.bytes_promoted - c.bytes_evicted, c.bytes_resident);
  EXPECT_EQ(c.bytes_resident, 6 * kBlockBytes);
  EXPECT_EQ(c.evictions, 2u);
  EXPECT_TRUE(rig.device->check_invariants().ok());
}

TEST(CartridgeConnector, PinnedCartridgesFillingTheBudgetFailTheRequestInsteadOfWaiting) {
  Rig rig(CartridgeMode::kVirtual, /*device_budget_blocks=*/4);  // one 10-token cartridge
  rig.add("a", "ok:10:0");
  rig.add("b", "ok:10:0");
  ASSERT_TRUE(rig.device->pin(*rig.connector->device_cartridge("a")).ok());
  rig.settle();
  EXPECT_TRUE(rig.device->is_resident("a"));
  Request rb = rig.request("rb", "b", {1}, 10);
  auto b = rig.blocks(rb, 10);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(b.status().message().find("pinned"), std::string::npos);
  ASSERT_TRUE(rig.device->unpin("a").ok());
  EXPECT_TRUE(rig.blocks(rb, 10).ok());
  rig.connector->on_request_finished(rb);
}

TEST(CartridgeConnector, IdleCartridgeBlocksAreReclaimedByThePoolAndReloaded) {
  // 12 usable blocks; a cartridge of 3 blocks stays cached when idle, until
  // other KV needs its blocks: one LRU for everything.
  Rig rig(CartridgeMode::kVirtual, /*device_budget_blocks=*/8, /*pool_blocks=*/13);
  rig.add("a", "ok:10:0");
  Request r = rig.request("r", "a", {1}, 10);
  ASSERT_TRUE(rig.blocks(r, 10).ok());
  rig.connector->on_request_finished(r);
  EXPECT_TRUE(rig.device->is_resident("a"));
  // Requests' own KV takes every free block, then two of a's cached ones (LRU: tail first).
  auto own = rig.pool.allocate(9 + 2);
  ASSERT_TRUE(own);
  EXPECT_FALSE(rig.device->is_resident("a"));
  EXPECT_EQ(rig.device->counters().evictions, 1u);
  for (int32_t b : *own)
    rig.pool.release(b);
  // The next request reloads only the missing blocks, and sees the right KV.
  Request r2 = rig.request("r2", "a", {2}, 10);
  auto blocks = rig.blocks(r2, 10);
  ASSERT_TRUE(blocks.ok());
  EXPECT_EQ(rig.backend.loads, 2);
  for (int32_t t = 0; t < 10; ++t) {
    const int32_t slot = (*blocks)[t / kBs] * kBs + t % kBs;
    EXPECT_EQ(rig.backend.row(0, false, slot)[0], static_cast<float>(t));
  }
  rig.connector->on_request_finished(r2);
  EXPECT_TRUE(rig.device->check_invariants().ok());
}

}  // namespace
}  // namespace cartserve
