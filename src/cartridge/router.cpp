#include "cartridge/router.h"

#include <initializer_list>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cartridge/registry.h"

namespace cartserve {
namespace {

using nlohmann::json;

constexpr int kMaxDepth = 16;  // nested composites

// Value of `key` in the first map that has a non-empty one.
std::optional<std::string> lookup_value(
    std::initializer_list<const std::map<std::string, std::string>*> maps, const std::string& key) {
  for (const auto* m : maps) {
    auto it = m->find(key);
    if (it != m->end() && !it->second.empty()) return it->second;
  }
  return std::nullopt;
}

const char* json_kind(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "number";
  return v.type_name();
}

Status config_error(const std::string& where, const std::string& what) {
  return Status(ErrorCode::kInvalidArgument, where + ": " + what);
}

// Every key of `config` must be in `allowed`.
Status check_fields(const json& config, const std::string& where,
                    std::initializer_list<const char*> allowed) {
  for (const auto& [k, v] : config.items()) {
    bool ok = false;
    for (const char* a : allowed)
      ok = ok || k == a;
    if (!ok) {
      std::string list;
      for (const char* a : allowed)
        list += (list.empty() ? "" : ", ") + std::string(a);
      return config_error(where, fmt::format("unknown field '{}' (allowed: {})", k, list));
    }
  }
  return {};
}

// A non-empty string field. Absent: nullopt (or an error when required).
Status string_field(const json& config, const std::string& where, const char* field, bool required,
                    std::optional<std::string>* out) {
  out->reset();
  auto it = config.find(field);
  if (it == config.end() || it->is_null()) {
    if (required) return config_error(where, fmt::format("missing required field '{}'", field));
    return {};
  }
  if (!it->is_string()) {
    return config_error(where, fmt::format("field '{}' must be a string, got {} {}", field,
                                           json_kind(*it), it->dump()));
  }
  if (it->get_ref<const std::string&>().empty()) {
    return config_error(where, fmt::format("field '{}' must not be empty", field));
  }
  *out = it->get<std::string>();
  return {};
}

Result<std::unique_ptr<CartridgeRouter>> build(const json& config, const RouterDeps& deps,
                                               const std::string& where, int depth) {
  if (depth > kMaxDepth) {
    return config_error(where, fmt::format("routers nested deeper than {}", kMaxDepth));
  }
  if (config.is_null() || (config.is_object() && config.empty())) {
    if (depth > 0) return config_error(where, "empty router config");
    if (deps.default_cartridge_id.empty()) {
      return config_error(where, "router config is empty and there is no default cartridge");
    }
    return std::unique_ptr<CartridgeRouter>(new StaticRouter(deps.default_cartridge_id));
  }
  if (!config.is_object()) {
    return config_error(where, fmt::format("must be a JSON object, got {}", json_kind(config)));
  }
  std::optional<std::string> type;
  CS_RETURN_IF_ERROR(string_field(config, where, "type", /*required=*/true, &type));

  if (*type == "explicit") {
    CS_RETURN_IF_ERROR(check_fields(config, where + " (explicit)", {"type", "key"}));
    std::optional<std::string> key;
    CS_RETURN_IF_ERROR(string_field(config, where, "key", false, &key));
    return std::unique_ptr<CartridgeRouter>(new ExplicitRouter(key.value_or("cartridge_id")));
  }
  if (*type == "static") {
    CS_RETURN_IF_ERROR(check_fields(config, where + " (static)", {"type", "cartridge_id"}));
    std::optional<std::string> id;
    CS_RETURN_IF_ERROR(string_field(config, where, "cartridge_id", false, &id));
    if (!id && deps.default_cartridge_id.empty()) {
      return config_error(
          where, "static router needs field 'cartridge_id' (there is no default cartridge)");
    }
    return std::unique_ptr<CartridgeRouter>(
        new StaticRouter(id.value_or(deps.default_cartridge_id)));
  }
  if (*type == "label") {
    CS_RETURN_IF_ERROR(
        check_fields(config, where + " (label)", {"type", "label_key", "extras_key"}));
    std::optional<std::string> label_key, extras_key;
    CS_RETURN_IF_ERROR(string_field(config, where, "label_key", true, &label_key));
    CS_RETURN_IF_ERROR(string_field(config, where, "extras_key", false, &extras_key));
    if (!deps.label_lookup) {
      return config_error(where, "label router needs a cartridge registry, and none is configured");
    }
    return std::unique_ptr<CartridgeRouter>(
        new LabelRouter(*label_key, extras_key.value_or(*label_key), deps.label_lookup));
  }
  if (*type == "composite") {
    CS_RETURN_IF_ERROR(check_fields(config, where + " (composite)", {"type", "routers"}));
    auto it = config.find("routers");
    if (it == config.end() || it->is_null()) {
      return config_error(where, "composite router needs field 'routers' (a list of routers)");
    }
    if (!it->is_array()) {
      return config_error(where,
                          fmt::format("field 'routers' must be a list, got {}", json_kind(*it)));
    }
    if (it->empty()) return config_error(where, "field 'routers' must not be empty");
    std::vector<std::unique_ptr<CartridgeRouter>> routers;
    for (size_t i = 0; i < it->size(); ++i) {
      CS_ASSIGN_OR_RETURN(
          auto r, build((*it)[i], deps, fmt::format("{}.routers[{}]", where, i), depth + 1));
      routers.push_back(std::move(r));
    }
    return std::unique_ptr<CartridgeRouter>(new CompositeRouter(std::move(routers)));
  }
  return config_error(where, fmt::format("unknown router type '{}' (expected explicit, static, "
                                         "label or composite)",
                                         *type));
}

}  // namespace

LabelLookup registry_label_lookup(std::shared_ptr<const CartridgeRegistry> registry) {
  return [registry = std::move(registry)](const std::string& key, const std::string& value) {
    return registry->ids_by_label(key, value);
  };
}

Result<std::optional<std::string>> ExplicitRouter::route(const RoutingRequest& r) const {
  return lookup_value({&r.extras, &r.params}, key_);
}

std::string ExplicitRouter::describe() const {
  return fmt::format("explicit(key={})", key_);
}

Result<std::optional<std::string>> StaticRouter::route(const RoutingRequest&) const {
  return std::optional<std::string>(id_);
}

std::string StaticRouter::describe() const {
  return fmt::format("static({})", id_);
}

Result<std::optional<std::string>> LabelRouter::route(const RoutingRequest& r) const {
  const auto value = lookup_value({&r.labels, &r.extras, &r.params}, extras_key_);
  if (!value) return std::optional<std::string>();
  auto ids = lookup_(label_key_, *value);
  if (!ids.ok()) {
    return ids.status().with_context(
        fmt::format("label router looking up {}={}", label_key_, *value));
  }
  if (ids->empty()) return std::optional<std::string>();
  return std::optional<std::string>(ids->front());
}

std::string LabelRouter::describe() const {
  return fmt::format("label(label_key={}, extras_key={})", label_key_, extras_key_);
}

Result<std::optional<std::string>> CompositeRouter::route(const RoutingRequest& r) const {
  for (const auto& router : routers_) {
    CS_ASSIGN_OR_RETURN(std::optional<std::string> id, router->route(r));
    if (id) return id;
  }
  return std::optional<std::string>();
}

std::string CompositeRouter::describe() const {
  std::string s = "composite[";
  for (size_t i = 0; i < routers_.size(); ++i) {
    if (i) s += ", ";
    s += routers_[i]->describe();
  }
  return s + "]";
}

Result<std::unique_ptr<CartridgeRouter>> make_router(const nlohmann::json& config,
                                                     const RouterDeps& deps) {
  return build(config, deps, "router", 0);
}

}  // namespace cartserve
