// Scheduler side of a KV connector: something outside the prefix cache that
// provides the KV of a request's leading positions (the cartridge connector
// of issue 5). Modelled on vLLM's KV connector v1 scheduler API, except that
// provided KV is not copied per request: it lives in shared, read-only blocks
// of the same BlockPool, which the scheduler puts first in the block table
// and reference-counts like any other block.
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
//      prefix cache already holds that block. kResourceExhausted means "not
//      resident yet": the request waits (the connector may start a load); any
//      other error rejects the request. The blocks must stay valid until
//      on_request_finished / on_request_preempted.
//   3. on_blocks_allocated(req): the block table is final for this admission.
//   4. on_request_preempted(req) or on_request_finished(req): the scheduler
//      has dropped its references; the connector may release its own.
//      on_request_finished comes for every request that ends, also one that
//      never held blocks (get_blocks may have run for it before it waited), so
//      the connector must track what it gave each request.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "engine/request.h"

namespace cartserve {

class Backend;
class BlockPool;

class KvConnector {
 public:
  virtual ~KvConnector() = default;
  // Called once by the engine before its thread starts: the KV blocks and the
  // device they live on.
  virtual void bind(BlockPool& /*pool*/, Backend& /*backend*/) {}
  // Called by the engine when it stops: the pool and backend are going away.
  virtual void unbind() {}
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
