#include "server/kv_transfer_config.h"

#include <gtest/gtest.h>

namespace cartserve {
namespace {

TEST(KvTransferConfig, SeedSingleCartridge) {
  auto c = parse_kv_transfer_config(R"({
    "kv_connector": "CartridgeConnector",
    "kv_connector_module_path": "vllm.distributed.kv_transfer.kv_connector.v1.cartridge_connector",
    "kv_connector_extra_config": {"cartridge_path": "canary.pt"},
    "kv_role": "kv_both"})");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_EQ(c->cartridge.cartridges.size(), 1u);
  EXPECT_EQ(c->cartridge.cartridges[0].path, "canary.pt");
  EXPECT_EQ(c->cartridge.mode, CartridgeMode::kVirtual);
}

TEST(KvTransferConfig, MultiCartridgeWithRouterAndExtensions) {
  auto c = parse_kv_transfer_config(R"({"kv_connector": "CartridgeConnector",
    "kv_connector_extra_config": {
      "cartridges": [{"cartridge_id": "doc_a", "path": "a.pt"},
                     {"cartridge_id": "doc_b", "path": "b.pt", "manifest_path": "b.json"}],
      "router": {"type": "explicit"}, "gpu_capacity_bytes": 1048576, "preload": ["doc_b"],
      "mode": "prefix", "on_unknown": "ignore", "registry_db": "r.db", "cartridge_dir": "/c",
      "host_capacity_bytes": 4096}})");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->cartridge.cartridges.size(), 2u);
  EXPECT_EQ(c->cartridge.router["type"], "explicit");
  EXPECT_EQ(*c->cartridge.gpu_capacity_bytes, 1048576u);
  EXPECT_EQ(c->cartridge.mode, CartridgeMode::kPrefix);
  EXPECT_EQ(c->cartridge.on_unknown, OnUnknownCartridge::kIgnore);
}

TEST(KvTransferConfig, ErrorsNameTheKey) {
  auto msg = [](const char* text) {
    auto c = parse_kv_transfer_config(text);
    EXPECT_FALSE(c.ok());
    return c.ok() ? std::string() : c.status().message();
  };
  EXPECT_NE(msg("not json").find("not a JSON object"), std::string::npos);
  EXPECT_NE(msg(R"({"kv_connector": "LMCacheConnector"})").find("LMCacheConnector"),
            std::string::npos);
  EXPECT_NE(
      msg(R"({"kv_connector": "CartridgeConnector", "kv_role": "kv_producer"})").find("kv_role"),
      std::string::npos);
  EXPECT_NE(msg(R"({"kv_connector": "CartridgeConnector", "kv_connector_extra_config":
      {"cartridges": [{"cartridge_id": "a", "path": "a.pt"}, {"cartridge_id": "a", "path": "b.pt"}],
       "router": {"type": "explicit"}}})")
                .find("duplicates id 'a'"),
            std::string::npos);
  EXPECT_NE(msg(R"({"kv_connector": "CartridgeConnector", "kv_connector_extra_config":
      {"cartridges": [{"cartridge_id": "a", "path": "a.pt"}, {"cartridge_id": "b", "path": "b.pt"}]}})")
                .find("router"),
            std::string::npos);
  EXPECT_NE(msg(R"({"kv_connector": "CartridgeConnector", "kv_connector_extra_config":
      {"cartridge_path": "a.pt", "gpu_capacity_bytes": -1}})")
                .find("gpu_capacity_bytes"),
            std::string::npos);
  EXPECT_NE(msg(R"({"kv_connector": "CartridgeConnector", "kv_connector_extra_config":
      {"cartridge_path": "a.pt", "mode": "sideways"}})")
                .find("mode"),
            std::string::npos);
  EXPECT_NE(msg(R"({"kv_connector": "CartridgeConnector", "kv_connector_extra_config":
      {"cartridge_pth": "a.pt"}})")
                .find("cartridge_pth"),
            std::string::npos);
  EXPECT_NE(msg(R"({"kv_connector": "CartridgeConnector", "kv_connector_extra_config":
      {"cartridges": [{"path": "a.pt"}]}})")
                .find("cartridges[0].cartridge_id"),
            std::string::npos);
}

}  // namespace
}  // namespace cartserve
