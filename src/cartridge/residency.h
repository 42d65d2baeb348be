// ResidencyManager: the disk and host tiers of cartridge residency.
//
//   disk   (a path + the loader; always there)
//   host   (CartridgeData in host memory, file dtype and layout; byte budget)
//
// The device tier is blocks of the engine's KV pool (cartridge/device_tier.h);
// it reads cartridges from here when it loads them into blocks.
//
// The host tier keeps an LRU over whole cartridges; an entry that is pinned,
// referenced, or read by a load in flight is never evicted: if nothing else
// can make room the caller gets ResourceExhausted ("cannot fit now":
// references go away by themselves); if the pinned entries alone leave too
// little room, FailedPrecondition (only an unpin helps); a cartridge bigger
// than the budget gets OutOfRange ("will never fit"). Recency is the latest
// acquire, release, pin or prefetch.
//
// NOTE (threads): one mutex guards all state. Disk loads run with it released
// (the slot is marked loading), so a slow load never blocks hits on other
// cartridges; callers wanting the same cartridge wait for it.
//
// Invariant: bytes_promoted - bytes_evicted == bytes_resident <= budget_bytes.
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
#include "cartridge/loader.h"
#include "cartridge/manifest.h"
#include "core/status.h"

namespace cartserve {

enum class Tier : uint8_t { kHost = 0, kDevice = 1 };
const char* tier_name(Tier t);  // "host", "device"

struct ResidencyConfig {
  uint64_t host_budget_bytes = 0;
  // Check the file's SHA-256 against the manifest (when both exist) before
  // every disk load.
  bool verify_checksums = true;
};

// Counters of one tier (the host tier here, the device tier in DeviceKvTier).
struct TierCounters {
  uint64_t hits = 0;        // an acquire found the cartridge resident
  uint64_t misses = 0;      // an acquire had to bring it in
  uint64_t promotions = 0;  // entries that became resident
  uint64_t evictions = 0;   // entries that left (LRU, explicit evict, removal)
  uint64_t bytes_promoted = 0;
  uint64_t bytes_evicted = 0;
  uint64_t bytes_resident = 0;
  uint64_t budget_bytes = 0;
  size_t entries = 0;
  size_t pinned = 0;
  size_t referenced = 0;
};

struct HostCounters {
  TierCounters host;
  uint64_t disk_loads = 0;
  uint64_t load_failures = 0;
};

class ResidencyManager;

// A cartridge's host data for one use (a load into KV blocks), with the host
// reference that keeps it resident when it is placed in the tier (released
// when the lease dies). Movable; the manager must outlive it.
class HostLease {
 public:
  HostLease() = default;
  HostLease(ResidencyManager* manager, std::string id, std::shared_ptr<const CartridgeData> data)
      : manager_(manager), id_(std::move(id)), data_(std::move(data)) {}
  ~HostLease() { reset(); }
  HostLease(HostLease&& o) noexcept;
  HostLease& operator=(HostLease&& o) noexcept;
  HostLease(const HostLease&) = delete;
  HostLease& operator=(const HostLease&) = delete;

  const std::shared_ptr<const CartridgeData>& data() const { return data_; }
  void reset();

 private:
  ResidencyManager* manager_ = nullptr;  // null: a transient copy, or empty
  std::string id_;
  std::shared_ptr<const CartridgeData> data_;
};

class ResidencyManager {
 public:
  ResidencyManager(ResidencyConfig config, CartridgeLoader loader);
  ResidencyManager(const ResidencyManager&) = delete;
  ResidencyManager& operator=(const ResidencyManager&) = delete;

  // Makes `cartridge_id` known (disk tier only; nothing is loaded). With a
  // manifest, sizes are known before loading ("will never fit" without a
  // disk read) and every load is checked against it (dtype, shape,
  // checksum). AlreadyExists for a known id.
  Status add_cartridge(const std::string& cartridge_id, const std::string& path,
                       std::optional<CartridgeManifest> manifest = std::nullopt);
  // Forgets it (drops the host copy). FailedPrecondition while pinned,
  // referenced or being loaded.
  Status remove_cartridge(const std::string& cartridge_id);
  bool knows(const std::string& cartridge_id) const;

  // Host reference: loads into the host tier if needed.
  Result<std::shared_ptr<const CartridgeData>> acquire(const std::string& cartridge_id);
  // NotFound for an unknown id; FailedPrecondition without a matching acquire.
  Status release(const std::string& cartridge_id);
  // The data for one load into KV blocks: the host copy (referenced) when the
  // tier can keep it, else a transient copy read from disk for this use only.
  Result<HostLease> lease_for_load(const std::string& cartridge_id);

  // Brings the cartridge into the host tier and protects it from eviction.
  Status pin(const std::string& cartridge_id);
  // FailedPrecondition when not pinned.
  Status unpin(const std::string& cartridge_id);
  // Brings it in without a reference. Evicts only idle entries, like every
  // load; on failure nothing changes (callers may ignore it).
  Status prefetch(const std::string& cartridge_id);
  // Drops the host copy. FailedPrecondition when not resident, pinned,
  // referenced or loading.
  Status evict(const std::string& cartridge_id);

  bool is_resident(const std::string& cartridge_id) const;
  int64_t ref_count(const std::string& cartridge_id) const;
  bool is_pinned(const std::string& cartridge_id) const;
  // Resident ids, least recently used first.
  std::vector<std::string> lru_order() const;
  HostCounters counters() const;
  const ResidencyConfig& config() const { return config_; }

 private:
  enum class SlotState { kAbsent, kLoading, kReady };
  struct Entry {
    std::string id;
    std::string path;
    std::optional<CartridgeManifest> manifest;
    std::optional<uint64_t> bytes;  // from the manifest or the first load
    bool removed = false;
    SlotState state = SlotState::kAbsent;
    int64_t refs = 0;
    bool pinned = false;
    std::list<std::string>::iterator lru;       // valid when ready
    std::shared_ptr<const CartridgeData> data;  // ready
    bool evictable() const { return state == SlotState::kReady && refs == 0 && !pinned; }
  };
  using EntryPtr = std::shared_ptr<Entry>;
  using Lock = std::unique_lock<std::mutex>;

  Result<EntryPtr> find_locked(const std::string& id) const;
  // Makes the entry resident (waiting for a load in flight) and takes a
  // reference when `add_ref`. With `allow_transient`, data that cannot be
  // placed is still returned (placed = false).
  Result<std::shared_ptr<const CartridgeData>> ensure(Lock& lk, const EntryPtr& e, bool count,
                                                      bool add_ref, bool allow_transient,
                                                      bool* placed = nullptr);
  Result<CartridgeData> load_from_disk(const Entry& e) const;  // runs unlocked
  Status make_room(uint64_t bytes, const std::string& for_id);
  Status never_fits(const Entry& e, uint64_t bytes) const;
  void evict_entry(Entry& e);
  void touch(Entry& e);

  const ResidencyConfig config_;
  const CartridgeLoader loader_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // a slot left the kLoading state
  std::map<std::string, EntryPtr> entries_;
  std::list<std::string> lru_;  // least recently used first
  TierCounters counters_;       // entries/pinned/referenced filled on read
  uint64_t disk_loads_ = 0;
  uint64_t load_failures_ = 0;
};

}  // namespace cartserve
