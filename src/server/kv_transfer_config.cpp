#include "server/kv_transfer_config.h"

#include <set>

namespace cartserve {

using nlohmann::json;

namespace {

Status invalid(const std::string& key, const std::string& what) {
  return make_error(ErrorCode::kInvalidArgument, "--kv-transfer-config: '{}' {}", key, what);
}

Result<std::string> string_field(const json& obj, const std::string& key, const std::string& where,
                                 bool required) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (required) return invalid(where + key, "is required");
    return std::string();
  }
  if (!it->is_string() || it->get<std::string>().empty()) {
    return invalid(where + key, "must be a non-empty string");
  }
  return it->get<std::string>();
}

Result<std::optional<uint64_t>> bytes_field(const json& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<uint64_t>();
  if (!it->is_number_integer() || it->get<int64_t>() <= 0) {
    return invalid("kv_connector_extra_config." + key, "must be a positive integer (bytes)");
  }
  return std::optional<uint64_t>(it->get<uint64_t>());
}

Status parse_extra(const json& x, CartridgeConnectorConfig& c) {
  static const std::set<std::string> kKnown = {
      "cartridge_path",      "manifest_path", "cartridges",  "router",
      "gpu_capacity_bytes",  "preload",       "registry_db", "cartridge_dir",
      "host_capacity_bytes", "mode",          "on_unknown",  "cartridge_id"};
  const std::string where = "kv_connector_extra_config.";
  for (const auto& [k, v] : x.items()) {
    if (!kKnown.count(k)) {
      return invalid(where + k,
                     "is not a known key (known: cartridge_path, manifest_path, "
                     "cartridges, router, gpu_capacity_bytes, host_capacity_bytes, "
                     "preload, registry_db, cartridge_dir, mode, on_unknown)");
    }
  }
  CS_ASSIGN_OR_RETURN(std::string single, string_field(x, "cartridge_path", where, false));
  if (!single.empty()) {
    CartridgeSpec s;
    s.path = single;
    CS_ASSIGN_OR_RETURN(s.manifest_path, string_field(x, "manifest_path", where, false));
    CS_ASSIGN_OR_RETURN(s.cartridge_id, string_field(x, "cartridge_id", where, false));
    if (s.cartridge_id.empty()) s.cartridge_id = "default";
    c.cartridges.push_back(s);
  }
  if (auto it = x.find("cartridges"); it != x.end() && !it->is_null()) {
    if (!single.empty()) {
      return invalid(where + "cartridges", "cannot be combined with cartridge_path");
    }
    if (!it->is_array()) return invalid(where + "cartridges", "must be a list");
    std::set<std::string> seen;
    for (size_t i = 0; i < it->size(); ++i) {
      const json& e = (*it)[i];
      const std::string ew = where + "cartridges[" + std::to_string(i) + "].";
      if (!e.is_object()) return invalid(ew.substr(0, ew.size() - 1), "must be an object");
      CartridgeSpec s;
      CS_ASSIGN_OR_RETURN(s.cartridge_id, string_field(e, "cartridge_id", ew, true));
      CS_ASSIGN_OR_RETURN(s.path, string_field(e, "path", ew, true));
      CS_ASSIGN_OR_RETURN(s.manifest_path, string_field(e, "manifest_path", ew, false));
      if (!seen.insert(s.cartridge_id).second) {
        return invalid(ew + "cartridge_id", "duplicates id '" + s.cartridge_id + "'");
      }
      c.cartridges.push_back(s);
    }
  }
  if (auto it = x.find("router"); it != x.end() && !it->is_null()) {
    if (!it->is_object()) return invalid(where + "router", "must be an object");
    c.router = *it;
  } else if (c.cartridges.size() > 1) {
    return invalid(where + "router", "is required with more than one cartridge");
  }
  CS_ASSIGN_OR_RETURN(c.gpu_capacity_bytes, bytes_field(x, "gpu_capacity_bytes"));
  CS_ASSIGN_OR_RETURN(c.host_capacity_bytes, bytes_field(x, "host_capacity_bytes"));
  if (auto it = x.find("preload"); it != x.end() && !it->is_null()) {
    if (!it->is_array()) return invalid(where + "preload", "must be a list of cartridge ids");
    for (const auto& e : *it) {
      if (!e.is_string()) return invalid(where + "preload", "must be a list of cartridge ids");
      c.preload.push_back(e.get<std::string>());
    }
  }
  CS_ASSIGN_OR_RETURN(c.registry_db, string_field(x, "registry_db", where, false));
  CS_ASSIGN_OR_RETURN(c.cartridge_dir, string_field(x, "cartridge_dir", where, false));
  CS_ASSIGN_OR_RETURN(std::string mode, string_field(x, "mode", where, false));
  if (mode == "prefix") {
    c.mode = CartridgeMode::kPrefix;
  } else if (!mode.empty() && mode != "virtual") {
    return invalid(where + "mode", "must be \"virtual\" or \"prefix\", got \"" + mode + "\"");
  }
  CS_ASSIGN_OR_RETURN(std::string unk, string_field(x, "on_unknown", where, false));
  if (unk == "ignore") {
    c.on_unknown = OnUnknownCartridge::kIgnore;
  } else if (!unk.empty() && unk != "error") {
    return invalid(where + "on_unknown", "must be \"error\" or \"ignore\", got \"" + unk + "\"");
  }
  return {};
}

}  // namespace

Result<KvTransferConfig> parse_kv_transfer_config(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return make_error(ErrorCode::kInvalidArgument, "--kv-transfer-config is not a JSON object");
  }
  KvTransferConfig cfg;
  CS_ASSIGN_OR_RETURN(cfg.kv_connector, string_field(j, "kv_connector", "", true));
  if (cfg.kv_connector != "CartridgeConnector") {
    return make_error(ErrorCode::kUnsupported,
                      "--kv-transfer-config: kv_connector '{}' is not supported (only "
                      "CartridgeConnector)",
                      cfg.kv_connector);
  }
  CS_ASSIGN_OR_RETURN(cfg.kv_connector_module_path,
                      string_field(j, "kv_connector_module_path", "", false));
  CS_ASSIGN_OR_RETURN(std::string role, string_field(j, "kv_role", "", false));
  if (!role.empty()) {
    if (role != "kv_both" && role != "kv_consumer") {
      return invalid("kv_role", "must be \"kv_both\" or \"kv_consumer\", got \"" + role + "\"");
    }
    cfg.kv_role = role;
  }
  for (const auto& [k, v] : j.items()) {
    if (k != "kv_connector" && k != "kv_connector_module_path" && k != "kv_role" &&
        k != "kv_connector_extra_config" && k != "engine_id" && k != "kv_buffer_device" &&
        k != "kv_buffer_size" && k != "kv_parallel_size" && k != "kv_ip" && k != "kv_port") {
      return invalid(k, "is not a known key");
    }
  }
  if (auto it = j.find("kv_connector_extra_config"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return invalid("kv_connector_extra_config", "must be an object");
    CS_RETURN_IF_ERROR(parse_extra(*it, cfg.cartridge));
  }
  return cfg;
}

}  // namespace cartserve
