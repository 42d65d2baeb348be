#include "cartridge/residency.h"

#include <utility>

#include "core/logging.h"

namespace cartserve {

const char* tier_name(Tier t) {
  return t == Tier::kHost ? "host" : "device";
}

// ---- HostLease ----

HostLease::HostLease(HostLease&& o) noexcept
    : manager_(std::exchange(o.manager_, nullptr)),
      id_(std::move(o.id_)),
      data_(std::move(o.data_)) {}

HostLease& HostLease::operator=(HostLease&& o) noexcept {
  if (this != &o) {
    reset();
    manager_ = std::exchange(o.manager_, nullptr);
    id_ = std::move(o.id_);
    data_ = std::move(o.data_);
  }
  return *this;
}

void HostLease::reset() {
  data_.reset();
  if (!manager_) return;
  Status s = manager_->release(id_);
  if (!s.ok() && s.code() != ErrorCode::kNotFound) LOG_ERROR("host lease: {}", s.to_string());
  manager_ = nullptr;
}

// ---- ResidencyManager ----

ResidencyManager::ResidencyManager(ResidencyConfig config, CartridgeLoader loader)
    : config_(config), loader_(std::move(loader)) {
  counters_.budget_bytes = config_.host_budget_bytes;
}

Result<ResidencyManager::EntryPtr> ResidencyManager::find_locked(const std::string& id) const {
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    return make_error(ErrorCode::kNotFound, "cartridge '{}' is not known to the residency manager",
                      id);
  }
  return it->second;
}

Status ResidencyManager::add_cartridge(const std::string& cartridge_id, const std::string& path,
                                       std::optional<CartridgeManifest> manifest) {
  if (cartridge_id.empty()) return make_error(ErrorCode::kInvalidArgument, "cartridge id is empty");
  auto e = std::make_shared<Entry>();
  e->id = cartridge_id;
  e->path = path;
  if (manifest) {
    // Composites' keys are residency ids too: the id need not be in the id set.
    Status valid = manifest->validate_fields();
    if (!valid.ok()) return valid.with_context("cartridge '" + cartridge_id + "'");
    e->bytes = 2ull * static_cast<uint64_t>(manifest->num_layers) *
               static_cast<uint64_t>(manifest->num_kv_heads) * manifest->num_tokens_raw *
               static_cast<uint64_t>(manifest->head_dim) * dtype_size(manifest->dtype);
    e->manifest = std::move(manifest);
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (entries_.count(cartridge_id)) {
    return make_error(ErrorCode::kAlreadyExists, "cartridge '{}' is already known", cartridge_id);
  }
  entries_.emplace(cartridge_id, std::move(e));
  return {};
}

Status ResidencyManager::remove_cartridge(const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  if (e->state == SlotState::kLoading || e->refs > 0 || e->pinned) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "cannot remove cartridge '{}': {} in the host tier", cartridge_id,
                      e->state == SlotState::kLoading ? "being loaded"
                      : e->pinned                     ? "pinned"
                                                      : "in use");
  }
  if (e->state == SlotState::kReady) evict_entry(*e);
  e->removed = true;
  entries_.erase(cartridge_id);
  cv_.notify_all();
  return {};
}

bool ResidencyManager::knows(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(cartridge_id) != 0;
}

void ResidencyManager::touch(Entry& e) {
  if (e.state == SlotState::kReady) lru_.splice(lru_.end(), lru_, e.lru);
}

void ResidencyManager::evict_entry(Entry& e) {
  const uint64_t bytes = e.data ? e.data->nbytes() : 0;
  ++counters_.evictions;
  counters_.bytes_evicted += bytes;
  counters_.bytes_resident -= bytes;
  lru_.erase(e.lru);
  e.state = SlotState::kAbsent;
  e.data.reset();
}

Status ResidencyManager::never_fits(const Entry& e, uint64_t bytes) const {
  return make_error(ErrorCode::kOutOfRange,
                    "cartridge '{}' will never fit in the host tier: it needs {} bytes, the "
                    "budget is {}",
                    e.id, bytes, config_.host_budget_bytes);
}

Status ResidencyManager::make_room(uint64_t bytes, const std::string& for_id) {
  const uint64_t cap = config_.host_budget_bytes;
  const uint64_t used = counters_.bytes_resident;
  if (used + bytes <= cap) return {};
  const uint64_t need = used + bytes - cap;
  std::vector<EntryPtr> victims;
  uint64_t freed = 0;
  for (const std::string& id : lru_) {
    if (freed >= need) break;
    const EntryPtr& v = entries_.at(id);
    if (v->evictable()) {
      victims.push_back(v);
      freed += v->data->nbytes();
    }
  }
  if (freed < need) {
    size_t pinned = 0, busy = 0;
    uint64_t pinned_bytes = 0;
    for (const std::string& id : lru_) {
      const Entry& s = *entries_.at(id);
      if (s.pinned) {
        ++pinned;
        pinned_bytes += s.data->nbytes();
      } else if (!s.evictable()) {
        ++busy;
      }
    }
    // Pins only go away by an unpin: waiting for them would wait forever.
    if (pinned_bytes + bytes > cap) {
      return make_error(ErrorCode::kFailedPrecondition,
                        "cartridge '{}' cannot fit in the host tier: it needs {} bytes and {} of "
                        "the {} byte budget are held by {} pinned cartridges (unpin one or raise "
                        "the budget)",
                        for_id, bytes, pinned_bytes, cap, pinned);
    }
    return make_error(ErrorCode::kResourceExhausted,
                      "cartridge '{}' cannot fit in the host tier now: it needs {} bytes, {} of {} "
                      "are in use and only {} can be evicted ({} pinned and {} referenced "
                      "cartridges stay)",
                      for_id, bytes, used, cap, freed, pinned, busy);
  }
  for (const EntryPtr& v : victims)
    evict_entry(*v);
  return {};
}

Result<CartridgeData> ResidencyManager::load_from_disk(const Entry& e) const {
  if (!loader_) {
    return make_error(ErrorCode::kFailedPrecondition, "no loader for cartridge '{}'", e.id);
  }
  if (e.manifest && e.manifest->checksum && config_.verify_checksums) {
    CS_RETURN_IF_ERROR(e.manifest->verify_file(e.path));
  }
  CS_ASSIGN_OR_RETURN(CartridgeData data, loader_(e.path));
  CS_RETURN_IF_ERROR(data.validate());
  if (e.manifest) CS_RETURN_IF_ERROR(e.manifest->validate_against_data(data));
  return data;
}

Result<std::shared_ptr<const CartridgeData>> ResidencyManager::ensure(Lock& lk, const EntryPtr& e,
                                                                      bool count, bool add_ref,
                                                                      bool allow_transient,
                                                                      bool* placed) {
  bool counted = false;
  while (true) {
    if (e->removed) return make_error(ErrorCode::kNotFound, "cartridge '{}' was removed", e->id);
    if (e->state == SlotState::kReady) {
      if (count && !counted) ++counters_.hits;
      touch(*e);
      if (add_ref) ++e->refs;
      if (placed) *placed = true;
      return e->data;
    }
    if (count && !counted) {
      ++counters_.misses;
      counted = true;
    }
    if (e->state == SlotState::kLoading) {
      cv_.wait(lk);
      continue;
    }
    if (e->bytes && *e->bytes > config_.host_budget_bytes && !allow_transient) {
      return never_fits(*e, *e->bytes);
    }
    e->state = SlotState::kLoading;
    lk.unlock();
    Result<CartridgeData> loaded = load_from_disk(*e);
    lk.lock();
    e->state = SlotState::kAbsent;
    cv_.notify_all();
    if (!loaded.ok()) {
      ++load_failures_;
      return loaded.status().with_context(
          fmt::format("loading cartridge '{}' from '{}'", e->id, e->path));
    }
    ++disk_loads_;
    auto data = std::make_shared<const CartridgeData>(std::move(loaded).value());
    const uint64_t bytes = data->nbytes();
    e->bytes = bytes;
    if (placed) *placed = false;
    if (bytes > config_.host_budget_bytes) {
      if (allow_transient) return data;
      return never_fits(*e, bytes);
    }
    Status room = make_room(bytes, e->id);
    if (!room.ok()) {
      if (allow_transient) return data;
      return room;
    }
    e->data = data;
    e->state = SlotState::kReady;
    e->lru = lru_.insert(lru_.end(), e->id);
    ++counters_.promotions;
    counters_.bytes_promoted += bytes;
    counters_.bytes_resident += bytes;
    if (add_ref) ++e->refs;
    if (placed) *placed = true;
    return data;
  }
}

Result<std::shared_ptr<const CartridgeData>> ResidencyManager::acquire(
    const std::string& cartridge_id) {
  Lock lk(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  return ensure(lk, e, /*count=*/true, /*add_ref=*/true, /*allow_transient=*/false);
}

Result<HostLease> ResidencyManager::lease_for_load(const std::string& cartridge_id) {
  Lock lk(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  bool placed = false;
  CS_ASSIGN_OR_RETURN(auto data, ensure(lk, e, /*count=*/true, /*add_ref=*/true,
                                        /*allow_transient=*/true, &placed));
  return HostLease(placed ? this : nullptr, cartridge_id, std::move(data));
}

Status ResidencyManager::release(const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  if (e->refs == 0) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "release of cartridge '{}' in the host tier without a matching acquire",
                      cartridge_id);
  }
  --e->refs;
  touch(*e);
  return {};
}

Status ResidencyManager::pin(const std::string& cartridge_id) {
  Lock lk(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  CS_RETURN_IF_ERROR(ensure(lk, e, false, false, false).status());
  e->pinned = true;
  return {};
}

Status ResidencyManager::unpin(const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  if (!e->pinned) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "cartridge '{}' is not pinned in the host tier", cartridge_id);
  }
  e->pinned = false;
  return {};
}

Status ResidencyManager::prefetch(const std::string& cartridge_id) {
  Lock lk(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  return ensure(lk, e, false, false, false).status();
}

Status ResidencyManager::evict(const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  const char* why = nullptr;
  if (e->state == SlotState::kAbsent) {
    why = "not resident";
  } else if (e->state == SlotState::kLoading) {
    why = "being loaded";
  } else if (e->pinned) {
    why = "pinned";
  } else if (e->refs > 0) {
    why = "in use";
  }
  if (why) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "cannot evict cartridge '{}': {} in the host tier", cartridge_id, why);
  }
  evict_entry(*e);
  return {};
}

bool ResidencyManager::is_resident(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  return it != entries_.end() && it->second->state == SlotState::kReady;
}

int64_t ResidencyManager::ref_count(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  return it == entries_.end() ? 0 : it->second->refs;
}

bool ResidencyManager::is_pinned(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  return it != entries_.end() && it->second->pinned;
}

std::vector<std::string> ResidencyManager::lru_order() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {lru_.begin(), lru_.end()};
}

HostCounters ResidencyManager::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  HostCounters out;
  out.host = counters_;
  out.disk_loads = disk_loads_;
  out.load_failures = load_failures_;
  for (const auto& [id, e] : entries_) {
    if (e->state == SlotState::kReady) ++out.host.entries;
    if (e->pinned) ++out.host.pinned;
    if (e->refs > 0) ++out.host.referenced;
  }
  return out;
}

}  // namespace cartserve
