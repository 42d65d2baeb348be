// Cartridge serving at the edge, from --kv-transfer-config: the registry
// (SQLite), registration of the configured and remembered cartridges into
// the catalog and the host tier, the router, the metrics, and the HTTP side:
// resolving a request's cartridge selection and the admin API
// (/v1/cartridges). The catalog, the residency tiers and the connector are
// built by the serving stack (server/serving_stack.h) and lent to it.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <variant>

#include "cartridge/catalog.h"
#include "cartridge/device_tier.h"
#include "cartridge/registry.h"
#include "cartridge/residency.h"
#include "cartridge/router.h"
#include "core/metrics.h"
#include "engine/cartridge_connector.h"
#include "engine/engine.h"
#include "model/model.h"
#include "server/http_server.h"
#include "server/kv_transfer_config.h"
#include "server/openai_service.h"

namespace cartserve {

// What the service is lent by the stack; all outlive it.
struct CartridgeParts {
  CartridgeCatalog& catalog;
  ResidencyManager& host;
  DeviceKvTier& device;
  CartridgeConnector& connector;
};

class CartridgeService {
 public:
  // Opens the registry, registers and checks every configured cartridge
  // (any problem is a start-up error naming it), builds the router.
  static Result<std::unique_ptr<CartridgeService>> create(const CartridgeConnectorConfig& config,
                                                          const Model& model, int32_t block_size,
                                                          CartridgeParts parts,
                                                          MetricsRegistry& metrics);

  // After the engine exists: preloads (`preload` ids into the device tier).
  Status attach(Engine& engine);

  // HTTP edge: which cartridge(s) a request uses and how its prompt is built.
  std::variant<CartridgePlacement, api::ApiError> resolve(const api::CartridgeSelection& selection);
  CartridgeResolver resolver();

  // GET/POST /v1/cartridges, DELETE /v1/cartridges/{id}, POST .../{id}/pin|unpin.
  // With `admin_api_key`, the mutating routes need it (Authorization: Bearer).
  void add_admin_routes(HttpServer& http);

  // Device-tier operations, on the engine thread (tests, benchmarks).
  Status pin(const std::string& id);  // waits until resident
  Status unpin(const std::string& id);
  Status evict(const std::string& id, Tier tier);

  size_t num_cartridges() const;

  // A registry entry that is kept out of service: its id is not a valid one
  // (registered by an older version), or its file changed or cannot be read
  // since it was registered. Listed by GET /v1/cartridges under "flagged";
  // deleting or registering it again clears the flag.
  struct Flagged {
    std::string path;
    std::string reason;  // "invalid_id", "file_changed", "unreadable"
    std::string message;
  };
  std::map<std::string, Flagged> flagged() const;

 private:
  CartridgeService(const Model& model, int32_t block_size, const CartridgeConnectorConfig& config,
                   CartridgeParts parts, MetricsRegistry& metrics);
  Status register_entry(CatalogEntry entry, bool persist);
  Result<CatalogEntry> ensure_composite(const std::vector<std::string>& ids, bool rerotate);
  void flag(const std::string& id, Flagged f);
  // Clears a flag; true when the id was flagged.
  bool unflag(const std::string& id);
  // An error for a request naming `id` when it cannot be served; nullopt when it can.
  std::optional<api::ApiError> check_servable(const std::string& id) const;
  void collect_metrics();

  HttpResponse list_cartridges() const;
  HttpResponse post_cartridge(const HttpRequest& req);
  HttpResponse delete_cartridge(const std::string& id);
  HttpResponse pin_cartridge(const std::string& id, bool pin);
  // Runs a device-tier operation on the engine thread (directly before the
  // engine exists).
  Status on_engine(const std::function<Status()>& fn);

  const Model& model_;
  int32_t block_size_;
  CartridgeConnectorConfig config_;
  CartridgeParts parts_;
  MetricsRegistry& metrics_;
  ServedModelInfo served_;
  std::unique_ptr<CartridgeRegistry> registry_;
  std::unique_ptr<CartridgeRouter> router_;
  Engine* engine_ = nullptr;
  std::mutex admin_mu_;  // serialises registrations and removals
  mutable std::mutex flag_mu_;
  std::map<std::string, Flagged> flagged_;  // guarded by flag_mu_
};

}  // namespace cartserve
