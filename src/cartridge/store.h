// CartridgeStore: the loaded cartridges of a process, in host memory, by id.
// load (through a loader callback) / add, get, acquire / release (request
// references), pin / unpin, evict, list. Thread-safe (one mutex; the loader
// runs outside it, so a slow disk read blocks nobody else).
//
// NOTE: data is handed out as shared_ptr<const CartridgeData>: a forced
// eviction removes the entry but never frees memory someone still holds.
// Invariant: an entry with ref_count > 0 or pinned is only removed by a
// forced eviction.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "cartridge/cartridge.h"
#include "cartridge/loader.h"
#include "core/status.h"

namespace cartserve {

struct StoreEntryInfo {
  std::string cartridge_id;
  std::string path;  // "" when added from memory
  uint64_t nbytes = 0;
  int64_t ref_count = 0;
  bool pinned = false;
  DType dtype = DType::kBF16;
  int32_t num_layers = 0;
  int32_t num_tokens = 0;
};

class CartridgeStore {
 public:
  explicit CartridgeStore(CartridgeLoader loader);
  CartridgeStore(const CartridgeStore&) = delete;
  CartridgeStore& operator=(const CartridgeStore&) = delete;

  // Loads `path` under `cartridge_id`. AlreadyExists if the id is loaded or
  // being loaded; the loader's error (with context) if loading fails; Corrupt
  // if the data fails CartridgeData::validate().
  Status load(const std::string& cartridge_id, const std::string& path);
  // Adds data that is already in memory (same rules as load).
  Status add(const std::string& cartridge_id, CartridgeData data, const std::string& path = "");

  bool contains(const std::string& cartridge_id) const;
  // NotFound if absent. Does not take a reference.
  Result<std::shared_ptr<const CartridgeData>> get(const std::string& cartridge_id) const;
  // Takes a reference (evict refuses while any is held) and returns the data.
  Result<std::shared_ptr<const CartridgeData>> acquire(const std::string& cartridge_id);
  // NotFound for an unknown id, FailedPrecondition when no reference is held.
  Status release(const std::string& cartridge_id);
  // Idempotent. NotFound for an unknown id.
  Status pin(const std::string& cartridge_id);
  // FailedPrecondition when not pinned.
  Status unpin(const std::string& cartridge_id);
  // Removes the entry. Without `force`, FailedPrecondition while pinned or
  // referenced. NotFound for an unknown id.
  Status evict(const std::string& cartridge_id, bool force = false);
  // Evicts every entry that is neither pinned nor referenced; returns how many.
  size_t evict_unused();

  Result<StoreEntryInfo> info(const std::string& cartridge_id) const;
  // Sorted by id.
  std::vector<StoreEntryInfo> list() const;
  size_t size() const;
  // Bytes of keys and values of every loaded cartridge.
  uint64_t bytes() const;

 private:
  struct Entry {
    std::shared_ptr<const CartridgeData> data;
    std::string path;
    int64_t refs = 0;
    bool pinned = false;
  };
  Status insert_locked(const std::string& id, CartridgeData data, const std::string& path);
  StoreEntryInfo info_locked(const std::string& id, const Entry& e) const;

  CartridgeLoader loader_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;  // guarded by mu_
  std::set<std::string> loading_;                   // ids whose loader runs now; guarded by mu_
  uint64_t bytes_ = 0;                              // sum of entries' nbytes; guarded by mu_
};

}  // namespace cartserve
