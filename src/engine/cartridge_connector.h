// The cartridge connector, scheduler side (KvConnector): how many leading
// positions a request's cartridge provides, and the shared KV blocks that
// hold them. The device tier of the residency manager lives in the engine's
// KV blocks (KvBlockAllocator), so "resident" means "sitting in blocks every
// request can put first in its block table".
//
// NOTE: modes.
//   virtual: positions [0, p) are the cartridge (no token ids behind them);
//            the request's prompt starts at position p. e = p.
//   prefix:  the prompt begins with the document; e is the longest match of
//            the prompt against the cartridge's stored token ids, or, for a
//            cartridge without ids, the seed's rule: min(p, len(prompt) - 1)
//            aligned down to the block size. A prompt shorter than the
//            cartridge is an error.
// Residency: a cartridge that is on the host tier (or device) is promoted on
// the engine thread inside get_blocks (a copy into blocks); one only on disk
// is loaded to the host tier by a background thread while the request waits
// (get_blocks answers "not resident yet"). A failed load fails the requests
// waiting for it.
#pragma once

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>

#include "cartridge/catalog.h"
#include "cartridge/residency.h"
#include "engine/kv_block_allocator.h"
#include "engine/kv_connector.h"

namespace cartserve {

enum class CartridgeMode { kVirtual, kPrefix };

class CartridgeConnector final : public KvConnector {
 public:
  CartridgeConnector(ResidencyManager& residency, std::shared_ptr<KvBlockAllocator> allocator,
                     const CartridgeCatalog& catalog, CartridgeMode mode, int32_t block_size);
  ~CartridgeConnector() override;

  void bind(BlockPool& pool, Backend& backend) override;
  void unbind() override;
  Result<int32_t> get_num_matched_tokens(const Request& req) override;
  Result<std::vector<int32_t>> get_blocks(const Request& req, int32_t num_tokens) override;
  void on_request_preempted(const Request& req) override;
  void on_request_finished(const Request& req) override;

  CartridgeMode mode() const { return mode_; }
  // Requests that have been given a cartridge's blocks (for metrics).
  uint64_t num_requests_served() const;

 private:
  void release_for(const std::string& request_id);
  void start_host_load(const std::string& cartridge_id);
  void loader_loop();

  ResidencyManager& residency_;
  std::shared_ptr<KvBlockAllocator> allocator_;
  const CartridgeCatalog& catalog_;
  CartridgeMode mode_;
  int32_t block_size_;

  // Engine thread only.
  std::unordered_map<std::string, std::string> held_;  // request id -> cartridge id
  uint64_t served_ = 0;

  // Background host loads.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::map<std::string, Status> load_errors_;  // failed host loads, until retried
  std::map<std::string, bool> loading_;
  std::set<std::string> direct_load_;  // host tier cannot hold them: load on the engine thread
  bool stop_ = false;
  std::thread loader_;
};

}  // namespace cartserve
