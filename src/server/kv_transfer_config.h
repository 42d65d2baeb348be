// --kv-transfer-config (vLLM-compatible JSON) parsed and validated at start:
// {"kv_connector": "CartridgeConnector", "kv_connector_module_path": ...,
//  "kv_connector_extra_config": {...}, "kv_role": "kv_both"}.
// Any invalid key or value stops the server with a message naming the key.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cartridge/catalog.h"
#include "core/status.h"

namespace cartserve {

struct CartridgeSpec {
  std::string cartridge_id;
  std::string path;
  std::string manifest_path;  // optional
};

enum class OnUnknownCartridge { kError, kIgnore };

struct CartridgeConnectorConfig {
  std::vector<CartridgeSpec> cartridges;  // first is the default
  nlohmann::json router;                  // the "router" object (null when absent); edge-only
  std::optional<uint64_t> gpu_capacity_bytes;
  std::optional<uint64_t> host_capacity_bytes;
  std::vector<std::string> preload;
  std::string registry_db;
  std::string cartridge_dir;
  CartridgeMode mode = CartridgeMode::kVirtual;
  OnUnknownCartridge on_unknown = OnUnknownCartridge::kError;
};

struct KvTransferConfig {
  std::string kv_connector;
  std::string kv_connector_module_path;
  std::string kv_role = "kv_both";
  CartridgeConnectorConfig cartridge;
};

// Parses the JSON text given on the command line.
Result<KvTransferConfig> parse_kv_transfer_config(const std::string& json_text);

}  // namespace cartserve
