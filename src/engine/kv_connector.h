// A KV connector: something outside the prefix cache that provides the KV of
// a request's leading positions (the cartridge connector). Modelled on vLLM's
// KV connector v1 with its two sides, except that provided KV is not copied
// per request: it lives in shared, read-only blocks of the same BlockPool,
// which the scheduler puts first in the block table and reference-counts like
// any other block.
//  - Scheduler side (get_num_matched_tokens, get_blocks, on_*): how many
//    positions are provided and whether they are ready; side effects stay in
//    the connector's own bookkeeping and the pool.
//  - Worker side (run_worker): called by the engine between steps with the
//    backend; starts the loads of KV into blocks and collects finished ones.
//    It never blocks on a copy.
//
// NOTE: protocol, per admission (also re-admission after preemption):
//   1. get_num_matched_tokens(req): side-effect free count e of leading
//      positions provided (0: none). It must be >= req.num_virtual_tokens;
//      the scheduler caps it at num_positions - 1 so the last position is
//      computed and yields logits. An error rejects the request.
//   2. get_blocks(req, e): the ceil(e / B) block ids holding positions [0, e),
//      in order, each with ref_count > 0 held by the connector. When e % B != 0
//      the last one is partial: the scheduler copies its first e % B slots into
//      a block of the request's own (SchedulerOutput::block_copies) unless the
//      prefix cache already holds that block. kUnavailable means "being
//      loaded": the request waits for its KV aside (waiting-for-KV) and is
//      asked again at later steps; kResourceExhausted means "no room now": the
//      request waits at the head of the queue; any other error rejects the
//      request. The blocks must stay valid until on_request_finished /
//      on_request_preempted.
//   3. on_blocks_allocated(req): the block table is final for this admission.
//   4. on_request_preempted(req) or on_request_finished(req): the scheduler
//      has dropped its references; the connector may release its own.
//      on_request_finished comes for every request that ends, also one that
//      never held blocks (get_blocks may have run for it before it waited), so
//      the connector must track what it gave each request.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/status.h"
#include "engine/request.h"

namespace cartserve {

class Backend;

class KvConnector {
 public:
  virtual ~KvConnector() = default;
  // The engine's wake-up: the connector calls it (any thread) when something
  // it waited for is ready (a disk load finished), so the engine steps again.
  virtual void set_wakeup(std::function<void()> /*wake*/) {}
  // Worker side, engine thread, between steps: start and collect loads.
  // True while loads are in flight (the engine keeps polling).
  virtual bool run_worker(Backend& /*backend*/) { return false; }
  virtual Result<int32_t> get_num_matched_tokens(const Request& req) = 0;
  virtual Result<std::vector<int32_t>> get_blocks(const Request& req, int32_t num_tokens) = 0;
  virtual void on_blocks_allocated(const Request& /*req*/) {}
  virtual void on_request_preempted(const Request& /*req*/) {}
  virtual void on_request_finished(const Request& /*req*/) {}
};

// Provides nothing: every request computes all its positions.
class NullKvConnector final : public KvConnector {
 public:
  Result<int32_t> get_num_matched_tokens(const Request&) override { return 0; }
  Result<std::vector<int32_t>> get_blocks(const Request&, int32_t) override {
    return std::vector<int32_t>{};
  }
};

}  // namespace cartserve
