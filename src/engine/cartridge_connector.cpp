#include "engine/cartridge_connector.h"

#include <algorithm>

#include "core/logging.h"

namespace cartserve {

CartridgeConnector::CartridgeConnector(ResidencyManager& residency,
                                       std::shared_ptr<KvBlockAllocator> allocator,
                                       const CartridgeCatalog& catalog, CartridgeMode mode,
                                       int32_t block_size)
    : residency_(residency),
      allocator_(std::move(allocator)),
      catalog_(catalog),
      mode_(mode),
      block_size_(block_size),
      loader_([this] { loader_loop(); }) {}

CartridgeConnector::~CartridgeConnector() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  loader_.join();
}

void CartridgeConnector::bind(BlockPool& pool, Backend& backend) {
  allocator_->bind(&pool, &backend);
}
void CartridgeConnector::unbind() {
  allocator_->bind(nullptr, nullptr);
}

Result<int32_t> CartridgeConnector::get_num_matched_tokens(const Request& req) {
  if (req.cartridge_ids.empty()) return 0;
  const std::string& id = req.cartridge_ids.front();
  auto entry = catalog_.get(id);
  if (!entry) return make_error(ErrorCode::kNotFound, "cartridge '{}' is not registered", id);
  const int32_t p = entry->num_tokens();
  if (mode_ == CartridgeMode::kVirtual) {
    if (req.num_virtual_tokens != p) {
      return make_error(ErrorCode::kInternal,
                        "request '{}' reserves {} virtual positions but cartridge '{}' has {}",
                        req.id, req.num_virtual_tokens, id, p);
    }
    return p;
  }
  // Prefix mode: the prompt must carry the document.
  const auto& prompt = req.prompt_token_ids;
  if (static_cast<int32_t>(prompt.size()) <= p) {
    return make_error(ErrorCode::kInvalidArgument,
                      "prefix mode: the prompt ({} tokens) is not longer than cartridge '{}' ({} "
                      "tokens); it must begin with the cartridge's document",
                      prompt.size(), id, p);
  }
  if (!entry->token_ids.empty()) {
    int32_t m = 0;
    const int32_t n = std::min<int32_t>(p, static_cast<int32_t>(entry->token_ids.size()));
    while (m < n && prompt[static_cast<size_t>(m)] == entry->token_ids[static_cast<size_t>(m)])
      ++m;
    return m;
  }
  const int32_t e = std::min<int32_t>(p, static_cast<int32_t>(prompt.size()) - 1);
  return (e / block_size_) * block_size_;
}

Result<std::vector<int32_t>> CartridgeConnector::get_blocks(const Request& req,
                                                            int32_t num_tokens) {
  const std::string& id = req.cartridge_ids.front();
  const int32_t n_blocks = (num_tokens + block_size_ - 1) / block_size_;
  // Already holding it (the request waited for free blocks after an earlier call).
  if (auto it = held_.find(req.id); it != held_.end()) {
    auto copy = residency_.device_copy(id);
    if (!copy.ok()) return copy.status();
    CS_ASSIGN_OR_RETURN(auto blocks, allocator_->blocks_of(copy->data));
    blocks.resize(static_cast<size_t>(n_blocks));
    return blocks;
  }
  bool direct = false;
  {
    std::lock_guard<std::mutex> lk(mu_);
    direct = direct_load_.count(id) > 0;
  }
  if (!direct && !residency_.is_resident(id, Tier::kDevice) &&
      !residency_.is_resident(id, Tier::kHost)) {
    // On disk only: load it to the host tier in the background; the request waits.
    std::lock_guard<std::mutex> lk(mu_);
    if (auto err = load_errors_.find(id); err != load_errors_.end()) {
      Status st = err->second;
      load_errors_.erase(err);  // a later request retries
      return st;
    }
    if (!loading_[id]) {
      loading_[id] = true;
      queue_.push_back(id);
      cv_.notify_all();
    }
    return make_error(ErrorCode::kResourceExhausted, "cartridge '{}' is being loaded", id);
  }
  // Host or device (or a direct load): the promotion is a copy into KV blocks, done here.
  auto resident = residency_.acquire(id);
  if (!resident.ok()) {
    // "Cannot fit now" waits (kResourceExhausted); "will never fit" etc. fail the request.
    return resident.status();
  }
  auto blocks = allocator_->blocks_of(resident->data);
  if (!blocks.ok()) {
    (void)residency_.release(id);
    return blocks.status();
  }
  held_[req.id] = id;
  ++served_;
  blocks->resize(static_cast<size_t>(n_blocks));
  return blocks;
}

void CartridgeConnector::release_for(const std::string& request_id) {
  auto it = held_.find(request_id);
  if (it == held_.end()) return;
  Status st = residency_.release(it->second);
  if (!st.ok()) LOG_WARN("cartridge release for {}: {}", request_id, st.to_string());
  held_.erase(it);
}

void CartridgeConnector::on_request_preempted(const Request& req) {
  release_for(req.id);
}
void CartridgeConnector::on_request_finished(const Request& req) {
  release_for(req.id);
}

uint64_t CartridgeConnector::num_requests_served() const {
  return served_;
}

void CartridgeConnector::loader_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    const std::string id = queue_.front();
    queue_.pop_front();
    lk.unlock();
    // Host tier only: touches no KV block, so it is safe off the engine thread.
    Status st = residency_.prefetch(id, Tier::kHost);
    lk.lock();
    if (!st.ok() &&
        (st.code() == ErrorCode::kOutOfRange || st.code() == ErrorCode::kResourceExhausted)) {
      // The host tier cannot keep it: the engine thread loads it straight into
      // KV blocks through a transient host copy.
      direct_load_.insert(id);
      st = Status();
    }
    loading_[id] = false;
    if (!st.ok()) {
      LOG_WARN("loading cartridge '{}' failed: {}", id, st.to_string());
      load_errors_[id] = st;
    }
  }
}

}  // namespace cartserve
