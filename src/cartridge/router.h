// Routers: which cartridge serves a request.
//
//   explicit   the id named by the request (key configurable, default
//              "cartridge_id")
//   static     always one id
//   label      a request value looked up in the registry's labels
//              (label_key: the registry label; extras_key: where the request
//              carries the value, default label_key)
//   composite  routers in order; the first that answers wins
//
// Built from the `router` object of --kv-transfer-config's
// kv_connector_extra_config, e.g.
//   {"type": "composite", "routers": [{"type": "explicit"},
//                                     {"type": "static", "cartridge_id": "doc_a"}]}
// Configuration errors name the offending field and its path.
//
// NOTE: a request value is looked up in the request's top-level extras
// first, then in its kv_transfer_params (the reference system's precedence);
// the label router also looks at the request's labels before both.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace cartserve {

class CartridgeRegistry;

// What a router sees of a request. The HTTP layer fills it (non-string JSON
// values become their JSON text, as labels do).
struct RoutingRequest {
  std::map<std::string, std::string> params;  // kv_transfer_params
  std::map<std::string, std::string> labels;  // request labels / metadata
  std::map<std::string, std::string> extras;  // other top-level extra arguments
};

// Ids of the cartridges whose labels[key] == value, in a deterministic order.
using LabelLookup = std::function<Result<std::vector<std::string>>(const std::string& key,
                                                                   const std::string& value)>;
// A lookup backed by the registry (ordered by cartridge id).
LabelLookup registry_label_lookup(std::shared_ptr<const CartridgeRegistry> registry);

class CartridgeRouter {
 public:
  virtual ~CartridgeRouter() = default;
  // The cartridge for `request`; nullopt when this router has no answer; an
  // error only when a lookup failed.
  virtual Result<std::optional<std::string>> route(const RoutingRequest& request) const = 0;
  // "explicit(key=cartridge_id)", "composite[...]", ... for logs.
  virtual std::string describe() const = 0;
};

class ExplicitRouter final : public CartridgeRouter {
 public:
  explicit ExplicitRouter(std::string key = "cartridge_id") : key_(std::move(key)) {}
  Result<std::optional<std::string>> route(const RoutingRequest& request) const override;
  std::string describe() const override;

 private:
  std::string key_;
};

class StaticRouter final : public CartridgeRouter {
 public:
  explicit StaticRouter(std::string cartridge_id) : id_(std::move(cartridge_id)) {}
  Result<std::optional<std::string>> route(const RoutingRequest& request) const override;
  std::string describe() const override;

 private:
  std::string id_;
};

class LabelRouter final : public CartridgeRouter {
 public:
  LabelRouter(std::string label_key, std::string extras_key, LabelLookup lookup)
      : label_key_(std::move(label_key)),
        extras_key_(std::move(extras_key)),
        lookup_(std::move(lookup)) {}
  Result<std::optional<std::string>> route(const RoutingRequest& request) const override;
  std::string describe() const override;

 private:
  std::string label_key_;
  std::string extras_key_;
  LabelLookup lookup_;
};

class CompositeRouter final : public CartridgeRouter {
 public:
  explicit CompositeRouter(std::vector<std::unique_ptr<CartridgeRouter>> routers)
      : routers_(std::move(routers)) {}
  // The first answer; the first error stops the search.
  Result<std::optional<std::string>> route(const RoutingRequest& request) const override;
  std::string describe() const override;
  size_t size() const { return routers_.size(); }

 private:
  std::vector<std::unique_ptr<CartridgeRouter>> routers_;
};

struct RouterDeps {
  LabelLookup label_lookup;          // needed by "label" routers
  std::string default_cartridge_id;  // for an empty config and a static router without an id
};

// Builds a router from its JSON configuration. An empty config (null or {})
// gives a static router on the default cartridge (an error without one).
Result<std::unique_ptr<CartridgeRouter>> make_router(const nlohmann::json& config,
                                                     const RouterDeps& deps = {});

}  // namespace cartserve
