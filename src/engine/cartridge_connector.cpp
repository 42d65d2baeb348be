#include "engine/cartridge_connector.h"

#include <algorithm>

#include "core/logging.h"

namespace cartserve {

CartridgeConnector::CartridgeConnector(ResidencyManager& host, DeviceKvTier& device,
                                       const CartridgeCatalog& catalog, CartridgeMode mode,
                                       int32_t block_size)
    : host_(host),
      device_(device),
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
  // Copies still in flight read our host buffers: let them finish.
  for (auto& l : copying_) {
    if (l->transfer && backend_) (void)backend_->wait_transfer(*l->transfer);
  }
}

Result<DeviceCartridge> CartridgeConnector::device_cartridge(const std::string& id) const {
  auto entry = catalog_.get(id);
  if (!entry) return make_error(ErrorCode::kNotFound, "cartridge '{}' is not registered", id);
  return DeviceCartridge{id, entry->content_hash, entry->num_tokens()};
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
  const auto n_blocks = static_cast<size_t>((num_tokens + block_size_ - 1) / block_size_);
  DeviceKvTier::State state;
  if (held_.count(req.id)) {
    // Asked again: it was loading (or the request waited for free blocks).
    auto s = device_.state(id);
    if (!s.ok()) {
      release_for(req.id);
      return s.status();
    }
    state = *s;
  } else {
    CS_ASSIGN_OR_RETURN(DeviceCartridge c, device_cartridge(id));
    CS_ASSIGN_OR_RETURN(state, device_.acquire(c));
    held_[req.id] = Held{id, false};
  }
  if (state == DeviceKvTier::State::kLoading) {
    return make_error(ErrorCode::kUnavailable, "cartridge '{}' is being loaded", id);
  }
  std::vector<int32_t> blocks = device_.blocks(id);
  if (blocks.size() < n_blocks) {
    return make_error(ErrorCode::kInternal, "cartridge '{}' has {} blocks, {} are needed", id,
                      blocks.size(), n_blocks);
  }
  Held& h = held_[req.id];
  if (!h.served) ++served_;
  h.served = true;
  blocks.resize(n_blocks);
  return blocks;
}

void CartridgeConnector::release_for(const std::string& request_id) {
  auto it = held_.find(request_id);
  if (it == held_.end()) return;
  Status st = device_.release(it->second.cartridge_id);
  if (!st.ok()) LOG_WARN("cartridge release for {}: {}", request_id, st.to_string());
  held_.erase(it);
}

void CartridgeConnector::on_request_preempted(const Request& req) {
  release_for(req.id);
}

void CartridgeConnector::on_request_finished(const Request& req) {
  release_for(req.id);
}

// ---------------------------------------------------------------- worker side

void CartridgeConnector::set_wakeup(std::function<void()> wake) {
  std::lock_guard<std::mutex> lk(mu_);
  wake_ = std::move(wake);
}

bool CartridgeConnector::run_worker(Backend& backend) {
  backend_ = &backend;
  std::deque<std::unique_ptr<Load>> read;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& job : device_.take_load_jobs()) {
      auto l = std::make_unique<Load>();
      l->job = std::move(job);
      to_read_.push_back(std::move(l));
      cv_.notify_all();
    }
    read.swap(read_);
  }
  // Host data in hand: start the copies into blocks.
  for (auto& l : read) {
    const std::string& id = l->job.cartridge_id;
    Status st = l->status;
    const auto& data = l->host.data();
    if (st.ok() && data->num_tokens != l->job.num_tokens) {
      st = make_error(ErrorCode::kInternal,
                      "cartridge '{}' holds {} tokens on the host but {} were expected", id,
                      data->num_tokens, l->job.num_tokens);
    }
    if (st.ok()) {
      HostKv kv;
      kv.dtype = data->dtype;
      kv.num_tokens = data->num_tokens;
      for (int32_t layer = 0; layer < data->num_layers; ++layer) {
        kv.keys.push_back(const_cast<void*>(data->keys[layer].raw()));
        kv.values.push_back(const_cast<void*>(data->values[layer].raw()));
      }
      KvBlockList blocks{l->job.block_ids, l->job.block_index};
      auto t = backend.start_kv_load(kv, blocks);
      if (t.ok()) {
        l->transfer = *t;
        copying_.push_back(std::move(l));
        continue;
      }
      st = t.status();
    }
    device_.load_done(id, st.with_context("loading cartridge '" + id + "'"));
  }
  // Finished copies.
  for (auto it = copying_.begin(); it != copying_.end();) {
    auto done = backend.poll_transfer(*(*it)->transfer);
    if (!done) {
      ++it;
      continue;
    }
    device_.load_done((*it)->job.cartridge_id, *done);
    it = copying_.erase(it);
  }
  std::lock_guard<std::mutex> lk(mu_);
  return !copying_.empty() || !to_read_.empty() || reading_ > 0 || !read_.empty();
}

void CartridgeConnector::loader_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !to_read_.empty(); });
    if (stop_) return;
    std::unique_ptr<Load> l = std::move(to_read_.front());
    to_read_.pop_front();
    ++reading_;
    lk.unlock();
    // The host tier's copy, or a transient one when it cannot keep it.
    auto lease = host_.lease_for_load(l->job.cartridge_id);
    if (lease.ok()) {
      l->host = std::move(lease).value();
    } else {
      l->status = lease.status();
    }
    lk.lock();
    --reading_;
    read_.push_back(std::move(l));
    if (wake_) wake_();
  }
}

}  // namespace cartserve
