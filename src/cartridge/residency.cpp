#include "cartridge/residency.h"

#include <cstring>
#include <utility>
#include <vector>

#include "core/logging.h"

namespace cartserve {
namespace {

size_t tier_index(Tier t) {
  return t == Tier::kHost ? 0 : 1;
}

// Converts n elements from `src_type` to `dst_type` (float types only).
// `tmp` holds n floats when neither side is float32.
void convert_row(DType src_type, const void* src, DType dst_type, void* dst, size_t n, float* tmp) {
  if (src_type == dst_type) {
    std::memcpy(dst, src, n * dtype_size(src_type));
  } else if (dst_type == DType::kF32) {
    convert_to_f32(src_type, src, static_cast<float*>(dst), n);
  } else if (src_type == DType::kF32) {
    convert_from_f32(static_cast<const float*>(src), dst_type, dst, n);
  } else {
    convert_to_f32(src_type, src, tmp, n);
    convert_from_f32(tmp, dst_type, dst, n);
  }
}

// Element offset of (h, t, 0) in a tensor of `layout`.
size_t kv_offset(KvLayout layout, size_t h, size_t t, size_t heads, size_t tokens, size_t dim) {
  return layout == KvLayout::kHeadMajor ? (h * tokens + t) * dim : (t * heads + h) * dim;
}

// src [H, T, D] in `src_type` -> dst in `layout` and `dst_type`.
void pack_tensor(const Tensor& src, DType dst_type, KvLayout layout, uint8_t* dst) {
  const size_t heads = static_cast<size_t>(src.dim(0));
  const size_t tokens = static_cast<size_t>(src.dim(1));
  const size_t dim = static_cast<size_t>(src.dim(2));
  const DType src_type = src.dtype();
  if (layout == KvLayout::kHeadMajor && src_type == dst_type) {
    std::memcpy(dst, src.raw(), src.nbytes());
    return;
  }
  std::vector<float> tmp(dim);  // [head_dim]
  const auto* s = static_cast<const uint8_t*>(src.raw());
  const size_t ss = dtype_size(src_type), ds = dtype_size(dst_type);
  for (size_t h = 0; h < heads; ++h) {
    for (size_t t = 0; t < tokens; ++t) {
      convert_row(src_type, s + (h * tokens + t) * dim * ss, dst_type,
                  dst + kv_offset(layout, h, t, heads, tokens, dim) * ds, dim, tmp.data());
    }
  }
}

// The inverse: src in `layout` / `src_type` -> dst [H, T, D] in dst.dtype().
void unpack_tensor(const uint8_t* src, DType src_type, KvLayout layout, Tensor& dst) {
  const size_t heads = static_cast<size_t>(dst.dim(0));
  const size_t tokens = static_cast<size_t>(dst.dim(1));
  const size_t dim = static_cast<size_t>(dst.dim(2));
  const DType dst_type = dst.dtype();
  std::vector<float> tmp(dim);  // [head_dim]
  auto* d = static_cast<uint8_t*>(dst.raw());
  const size_t ss = dtype_size(src_type), ds = dtype_size(dst_type);
  for (size_t h = 0; h < heads; ++h) {
    for (size_t t = 0; t < tokens; ++t) {
      convert_row(src_type, src + kv_offset(layout, h, t, heads, tokens, dim) * ss, dst_type,
                  d + (h * tokens + t) * dim * ds, dim, tmp.data());
    }
  }
}

// Narrowing back from the device dtype reproduces the file's values.
bool round_trip_exact(DType file_dtype, DType device_dtype) {
  return file_dtype == device_dtype || device_dtype == DType::kF32;
}

}  // namespace

const char* tier_name(Tier t) {
  return t == Tier::kHost ? "host" : "device";
}

const char* kv_layout_name(KvLayout l) {
  return l == KvLayout::kHeadMajor ? "head-major" : "token-major";
}

// ---- ResidencyLease ----

ResidencyLease::ResidencyLease(ResidencyLease&& o) noexcept
    : manager_(std::exchange(o.manager_, nullptr)), cartridge_(std::move(o.cartridge_)) {}

ResidencyLease& ResidencyLease::operator=(ResidencyLease&& o) noexcept {
  if (this != &o) {
    reset();
    manager_ = std::exchange(o.manager_, nullptr);
    cartridge_ = std::move(o.cartridge_);
  }
  return *this;
}

void ResidencyLease::reset() {
  if (!manager_) return;
  Status s = manager_->release(cartridge_.cartridge_id, Tier::kDevice);
  if (!s.ok()) LOG_ERROR("residency lease: {}", s.to_string());
  manager_ = nullptr;
}

// ---- ResidencyManager ----

ResidencyManager::ResidencyManager(ResidencyConfig config, CartridgeLoader loader,
                                   std::shared_ptr<DeviceAllocator> allocator)
    : config_(config), loader_(std::move(loader)), allocator_(std::move(allocator)) {
  counters_[0].budget_bytes = config_.host_budget_bytes;
  counters_[1].budget_bytes = config_.device_budget_bytes;
}

ResidencyManager::~ResidencyManager() {
  for (auto& [id, e] : entries_) {
    if (e->device_ptr && allocator_) allocator_->free(e->device_ptr);
    e->device_ptr = nullptr;
  }
}

uint64_t ResidencyManager::budget(Tier t) const {
  return t == Tier::kHost ? config_.host_budget_bytes : config_.device_budget_bytes;
}

DType ResidencyManager::device_dtype_for(DType file_dtype) const {
  return config_.device_dtype.value_or(file_dtype);
}

uint64_t ResidencyManager::shape_bytes(const Shape& s, DType dtype) const {
  return 2ull * static_cast<uint64_t>(s.num_layers) * static_cast<uint64_t>(s.num_kv_heads) *
         static_cast<uint64_t>(s.num_tokens) * static_cast<uint64_t>(s.head_dim) *
         dtype_size(dtype);
}

uint64_t ResidencyManager::device_bytes(const CartridgeData& data) const {
  const Shape s{data.num_layers, data.num_kv_heads,      data.num_tokens,
                data.head_dim,   data.num_frozen_tokens, data.dtype};
  return shape_bytes(s, device_dtype_for(data.dtype));
}

ResidentCartridge ResidencyManager::device_meta_for(const Entry& e) const {
  ResidentCartridge m;
  m.cartridge_id = e.id;
  m.dtype = device_dtype_for(e.shape->dtype);
  m.layout = config_.device_layout;
  m.num_layers = e.shape->num_layers;
  m.num_kv_heads = e.shape->num_kv_heads;
  m.num_tokens = e.shape->num_tokens;
  m.head_dim = e.shape->head_dim;
  m.num_frozen_tokens = e.shape->num_frozen;
  m.nbytes = shape_bytes(*e.shape, m.dtype);
  return m;
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
  if (config_.device_dtype && *config_.device_dtype != DType::kF32 &&
      *config_.device_dtype != DType::kF16 && *config_.device_dtype != DType::kBF16) {
    return make_error(ErrorCode::kInvalidArgument, "device dtype {} is not a KV dtype",
                      dtype_name(*config_.device_dtype));
  }
  auto e = std::make_shared<Entry>();
  e->id = cartridge_id;
  e->path = path;
  if (manifest) {
    Status valid = manifest->validate();
    if (!valid.ok()) return valid.with_context("cartridge '" + cartridge_id + "'");
    e->shape = Shape{manifest->num_layers,
                     manifest->num_kv_heads,
                     static_cast<int32_t>(manifest->num_tokens_raw),
                     manifest->head_dim,
                     manifest->num_frozen_tokens.value_or(0),
                     manifest->dtype};
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
  for (Tier t : {Tier::kHost, Tier::kDevice}) {
    const Slot& s = e->slot(t);
    if (s.state == SlotState::kLoading || s.refs > 0 || s.holds > 0 || s.pinned) {
      return make_error(ErrorCode::kFailedPrecondition,
                        "cannot remove cartridge '{}': {} in the {} tier", cartridge_id,
                        s.state == SlotState::kLoading ? "being promoted"
                        : s.pinned                     ? "pinned"
                                                       : "in use",
                        tier_name(t));
    }
  }
  for (Tier t : {Tier::kDevice, Tier::kHost}) {
    if (e->slot(t).state == SlotState::kReady) evict_slot(*e, t, /*demote=*/false);
  }
  e->removed = true;
  entries_.erase(cartridge_id);
  cv_.notify_all();
  return {};
}

bool ResidencyManager::knows(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(cartridge_id) != 0;
}

void ResidencyManager::touch(Entry& e, Tier t) {
  Slot& s = e.slot(t);
  if (s.state != SlotState::kReady) return;
  auto& lru = lru_[tier_index(t)];
  lru.splice(lru.end(), lru, s.lru);
}

void ResidencyManager::place(Entry& e, Tier t, uint64_t bytes) {
  Slot& s = e.slot(t);
  auto& lru = lru_[tier_index(t)];
  s.state = SlotState::kReady;
  s.bytes = bytes;
  s.lru = lru.insert(lru.end(), e.id);
  TierCounters& c = counters_[tier_index(t)];
  ++c.promotions;
  c.bytes_promoted += bytes;
  c.bytes_resident += bytes;
}

void ResidencyManager::evict_slot(Entry& e, Tier t, bool demote) {
  Slot& s = e.slot(t);
  TierCounters& c = counters_[tier_index(t)];
  ++c.evictions;
  c.bytes_evicted += s.bytes;
  c.bytes_resident -= s.bytes;
  lru_[tier_index(t)].erase(s.lru);
  s.state = SlotState::kAbsent;
  s.bytes = 0;
  if (t == Tier::kHost) {
    e.host_data.reset();
  } else {
    if (demote) try_demote(e);
    allocator_->free(e.device_ptr);
    e.device_ptr = nullptr;
  }
}

void ResidencyManager::try_demote(Entry& e) {
  if (e.host.state != SlotState::kAbsent || !e.shape || !e.device_ptr) return;
  const ResidentCartridge& m = e.device_meta;
  if (!round_trip_exact(e.shape->dtype, m.dtype)) return;
  const uint64_t bytes = shape_bytes(*e.shape, e.shape->dtype);
  const TierCounters& hc = counters_[0];
  if (hc.bytes_resident + hc.bytes_reserved + bytes > config_.host_budget_bytes) return;

  auto data = std::make_shared<CartridgeData>();
  data->num_layers = m.num_layers;
  data->num_kv_heads = m.num_kv_heads;
  data->head_dim = m.head_dim;
  data->num_tokens = m.num_tokens;
  data->num_frozen_tokens = m.num_frozen_tokens;
  data->dtype = e.shape->dtype;
  // One K or V tensor as on the device: [T, H, D] or [H, T, D] in m.dtype.
  std::vector<uint8_t> staging(m.tensor_bytes());
  for (int32_t l = 0; l < m.num_layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      Tensor t(data->dtype, {m.num_kv_heads, m.num_tokens, m.head_dim});  // [H, T, D]
      const auto* src = static_cast<const uint8_t*>(e.device_ptr) +
                        (kv == 0 ? m.key_offset(l) : m.value_offset(l));
      Status s = allocator_->copy_to_host(staging.data(), src, staging.size());
      if (!s.ok()) {
        LOG_WARN("demotion of cartridge '{}' skipped: {}", e.id, s.to_string());
        return;
      }
      unpack_tensor(staging.data(), m.dtype, m.layout, t);
      (kv == 0 ? data->keys : data->values).push_back(std::move(t));
    }
  }
  e.host_data = std::move(data);
  place(e, Tier::kHost, bytes);
  ++counters_[0].demotions;
}

Status ResidencyManager::make_room(Tier t, uint64_t bytes, const std::string& for_id) {
  const size_t ti = tier_index(t);
  const TierCounters& c = counters_[ti];
  const uint64_t cap = budget(t);
  const uint64_t used = c.bytes_resident + c.bytes_reserved;
  if (used + bytes <= cap) return {};
  const uint64_t need = used + bytes - cap;
  std::vector<EntryPtr> victims;
  uint64_t freed = 0;
  for (const std::string& id : lru_[ti]) {
    if (freed >= need) break;
    const EntryPtr& v = entries_.at(id);
    if (v->slot(t).evictable()) {
      victims.push_back(v);
      freed += v->slot(t).bytes;
    }
  }
  if (freed < need) {
    size_t pinned = 0, busy = 0;
    uint64_t pinned_bytes = 0;
    for (const std::string& id : lru_[ti]) {
      const Slot& s = entries_.at(id)->slot(t);
      if (s.pinned) {
        ++pinned;
        pinned_bytes += s.bytes;
      } else if (!s.evictable()) {
        ++busy;
      }
    }
    // Pins only go away by an unpin: waiting for them would wait forever.
    if (pinned_bytes + bytes > cap) {
      return make_error(ErrorCode::kFailedPrecondition,
                        "cartridge '{}' cannot fit in the {} tier: it needs {} bytes and {} of "
                        "the {} byte budget are held by {} pinned cartridges (unpin one or raise "
                        "the budget)",
                        for_id, tier_name(t), bytes, pinned_bytes, cap, pinned);
    }
    return make_error(ErrorCode::kResourceExhausted,
                      "cartridge '{}' cannot fit in the {} tier now: it needs {} bytes, {} of {} "
                      "are in use ({} reserved by promotions in flight) and only {} can be "
                      "evicted ({} pinned and {} referenced cartridges stay)",
                      for_id, tier_name(t), bytes, used, cap, c.bytes_reserved, freed, pinned,
                      busy);
  }
  for (const EntryPtr& v : victims)
    evict_slot(*v, t, /*demote=*/t == Tier::kDevice);
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

Result<void*> ResidencyManager::copy_to_device(const CartridgeData& data,
                                               const ResidentCartridge& meta) const {
  CS_ASSIGN_OR_RETURN(void* ptr, allocator_->allocate(meta.nbytes));
  const bool direct = meta.layout == KvLayout::kHeadMajor && meta.dtype == data.dtype;
  // One K or V tensor as on the device: [T, H, D] or [H, T, D] in meta.dtype.
  std::vector<uint8_t> staging(direct ? 0 : meta.tensor_bytes());
  for (int32_t l = 0; l < meta.num_layers; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const Tensor& src = kv == 0 ? data.keys[l] : data.values[l];
      const uint64_t off = kv == 0 ? meta.key_offset(l) : meta.value_offset(l);
      const void* host = src.raw();
      if (!direct) {
        pack_tensor(src, meta.dtype, meta.layout, staging.data());
        host = staging.data();
      }
      Status s =
          allocator_->copy_from_host(static_cast<uint8_t*>(ptr) + off, host, meta.tensor_bytes());
      if (!s.ok()) {
        allocator_->free(ptr);
        return s;
      }
    }
  }
  return ptr;
}

Result<ResidencyManager::HostCopy> ResidencyManager::ensure_host(Lock& lk, const EntryPtr& e,
                                                                 const Want& want) {
  bool counted = false;
  while (true) {
    if (e->removed) {
      return make_error(ErrorCode::kNotFound, "cartridge '{}' was removed", e->id);
    }
    Slot& s = e->host;
    if (s.state == SlotState::kReady) {
      if (want.count && !counted) ++counters_[0].hits;
      touch(*e, Tier::kHost);
      if (want.add_ref) ++s.refs;
      if (want.hold) ++s.holds;
      return HostCopy{e->host_data, want.hold};
    }
    if (want.count && !counted) {
      ++counters_[0].misses;
      counted = true;
    }
    if (s.state == SlotState::kLoading) {
      cv_.wait(lk);
      continue;
    }
    if (e->shape) {
      const uint64_t bytes = shape_bytes(*e->shape, e->shape->dtype);
      if (bytes > config_.host_budget_bytes && !want.allow_transient) {
        return make_error(ErrorCode::kOutOfRange,
                          "cartridge '{}' will never fit in the host tier: it needs {} bytes, the "
                          "budget is {}",
                          e->id, bytes, config_.host_budget_bytes);
      }
    }
    s.state = SlotState::kLoading;
    lk.unlock();
    Result<CartridgeData> loaded = load_from_disk(*e);
    lk.lock();
    s.state = SlotState::kAbsent;
    cv_.notify_all();
    if (!loaded.ok()) {
      ++load_failures_;
      return loaded.status().with_context(
          fmt::format("loading cartridge '{}' from '{}'", e->id, e->path));
    }
    ++disk_loads_;
    auto data = std::make_shared<const CartridgeData>(std::move(loaded).value());
    e->shape = Shape{data->num_layers, data->num_kv_heads,      data->num_tokens,
                     data->head_dim,   data->num_frozen_tokens, data->dtype};
    const uint64_t bytes = data->nbytes();
    if (bytes > config_.host_budget_bytes) {
      if (want.allow_transient) return HostCopy{data, false};
      return make_error(ErrorCode::kOutOfRange,
                        "cartridge '{}' will never fit in the host tier: it needs {} bytes, the "
                        "budget is {}",
                        e->id, bytes, config_.host_budget_bytes);
    }
    Status room = make_room(Tier::kHost, bytes, e->id);
    if (!room.ok()) {
      if (want.allow_transient) return HostCopy{data, false};
      return room;
    }
    e->host_data = data;
    place(*e, Tier::kHost, bytes);
    if (want.add_ref) ++s.refs;
    if (want.hold) ++s.holds;
    return HostCopy{data, want.hold};
  }
}

Result<ResidentCartridge> ResidencyManager::ensure_device(Lock& lk, const EntryPtr& e,
                                                          const Want& want) {
  if (!allocator_) {
    return make_error(ErrorCode::kFailedPrecondition, "residency manager has no device allocator");
  }
  bool counted = false;
  while (true) {
    if (e->removed) {
      return make_error(ErrorCode::kNotFound, "cartridge '{}' was removed", e->id);
    }
    Slot& d = e->device;
    if (d.state == SlotState::kReady) {
      if (want.count && !counted) ++counters_[1].hits;
      touch(*e, Tier::kDevice);
      if (want.add_ref) ++d.refs;
      return e->device_meta;
    }
    if (want.count && !counted) {
      ++counters_[1].misses;
      counted = true;
    }
    if (d.state == SlotState::kLoading) {
      cv_.wait(lk);
      continue;
    }
    auto never_fits = [&](uint64_t bytes) {
      return make_error(ErrorCode::kOutOfRange,
                        "cartridge '{}' will never fit in the device tier: it needs {} bytes, the "
                        "budget is {}",
                        e->id, bytes, config_.device_budget_bytes);
    };
    // Known shape: refuse before reading the disk.
    if (e->shape) {
      const uint64_t bytes = shape_bytes(*e->shape, device_dtype_for(e->shape->dtype));
      if (bytes > config_.device_budget_bytes) return never_fits(bytes);
    }
    Want host_want;
    host_want.count = want.count;
    host_want.hold = true;
    host_want.allow_transient = true;
    CS_ASSIGN_OR_RETURN(HostCopy hc, ensure_host(lk, e, host_want));
    auto drop_hold = [&] {
      if (hc.held) --e->host.holds;
      hc.held = false;
    };
    if (e->removed || d.state != SlotState::kAbsent) {  // changed while the disk was read
      drop_hold();
      continue;
    }
    ResidentCartridge meta = device_meta_for(*e);
    if (meta.nbytes > config_.device_budget_bytes) {
      drop_hold();
      return never_fits(meta.nbytes);
    }
    Status room = make_room(Tier::kDevice, meta.nbytes, e->id);
    if (!room.ok()) {
      drop_hold();
      return room;
    }
    d.state = SlotState::kLoading;
    d.bytes = meta.nbytes;
    counters_[1].bytes_reserved += meta.nbytes;
    lk.unlock();
    Result<void*> ptr = copy_to_device(*hc.data, meta);
    lk.lock();
    counters_[1].bytes_reserved -= meta.nbytes;
    drop_hold();
    cv_.notify_all();
    if (!ptr.ok()) {
      d.state = SlotState::kAbsent;
      d.bytes = 0;
      return ptr.status().with_context(
          fmt::format("promoting cartridge '{}' to the device", e->id));
    }
    meta.data = *ptr;
    e->device_ptr = *ptr;
    e->device_meta = meta;
    place(*e, Tier::kDevice, meta.nbytes);
    if (want.add_ref) ++d.refs;
    return meta;
  }
}

Result<ResidentCartridge> ResidencyManager::acquire(const std::string& cartridge_id) {
  Lock lk(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  Want want;
  want.count = true;
  want.add_ref = true;
  return ensure_device(lk, e, want);
}

Result<ResidencyLease> ResidencyManager::lease(const std::string& cartridge_id) {
  CS_ASSIGN_OR_RETURN(ResidentCartridge c, acquire(cartridge_id));
  return ResidencyLease(this, std::move(c));
}

Result<std::shared_ptr<const CartridgeData>> ResidencyManager::acquire_host(
    const std::string& cartridge_id) {
  Lock lk(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  Want want;
  want.count = true;
  want.add_ref = true;
  CS_ASSIGN_OR_RETURN(HostCopy hc, ensure_host(lk, e, want));
  return hc.data;
}

Status ResidencyManager::release(const std::string& cartridge_id, Tier tier) {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  Slot& s = e->slot(tier);
  if (s.refs == 0) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "release of cartridge '{}' in the {} tier without a matching acquire",
                      cartridge_id, tier_name(tier));
  }
  --s.refs;
  touch(*e, tier);
  return {};
}

Result<ResidentCartridge> ResidencyManager::device_copy(const std::string& cartridge_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  if (e->device.state != SlotState::kReady) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "cartridge '{}' is not resident in the device tier", cartridge_id);
  }
  return e->device_meta;
}

Status ResidencyManager::pin(const std::string& cartridge_id, Tier tier) {
  Lock lk(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  if (tier == Tier::kDevice) {
    CS_RETURN_IF_ERROR(ensure_device(lk, e, Want{}).status());
  } else {
    CS_RETURN_IF_ERROR(ensure_host(lk, e, Want{}).status());
  }
  e->slot(tier).pinned = true;
  return {};
}

Status ResidencyManager::unpin(const std::string& cartridge_id, Tier tier) {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  Slot& s = e->slot(tier);
  if (!s.pinned) {
    return make_error(ErrorCode::kFailedPrecondition, "cartridge '{}' is not pinned in the {} tier",
                      cartridge_id, tier_name(tier));
  }
  s.pinned = false;
  return {};
}

Status ResidencyManager::prefetch(const std::string& cartridge_id, Tier tier) {
  Lock lk(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  if (tier == Tier::kDevice) return ensure_device(lk, e, Want{}).status();
  return ensure_host(lk, e, Want{}).status();
}

Status ResidencyManager::evict(const std::string& cartridge_id, Tier tier) {
  std::lock_guard<std::mutex> lock(mu_);
  CS_ASSIGN_OR_RETURN(EntryPtr e, find_locked(cartridge_id));
  const Slot& s = e->slot(tier);
  const char* why = nullptr;
  if (s.state == SlotState::kAbsent) {
    why = "not resident";
  } else if (s.state == SlotState::kLoading) {
    why = "being promoted";
  } else if (s.pinned) {
    why = "pinned";
  } else if (s.refs > 0 || s.holds > 0) {
    why = "in use";
  }
  if (why) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "cannot evict cartridge '{}': {} in the {} tier", cartridge_id, why,
                      tier_name(tier));
  }
  evict_slot(*e, tier, /*demote=*/tier == Tier::kDevice);
  return {};
}

bool ResidencyManager::is_resident(const std::string& cartridge_id, Tier tier) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  return it != entries_.end() && it->second->slot(tier).state == SlotState::kReady;
}

int64_t ResidencyManager::ref_count(const std::string& cartridge_id, Tier tier) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  return it == entries_.end() ? 0 : it->second->slot(tier).refs;
}

bool ResidencyManager::is_pinned(const std::string& cartridge_id, Tier tier) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(cartridge_id);
  return it != entries_.end() && it->second->slot(tier).pinned;
}

std::vector<std::string> ResidencyManager::lru_order(Tier tier) const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto& lru = lru_[tier_index(tier)];
  return {lru.begin(), lru.end()};
}

ResidencyCounters ResidencyManager::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  ResidencyCounters out;
  out.host = counters_[0];
  out.device = counters_[1];
  out.disk_loads = disk_loads_;
  out.load_failures = load_failures_;
  for (const auto& [id, e] : entries_) {
    for (Tier t : {Tier::kHost, Tier::kDevice}) {
      TierCounters& c = t == Tier::kHost ? out.host : out.device;
      const Slot& s = e->slot(t);
      if (s.state == SlotState::kReady) ++c.entries;
      if (s.pinned) ++c.pinned;
      if (s.refs > 0) ++c.referenced;
    }
  }
  return out;
}

}  // namespace cartserve
