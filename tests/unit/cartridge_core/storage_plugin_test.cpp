#include "cartridge/storage_plugin.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "cartridge/residency.h"
#include "cartridge/store.h"
#include "cartridge_test_util.h"
#include "core/mapped_file.h"
#include "core/sha256.h"
#include "test_util.h"

namespace cartserve {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::make_cartridge;
using testing::TempDir;

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

LayerChunk chunk_of(const CartridgeData& c, int layer) {
  return LayerChunk{c.keys[layer], c.values[layer], c.num_layers, c.num_frozen_tokens};
}

std::string read_all(const std::string& path) {
  auto t = read_file(path);
  EXPECT_TRUE(t.ok()) << path;
  return t.ok() ? *t : std::string();
}

void write_all(const std::string& path, const std::string& bytes) {
  testing::write_bytes(path, bytes);
}

class DirectoryPluginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto w = DirectoryStoragePlugin::open(dir_.file("store"), /*read_only=*/false);
    ASSERT_TRUE(w.ok()) << w.status().to_string();
    writer_ = std::move(w).value();
  }
  std::unique_ptr<DirectoryStoragePlugin> reader() {
    auto r = DirectoryStoragePlugin::open(dir_.file("store"), /*read_only=*/true);
    EXPECT_TRUE(r.ok());
    return std::move(r).value();
  }
  std::string path_of(const ChunkKey& k) { return *writer_->chunk_path(k); }

  TempDir dir_;
  std::unique_ptr<DirectoryStoragePlugin> writer_;
  const CartridgeData cart_ = make_cartridge(3, 2, 5, 4, DType::kBF16, 1, 3);
};

// ---- round trips ----

TEST_F(DirectoryPluginTest, PutGetRoundTripsBytes) {
  ASSERT_TRUE(writer_->put({"doc_a", 1}, chunk_of(cart_, 1)).ok());
  auto c = writer_->get({"doc_a", 1});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_TRUE(same_bytes(c->keys, cart_.keys[1]));
  EXPECT_TRUE(same_bytes(c->values, cart_.values[1]));
  EXPECT_EQ(c->num_layers, 3);
  EXPECT_EQ(c->num_frozen_tokens, 1);
}

TEST_F(DirectoryPluginTest, EveryKvDtypeRoundTrips) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    const CartridgeData c = make_cartridge(1, 3, 7, 8, t, 0, 5);
    const std::string id = std::string("dt_") + dtype_name(t);
    ASSERT_TRUE(writer_->put({id, 0}, chunk_of(c, 0)).ok());
    auto back = writer_->get({id, 0});
    ASSERT_TRUE(back.ok()) << dtype_name(t);
    EXPECT_EQ(back->keys.dtype(), t);
    EXPECT_TRUE(same_bytes(back->keys, c.keys[0])) << dtype_name(t);
    EXPECT_TRUE(same_bytes(back->values, c.values[0])) << dtype_name(t);
  }
}

TEST_F(DirectoryPluginTest, WholeCartridgeRoundTrips) {
  ASSERT_TRUE(put_cartridge(*writer_, "whole", cart_).ok());
  auto back = get_cartridge(*reader(), "whole");
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->num_layers, 3);
  EXPECT_EQ(back->num_kv_heads, 2);
  EXPECT_EQ(back->num_tokens, 5);
  EXPECT_EQ(back->head_dim, 4);
  EXPECT_EQ(back->num_frozen_tokens, 1);
  EXPECT_EQ(back->dtype, DType::kBF16);
  for (int l = 0; l < 3; ++l) {
    EXPECT_TRUE(same_bytes(back->keys[l], cart_.keys[l])) << l;
    EXPECT_TRUE(same_bytes(back->values[l], cart_.values[l])) << l;
  }
  EXPECT_THAT(*writer_->layers("whole"), ElementsAre(0, 1, 2));
}

TEST_F(DirectoryPluginTest, MissingLayerOfACartridgeIsNamed) {
  ASSERT_TRUE(put_cartridge(*writer_, "holey", cart_).ok());
  ASSERT_TRUE(*writer_->remove({"holey", 1}));
  auto back = get_cartridge(*writer_, "holey");
  ASSERT_FALSE(back.ok());
  EXPECT_EQ(back.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(back.status().message(), HasSubstr("holey/1"));
}

TEST_F(DirectoryPluginTest, LayersThatDisagreeAreCorrupt) {
  ASSERT_TRUE(put_cartridge(*writer_, "mixed", cart_).ok());
  const CartridgeData other = make_cartridge(3, 2, 6, 4, DType::kBF16, 1, 3);  // 6 tokens
  ASSERT_TRUE(writer_->put({"mixed", 2}, chunk_of(other, 2)).ok());
  auto back = get_cartridge(*writer_, "mixed");
  ASSERT_FALSE(back.ok());
  EXPECT_EQ(back.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(back.status().message(), HasSubstr("'mixed'"));
}

TEST_F(DirectoryPluginTest, ContainsAndRemove) {
  EXPECT_FALSE(*writer_->contains({"c", 0}));
  ASSERT_TRUE(writer_->put({"c", 0}, chunk_of(cart_, 0)).ok());
  EXPECT_TRUE(*writer_->contains({"c", 0}));
  EXPECT_FALSE(*writer_->contains({"c", 1}));
  EXPECT_FALSE(*writer_->contains({"d", 0}));
  auto removed = writer_->remove({"c", 0});
  ASSERT_TRUE(removed.ok());
  EXPECT_TRUE(*removed);
  EXPECT_FALSE(*writer_->contains({"c", 0}));
  EXPECT_FALSE(*writer_->remove({"c", 0}));
  EXPECT_FALSE(fs::exists(fs::path(path_of({"c", 0})).parent_path()));  // empty folder dropped
}

TEST_F(DirectoryPluginTest, GetMissingIsNotFound) {
  auto c = writer_->get({"nobody", 0});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("nobody/0"));
}

TEST_F(DirectoryPluginTest, PutReplaces) {
  ASSERT_TRUE(writer_->put({"r", 0}, chunk_of(cart_, 0)).ok());
  ASSERT_TRUE(writer_->put({"r", 0}, chunk_of(cart_, 2)).ok());
  auto c = writer_->get({"r", 0});
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(same_bytes(c->keys, cart_.keys[2]));
  // No temporary files are left behind.
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(fs::path(path_of({"r", 0})).parent_path())) {
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos);
    ++files;
  }
  EXPECT_EQ(files, 1u);
}

TEST_F(DirectoryPluginTest, WorksThroughTheInterface) {
  StoragePlugin& p = *writer_;
  EXPECT_STREQ(p.name(), "directory");
  EXPECT_FALSE(p.read_only());
  ASSERT_TRUE(p.put({"i", 0}, chunk_of(cart_, 0)).ok());
  EXPECT_TRUE(*p.contains({"i", 0}));
}

TEST_F(DirectoryPluginTest, ServesAsTheResidencyManagersDisk) {
  ASSERT_TRUE(put_cartridge(*writer_, "doc", cart_).ok());
  ResidencyConfig cfg;
  cfg.host_budget_bytes = 1 << 20;
  cfg.device_budget_bytes = 1 << 20;
  cfg.device_dtype = DType::kF32;
  cfg.device_layout = KvLayout::kHeadMajor;
  std::shared_ptr<const StoragePlugin> ro = reader();
  ResidencyManager mgr(cfg, make_storage_loader(ro), std::make_shared<HostDeviceAllocator>());
  ASSERT_TRUE(mgr.add_cartridge("doc", "doc").ok());
  ASSERT_TRUE(mgr.add_cartridge("gone", "gone").ok());
  auto r = mgr.acquire("doc");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->num_layers, 3);
  EXPECT_EQ(r->num_frozen_tokens, 1);
  // [H, T, D] = [2, 5, 4]: h=1, t=4, d=3 of layer 2's values.
  EXPECT_EQ(static_cast<const float*>(r->values(2))[(1 * 5 + 4) * 4 + 3],
            testing::cartridge_value(3, 2, 1, 1, 4, 3));
  auto missing = mgr.acquire("gone");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("gone/0"));
}

TEST_F(DirectoryPluginTest, ServesAsTheStoresLoader) {
  ASSERT_TRUE(put_cartridge(*writer_, "doc", cart_).ok());
  CartridgeStore store(make_storage_loader(reader()));
  ASSERT_TRUE(store.load("local_name", "doc").ok());
  EXPECT_EQ(store.info("local_name")->num_tokens, 5);
}

// ---- read-only serving side ----

TEST_F(DirectoryPluginTest, ReadOnlyRefusesWritesButReads) {
  ASSERT_TRUE(writer_->put({"ro", 0}, chunk_of(cart_, 0)).ok());
  auto r = reader();
  EXPECT_TRUE(r->read_only());
  Status put = r->put({"ro", 1}, chunk_of(cart_, 1));
  EXPECT_EQ(put.code(), ErrorCode::kPermissionDenied);
  EXPECT_THAT(put.message(), HasSubstr("read-only"));
  EXPECT_THAT(put.message(), HasSubstr("ro/1"));
  auto rm = r->remove({"ro", 0});
  EXPECT_EQ(rm.status().code(), ErrorCode::kPermissionDenied);
  EXPECT_TRUE(*r->contains({"ro", 0}));
  EXPECT_TRUE(r->get({"ro", 0}).ok());
  EXPECT_FALSE(*r->contains({"ro", 1}));
}

TEST(DirectoryPlugin, ReadOnlyNeedsAnExistingRoot) {
  auto r = DirectoryStoragePlugin::open("/nonexistent/kv-store", true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("/nonexistent/kv-store"));
}

TEST(DirectoryPlugin, WritableCreatesTheRoot) {
  TempDir dir;
  const std::string root = dir.file("a/b/c");
  auto w = DirectoryStoragePlugin::open(root, false);
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(fs::is_directory(root));
  EXPECT_EQ((*w)->root(), root);
}

// ---- the file format ----

TEST_F(DirectoryPluginTest, FileFollowsTheDocumentedLayout) {
  const CartridgeData c = make_cartridge(4, 2, 3, 2, DType::kF16, 1, 9);
  ASSERT_TRUE(writer_->put({"fmt", 2}, chunk_of(c, 2)).ok());
  const std::string bytes = read_all(path_of({"fmt", 2}));
  const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
  auto u32 = [&](size_t off) {
    uint32_t v;
    std::memcpy(&v, p + off, 4);
    return v;
  };
  ASSERT_EQ(bytes.size(), 44u + 3 + 2 * 24 + 32);  // header, id, K and V (2*3*2 fp16), sha256
  EXPECT_EQ(bytes.substr(0, 8), "CSKVCHNK");
  EXPECT_EQ(u32(8), 1u);   // version
  EXPECT_EQ(u32(12), 1u);  // fp16
  EXPECT_EQ(u32(16), 2u);  // layer
  EXPECT_EQ(u32(20), 4u);  // num_layers
  EXPECT_EQ(u32(24), 2u);  // heads
  EXPECT_EQ(u32(28), 3u);  // tokens
  EXPECT_EQ(u32(32), 2u);  // head_dim
  EXPECT_EQ(u32(36), 1u);  // frozen
  EXPECT_EQ(u32(40), 3u);  // id length
  EXPECT_EQ(bytes.substr(44, 3), "fmt");
  EXPECT_EQ(std::memcmp(p + 47, c.keys[2].raw(), 24), 0);
  EXPECT_EQ(std::memcmp(p + 71, c.values[2].raw(), 24), 0);
  const Sha256::Digest d = Sha256::hash(p, bytes.size() - 32);
  EXPECT_EQ(std::memcmp(d.data(), p + bytes.size() - 32, 32), 0);
  EXPECT_THAT(path_of({"fmt", 2}), HasSubstr("/fmt/layer_00002.kvchunk"));
}

TEST_F(DirectoryPluginTest, FlippedPayloadByteIsCaughtByTheChecksum) {
  ASSERT_TRUE(writer_->put({"flip", 0}, chunk_of(cart_, 0)).ok());
  const std::string path = path_of({"flip", 0});
  std::string bytes = read_all(path);
  bytes[60] ^= 0x01;
  write_all(path, bytes);
  auto c = writer_->get({"flip", 0});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(c.status().message(), HasSubstr(path));
  EXPECT_THAT(c.status().message(), HasSubstr("checksum mismatch"));
}

TEST_F(DirectoryPluginTest, TruncatedAndEmptyFilesAreCorrupt) {
  ASSERT_TRUE(writer_->put({"t", 0}, chunk_of(cart_, 0)).ok());
  const std::string path = path_of({"t", 0});
  const std::string bytes = read_all(path);
  for (size_t keep : {bytes.size() - 1, bytes.size() / 2, size_t{50}, size_t{10}, size_t{0}}) {
    write_all(path, bytes.substr(0, keep));
    auto c = writer_->get({"t", 0});
    ASSERT_FALSE(c.ok()) << keep;
    EXPECT_EQ(c.status().code(), ErrorCode::kCorrupt) << keep;
  }
}

TEST_F(DirectoryPluginTest, BadMagicIsCorrupt) {
  ASSERT_TRUE(writer_->put({"m", 0}, chunk_of(cart_, 0)).ok());
  const std::string path = path_of({"m", 0});
  std::string bytes = read_all(path);
  bytes[0] = 'X';
  write_all(path, bytes);
  EXPECT_THAT(writer_->get({"m", 0}).status().message(), HasSubstr("bad magic"));
}

TEST_F(DirectoryPluginTest, ResealedButInconsistentHeaderIsCorrupt) {
  // Change a dimension and recompute the checksum: the size check still catches it.
  ASSERT_TRUE(writer_->put({"h", 0}, chunk_of(cart_, 0)).ok());
  const std::string path = path_of({"h", 0});
  std::string bytes = read_all(path);
  const uint32_t tokens = 6;
  std::memcpy(bytes.data() + 28, &tokens, 4);
  const Sha256::Digest d = Sha256::hash(bytes.data(), bytes.size() - 32);
  std::memcpy(bytes.data() + bytes.size() - 32, d.data(), 32);
  write_all(path, bytes);
  EXPECT_THAT(writer_->get({"h", 0}).status().message(), HasSubstr("does not match its header"));
}

TEST_F(DirectoryPluginTest, MisplacedFileIsCorrupt) {
  ASSERT_TRUE(writer_->put({"x", 1}, chunk_of(cart_, 1)).ok());
  ASSERT_TRUE(writer_->put({"x", 0}, chunk_of(cart_, 0)).ok());
  fs::copy_file(path_of({"x", 1}), path_of({"x", 0}), fs::copy_options::overwrite_existing);
  auto c = writer_->get({"x", 0});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr("holds chunk x/1, not x/0"));
}

// ---- keys ----

TEST_F(DirectoryPluginTest, IdsAreEscapedInjectivelyInsideTheRoot) {
  const std::vector<std::string> ids = {"a/b",    "a%2Fb", "..",  ".hidden", "../escape",
                                        "sp ace", "ünï",   "a.b", "-x_y"};
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_TRUE(writer_->put({ids[i], 0}, chunk_of(cart_, static_cast<int>(i % 3))).ok()) << ids[i];
  }
  const std::string root = fs::canonical(dir_.file("store")).string();
  std::set<std::string> dirs;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string p = path_of({ids[i], 0});
    EXPECT_EQ(fs::canonical(p).string().rfind(root + "/", 0), 0u) << ids[i] << " -> " << p;
    dirs.insert(fs::path(p).parent_path().filename().string());
    auto c = writer_->get({ids[i], 0});
    ASSERT_TRUE(c.ok()) << ids[i];
    EXPECT_TRUE(same_bytes(c->keys, cart_.keys[i % 3])) << ids[i];
  }
  EXPECT_EQ(dirs.size(), ids.size());
  EXPECT_EQ(escape_cartridge_id("a/b"), "a%2Fb");
  EXPECT_EQ(escape_cartridge_id("a%2Fb"), "a%252Fb");
  EXPECT_EQ(escape_cartridge_id(".."), "%2E.");
  EXPECT_EQ(escape_cartridge_id("doc_a-1.v2"), "doc_a-1.v2");
}

TEST_F(DirectoryPluginTest, BadKeysAreInvalidArguments) {
  EXPECT_EQ(writer_->put({"", 0}, chunk_of(cart_, 0)).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(writer_->put({"a", -1}, chunk_of(cart_, 0)).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(writer_->get({"", 0}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(writer_->contains({"a", -2}).status().code(), ErrorCode::kInvalidArgument);
  auto long_id = writer_->chunk_path({std::string(300, 'x'), 0});
  ASSERT_FALSE(long_id.ok());
  EXPECT_THAT(long_id.status().message(), HasSubstr("too long"));
}

TEST_F(DirectoryPluginTest, MalformedChunksAreRefused) {
  LayerChunk c = chunk_of(cart_, 0);
  c.values = Tensor(DType::kBF16, {2, 6, 4});
  Status s = writer_->put({"bad", 0}, c);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("[2, 5, 4]"));
  EXPECT_THAT(s.message(), HasSubstr("[2, 6, 4]"));

  c = chunk_of(cart_, 0);
  c.keys = Tensor(DType::kI32, {2, 5, 4});
  c.values = Tensor(DType::kI32, {2, 5, 4});
  EXPECT_THAT(writer_->put({"bad", 0}, c).message(), HasSubstr("not a KV dtype"));

  c = chunk_of(cart_, 0);
  c.num_layers = 0;  // layer 0 of a 0-layer cartridge
  EXPECT_EQ(writer_->put({"bad", 0}, c).code(), ErrorCode::kInvalidArgument);
  c = chunk_of(cart_, 0);
  c.num_frozen_tokens = 9;
  EXPECT_EQ(writer_->put({"bad", 0}, c).code(), ErrorCode::kInvalidArgument);
  EXPECT_FALSE(*writer_->contains({"bad", 0}));
}

TEST_F(DirectoryPluginTest, LayerListingIgnoresStrayFiles) {
  ASSERT_TRUE(writer_->put({"l", 10}, LayerChunk{cart_.keys[0], cart_.values[0], 11, 1}).ok());
  ASSERT_TRUE(writer_->put({"l", 2}, LayerChunk{cart_.keys[0], cart_.values[0], 11, 1}).ok());
  const fs::path dir = fs::path(path_of({"l", 0})).parent_path();
  write_all((dir / "layer_00003.kvchunk.tmp.123.0").string(), "partial");
  write_all((dir / "notes.txt").string(), "x");
  EXPECT_THAT(*writer_->layers("l"), ElementsAre(2, 10));
  EXPECT_TRUE(writer_->layers("none")->empty());
}

// ---- concurrency ----

TEST_F(DirectoryPluginTest, ConcurrentWritersOfOneKeyLeaveAValidChunk) {
  std::vector<std::thread> ts;
  for (int t = 0; t < 6; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        EXPECT_TRUE(writer_->put({"race", 0}, chunk_of(cart_, (t + i) % 3)).ok());
      }
    });
  }
  for (auto& th : ts)
    th.join();
  auto c = writer_->get({"race", 0});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  bool matches_one = false;
  for (int l = 0; l < 3; ++l) {
    matches_one = matches_one ||
                  (same_bytes(c->keys, cart_.keys[l]) && same_bytes(c->values, cart_.values[l]));
  }
  EXPECT_TRUE(matches_one);
}

TEST_F(DirectoryPluginTest, ReadersNeverSeeAPartialChunk) {
  ASSERT_TRUE(writer_->put({"live", 0}, chunk_of(cart_, 0)).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0}, reads{0};
  std::thread rd([&] {
    auto r = reader();
    while (!stop) {
      auto c = r->get({"live", 0});
      if (!c.ok()) ++bad;
      ++reads;
    }
  });
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(writer_->put({"live", 0}, chunk_of(cart_, i % 3)).ok());
  }
  stop = true;
  rd.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(reads.load(), 0);
}

}  // namespace
}  // namespace cartserve
