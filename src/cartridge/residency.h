// ResidencyManager: where each cartridge lives. Three tiers:
//
//   disk   (a path + the loader; always there)
//   host   (CartridgeData in host memory, file dtype and layout; byte budget)
//   device (one allocation per cartridge through a DeviceAllocator, in the
//           backend's dtype and layout; byte budget)
//
// Promotion goes disk -> host -> device; a device eviction demotes the copy
// to the host when the host tier lacks it and has room now (and the dtype
// round trip is exact). Each tier keeps an LRU over whole cartridges; an
// entry that is pinned, referenced by a request, or in use by a promotion
// in flight is never evicted: if nothing else can make room the caller gets
// ResourceExhausted ("cannot fit now": references go away by themselves); if
// the pinned entries alone leave too little room, FailedPrecondition (only
// an unpin helps); a cartridge bigger than the budget gets OutOfRange
// ("will never fit").
//
// NOTE (engine contract): acquire() returns the device copy (pointer +
// layout) and takes a reference; the copy stays valid and unmoved until the
// matching release(). Recency is the latest acquire, release, pin or
// prefetch. A promotion whose host copy cannot be placed in the host tier
// (too big, or no room) still proceeds through a transient host copy.
//
// NOTE (threads): one mutex guards all state. Disk loads and host->device
// copies run with it released (the slot is marked in flight and its device
// bytes reserved), so a slow promotion never blocks hits on other
// cartridges; callers wanting the same cartridge wait for it. Demotion
// copies run under the mutex.
//
// Invariant, per tier: bytes_promoted - bytes_evicted == bytes_resident,
// and bytes_resident + bytes_reserved <= budget_bytes.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cartridge/cartridge.h"
#include "cartridge/device_allocator.h"
#include "cartridge/loader.h"
#include "cartridge/manifest.h"
#include "core/status.h"

namespace cartserve {

enum class Tier : uint8_t { kHost = 0, kDevice = 1 };
const char* tier_name(Tier t);  // "host", "device"

// Layout of each resident K or V tensor of one layer.
enum class KvLayout : uint8_t {
  kHeadMajor,   // [num_kv_heads, num_tokens, head_dim], as in the files
  kTokenMajor,  // [num_tokens, num_kv_heads, head_dim], as in paged KV blocks
};
const char* kv_layout_name(KvLayout l);

struct ResidencyConfig {
  uint64_t host_budget_bytes = 0;
  uint64_t device_budget_bytes = 0;
  // Element type of device copies; nullopt keeps the file's (e.g. kF32 for
  // the CPU backend turns bf16 files into fp32 on promotion).
  std::optional<DType> device_dtype;
  KvLayout device_layout = KvLayout::kTokenMajor;
  // Check the file's SHA-256 against the manifest (when both exist) before
  // every disk load.
  bool verify_checksums = true;
};

// The device copy of one cartridge: one allocation holding, for each layer,
// its keys then its values: [num_layers][2 (K, V)] x tensor, each tensor in
// `layout` and `dtype`. Valid while a reference (acquire) or pin is held.
struct ResidentCartridge {
  std::string cartridge_id;
  const void* data = nullptr;  // device address (allocator's address space)
  uint64_t nbytes = 0;
  DType dtype = DType::kF32;
  KvLayout layout = KvLayout::kTokenMajor;
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t num_tokens = 0;
  int32_t head_dim = 0;
  int32_t num_frozen_tokens = 0;

  // Bytes of one layer's K (or V) tensor.
  uint64_t tensor_bytes() const {
    return static_cast<uint64_t>(num_kv_heads) * static_cast<uint64_t>(num_tokens) *
           static_cast<uint64_t>(head_dim) * dtype_size(dtype);
  }
  uint64_t key_offset(int32_t layer) const { return 2ull * layer * tensor_bytes(); }
  uint64_t value_offset(int32_t layer) const { return (2ull * layer + 1) * tensor_bytes(); }
  const void* keys(int32_t layer) const {
    return static_cast<const uint8_t*>(data) + key_offset(layer);
  }
  const void* values(int32_t layer) const {
    return static_cast<const uint8_t*>(data) + value_offset(layer);
  }
};

struct TierCounters {
  uint64_t hits = 0;        // acquire found the cartridge resident in this tier
  uint64_t misses = 0;      // acquire had to bring it in
  uint64_t promotions = 0;  // entries that became resident here (demotions included)
  uint64_t demotions = 0;   // host tier: entries copied back down from the device
  uint64_t evictions = 0;   // entries that left (LRU, explicit evict, removal)
  uint64_t bytes_promoted = 0;
  uint64_t bytes_evicted = 0;
  uint64_t bytes_resident = 0;
  uint64_t bytes_reserved = 0;  // promotions in flight
  uint64_t budget_bytes = 0;
  size_t entries = 0;
  size_t pinned = 0;
  size_t referenced = 0;
};

struct ResidencyCounters {
  TierCounters host;
  TierCounters device;
  uint64_t disk_loads = 0;
  uint64_t load_failures = 0;
  const TierCounters& tier(Tier t) const { return t == Tier::kHost ? host : device; }
};

class ResidencyManager;

// Holds one device reference; releases it when destroyed. Movable. The
// manager must outlive it.
class ResidencyLease {
 public:
  ResidencyLease() = default;
  ResidencyLease(ResidencyManager* manager, ResidentCartridge cartridge)
      : manager_(manager), cartridge_(std::move(cartridge)) {}
  ~ResidencyLease() { reset(); }
  ResidencyLease(ResidencyLease&& o) noexcept;
  ResidencyLease& operator=(ResidencyLease&& o) noexcept;
  ResidencyLease(const ResidencyLease&) = delete;
  ResidencyLease& operator=(const ResidencyLease&) = delete;

  bool valid() const { return manager_ != nullptr; }
  const ResidentCartridge& cartridge() const { return cartridge_; }
  void reset();

 private:
  ResidencyManager* manager_ = nullptr;
  ResidentCartridge cartridge_;
};

class ResidencyManager {
 public:
  ResidencyManager(ResidencyConfig config, CartridgeLoader loader,
                   std::shared_ptr<DeviceAllocator> allocator);
  ~ResidencyManager();  // frees every device copy; no call may be in flight
  ResidencyManager(const ResidencyManager&) = delete;
  ResidencyManager& operator=(const ResidencyManager&) = delete;

  // Makes `cartridge_id` known (disk tier only; nothing is loaded). With a
  // manifest, sizes are known before loading ("will never fit" without a
  // disk read) and every load is checked against it (dtype, shape,
  // checksum). AlreadyExists for a known id.
  Status add_cartridge(const std::string& cartridge_id, const std::string& path,
                       std::optional<CartridgeManifest> manifest = std::nullopt);
  // Forgets it (drops host and device copies). FailedPrecondition while
  // pinned, referenced or being promoted in any tier.
  Status remove_cartridge(const std::string& cartridge_id);
  bool knows(const std::string& cartridge_id) const;

  // Device reference: promotes if needed, returns the device copy.
  Result<ResidentCartridge> acquire(const std::string& cartridge_id);
  // Same, as an RAII lease.
  Result<ResidencyLease> lease(const std::string& cartridge_id);
  // Host reference: loads into the host tier if needed (never transient).
  Result<std::shared_ptr<const CartridgeData>> acquire_host(const std::string& cartridge_id);
  // NotFound for an unknown id; FailedPrecondition without a matching acquire.
  Status release(const std::string& cartridge_id, Tier tier = Tier::kDevice);
  // The device copy if resident (FailedPrecondition otherwise). Takes no
  // reference: hold one to keep using it.
  Result<ResidentCartridge> device_copy(const std::string& cartridge_id) const;

  // Brings the cartridge into `tier` and protects it from eviction. Idempotent.
  Status pin(const std::string& cartridge_id, Tier tier);
  // FailedPrecondition when not pinned in `tier`.
  Status unpin(const std::string& cartridge_id, Tier tier);
  // Brings it into `tier` without a reference. Evicts only idle entries, like
  // every promotion; on failure nothing changes (callers may ignore it).
  Status prefetch(const std::string& cartridge_id, Tier tier);
  // Drops it from `tier` (a device copy is demoted when possible).
  // FailedPrecondition when not resident, pinned, referenced or in flight.
  Status evict(const std::string& cartridge_id, Tier tier);

  bool is_resident(const std::string& cartridge_id, Tier tier) const;
  int64_t ref_count(const std::string& cartridge_id, Tier tier) const;
  bool is_pinned(const std::string& cartridge_id, Tier tier) const;
  // Resident ids, least recently used first.
  std::vector<std::string> lru_order(Tier tier) const;
  ResidencyCounters counters() const;
  const ResidencyConfig& config() const { return config_; }

  // Bytes a device copy of `data` takes under this configuration.
  uint64_t device_bytes(const CartridgeData& data) const;

 private:
  enum class SlotState { kAbsent, kLoading, kReady };
  struct Slot {
    SlotState state = SlotState::kAbsent;
    uint64_t bytes = 0;  // resident (ready) or reserved (loading, device)
    int64_t refs = 0;    // request references
    int64_t holds = 0;   // internal: a promotion in flight reads this host copy
    bool pinned = false;
    std::list<std::string>::iterator lru;  // valid when ready
    bool evictable() const {
      return state == SlotState::kReady && refs == 0 && holds == 0 && !pinned;
    }
  };
  struct Shape {
    int32_t num_layers = 0, num_kv_heads = 0, num_tokens = 0, head_dim = 0, num_frozen = 0;
    DType dtype = DType::kBF16;  // file dtype
  };
  struct Entry {
    std::string id;
    std::string path;
    std::optional<CartridgeManifest> manifest;
    std::optional<Shape> shape;  // from the manifest or the first load
    bool removed = false;
    Slot host;
    Slot device;
    std::shared_ptr<const CartridgeData> host_data;  // host ready
    void* device_ptr = nullptr;                      // device ready
    ResidentCartridge device_meta;                   // device ready
    Slot& slot(Tier t) { return t == Tier::kHost ? host : device; }
  };
  using EntryPtr = std::shared_ptr<Entry>;
  using Lock = std::unique_lock<std::mutex>;

  struct Want {
    bool count = false;            // hits / misses (request-driven)
    bool add_ref = false;          // request reference
    bool hold = false;             // internal hold on the host copy
    bool allow_transient = false;  // host copy need not be placed in the tier
  };
  struct HostCopy {
    std::shared_ptr<const CartridgeData> data;
    bool held = false;  // the caller owns a hold on the placed host slot
  };

  Result<EntryPtr> find_locked(const std::string& id) const;
  Result<HostCopy> ensure_host(Lock& lk, const EntryPtr& e, const Want& want);
  Result<ResidentCartridge> ensure_device(Lock& lk, const EntryPtr& e, const Want& want);
  Result<CartridgeData> load_from_disk(const Entry& e) const;  // runs unlocked
  Result<void*> copy_to_device(const CartridgeData& data, const ResidentCartridge& meta) const;
  Status make_room(Tier t, uint64_t bytes, const std::string& for_id);
  void evict_slot(Entry& e, Tier t, bool demote);
  void try_demote(Entry& e);
  void place(Entry& e, Tier t, uint64_t bytes);
  void touch(Entry& e, Tier t);
  uint64_t budget(Tier t) const;
  uint64_t shape_bytes(const Shape& s, DType dtype) const;
  DType device_dtype_for(DType file_dtype) const;
  ResidentCartridge device_meta_for(const Entry& e) const;

  const ResidencyConfig config_;
  const CartridgeLoader loader_;
  const std::shared_ptr<DeviceAllocator> allocator_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // a slot left the kLoading state
  std::map<std::string, EntryPtr> entries_;
  std::list<std::string> lru_[2];  // per tier, least recently used first
  TierCounters counters_[2];       // per tier (entries/pinned/referenced filled on read)
  uint64_t disk_loads_ = 0;
  uint64_t load_failures_ = 0;
};

}  // namespace cartserve
