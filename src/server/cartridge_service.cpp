#include "server/cartridge_service.h"

#include <chrono>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "cartridge/cartridge_id.h"
#include "core/logging.h"

namespace cartserve {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

HttpResponse json_response(int status, const json& j) {
  return {status, dump(j), "application/json"};
}

HttpResponse error_response(int status, const std::string& message, const std::string& type) {
  api::ApiError e;
  e.http_status = status;
  e.message = message;
  e.type = type;
  return json_response(status, api::error_json(e));
}

// A Prometheus label value: backslash, quote and newline escaped.
std::string label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

int http_status_for(const Status& s) {
  switch (s.code()) {
    case ErrorCode::kNotFound:
      return 404;
    case ErrorCode::kAlreadyExists:
    case ErrorCode::kFailedPrecondition:
      return 409;
    case ErrorCode::kPermissionDenied:
      return 403;
    case ErrorCode::kResourceExhausted:
    case ErrorCode::kOutOfRange:
      return 507;
    case ErrorCode::kInternal:
    case ErrorCode::kUnavailable:
      return 500;
    default:
      return 400;
  }
}

// An id as one URL path segment (for the DELETE hint of an id that needs escaping).
std::string percent_encode(const std::string& id) {
  std::string out;
  for (unsigned char c : id) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

HttpResponse status_response(const Status& s) {
  const int code = http_status_for(s);
  return error_response(code, s.message(), code >= 500 ? "server_error" : "invalid_request_error");
}

}  // namespace

CartridgeService::CartridgeService(const Model& model, int32_t block_size,
                                   const CartridgeConnectorConfig& config, CartridgeParts parts,
                                   MetricsRegistry& metrics)
    : model_(model), block_size_(block_size), config_(config), parts_(parts), metrics_(metrics) {
  served_.model_id = model.config.model_id;
  served_.num_layers = model.config.num_layers;
  served_.num_kv_heads = model.config.num_kv_heads;
  served_.head_dim = model.config.head_dim;
}

Result<std::unique_ptr<CartridgeService>> CartridgeService::create(
    const CartridgeConnectorConfig& config, const Model& model, int32_t block_size,
    CartridgeParts parts, MetricsRegistry& metrics) {
  std::unique_ptr<CartridgeService> s(
      new CartridgeService(model, block_size, config, parts, metrics));
  const std::string db = config.registry_db.empty() ? ":memory:" : config.registry_db;
  auto reg = CartridgeRegistry::open(db);
  if (!reg.ok()) return reg.status().with_context("registry_db '" + db + "'");
  s->registry_ = std::move(reg).value();

  // Configured cartridges first (errors stop the start), then what the
  // registry remembers from earlier runs (errors are logged and skipped).
  for (const auto& spec : config.cartridges) {
    auto e = inspect_cartridge_file(spec.cartridge_id, spec.path, spec.manifest_path, s->served_,
                                    block_size);
    if (!e.ok())
      return e.status().with_context("--kv-transfer-config cartridge '" + spec.cartridge_id + "'");
    CS_RETURN_IF_ERROR(s->register_entry(std::move(e).value(), /*persist=*/true));
  }
  auto remembered = s->registry_->list();
  if (!remembered.ok()) return remembered.status();
  for (const auto& r : *remembered) {
    const std::string& id = r.manifest.cartridge_id;
    if (parts.catalog.contains(id)) continue;
    // An id an older version accepted: kept (so that it can be deleted), never served.
    if (Status valid = validate_cartridge_id(id, "registered cartridge id"); !valid.ok()) {
      LOG_WARN("{}; it is not served. Remove it with DELETE /v1/cartridges/{}", valid.message(),
               percent_encode(id));
      s->flag(id, {r.path, "invalid_id", valid.message()});
      continue;
    }
    auto e = inspect_cartridge_file(id, r.path, "", s->served_, block_size);
    if (!e.ok()) {
      LOG_WARN("registered cartridge '{}' is not servable now: {}", id, e.status().message());
      s->flag(id, {r.path, "unreadable", e.status().message()});
      continue;
    }
    // The file must still be the one the administrator registered.
    if (r.manifest.checksum && e->content_hash != *r.manifest.checksum) {
      const std::string msg =
          fmt::format("the file '{}' changed since it was registered (sha256 {} then, {} now)",
                      r.path, *r.manifest.checksum, e->content_hash);
      LOG_WARN("cartridge '{}': {}; it is kept out of service until it is registered again", id,
               msg);
      s->flag(id, {r.path, "file_changed", msg});
      continue;
    }
    e->manifest.labels = r.manifest.labels;
    CS_RETURN_IF_ERROR(s->register_entry(std::move(e).value(), /*persist=*/false));
  }
  for (const auto& id : config.preload) {
    if (!parts.catalog.contains(id)) {
      return make_error(ErrorCode::kInvalidArgument,
                        "--kv-transfer-config: preload names unknown cartridge '{}'", id);
    }
  }

  // Router: as configured; else the id a request names, falling back to the
  // single configured cartridge (the seed's behaviour); else explicit ids only.
  CartridgeService* raw = s.get();
  RouterDeps deps;
  deps.label_lookup = [raw](const std::string& key, const std::string& value) {
    return raw->registry_->ids_by_label(key, value);
  };
  if (!config.cartridges.empty())
    deps.default_cartridge_id = config.cartridges.front().cartridge_id;
  json router_cfg = config.router;
  if (router_cfg.is_null()) {
    router_cfg =
        config.cartridges.size() == 1
            ? json{{"type", "composite"},
                   {"routers", json::array({json{{"type", "explicit"}}, json{{"type", "static"}}})}}
            : json{{"type", "explicit"}};
  }
  auto router = make_router(router_cfg, deps);
  if (!router.ok()) return router.status().with_context("--kv-transfer-config router");
  s->router_ = std::move(router).value();

  metrics.add_collector([raw] { raw->collect_metrics(); });
  LOG_INFO("cartridges: {} registered, router {}, mode {}, device budget {} bytes, host {} bytes",
           parts.catalog.list().size(), s->router_->describe(),
           config.mode == CartridgeMode::kPrefix ? "prefix" : "virtual",
           parts.device.config().budget_bytes, parts.host.config().host_budget_bytes);
  if (config.router.is_null() && config.cartridges.size() == 1) {
    LOG_INFO(
        "one cartridge and no router: every request without a cartridge_id gets cartridge "
        "'{}' (also one that carries the document itself); set \"router\": {{\"type\": "
        "\"explicit\"}} to serve such requests without it",
        config.cartridges.front().cartridge_id);
  }
  return s;
}

Status CartridgeService::register_entry(CatalogEntry entry, bool persist) {
  if (persist) CS_RETURN_IF_ERROR(registry_->register_cartridge(entry.manifest, entry.path));
  CS_RETURN_IF_ERROR(parts_.host.add_cartridge(entry.cartridge_id, entry.path, entry.manifest));
  Status st = parts_.catalog.add(entry);
  if (!st.ok()) (void)parts_.host.remove_cartridge(entry.cartridge_id);
  return st;
}

Status CartridgeService::on_engine(const std::function<Status()>& fn) {
  if (!engine_) return fn();
  return engine_->run_on_engine_thread(fn);
}

Status CartridgeService::attach(Engine& engine) {
  engine_ = &engine;
  for (const auto& id : config_.preload) {
    Status st = on_engine([&]() -> Status {
      CS_ASSIGN_OR_RETURN(DeviceCartridge c, parts_.connector.device_cartridge(id));
      return parts_.device.prefetch(c);
    });
    if (!st.ok()) LOG_WARN("preloading cartridge '{}': {}", id, st.message());
  }
  return {};
}

Status CartridgeService::pin(const std::string& id) {
  CS_RETURN_IF_ERROR(on_engine([&]() -> Status {
    CS_ASSIGN_OR_RETURN(DeviceCartridge c, parts_.connector.device_cartridge(id));
    return parts_.device.pin(c);
  }));
  // Pinned now; resident once its load (if any) is done.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while (!parts_.device.is_resident(id)) {
    if (!parts_.device.is_pinned(id)) {
      return make_error(ErrorCode::kUnavailable, "cartridge '{}' was unpinned while loading", id);
    }
    if (auto st = parts_.device.state(id); !st.ok()) {
      (void)unpin(id);
      return st.status();
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return make_error(ErrorCode::kUnavailable, "cartridge '{}' did not load in time", id);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return {};
}

Status CartridgeService::unpin(const std::string& id) {
  return on_engine([&] { return parts_.device.unpin(id); });
}

Status CartridgeService::evict(const std::string& id, Tier tier) {
  if (tier == Tier::kHost) return parts_.host.evict(id);
  return on_engine([&] { return parts_.device.evict(id); });
}

size_t CartridgeService::num_cartridges() const {
  return parts_.catalog.list().size();
}

Result<CatalogEntry> CartridgeService::ensure_composite(const std::vector<std::string>& ids,
                                                        bool rerotate) {
  const std::string id = composite_id(ids, rerotate);
  if (auto e = parts_.catalog.get(id)) return *e;
  std::lock_guard<std::mutex> lk(admin_mu_);
  CS_ASSIGN_OR_RETURN(CatalogEntry c, parts_.catalog.composite(ids, rerotate));
  if (!parts_.host.knows(id)) {
    Status st = parts_.host.add_cartridge(id, composite_path(id), c.manifest);
    if (!st.ok() && st.code() != ErrorCode::kAlreadyExists) {
      parts_.catalog.remove(id);
      return st;
    }
  }
  return c;
}

void CartridgeService::flag(const std::string& id, Flagged f) {
  std::lock_guard<std::mutex> lk(flag_mu_);
  flagged_[id] = std::move(f);
}

bool CartridgeService::unflag(const std::string& id) {
  std::lock_guard<std::mutex> lk(flag_mu_);
  return flagged_.erase(id) > 0;
}

std::map<std::string, CartridgeService::Flagged> CartridgeService::flagged() const {
  std::lock_guard<std::mutex> lk(flag_mu_);
  return flagged_;
}

std::optional<api::ApiError> CartridgeService::check_servable(const std::string& id) const {
  // Composite keys are not names a request can use (cartridge_id.h); a list is.
  const bool known = is_valid_cartridge_id(id) && parts_.catalog.contains(id);
  if (!known) {
    {
      std::lock_guard<std::mutex> lk(flag_mu_);
      if (auto it = flagged_.find(id); it != flagged_.end() && it->second.reason != "invalid_id") {
        api::ApiError e;
        e.http_status = 409;
        e.type = "conflict_error";
        e.code = "cartridge_unavailable";
        e.param = "kv_transfer_params.cartridge_id";
        e.message = "cartridge '" + id +
                    "' is out of service: its file changed or cannot be read since it was "
                    "registered; an administrator must register it again";
        return e;
      }
    }
    api::ApiError e =
        api::bad_request("unknown cartridge '" + id + "'", "kv_transfer_params.cartridge_id");
    e.code = "cartridge_not_found";
    return e;
  }
  return std::nullopt;
}

std::variant<CartridgePlacement, api::ApiError> CartridgeService::resolve(
    const api::CartridgeSelection& sel) {
  std::vector<std::string> ids = sel.cartridge_ids;
  if (ids.empty()) {
    RoutingRequest rr;
    rr.params = sel.kv_transfer_params;
    auto routed = router_->route(rr);
    if (!routed.ok()) {
      api::ApiError e = api::bad_request("cartridge routing failed: " + routed.status().message(),
                                         "kv_transfer_params");
      return e;
    }
    if (*routed) ids.push_back(**routed);
  }
  if (ids.empty()) return CartridgePlacement{};
  for (const auto& id : ids) {
    if (auto e = check_servable(id)) {
      if (config_.on_unknown == OnUnknownCartridge::kIgnore && e->http_status == 400) {
        return CartridgePlacement{};
      }
      return *e;
    }
  }
  CatalogEntry entry;
  bool rerotate = false;
  if (ids.size() == 1) {
    entry = *parts_.catalog.get(ids[0]);
  } else {
    if (config_.mode == CartridgeMode::kPrefix) {
      return api::bad_request("composing several cartridges needs mode \"virtual\"",
                              "kv_transfer_params.cartridge_id");
    }
    auto it = sel.kv_transfer_params.find("rerotate");
    rerotate = it != sel.kv_transfer_params.end() && it->second == "true";
    // Nothing enters the catalog until the request passes every check (commit).
    auto c = parts_.catalog.preview_composite(ids, rerotate);
    if (!c.ok()) return api::bad_request(c.status().message(), "kv_transfer_params.cartridge_id");
    entry = std::move(c).value();
  }
  CartridgePlacement p;
  p.active = true;
  p.cartridge_ids = {entry.cartridge_id};
  p.named_ids = ids;
  p.prefix_salt = entry.content_hash;
  if (config_.mode == CartridgeMode::kVirtual) {
    p.num_virtual_tokens = entry.num_tokens();
    p.strip_system_prefix = true;
  }
  const std::string counted = entry.cartridge_id;
  p.commit = [this, ids, rerotate, counted]() -> std::optional<api::ApiError> {
    if (ids.size() > 1) {
      auto c = ensure_composite(ids, rerotate);
      if (!c.ok()) return api::bad_request(c.status().message(), "kv_transfer_params.cartridge_id");
    }
    metrics_
        .counter("cartserve:cartridge_requests_total", "Requests served with a cartridge",
                 "cartridge_id=\"" + label_value(counted) + "\"")
        .inc();
    return std::nullopt;
  };
  return p;
}

CartridgeResolver CartridgeService::resolver() {
  return [this](const api::CartridgeSelection& sel) { return resolve(sel); };
}

void CartridgeService::collect_metrics() {
  const HostCounters c = parts_.host.counters();
  const TierCounters device = parts_.device.counters();
  for (Tier t : {Tier::kHost, Tier::kDevice}) {
    const TierCounters& tc = t == Tier::kHost ? c.host : device;
    const std::string label = std::string("tier=\"") + tier_name(t) + "\"";
    metrics_
        .gauge("cartserve:cartridge_resident_bytes", "Bytes of cartridges resident per tier", label)
        .set(static_cast<double>(tc.bytes_resident));
    metrics_.gauge("cartserve:cartridge_resident_count", "Cartridges resident per tier", label)
        .set(static_cast<double>(tc.entries));
    metrics_
        .gauge("cartserve:cartridge_hits", "Acquisitions that found the cartridge resident", label)
        .set(static_cast<double>(tc.hits));
    metrics_
        .gauge("cartserve:cartridge_misses", "Acquisitions that had to load the cartridge", label)
        .set(static_cast<double>(tc.misses));
    metrics_.gauge("cartserve:cartridge_promotions", "Cartridges brought into the tier", label)
        .set(static_cast<double>(tc.promotions));
    metrics_.gauge("cartserve:cartridge_evictions", "Cartridges evicted from the tier", label)
        .set(static_cast<double>(tc.evictions));
    metrics_.gauge("cartserve:cartridge_budget_bytes", "Byte budget of the tier", label)
        .set(static_cast<double>(tc.budget_bytes));
  }
  metrics_.gauge("cartserve:cartridge_disk_loads", "Cartridge loads from disk")
      .set(static_cast<double>(c.disk_loads));
  metrics_.gauge("cartserve:cartridges_registered", "Cartridges in the catalogue")
      .set(static_cast<double>(parts_.catalog.list().size()));
}

// ---------------------------------------------------------------- admin API

HttpResponse CartridgeService::list_cartridges() const {
  json data = json::array();
  for (const auto& e : parts_.catalog.list()) {
    json m = manifest_to_json(e.manifest);
    json item = {{"id", e.cartridge_id},
                 {"object", "cartridge"},
                 {"path", e.path},
                 {"num_tokens", e.num_tokens()},
                 {"has_token_ids", !e.token_ids.empty()},
                 {"content_hash", e.content_hash},
                 {"manifest", m},
                 {"resident",
                  {{"host", parts_.host.is_resident(e.cartridge_id)},
                   {"device", parts_.device.is_resident(e.cartridge_id)}}},
                 {"loading", parts_.device.is_loading(e.cartridge_id)},
                 {"pinned", parts_.device.is_pinned(e.cartridge_id)},
                 {"in_use", parts_.device.ref_count(e.cartridge_id)}};
    if (e.composite()) item["parts"] = e.parts;
    data.push_back(item);
  }
  json flagged = json::array();
  for (const auto& [id, f] : this->flagged()) {
    flagged.push_back({{"id", id},
                       {"object", "cartridge"},
                       {"path", f.path},
                       {"reason", f.reason},
                       {"message", f.message}});
  }
  return json_response(200, {{"object", "list"}, {"data", data}, {"flagged", flagged}});
}

HttpResponse CartridgeService::post_cartridge(const HttpRequest& req) {
  if (config_.cartridge_dir.empty()) {
    return error_response(403,
                          "registering cartridges over the API is disabled: the server has no "
                          "cartridge_dir in --kv-transfer-config",
                          "permission_error");
  }
  json body = json::parse(req.body, nullptr, false);
  if (body.is_discarded() || !body.is_object()) {
    return error_response(400, "request body must be a JSON object", "invalid_request_error");
  }
  auto str = [&](const char* key) -> std::optional<std::string> {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) return std::string();
    if (!it->is_string()) return std::nullopt;
    return it->get<std::string>();
  };
  auto path = str("path");
  auto id = str("cartridge_id");
  auto manifest_path = str("manifest_path");
  if (!path || path->empty()) {
    return error_response(400, "'path' (a file under cartridge_dir) is required",
                          "invalid_request_error");
  }
  if (!id || !manifest_path) {
    return error_response(400, "'cartridge_id' and 'manifest_path' must be strings",
                          "invalid_request_error");
  }
  if (!id->empty()) {
    if (Status valid = validate_cartridge_id(*id); !valid.ok()) {
      return error_response(400, valid.message(), "invalid_request_error");
    }
  }
  std::map<std::string, std::string> labels;
  if (auto it = body.find("labels"); it != body.end() && !it->is_null()) {
    if (!it->is_object())
      return error_response(400, "'labels' must be an object", "invalid_request_error");
    for (const auto& [k, v] : it->items())
      labels[k] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  // Paths from the API stay inside cartridge_dir (symlinks resolved).
  auto confine = [&](const std::string& rel) -> Result<std::string> {
    std::error_code ec;
    const fs::path root = fs::weakly_canonical(config_.cartridge_dir, ec);
    const fs::path full =
        fs::weakly_canonical(fs::path(rel).is_absolute() ? fs::path(rel) : root / rel, ec);
    const auto rel_to_root = full.lexically_relative(root);
    if (ec || rel_to_root.empty() || *rel_to_root.begin() == "..") {
      return make_error(ErrorCode::kPermissionDenied, "path '{}' is outside the cartridge folder",
                        rel);
    }
    return full.string();
  };
  auto full = confine(*path);
  if (!full.ok()) return status_response(full.status());
  // Hidden names are never cartridges: unfinished writes (core/atomic_file.h) are hidden.
  if (const std::string name = fs::path(*full).filename().string();
      name.empty() || name[0] == '.') {
    return error_response(400, "'path' names a hidden file; cartridges are visible files",
                          "invalid_request_error");
  }
  std::string full_manifest;
  if (!manifest_path->empty()) {
    auto m = confine(*manifest_path);
    if (!m.ok()) return status_response(m.status());
    full_manifest = *m;
  }
  std::lock_guard<std::mutex> lk(admin_mu_);
  if (!id->empty() && parts_.catalog.contains(*id)) {
    return error_response(409, "cartridge '" + *id + "' is already registered", "conflict_error");
  }
  auto entry = inspect_cartridge_file(*id, *full, full_manifest, served_, block_size_);
  if (!entry.ok())
    return status_response(Status(ErrorCode::kInvalidArgument, entry.status().message()));
  if (parts_.catalog.contains(entry->cartridge_id)) {
    return error_response(409, "cartridge '" + entry->cartridge_id + "' is already registered",
                          "conflict_error");
  }
  for (const auto& [k, v] : labels)
    entry->manifest.labels[k] = v;
  const std::string new_id = entry->cartridge_id;
  Status st = register_entry(std::move(entry).value(), /*persist=*/true);
  if (!st.ok()) return status_response(st);
  if (unflag(new_id)) LOG_INFO("cartridge '{}' registered again: back in service", new_id);
  LOG_INFO("cartridge '{}' registered from {}", new_id, *full);
  const auto e = parts_.catalog.get(new_id);
  return json_response(201, {{"id", new_id},
                             {"object", "cartridge"},
                             {"path", e->path},
                             {"num_tokens", e->num_tokens()},
                             {"manifest", manifest_to_json(e->manifest)}});
}

HttpResponse CartridgeService::delete_cartridge(const std::string& id) {
  std::lock_guard<std::mutex> lk(admin_mu_);
  const auto entry = parts_.catalog.get(id);
  if (!entry) {
    // Not served, but perhaps still registered (flagged, or an invalid id).
    auto removed = registry_->unregister(id);
    if (!removed.ok()) return status_response(removed.status());
    const bool was_flagged = unflag(id);
    if (!*removed && !was_flagged) {
      return error_response(404, "unknown cartridge '" + id + "'", "not_found_error");
    }
    LOG_INFO("cartridge '{}' (not in service) removed from the registry", id);
    return json_response(200, {{"id", id}, {"object", "cartridge.deleted"}, {"deleted", true}});
  }
  // Composites built on it go first (they cannot outlive a part).
  std::vector<std::string> doomed;
  for (const auto& e : parts_.catalog.list()) {
    if (std::find(e.parts.begin(), e.parts.end(), id) != e.parts.end())
      doomed.push_back(e.cartridge_id);
  }
  doomed.push_back(id);
  for (const auto& d : doomed) {
    Status st = on_engine([&]() -> Status {
      CS_RETURN_IF_ERROR(parts_.device.remove(d));
      return parts_.host.remove_cartridge(d);
    });
    if (!st.ok() && st.code() != ErrorCode::kNotFound) {
      return error_response(409, "cartridge '" + d + "' cannot be removed now: " + st.message(),
                            "conflict_error");
    }
    parts_.catalog.remove(d);
  }
  auto removed = registry_->unregister(id);
  if (!removed.ok()) return status_response(removed.status());
  return json_response(200, {{"id", id}, {"object", "cartridge.deleted"}, {"deleted", true}});
}

HttpResponse CartridgeService::pin_cartridge(const std::string& id, bool pin) {
  if (!parts_.catalog.contains(id)) {
    if (auto e = check_servable(id); e && e->http_status == 409) {
      return json_response(409, api::error_json(*e));
    }
    return error_response(404, "unknown cartridge '" + id + "'", "not_found_error");
  }
  Status st = pin ? this->pin(id) : unpin(id);
  if (!st.ok()) return status_response(st);
  return json_response(200, {{"id", id}, {"pinned", pin}});
}

void CartridgeService::add_admin_routes(HttpServer& http) {
  // Mutating routes are admin routes (--admin-api-key). DELETE takes any
  // (percent-decoded) id, so that an invalid id an older version stored can
  // still be removed.
  http.add_route("GET", "/v1/cartridges", [this](const HttpRequest&) { return list_cartridges(); });
  http.add_route(
      "POST", "/v1/cartridges", [this](const HttpRequest& r) { return post_cartridge(r); },
      /*admin=*/true);
  http.add_route(
      "DELETE", R"(/v1/cartridges/(.+))",
      [this](const HttpRequest& r) { return delete_cartridge(r.matches.at(0)); }, true);
  http.add_route(
      "POST", R"(/v1/cartridges/([^/]+)/pin)",
      [this](const HttpRequest& r) { return pin_cartridge(r.matches.at(0), true); }, true);
  http.add_route(
      "POST", R"(/v1/cartridges/([^/]+)/unpin)",
      [this](const HttpRequest& r) { return pin_cartridge(r.matches.at(0), false); }, true);
}

}  // namespace cartserve
