#include "kv/prefix_hash.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"

namespace cartserve {
namespace {

std::string hex_to_bytes(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

BlockHash parse(const nlohmann::json& j) {
  return BlockHash{std::stoull(j[0].get<std::string>(), nullptr, 16),
                   std::stoull(j[1].get<std::string>(), nullptr, 16)};
}

// Values from tools/make_prefix_hash_fixtures.py (Python xxhash, layout rebuilt from the spec).
TEST(PrefixHash, MatchesPythonReference) {
  std::ifstream f(testing::fixture_path("kv/prefix_hash.json"));
  ASSERT_TRUE(f.good());
  const auto doc = nlohmann::json::parse(f);
  const auto tokens = doc["tokens"].get<std::vector<int32_t>>();
  ASSERT_EQ(doc["cases"].size(), 5u);
  for (const auto& c : doc["cases"]) {
    const std::string salt = hex_to_bytes(c["salt_hex"].get<std::string>());
    const BlockHash root = prefix_hash_root(salt, c["num_external_tokens"].get<int64_t>());
    EXPECT_EQ(root, parse(c["root"]));
    std::vector<BlockHash> hashes;
    append_block_hashes(root, tokens, c["leading_offset"].get<int32_t>(),
                        c["block_size"].get<int32_t>(), hashes);
    ASSERT_EQ(hashes.size(), c["blocks"].size());
    ASSERT_FALSE(hashes.empty());
    for (size_t i = 0; i < hashes.size(); ++i)
      EXPECT_EQ(hashes[i], parse(c["blocks"][i])) << i;
  }
}

TEST(PrefixHash, ChainPropertyAndSalt) {
  std::vector<int32_t> a(64);
  for (int i = 0; i < 64; ++i)
    a[static_cast<size_t>(i)] = i * 3 + 1;
  const BlockHash root = prefix_hash_root("");
  std::vector<BlockHash> ha, hb, hc;
  append_block_hashes(root, a, 0, 16, ha);
  ASSERT_EQ(ha.size(), 4u);

  // Same prefix, different later block: equal hashes up to the change only.
  auto b = a;
  b[40] = 999;  // block 2
  append_block_hashes(root, b, 0, 16, hb);
  EXPECT_EQ(ha[0], hb[0]);
  EXPECT_EQ(ha[1], hb[1]);
  EXPECT_NE(ha[2], hb[2]);
  EXPECT_NE(ha[3], hb[3]);  // block 3 tokens equal, but its parent differs

  // A change in block 0 changes every later hash.
  auto c = a;
  c[0] = 7;
  append_block_hashes(root, c, 0, 16, hc);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_NE(ha[i], hc[i]) << i;

  // hash_block composes the chain.
  EXPECT_EQ(ha[1],
            hash_block(hash_block(root, std::span(a).first(16)), std::span(a).subspan(16, 16)));

  // Salts and external counts separate otherwise equal content.
  std::vector<BlockHash> s1, s2, s3;
  append_block_hashes(prefix_hash_root("cart-A"), a, 0, 16, s1);
  append_block_hashes(prefix_hash_root("cart-B"), a, 0, 16, s2);
  append_block_hashes(prefix_hash_root("cart-A", 16), a, 0, 16, s3);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_NE(s1[i], ha[i]);
    EXPECT_NE(s1[i], s2[i]);
    EXPECT_NE(s1[i], s3[i]);
  }
  EXPECT_EQ(prefix_hash_root("cart-A"), prefix_hash_root("cart-A"));
}

TEST(PrefixHash, IncrementalEqualsOneShotAndPartialBlocksSkipped) {
  std::vector<int32_t> t(50);
  for (int i = 0; i < 50; ++i)
    t[static_cast<size_t>(i)] = 1000 - i;
  const BlockHash root = prefix_hash_root("x", 3);
  std::vector<BlockHash> once, inc;
  append_block_hashes(root, t, 3, 8, once);
  // First block holds 5 tokens, then 8 each: 5 + 8*5 = 45 <= 50 < 53.
  EXPECT_EQ(once.size(), 6u);
  for (size_t n = 0; n <= t.size(); ++n) {
    append_block_hashes(root, std::span(t).first(n), 3, 8, inc);
  }
  EXPECT_EQ(inc, once);
  // Bad arguments hash nothing.
  std::vector<BlockHash> none;
  append_block_hashes(root, t, 8, 8, none);
  append_block_hashes(root, t, 0, 0, none);
  EXPECT_TRUE(none.empty());
}

}  // namespace
}  // namespace cartserve
