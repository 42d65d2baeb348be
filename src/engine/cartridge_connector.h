// The cartridge connector (KvConnector): scheduler side and worker side.
//
// Scheduler side: how many leading positions a request's cartridge provides
// (modes below), and the shared KV blocks that hold them, from the device
// tier (cartridge/device_tier.h). A cartridge that is not resident is loaded
// while the request waits for its KV (get_blocks answers kUnavailable).
//
// Worker side (run_worker, engine thread, between steps): the device tier's
// load jobs get their host data from the host tier on a loader thread (a disk
// read may be slow), then the backend copies it into the blocks
// asynchronously; finished copies are reported to the tier. The engine
// thread never waits for a disk read or a copy.
//
// NOTE: modes.
//   virtual: positions [0, p) are the cartridge (no token ids behind them);
//            the request's prompt starts at position p. e = p.
//   prefix:  the prompt begins with the document; e is the longest match of
//            the prompt against the cartridge's stored token ids, or, for a
//            cartridge without ids, the seed's rule: min(p, len(prompt) - 1)
//            aligned down to the block size. A prompt shorter than the
//            cartridge is an error.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cartridge/catalog.h"
#include "cartridge/device_tier.h"
#include "cartridge/residency.h"
#include "engine/kv_connector.h"
#include "runtime/backend.h"

namespace cartserve {

class CartridgeConnector final : public KvConnector {
 public:
  CartridgeConnector(ResidencyManager& host, DeviceKvTier& device, const CartridgeCatalog& catalog,
                     CartridgeMode mode, int32_t block_size);
  ~CartridgeConnector() override;

  // Scheduler side.
  Result<int32_t> get_num_matched_tokens(const Request& req) override;
  Result<std::vector<int32_t>> get_blocks(const Request& req, int32_t num_tokens) override;
  void on_request_preempted(const Request& req) override;
  void on_request_finished(const Request& req) override;

  // Worker side.
  void set_wakeup(std::function<void()> wake) override;
  bool run_worker(Backend& backend) override;

  // The device tier's view of a catalogued cartridge (NotFound when unknown).
  Result<DeviceCartridge> device_cartridge(const std::string& cartridge_id) const;
  CartridgeMode mode() const { return mode_; }
  // Requests that have been given a cartridge's blocks (for metrics).
  uint64_t num_requests_served() const { return served_; }

 private:
  // A load job on its way: host data, then the copy into blocks.
  struct Load {
    DeviceKvTier::LoadJob job;
    HostLease host;
    Status status;  // of the host read
    std::optional<TransferId> transfer;
  };
  void release_for(const std::string& request_id);
  void loader_loop();

  ResidencyManager& host_;
  DeviceKvTier& device_;
  const CartridgeCatalog& catalog_;
  CartridgeMode mode_;
  int32_t block_size_;

  // Engine thread only.
  struct Held {
    std::string cartridge_id;
    bool served = false;  // its blocks were given out
  };
  std::unordered_map<std::string, Held> held_;  // by request id
  std::vector<std::unique_ptr<Load>> copying_;  // copies in flight
  Backend* backend_ = nullptr;                  // the one run_worker is given
  uint64_t served_ = 0;

  // The loader thread: host reads of load jobs.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Load>> to_read_;
  std::deque<std::unique_ptr<Load>> read_;  // host data ready, for the engine thread
  size_t reading_ = 0;                      // taken by the loader, not yet in read_
  std::function<void()> wake_;
  bool stop_ = false;
  std::thread loader_;
};

}  // namespace cartserve
