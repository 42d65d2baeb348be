#include "cartridge/store.h"

#include <algorithm>

namespace cartserve {
namespace {

Status check_id(const std::string& id) {
  if (id.empty()) return make_error(ErrorCode::kInvalidArgument, "cartridge id is empty");
  return {};
}

Status not_found(const std::string& id) {
  return make_error(ErrorCode::kNotFound, "cartridge '{}' is not loaded", id);
}

}  // namespace

CartridgeStore::CartridgeStore(CartridgeLoader loader) : loader_(std::move(loader)) {}

Status CartridgeStore::insert_locked(const std::string& id, CartridgeData data,
                                     const std::string& path) {
  if (auto it = entries_.find(id); it != entries_.end()) {
    return make_error(ErrorCode::kAlreadyExists, "cartridge '{}' is already loaded (from '{}')", id,
                      it->second.path);
  }
  Status valid = data.validate();
  if (!valid.ok()) return valid.with_context("cartridge '" + id + "'");
  Entry e;
  e.path = path;
  bytes_ += data.nbytes();
  e.data = std::make_shared<const CartridgeData>(std::move(data));
  entries_.emplace(id, std::move(e));
  return {};
}

Status CartridgeStore::load(const std::string& cartridge_id, const std::string& path) {
  CS_RETURN_IF_ERROR(check_id(cartridge_id));
  if (!loader_) {
    return make_error(ErrorCode::kFailedPrecondition, "store has no loader for '{}'", path);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = entries_.find(cartridge_id); it != entries_.end()) {
      return make_error(ErrorCode::kAlreadyExists, "cartridge '{}' is already loaded (from '{}')",
                        cartridge_id, it->second.path);
    }
    if (!loading_.insert(cartridge_id).second) {
      return make_error(ErrorCode::kAlreadyExists, "cartridge '{}' is already being loaded",
                        cartridge_id);
    }
  }
  // Slow part outside the lock; the `loading_` mark keeps the id reserved.
  Result<CartridgeData> data = loader_(path);
  std::lock_guard<std::mutex> lock(mu_);
  loading_.erase(cartridge_id);
  if (!data.ok()) {
    return data.status().with_context(
        fmt::format("loading cartridge '{}' from '{}'", cartridge_id, path));
  }
  return insert_locked(cartridge_id, std::move(data).value(), path);
}

Status CartridgeStore::add(const std::string& cartridge_id, CartridgeData data,
                           const std::string& path) {
  CS_RETURN_IF_ERROR(check_id(cartridge_id));
  std::lock_guard<std::mutex> lock(mu_);
  if (loading_.count(cartridge_id)) {
    return make_error(ErrorCode::kAlreadyExists, "cartridge '{}' is already being loaded",
                      cartridge_id);
  }
  return insert_locked(cartridge_id, std::move(data), path);
}

bool CartridgeStore::contains(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(cartridge_id) != 0;
}

Result<std::shared_ptr<const CartridgeData>> CartridgeStore::get(
    const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  if (it == entries_.end()) return not_found(cartridge_id);
  return it->second.data;
}

Result<std::shared_ptr<const CartridgeData>> CartridgeStore::acquire(
    const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  if (it == entries_.end()) return not_found(cartridge_id);
  ++it->second.refs;
  return it->second.data;
}

Status CartridgeStore::release(const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  if (it == entries_.end()) return not_found(cartridge_id);
  if (it->second.refs == 0) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "release of cartridge '{}' without a matching acquire", cartridge_id);
  }
  --it->second.refs;
  return {};
}

Status CartridgeStore::pin(const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  if (it == entries_.end()) return not_found(cartridge_id);
  it->second.pinned = true;
  return {};
}

Status CartridgeStore::unpin(const std::string& cartridge_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  if (it == entries_.end()) return not_found(cartridge_id);
  if (!it->second.pinned) {
    return make_error(ErrorCode::kFailedPrecondition, "cartridge '{}' is not pinned", cartridge_id);
  }
  it->second.pinned = false;
  return {};
}

Status CartridgeStore::evict(const std::string& cartridge_id, bool force) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  if (it == entries_.end()) return not_found(cartridge_id);
  if (!force && it->second.pinned) {
    return make_error(ErrorCode::kFailedPrecondition, "cartridge '{}' is pinned", cartridge_id);
  }
  if (!force && it->second.refs > 0) {
    return make_error(ErrorCode::kFailedPrecondition, "cartridge '{}' is in use ({} references)",
                      cartridge_id, it->second.refs);
  }
  bytes_ -= it->second.data->nbytes();
  entries_.erase(it);
  return {};
}

size_t CartridgeStore::evict_unused() {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (!it->second.pinned && it->second.refs == 0) {
      bytes_ -= it->second.data->nbytes();
      it = entries_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

StoreEntryInfo CartridgeStore::info_locked(const std::string& id, const Entry& e) const {
  StoreEntryInfo i;
  i.cartridge_id = id;
  i.path = e.path;
  i.nbytes = e.data->nbytes();
  i.ref_count = e.refs;
  i.pinned = e.pinned;
  i.dtype = e.data->dtype;
  i.num_layers = e.data->num_layers;
  i.num_tokens = e.data->num_tokens;
  return i;
}

Result<StoreEntryInfo> CartridgeStore::info(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  if (it == entries_.end()) return not_found(cartridge_id);
  return info_locked(it->first, it->second);
}

std::vector<StoreEntryInfo> CartridgeStore::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<StoreEntryInfo> out;
  out.reserve(entries_.size());
  for (const auto& [id, e] : entries_)
    out.push_back(info_locked(id, e));
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.cartridge_id < b.cartridge_id; });
  return out;
}

size_t CartridgeStore::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

uint64_t CartridgeStore::bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_;
}

}  // namespace cartserve
