#include "cartridge/device_tier.h"

#include <algorithm>

#include "core/logging.h"

namespace cartserve {

BlockHash DeviceKvTier::block_key(const DeviceCartridge& c, int32_t block_size, int32_t i) {
  return cartridge_block_hash(c.cartridge_id + '\0' + c.content_hash, block_size, i);
}

DeviceKvTier::DeviceKvTier(BlockPool& pool, DeviceTierConfig config)
    : pool_(pool), config_(config) {
  counters_.budget_bytes = config_.budget_bytes;
  pool_.set_drop_listener(
      [this](int32_t block, const BlockHash& hash) { on_dropped(block, hash); });
}

DeviceKvTier::~DeviceKvTier() {
  Lock lk(mu_);
  pool_.set_drop_listener(nullptr);
  for (auto& [id, e] : entries_) {
    if (!e.held) continue;
    for (int32_t b : e.blocks)
      pool_.release(b);
  }
}

const DeviceKvTier::Entry* DeviceKvTier::find(const std::string& id) const {
  const auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : &it->second;
}

DeviceKvTier::Entry* DeviceKvTier::find(const std::string& id) {
  const auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : &it->second;
}

DeviceKvTier::Entry& DeviceKvTier::entry_for(const DeviceCartridge& c) {
  Entry* e = find(c.cartridge_id);
  if (e && (e->c.content_hash != c.content_hash || e->c.num_tokens != c.num_tokens) &&
      !e->wanted()) {
    // Re-registered with other content: the old blocks mean nothing now.
    (void)remove(c.cartridge_id);
    e = nullptr;
  }
  if (e) return *e;
  Entry& n = entries_[c.cartridge_id];
  n.c = c;
  const int32_t B = config_.block_size;
  const int32_t blocks = (c.num_tokens + B - 1) / B;
  n.blocks.assign(static_cast<size_t>(blocks), -1);
  for (int32_t i = 0; i < blocks; ++i) {
    n.hashes.push_back(block_key(c, B, i));
    by_hash_[n.hashes.back()] = {c.cartridge_id, i};
  }
  return n;
}

Status DeviceKvTier::make_room(const Entry& e, uint64_t need) {
  const uint64_t cap = config_.budget_bytes;
  if (counters_.bytes_resident + need <= cap) return {};
  // Idle cartridges, least recently used first.
  std::vector<Entry*> idle;
  for (auto& [id, v] : entries_) {
    if (&v != &e && !v.wanted() && v.resident > 0) idle.push_back(&v);
  }
  std::sort(idle.begin(), idle.end(),
            [](const Entry* a, const Entry* b) { return a->last_use < b->last_use; });
  for (Entry* v : idle) {
    if (counters_.bytes_resident + need <= cap) break;
    drop_idle(*v);
  }
  if (counters_.bytes_resident + need <= cap) return {};
  uint64_t pinned = 0;
  size_t n_pinned = 0, n_busy = 0;
  for (const auto& [id, v] : entries_) {
    if (&v == &e) continue;
    if (v.pinned) {
      pinned += bytes(v.resident);
      ++n_pinned;
    } else if (v.wanted()) {
      ++n_busy;
    }
  }
  const uint64_t whole = bytes(e.num_blocks());
  // Pins only go away by an unpin: waiting for them would wait forever.
  if (pinned + whole > cap) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "cartridge '{}' cannot fit in the device tier: it needs {} bytes and {} of "
                      "the {} byte budget are held by {} pinned cartridges (unpin one or raise "
                      "gpu_capacity_bytes)",
                      e.c.cartridge_id, whole, pinned, cap, n_pinned);
  }
  return make_error(ErrorCode::kResourceExhausted,
                    "cartridge '{}' cannot fit in the device tier now: it needs {} more bytes, {} "
                    "of {} are held by cartridges in use ({} pinned, {} in use)",
                    e.c.cartridge_id, need, counters_.bytes_resident, cap, n_pinned, n_busy);
}

Result<DeviceKvTier::State> DeviceKvTier::hold(Entry& e, bool count) {
  if (e.failed) return *e.failed;
  e.last_use = ++clock_;
  if (e.held) {
    if (count && !e.loading) ++counters_.hits;
    return e.loading ? State::kLoading : State::kReady;
  }
  const int32_t n = e.num_blocks();
  if (bytes(n) > config_.budget_bytes) {
    return make_error(ErrorCode::kOutOfRange,
                      "cartridge '{}' will never fit in the device tier: it needs {} bytes, the "
                      "budget is {} (gpu_capacity_bytes)",
                      e.c.cartridge_id, bytes(n), config_.budget_bytes);
  }
  std::vector<int32_t> missing;  // block indices to load
  for (int32_t i = 0; i < n; ++i) {
    if (e.blocks[static_cast<size_t>(i)] < 0) missing.push_back(i);
  }
  const auto n_missing = static_cast<int32_t>(missing.size());
  // Enough blocks in the pool (its cached ones, which we are about to take,
  // count as free now)? Checked before any idle cartridge is dropped.
  if (pool_.num_free_blocks() - (n - n_missing) < n_missing) {
    return make_error(ErrorCode::kResourceExhausted,
                      "no {} free KV blocks for cartridge '{}' now ({} free)", n_missing,
                      e.c.cartridge_id, pool_.num_free_blocks() - (n - n_missing));
  }
  CS_RETURN_IF_ERROR(make_room(e, bytes(n_missing)));
  // Cached blocks first (off the LRU, so allocating cannot evict them).
  for (int32_t b : e.blocks) {
    if (b >= 0) pool_.ref(b);
  }
  auto fresh = pool_.allocate(n_missing);
  if (!fresh) {  // cannot happen after the check above; kept as a guard
    for (auto it = e.blocks.rbegin(); it != e.blocks.rend(); ++it) {
      if (*it >= 0) pool_.release(*it);
    }
    return make_error(ErrorCode::kInternal, "the pool refused {} blocks it said it had", n_missing);
  }
  e.held = true;
  if (n_missing == 0) {
    if (count) ++counters_.hits;
    return State::kReady;
  }
  if (count) ++counters_.misses;
  LoadJob job;
  job.cartridge_id = e.c.cartridge_id;
  job.num_tokens = e.c.num_tokens;
  for (int32_t k = 0; k < n_missing; ++k) {
    const int32_t i = missing[static_cast<size_t>(k)];
    e.blocks[static_cast<size_t>(i)] = (*fresh)[static_cast<size_t>(k)];
    job.block_ids.push_back(e.blocks[static_cast<size_t>(i)]);
    job.block_index.push_back(i);
  }
  // Counted resident from now on (the budget reserves them during the load).
  e.resident += n_missing;
  counters_.bytes_promoted += bytes(n_missing);
  counters_.bytes_resident += bytes(n_missing);
  e.loading = true;
  jobs_.push_back(std::move(job));
  return State::kLoading;
}

void DeviceKvTier::let_go(Entry& e) {
  if (e.wanted()) return;
  e.failed.reset();
  if (!e.held) return;
  e.held = false;
  e.last_use = ++clock_;
  // Last to first, as a sequence's blocks: the tail is reclaimed first. The
  // hashes are registered again in case a prefix-cache reset dropped them
  // while the cartridge was held (a no-op otherwise).
  for (size_t i = e.blocks.size(); i-- > 0;) {
    pool_.register_hash(e.blocks[i], e.hashes[i]);
    pool_.release(e.blocks[i]);
  }
}

void DeviceKvTier::drop_idle(Entry& e) {
  const std::vector<int32_t> blocks = e.blocks;  // on_dropped edits e.blocks
  for (int32_t b : blocks) {
    if (b >= 0) pool_.drop_cached(b);
  }
}

void DeviceKvTier::on_dropped(int32_t block, const BlockHash& hash) {
  Lock lk(mu_);
  const auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return;
  Entry* e = find(it->second.first);
  const auto i = static_cast<size_t>(it->second.second);
  if (!e || i >= e->blocks.size() || e->blocks[i] != block) return;
  // Held blocks keep their KV (only a prefix-cache reset drops a hash in use);
  // let_go registers the hash again.
  if (e->held) return;
  if (e->resident == e->num_blocks() && !e->loading) ++counters_.evictions;
  e->blocks[i] = -1;
  --e->resident;
  counters_.bytes_evicted += bytes(1);
  counters_.bytes_resident -= bytes(1);
}

Result<DeviceKvTier::State> DeviceKvTier::acquire(const DeviceCartridge& c) {
  Lock lk(mu_);
  Entry& e = entry_for(c);
  CS_ASSIGN_OR_RETURN(State s, hold(e, /*count=*/true));
  ++e.refs;
  return s;
}

Result<DeviceKvTier::State> DeviceKvTier::state(const std::string& id) const {
  Lock lk(mu_);
  const Entry* e = find(id);
  if (!e) return make_error(ErrorCode::kNotFound, "cartridge '{}' is not in the device tier", id);
  if (e->failed) return *e->failed;
  if (!e->held) {
    return make_error(ErrorCode::kFailedPrecondition, "cartridge '{}' is not held", id);
  }
  return e->loading ? State::kLoading : State::kReady;
}

Status DeviceKvTier::release(const std::string& id) {
  Lock lk(mu_);
  Entry* e = find(id);
  if (!e || e->refs == 0) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "release of cartridge '{}' in the device tier without a matching acquire",
                      id);
  }
  --e->refs;
  let_go(*e);
  return {};
}

std::vector<int32_t> DeviceKvTier::blocks(const std::string& id) const {
  Lock lk(mu_);
  const Entry* e = find(id);
  if (!e || !e->held || e->loading) return {};
  return e->blocks;
}

Status DeviceKvTier::pin(const DeviceCartridge& c) {
  Lock lk(mu_);
  Entry& e = entry_for(c);
  if (e.pinned) return e.failed ? *e.failed : Status();
  CS_RETURN_IF_ERROR(hold(e, /*count=*/false).status());
  e.pinned = true;
  return {};
}

Status DeviceKvTier::unpin(const std::string& id) {
  Lock lk(mu_);
  Entry* e = find(id);
  if (!e || !e->pinned) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "cartridge '{}' is not pinned in the device tier", id);
  }
  e->pinned = false;
  let_go(*e);
  return {};
}

Status DeviceKvTier::prefetch(const DeviceCartridge& c) {
  Lock lk(mu_);
  Entry& e = entry_for(c);
  CS_ASSIGN_OR_RETURN(State s, hold(e, /*count=*/false));
  if (s == State::kLoading) {
    ++e.holds;  // until the load finishes
  } else {
    let_go(e);  // resident already: only its recency changed
  }
  return {};
}

Status DeviceKvTier::evict(const std::string& id) {
  Lock lk(mu_);
  Entry* e = find(id);
  const char* why = !e || e->resident == 0 ? "not resident"
                    : e->wanted()          ? "in use, pinned or loading"
                                           : nullptr;
  if (why) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "cannot evict cartridge '{}' from the device tier: {}", id, why);
  }
  drop_idle(*e);
  return {};
}

Status DeviceKvTier::remove(const std::string& id) {
  Lock lk(mu_);
  Entry* e = find(id);
  if (!e) return {};
  if (e->wanted()) {
    return make_error(ErrorCode::kFailedPrecondition,
                      "cannot remove cartridge '{}': in use, pinned or loading in the device tier",
                      id);
  }
  drop_idle(*e);
  for (const BlockHash& h : e->hashes)
    by_hash_.erase(h);
  entries_.erase(id);
  return {};
}

std::vector<DeviceKvTier::LoadJob> DeviceKvTier::take_load_jobs() {
  Lock lk(mu_);
  return std::exchange(jobs_, {});
}

void DeviceKvTier::load_done(const std::string& id, const Status& status) {
  Lock lk(mu_);
  Entry* e = find(id);
  if (!e || !e->loading) {
    LOG_WARN("device tier: load of cartridge '{}' finished but none was running", id);
    return;
  }
  e->loading = false;
  e->holds = 0;
  if (status.ok()) {
    ++counters_.promotions;
    for (size_t i = 0; i < e->blocks.size(); ++i)
      pool_.register_hash(e->blocks[i], e->hashes[i]);
  } else {
    LOG_WARN("loading cartridge '{}' into KV blocks failed: {}", id, status.to_string());
    e->failed = status;
    // Blocks without a hash were being written: they go back free. Last to first.
    for (size_t i = e->blocks.size(); i-- > 0;) {
      const int32_t b = e->blocks[i];
      const bool cached = pool_.hash_of(b).has_value();
      pool_.release(b);
      if (!cached) {
        e->blocks[i] = -1;
        --e->resident;
        counters_.bytes_evicted += bytes(1);
        counters_.bytes_resident -= bytes(1);
      }
    }
    e->held = false;
  }
  let_go(*e);
}

bool DeviceKvTier::is_resident(const std::string& id) const {
  Lock lk(mu_);
  const Entry* e = find(id);
  return e && !e->loading && !e->failed && e->num_blocks() > 0 && e->resident == e->num_blocks();
}

bool DeviceKvTier::is_loading(const std::string& id) const {
  Lock lk(mu_);
  const Entry* e = find(id);
  return e && e->loading;
}

int64_t DeviceKvTier::ref_count(const std::string& id) const {
  Lock lk(mu_);
  const Entry* e = find(id);
  return e ? e->refs : 0;
}

bool DeviceKvTier::is_pinned(const std::string& id) const {
  Lock lk(mu_);
  const Entry* e = find(id);
  return e && e->pinned;
}

TierCounters DeviceKvTier::counters() const {
  Lock lk(mu_);
  TierCounters c = counters_;
  for (const auto& [id, e] : entries_) {
    if (!e.loading && e.num_blocks() > 0 && e.resident == e.num_blocks()) ++c.entries;
    if (e.pinned) ++c.pinned;
    if (e.refs > 0) ++c.referenced;
  }
  return c;
}

Status DeviceKvTier::check_invariants() const {
  Lock lk(mu_);
  uint64_t resident = 0;
  for (const auto& [id, e] : entries_) {
    int32_t present = 0;
    for (size_t i = 0; i < e.blocks.size(); ++i) {
      const int32_t b = e.blocks[i];
      if (b < 0) continue;
      ++present;
      if (e.held && pool_.ref_count(b) < 1) {
        return make_error(ErrorCode::kInternal, "'{}' holds block {} without a reference", id, b);
      }
      if (!e.held && pool_.lookup(e.hashes[i]) != b) {
        return make_error(ErrorCode::kInternal, "'{}' block {} is not cached under its hash", id,
                          b);
      }
    }
    if (present != e.resident) {
      return make_error(ErrorCode::kInternal, "'{}' counts {} resident blocks, has {}", id,
                        e.resident, present);
    }
    resident += bytes(present);
  }
  if (resident != counters_.bytes_resident ||
      counters_.bytes_promoted - counters_.bytes_evicted != counters_.bytes_resident ||
      counters_.bytes_resident > config_.budget_bytes) {
    return make_error(ErrorCode::kInternal,
                      "device tier bytes: resident {} (entries say {}), promoted {} - evicted {}, "
                      "budget {}",
                      counters_.bytes_resident, resident, counters_.bytes_promoted,
                      counters_.bytes_evicted, config_.budget_bytes);
  }
  return {};
}

}  // namespace cartserve
