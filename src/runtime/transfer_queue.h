// The jobs of a backend's KV transfers, run in order on one thread of their
// own (the CPU's "copy stream"; the CUDA backend's host side of its copy
// stream): start returns an id at once, poll and wait report the status.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "core/status.h"
#include "runtime/kv_transfer.h"

namespace cartserve {

class TransferQueue {
 public:
  TransferQueue();
  ~TransferQueue();  // finishes the queued jobs first
  TransferQueue(const TransferQueue&) = delete;
  TransferQueue& operator=(const TransferQueue&) = delete;

  TransferId start(std::function<Status()> job);
  // nullopt while queued or running; then its status, once (the id is forgotten).
  std::optional<Status> poll(TransferId id);
  Status wait(TransferId id);
  // Called (on the queue's thread, under its lock: it must not block nor
  // call into the queue) after each job finishes; null: none. After
  // set_on_done returns, the old one is no longer running.
  void set_on_done(std::function<void()> fn);

 private:
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<TransferId, std::function<Status()>>> queue_;
  std::map<TransferId, std::optional<Status>> done_;  // nullopt: queued or running
  std::function<void()> on_done_;
  TransferId next_ = 1;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace cartserve
