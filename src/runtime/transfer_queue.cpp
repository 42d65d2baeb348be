#include "runtime/transfer_queue.h"

namespace cartserve {

TransferQueue::TransferQueue() : thread_([this] { loop(); }) {}

TransferQueue::~TransferQueue() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

TransferId TransferQueue::start(std::function<Status()> job) {
  std::lock_guard<std::mutex> lk(mu_);
  const TransferId id = next_++;
  done_.emplace(id, std::nullopt);
  queue_.emplace_back(id, std::move(job));
  cv_.notify_all();
  return id;
}

std::optional<Status> TransferQueue::poll(TransferId id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = done_.find(id);
  if (it == done_.end()) return make_error(ErrorCode::kNotFound, "no KV transfer {}", id);
  if (!it->second) return std::nullopt;
  Status st = *it->second;
  done_.erase(it);
  return st;
}

Status TransferQueue::wait(TransferId id) {
  std::unique_lock<std::mutex> lk(mu_);
  auto it = done_.find(id);
  if (it == done_.end()) return make_error(ErrorCode::kNotFound, "no KV transfer {}", id);
  cv_.wait(lk, [&] { return it->second.has_value(); });
  Status st = *it->second;
  done_.erase(it);
  return st;
}

void TransferQueue::set_on_done(std::function<void()> fn) {
  std::lock_guard<std::mutex> lk(mu_);
  on_done_ = std::move(fn);
}

void TransferQueue::loop() {
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping with nothing left
    auto [id, job] = std::move(queue_.front());
    queue_.pop_front();
    lk.unlock();
    Status st = job();
    lk.lock();
    done_[id] = std::move(st);
    cv_.notify_all();
    if (on_done_) on_done_();
  }
}

}  // namespace cartserve
