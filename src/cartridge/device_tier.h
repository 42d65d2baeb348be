// The device tier of cartridge residency: a resident cartridge is ceil(T / B)
// blocks of the engine's KV block pool, in block order, holding positions
// [0, T). Every request using the cartridge puts those blocks first in its
// block table; nothing is copied per request.
//
// NOTE: one LRU for all device KV. While a cartridge is held (a request uses
// it, it is pinned, a prefetch or a load is in flight) the tier holds one
// pool reference per block. When the last holder lets go, the references are
// dropped and the blocks stay in the pool as cached blocks, keyed by
// block_key(c, B, i): idle cartridges then sit in the pool's
// LRU beside cached prompt prefixes, and the pool reclaims either when it
// needs blocks. The next acquire finds the blocks still cached (a hit), or
// loads only the missing ones.
//
// The byte budget caps cartridge KV in the pool (held or cached): a load that
// would pass it first drops idle cartridges, least recently used first; if
// that is not enough: OutOfRange when the cartridge alone exceeds the budget
// ("will never fit"), FailedPrecondition when pinned cartridges fill it (only
// an unpin helps), ResourceExhausted otherwise ("cannot fit now": holders go
// away by themselves), also when the pool has no free blocks.
//
// Loads: an acquire that misses allocates the missing blocks and queues a
// LoadJob; the connector's worker side fills them from the host tier through
// the backend and reports load_done(). Until then the cartridge is loading
// and its users wait. A failed load releases the blocks and is reported to
// every holder; once they have all let go, a later acquire tries again.
//
// Threads: the pool belongs to the engine thread, so every call that changes
// state runs there; queries (is_resident, counters, ...) may come from any
// thread.
//
// Invariant: bytes_promoted - bytes_evicted == bytes_resident <= budget_bytes.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cartridge/residency.h"
#include "core/status.h"
#include "kv/block_pool.h"

namespace cartserve {

// What the tier needs to know about a cartridge.
struct DeviceCartridge {
  std::string cartridge_id;
  std::string content_hash;  // identifies its KV (catalog content hash)
  int32_t num_tokens = 0;
};

struct DeviceTierConfig {
  uint64_t budget_bytes = 0;
  uint64_t bytes_per_block = 0;  // KvSpec::bytes_per_block() of the backend
  int32_t block_size = 16;
};

class DeviceKvTier {
 public:
  enum class State { kReady, kLoading };

  // Blocks to fill for a cartridge: block_ids[i] receives the positions of
  // the cartridge's block block_index[i].
  struct LoadJob {
    std::string cartridge_id;
    int32_t num_tokens = 0;
    std::vector<int32_t> block_ids;
    std::vector<int32_t> block_index;
  };

  // The pool hash of block `i` of `c`: cartridge_block_hash of its id and
  // content hash (two ids registered from one file keep blocks of their own).
  static BlockHash block_key(const DeviceCartridge& c, int32_t block_size, int32_t i);

  DeviceKvTier(BlockPool& pool, DeviceTierConfig config);
  ~DeviceKvTier();  // drops every pool reference it holds
  DeviceKvTier(const DeviceKvTier&) = delete;
  DeviceKvTier& operator=(const DeviceKvTier&) = delete;

  // One reference for a user. kReady: blocks() holds the KV; kLoading: a
  // load is queued or running. Errors as in the NOTE above; a failed load of
  // the cartridge is returned while earlier holders still hold it.
  Result<State> acquire(const DeviceCartridge& c);
  // The state for a holder: kReady, kLoading, or the error of a failed load.
  Result<State> state(const std::string& cartridge_id) const;
  // FailedPrecondition without a matching acquire.
  Status release(const std::string& cartridge_id);
  // [ceil(T / B)] block ids; valid while held and ready.
  std::vector<int32_t> blocks(const std::string& cartridge_id) const;

  // Held by the tier itself until unpinned (loads when needed).
  Status pin(const DeviceCartridge& c);
  Status unpin(const std::string& cartridge_id);  // FailedPrecondition when not pinned
  // Loads without a user: held until the load finishes, then idle.
  Status prefetch(const DeviceCartridge& c);
  // Drops an idle cartridge's cached blocks. FailedPrecondition when held or
  // not resident.
  Status evict(const std::string& cartridge_id);
  // Forgets the cartridge (evicts it first). FailedPrecondition while held.
  Status remove(const std::string& cartridge_id);

  // Worker side.
  std::vector<LoadJob> take_load_jobs();
  void load_done(const std::string& cartridge_id, const Status& status);

  bool is_resident(const std::string& cartridge_id) const;  // every block there, not loading
  bool is_loading(const std::string& cartridge_id) const;
  int64_t ref_count(const std::string& cartridge_id) const;
  bool is_pinned(const std::string& cartridge_id) const;
  TierCounters counters() const;
  const DeviceTierConfig& config() const { return config_; }
  // Every invariant of the NOTE, checked against the pool (tests, debugging).
  Status check_invariants() const;

 private:
  struct Entry {
    DeviceCartridge c;
    std::vector<BlockHash> hashes;  // [n]
    std::vector<int32_t> blocks;    // [n]: the block holding block i, or -1 when not resident
    int32_t resident = 0;           // blocks present (held or cached)
    int64_t refs = 0;               // users (requests)
    int64_t holds = 0;              // prefetches in flight
    bool pinned = false;
    bool loading = false;
    bool held = false;             // the tier holds a pool reference on every block
    std::optional<Status> failed;  // the last load failed; cleared when nobody holds it
    uint64_t last_use = 0;
    int32_t num_blocks() const { return static_cast<int32_t>(hashes.size()); }
    bool wanted() const { return refs > 0 || holds > 0 || pinned || loading; }
  };
  using Lock = std::unique_lock<std::recursive_mutex>;

  Entry& entry_for(const DeviceCartridge& c);
  const Entry* find(const std::string& id) const;
  Entry* find(const std::string& id);
  // Makes `e` held (and resident, or loading). The caller then counts its
  // user. Errors leave nothing changed.
  Result<State> hold(Entry& e, bool count);
  Status make_room(const Entry& e, uint64_t bytes);
  void let_go(Entry& e);  // drops the tier's block references when nobody wants it
  void drop_idle(Entry& e);
  void on_dropped(int32_t block, const BlockHash& hash);
  uint64_t bytes(int32_t blocks) const {
    return config_.bytes_per_block * static_cast<uint64_t>(blocks);
  }

  BlockPool& pool_;
  const DeviceTierConfig config_;
  mutable std::recursive_mutex mu_;  // the pool's drop listener re-enters
  std::map<std::string, Entry> entries_;
  std::unordered_map<BlockHash, std::pair<std::string, int32_t>, BlockHashHasher> by_hash_;
  std::vector<LoadJob> jobs_;
  TierCounters counters_;
  uint64_t clock_ = 0;
};

}  // namespace cartserve
