#include "engine/scheduler.h"

#include <algorithm>

#include "core/logging.h"
#include "engine/stop_checker.h"

namespace cartserve {

Status SchedulerConfig::validate() const {
  const auto positive = [](const char* name, int32_t v) -> Status {
    if (v >= 1) return Status::ok_status();
    return make_error(ErrorCode::kInvalidArgument, "{} must be >= 1, got {}", name, v);
  };
  CS_RETURN_IF_ERROR(positive("block_size", block_size));
  CS_RETURN_IF_ERROR(positive("max_num_seqs", max_num_seqs));
  CS_RETURN_IF_ERROR(positive("max_num_batched_tokens", max_num_batched_tokens));
  CS_RETURN_IF_ERROR(positive("max_model_len", max_model_len));
  // Else some running decodes could starve behind older ones every step (vLLM has the same rule).
  if (max_num_batched_tokens < max_num_seqs) {
    return make_error(ErrorCode::kInvalidArgument,
                      "max_num_batched_tokens ({}) must be >= max_num_seqs ({})",
                      max_num_batched_tokens, max_num_seqs);
  }
  return Status::ok_status();
}

Result<std::unique_ptr<Scheduler>> Scheduler::create(const SchedulerConfig& config, BlockPool& pool,
                                                     KvConnector* connector) {
  CS_RETURN_IF_ERROR(config.validate());
  return std::unique_ptr<Scheduler>(new Scheduler(config, pool, connector));
}

Scheduler::Scheduler(const SchedulerConfig& config, BlockPool& pool, KvConnector* connector)
    : config_(config), pool_(pool), connector_(connector ? connector : &null_connector_) {}

Status Scheduler::add_request(std::shared_ptr<Request> req) {
  if (!req) return make_error(ErrorCode::kInvalidArgument, "null request");
  const std::string& id = req->id;
  if (id.empty()) return make_error(ErrorCode::kInvalidArgument, "request id must not be empty");
  if (requests_.count(id)) {
    return make_error(ErrorCode::kAlreadyExists, "request '{}' is already queued or running", id);
  }
  if (req->prompt_token_ids.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "request '{}': the prompt is empty", id);
  }
  if (req->num_virtual_tokens < 0) {
    return make_error(ErrorCode::kInvalidArgument, "request '{}': negative num_virtual_tokens", id);
  }
  if (Status s = req->sampling.validate(); !s.ok()) return s.with_context("request '" + id + "'");
  const int64_t max_positions = int64_t{req->num_positions()} + req->sampling.max_tokens;
  if (max_positions > config_.max_model_len) {
    return make_error(ErrorCode::kInvalidArgument,
                      "request '{}': the maximum context length is {} tokens, but {} were "
                      "requested ({} in the prompt{}, {} for the completion); reduce the prompt "
                      "or max_tokens",
                      id, config_.max_model_len, max_positions, req->num_tokens(),
                      req->num_virtual_tokens
                          ? fmt::format(" + {} from the cartridge", req->num_virtual_tokens)
                          : std::string(),
                      req->sampling.max_tokens);
  }
  // Full blocks of virtual positions are shared, not the request's own.
  const int64_t own_blocks = (max_positions + config_.block_size - 1) / config_.block_size -
                             req->num_virtual_tokens / config_.block_size;
  if (own_blocks > pool_.num_usable_blocks()) {
    return make_error(ErrorCode::kResourceExhausted,
                      "request '{}' needs up to {} KV blocks ({} positions) but the KV cache has "
                      "only {}; reduce the prompt or max_tokens",
                      id, own_blocks, max_positions, pool_.num_usable_blocks());
  }
  req->status = RequestStatus::kWaiting;
  req->finish_reason = FinishReason::kNone;
  req->num_computed_tokens = 0;
  req->num_external_tokens = 0;
  req->block_table.clear();
  req->block_hashes.clear();
  req->block_hashes_external = -1;
  req->num_registered_blocks = 0;
  waiting_.push_back(req);
  requests_.emplace(id, std::move(req));
  return Status::ok_status();
}

void Scheduler::abort_request(const std::string& id) {
  if (requests_.count(id)) pending_aborts_.insert(id);
}

void Scheduler::finish_request(const std::string& id, FinishReason reason, std::string message) {
  const auto it = requests_.find(id);
  if (it == requests_.end()) return;
  finish(*it->second, reason, std::move(message));
}

std::shared_ptr<Request> Scheduler::get_request(const std::string& id) const {
  const auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second;
}

void Scheduler::release_blocks(Request& req) {
  // Last to first: the tail of a sequence is evicted before its head.
  for (auto it = req.block_table.rbegin(); it != req.block_table.rend(); ++it)
    pool_.release(*it);
  req.block_table.clear();
  req.num_registered_blocks = 0;
  req.num_reported_blocks = 0;
}

void Scheduler::finish(Request& req, FinishReason reason, std::string message) {
  release_blocks(req);
  // Also for waiting requests: get_blocks may have run for one that then
  // waited for free blocks.
  connector_->on_request_finished(req);
  req.status = RequestStatus::kFinished;
  req.finish_reason = reason;
  req.finish_message = std::move(message);
  const std::string id = req.id;  // `req` may die with the erase below
  std::erase_if(running_, [&](const auto& r) { return r->id == id; });
  std::erase_if(waiting_, [&](const auto& r) { return r->id == id; });
  std::erase_if(waiting_for_kv_, [&](const auto& r) { return r->id == id; });
  pending_aborts_.erase(id);
  finished_since_schedule_.push_back(id);
  requests_.erase(id);
}

void Scheduler::preempt(Request& req, SchedulerOutput& out) {
  release_blocks(req);
  req.num_computed_tokens = 0;
  req.num_external_tokens = 0;
  req.status = RequestStatus::kPreempted;
  ++req.num_preemptions;
  ++stats_.num_preemptions;
  connector_->on_request_preempted(req);
  const auto it = std::find_if(running_.begin(), running_.end(),
                               [&](const auto& r) { return r.get() == &req; });
  if (it != running_.end()) {
    waiting_.push_front(*it);
    running_.erase(it);
  }
  out.preempted_ids.push_back(req.id);
}

void Scheduler::update_block_hashes(Request& req) {
  if (!pool_.caching_enabled()) return;
  const int32_t B = config_.block_size;
  if (req.block_hashes_external != req.num_external_tokens) {
    req.block_hashes.clear();
    req.block_hashes_external = req.num_external_tokens;
  }
  const int32_t offset = req.num_virtual_tokens % B;
  const int32_t n = req.num_tokens();
  const int32_t full = n < B - offset ? 0 : 1 + (n - (B - offset)) / B;
  if (static_cast<int32_t>(req.block_hashes.size()) >= full) return;
  const BlockHash root = prefix_hash_root(req.prefix_salt, req.num_external_tokens);
  append_block_hashes(root, req.all_token_ids(), offset, B, req.block_hashes);
}

void Scheduler::register_full_blocks(Request& req) {
  if (!pool_.caching_enabled()) return;
  const int32_t B = config_.block_size;
  const int32_t full =
      std::min<int32_t>(req.num_computed_tokens / B, static_cast<int32_t>(req.block_table.size()));
  if (req.num_registered_blocks >= full) return;
  update_block_hashes(req);
  const int32_t first_hashed = req.num_virtual_tokens / B;
  for (int32_t k = req.num_registered_blocks; k < full; ++k) {
    const int32_t j = k - first_hashed;
    if (j < 0 || j >= static_cast<int32_t>(req.block_hashes.size())) continue;
    pool_.register_hash(req.block_table[static_cast<size_t>(k)],
                        req.block_hashes[static_cast<size_t>(j)]);
  }
  req.num_registered_blocks = full;
}

ScheduledRequest Scheduler::make_entry(Request& req, int32_t num_tokens) const {
  ScheduledRequest e;
  e.request_id = req.id;
  e.start_position = req.num_computed_tokens;
  e.num_tokens = num_tokens;
  e.token_ids.reserve(static_cast<size_t>(num_tokens));
  for (int32_t p = e.start_position; p < e.start_position + num_tokens; ++p) {
    e.token_ids.push_back(req.token_at(p));
  }
  e.needs_logits = e.start_position + num_tokens == req.num_positions();
  e.new_row = req.num_reported_blocks == 0;
  e.shared_blocks = req.num_shared_blocks;
  e.new_block_ids.assign(req.block_table.begin() + req.num_reported_blocks, req.block_table.end());
  req.num_reported_blocks = static_cast<int32_t>(req.block_table.size());
  return e;
}

Scheduler::Admission Scheduler::try_admit(Request& req, int32_t& budget, SchedulerOutput& out,
                                          Status& error) {
  const int32_t B = config_.block_size;
  const int32_t positions = req.num_positions();

  // 1. Leading positions provided by the connector (side-effect free count).
  Result<int32_t> matched = connector_->get_num_matched_tokens(req);
  if (!matched.ok()) {
    error = matched.status();
    return Admission::kRejected;
  }
  int32_t e = std::min(*matched, positions - 1);
  if (e < req.num_virtual_tokens) {
    error = make_error(ErrorCode::kInvalidArgument,
                       "the request needs {} virtual positions but the KV connector provides {}",
                       req.num_virtual_tokens, e);
    return Admission::kRejected;
  }
  e = std::max(e, 0);
  const int32_t full_ext = e / B;
  // Never fits: more own blocks than the pool has, even with everything free.
  const int32_t max_positions = positions - req.num_output_tokens() + req.sampling.max_tokens;
  const int32_t max_own = blocks_for(max_positions) - full_ext;
  if (max_own > pool_.num_usable_blocks()) {
    error = make_error(ErrorCode::kResourceExhausted,
                       "needs up to {} KV blocks of its own but the KV cache has only {}", max_own,
                       pool_.num_usable_blocks());
    return Admission::kRejected;
  }
  std::vector<int32_t> ext_blocks;
  if (e > 0) {
    Result<std::vector<int32_t>> got = connector_->get_blocks(req, e);
    if (!got.ok()) {
      if (got.status().code() == ErrorCode::kResourceExhausted) return Admission::kWait;
      if (got.status().code() == ErrorCode::kUnavailable) return Admission::kLoading;
      error = got.status();
      return Admission::kRejected;
    }
    ext_blocks = std::move(*got);
    if (static_cast<int32_t>(ext_blocks.size()) != blocks_for(e)) {
      error = make_error(ErrorCode::kInternal,
                         "the KV connector gave {} blocks for {} positions (block size {})",
                         ext_blocks.size(), e, B);
      return Admission::kRejected;
    }
  }

  // 2. Prefix-cache hits after the external full blocks, never covering the
  // last position (it is computed for its logits).
  req.num_external_tokens = e;
  update_block_hashes(req);
  std::vector<int32_t> cached;
  if (pool_.caching_enabled() && req.sampling.prompt_logprobs < 0) {
    const int32_t first_hashed = req.num_virtual_tokens / B;
    for (int32_t k = full_ext;; ++k) {
      const int32_t j = k - first_hashed;
      if (j < 0 || j >= static_cast<int32_t>(req.block_hashes.size())) break;
      if ((k + 1) * B > positions - 1) break;
      const auto hit = pool_.lookup(req.block_hashes[static_cast<size_t>(j)]);
      if (!hit) break;
      cached.push_back(*hit);
    }
  }
  const int32_t have = full_ext + static_cast<int32_t>(cached.size());
  const int32_t computed = cached.empty() ? e : have * B;
  const int32_t n = std::min(positions - computed, budget);
  const int32_t num_new = blocks_for(computed + n) - have;
  int32_t reserved = 0;  // cached hits that are evictable now stop being free
  for (int32_t id : cached)
    reserved += pool_.ref_count(id) == 0 ? 1 : 0;
  if (num_new > pool_.num_free_blocks() - reserved) {
    req.num_external_tokens = 0;
    return Admission::kWait;
  }

  // 3. Commit: shared external blocks, cached blocks, fresh blocks.
  req.block_table.clear();
  for (int32_t k = 0; k < full_ext; ++k) {
    pool_.ref(ext_blocks[static_cast<size_t>(k)]);
    req.block_table.push_back(ext_blocks[static_cast<size_t>(k)]);
  }
  for (int32_t id : cached) {
    pool_.ref(id);
    req.block_table.push_back(id);
  }
  std::optional<std::vector<int32_t>> fresh = pool_.allocate(num_new);
  // Cannot fail: checked above, and refs of cached blocks only removed `reserved`.
  req.block_table.insert(req.block_table.end(), fresh->begin(), fresh->end());
  if (e % B != 0 && cached.empty()) {
    out.block_copies.push_back(BlockCopy{ext_blocks[static_cast<size_t>(full_ext)],
                                         req.block_table[static_cast<size_t>(full_ext)], e % B});
  }
  req.num_registered_blocks = have;
  req.num_shared_blocks = have;
  req.num_computed_tokens = computed;
  if (req.num_preemptions == 0) req.num_cached_tokens = computed - e;
  pool_.record_prefix_query(positions - e, computed - e);
  req.status = RequestStatus::kRunning;
  connector_->on_blocks_allocated(req);
  out.scheduled.push_back(make_entry(req, n));
  budget -= n;
  return Admission::kAdmitted;
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;

  // 1. Aborts.
  std::vector<std::string> to_abort(pending_aborts_.begin(), pending_aborts_.end());
  for (const auto& [id, r] : requests_) {
    if (r->is_cancelled() && !pending_aborts_.count(id)) to_abort.push_back(id);
  }
  std::sort(to_abort.begin(), to_abort.end());  // deterministic order
  for (const auto& id : to_abort)
    finish_request(id, FinishReason::kAbort);
  pending_aborts_.clear();

  int32_t budget = config_.max_num_batched_tokens;
  const int32_t B = config_.block_size;

  // 2-3. Running requests: decodes first, then partial prefills; each in
  // admission order.
  std::vector<std::shared_ptr<Request>> order;
  for (const auto& r : running_) {
    if (r->num_positions() - r->num_computed_tokens == 1) order.push_back(r);
  }
  for (const auto& r : running_) {
    if (r->num_positions() - r->num_computed_tokens > 1) order.push_back(r);
  }
  std::vector<std::pair<Request*, int32_t>> scheduled;  // request, tokens
  for (const auto& rp : order) {
    Request& r = *rp;
    if (r.status != RequestStatus::kRunning) continue;  // preempted in this step
    const int32_t remaining = r.num_positions() - r.num_computed_tokens;
    int32_t n = std::min(remaining, budget);
    if (n <= 0) continue;
    bool ok = false;
    for (;;) {
      const int32_t have = static_cast<int32_t>(r.block_table.size());
      const int32_t need = blocks_for(r.num_computed_tokens + n) - have;
      if (need <= pool_.num_free_blocks()) {
        if (need > 0) {
          auto fresh = pool_.allocate(need);
          r.block_table.insert(r.block_table.end(), fresh->begin(), fresh->end());
        }
        ok = true;
        break;
      }
      // A prefill chunk first shrinks to the free blocks.
      const int32_t fit = (have + pool_.num_free_blocks()) * B - r.num_computed_tokens;
      if (remaining > 1 && fit >= 1) {
        n = std::min(n, fit);
        continue;
      }
      // Preempt the newest running request (possibly `r` itself).
      Request& victim = *running_.back();
      const auto s = std::find_if(scheduled.begin(), scheduled.end(),
                                  [&](const auto& p) { return p.first == &victim; });
      if (s != scheduled.end()) {
        budget += s->second;
        scheduled.erase(s);
      }
      const bool self = &victim == &r;
      preempt(victim, out);
      if (self) break;
    }
    if (!ok) continue;
    scheduled.emplace_back(&r, n);
    budget -= n;
  }
  for (const auto& [r, n] : scheduled)
    out.scheduled.push_back(make_entry(*r, n));

  // 4. Admissions, only when nobody was preempted in this step.
  if (out.preempted_ids.empty()) admit_waiting(budget, out);

  for (const auto& e : out.scheduled)
    out.num_scheduled_tokens += e.num_tokens;
  out.finished_ids = std::move(finished_since_schedule_);
  finished_since_schedule_.clear();
  return out;
}

void Scheduler::reject(Request& req, const Status& error, SchedulerOutput& out) {
  ++stats_.num_rejected;
  // The client gets the reason alone (no internal request id); the log has both.
  const std::string message = "request '" + req.id + "' rejected: " + error.message();
  LOG_DEBUG("{}", message);
  out.rejected.push_back({req.id, Status(error.code(), error.message())});
  req.status = RequestStatus::kWaiting;  // holds no blocks
  finish(req, FinishReason::kError, message);
}

void Scheduler::admit_waiting(int32_t& budget, SchedulerOutput& out) {
  const auto seat = [&] {
    return budget > 0 && static_cast<int32_t>(running_.size()) < config_.max_num_seqs;
  };
  // Requests whose external KV was loading, in arrival order; those still
  // loading (or without room yet) stay aside.
  for (size_t i = 0; i < waiting_for_kv_.size() && seat();) {
    std::shared_ptr<Request> r = waiting_for_kv_[i];
    Status error;
    const Admission a = try_admit(*r, budget, out, error);
    if (a == Admission::kWait || a == Admission::kLoading) {
      ++i;
      continue;
    }
    waiting_for_kv_.erase(waiting_for_kv_.begin() + static_cast<ptrdiff_t>(i));
    if (a == Admission::kRejected) {
      reject(*r, error, out);
      continue;
    }
    running_.push_back(r);
  }
  while (!waiting_.empty() && seat()) {
    std::shared_ptr<Request> r = waiting_.front();
    Status error;
    const Admission a = try_admit(*r, budget, out, error);
    if (a == Admission::kWait) break;
    waiting_.pop_front();
    if (a == Admission::kLoading) {
      r->status = RequestStatus::kWaitingForKv;
      waiting_for_kv_.push_back(r);
      continue;
    }
    if (a == Admission::kRejected) {
      reject(*r, error, out);
      continue;
    }
    running_.push_back(r);
  }
}

Result<std::vector<RequestUpdate>> Scheduler::update_from_output(
    const SchedulerOutput& out, std::span<const int32_t> sampled_token_ids) {
  size_t want = 0;
  for (const auto& e : out.scheduled)
    want += e.needs_logits ? 1 : 0;
  if (want != sampled_token_ids.size()) {
    return make_error(ErrorCode::kInternal,
                      "update_from_output: {} sampled tokens for {} rows that needed logits",
                      sampled_token_ids.size(), want);
  }
  std::vector<RequestUpdate> updates;
  size_t j = 0;
  for (const auto& e : out.scheduled) {
    const int32_t* sampled = e.needs_logits ? &sampled_token_ids[j++] : nullptr;
    const auto it = requests_.find(e.request_id);
    if (it == requests_.end()) continue;  // finished meanwhile
    Request& r = *it->second;
    if (r.status != RequestStatus::kRunning || r.num_computed_tokens != e.start_position) continue;
    r.num_computed_tokens += e.num_tokens;
    RequestUpdate u;
    u.request_id = r.id;
    if (sampled) {
      r.output_token_ids.push_back(*sampled);
      u.new_token_ids.push_back(*sampled);
    }
    register_full_blocks(r);
    if (sampled) {
      const TokenStop stop = check_token_stop(r, config_.max_model_len);
      if (stop.reason != FinishReason::kNone) {
        if (stop.stop_token) r.stop_reason = *stop.stop_token;
        u.finished = true;
        u.finish_reason = stop.reason;
        finish(r, stop.reason, {});
      }
    }
    updates.push_back(std::move(u));
  }
  return updates;
}

}  // namespace cartserve
