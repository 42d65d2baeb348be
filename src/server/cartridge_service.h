// Cartridge serving, wired from --kv-transfer-config: the registry (SQLite),
// the catalog of servable cartridges, the residency manager (host tier in
// memory, device tier in the engine's KV blocks), the router, the engine's
// connector, metrics, and the HTTP edge: resolving a request's cartridge
// selection and the admin API (/v1/cartridges).
#pragma once

#include <memory>
#include <string>
#include <variant>

#include "cartridge/catalog.h"
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

class CartridgeService {
 public:
  // Opens the registry, registers and checks every configured cartridge
  // (any problem is a start-up error naming it), builds the router.
  // `kv_cache_bytes`: the engine's KV cache size (the default device budget is half).
  static Result<std::unique_ptr<CartridgeService>> create(const CartridgeConnectorConfig& config,
                                                          const Model& model, int32_t block_size,
                                                          uint64_t kv_cache_bytes,
                                                          MetricsRegistry& metrics);
  ~CartridgeService();

  KvConnector* connector() { return connector_.get(); }
  // After the engine exists: preloads (`preload` ids into the device tier).
  Status attach(Engine& engine);

  // HTTP edge: which cartridge(s) a request uses and how its prompt is built.
  std::variant<CartridgePlacement, api::ApiError> resolve(const api::CartridgeSelection& selection);
  CartridgeResolver resolver();

  // GET/POST /v1/cartridges, DELETE /v1/cartridges/{id}, POST .../{id}/pin|unpin.
  void add_admin_routes(HttpServer& http);

  // For tests and the start-up line.
  size_t num_cartridges() const;
  const ResidencyManager& residency() const { return *residency_; }

 private:
  CartridgeService(const Model& model, int32_t block_size, const CartridgeConnectorConfig& config,
                   MetricsRegistry& metrics);
  Status register_entry(CatalogEntry entry, bool persist);
  Result<CatalogEntry> ensure_composite(const std::vector<std::string>& ids, bool rerotate);
  Result<CartridgeData> load(const std::string& path) const;
  void collect_metrics();

  HttpResponse list_cartridges() const;
  HttpResponse post_cartridge(const HttpRequest& req);
  HttpResponse delete_cartridge(const std::string& id);
  HttpResponse pin_cartridge(const std::string& id, bool pin);
  // Runs a residency operation that may touch the device tier on the engine thread.
  Status on_engine(const std::function<Status()>& fn);

  const Model& model_;
  int32_t block_size_;
  CartridgeConnectorConfig config_;
  MetricsRegistry& metrics_;
  ServedModelInfo served_;
  std::vector<float> inv_freq_;  // RoPE table for re-rotated composites
  std::unique_ptr<CartridgeRegistry> registry_;
  CartridgeCatalog catalog_;
  std::shared_ptr<KvBlockAllocator> allocator_;
  std::unique_ptr<ResidencyManager> residency_;
  std::unique_ptr<CartridgeRouter> router_;
  std::unique_ptr<CartridgeConnector> connector_;
  Engine* engine_ = nullptr;
  std::mutex admin_mu_;  // serialises registrations and removals
};

}  // namespace cartserve
