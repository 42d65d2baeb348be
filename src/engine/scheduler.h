// Continuous batching with chunked prefill mixed with decode, over the
// paged KV block pool with automatic prefix caching.
//
// The engine thread drives it, one step at a time:
//   out = scheduler.schedule();          // what to compute now
//   ... run the model on out, sample the rows with needs_logits ...
//   scheduler.update_from_output(out, sampled_token_ids);
// Nothing changes between schedule() and update_from_output() except
// finish_request(); skipping update_from_output (a failed model step) makes
// the next schedule() compute the same positions again.
//
// NOTE: policy of one step, under max_num_batched_tokens (budget) and
// max_num_seqs:
//   1. aborts (abort_request, or the request's cancelled flag): blocks freed;
//   2. running requests in decode (1 position left), oldest first;
//   3. running requests with a partial prefill, oldest first, each as much of
//      its remaining prompt as the budget allows (chunking);
//   4. if nobody was preempted in this step, waiting requests FCFS while the
//      budget, max_num_seqs and the free blocks allow: first those whose
//      external KV was loading (waiting for KV), then the queue; the head of
//      the queue waits for blocks (no overtaking). A request whose external KV
//      is still loading (the connector answers kUnavailable) steps aside into
//      the waiting-for-KV list and does not hold up the queue. Leading
//      positions provided by the connector and prefix-cache hits count as
//      computed; the last position is always computed so that its logits exist.
// When a running request needs a block and none is free, the newest running
// request is preempted (blocks released, back to the front of the waiting
// queue, generated tokens kept: it recomputes prompt + output later, through
// the prefix cache where the blocks survived). A prefill chunk shrinks to the
// free blocks before it preempts anybody.
// A request that can never fit (positions beyond max_model_len or more own
// blocks than the pool has) is refused by add_request, or, when that shows
// only at admission (connector), rejected with its error in the output.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/status.h"
#include "engine/kv_connector.h"
#include "engine/request.h"
#include "kv/block_pool.h"
#include "runtime/kv_transfer.h"

namespace cartserve {

struct SchedulerConfig {
  int32_t block_size = 16;
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 2048;
  int32_t max_model_len = 4096;
  Status validate() const;
};

// One request's work in a step: positions [start_position, start_position +
// num_tokens) with their token ids. Its block table is reported as deltas:
// when new_row, new_block_ids is the whole table (first step after an
// admission); else the blocks appended since its previous step. KV slot of
// position p is table[p / B] * B + p % B.
struct ScheduledRequest {
  std::string request_id;
  int32_t start_position = 0;
  int32_t num_tokens = 0;
  std::vector<int32_t> token_ids;  // [num_tokens]
  bool needs_logits = false;       // the chunk ends the known tokens: sample one
  bool new_row = false;
  std::vector<int32_t> new_block_ids;
  int32_t shared_blocks = 0;  // Request::num_shared_blocks
};

struct RejectedRequest {
  std::string request_id;
  Status status;
};

struct SchedulerOutput {
  std::vector<ScheduledRequest> scheduled;  // decodes, continued prefills, admissions
  std::vector<BlockCopy> block_copies;
  std::vector<std::string> preempted_ids;  // lost their blocks in this step (and their rows)
  // Finished since the previous schedule() (aborts of this step included); the
  // runner drops their state. Their blocks are released already.
  std::vector<std::string> finished_ids;
  std::vector<RejectedRequest> rejected;  // also in finished_ids
  int32_t num_scheduled_tokens = 0;
};

// What a step did to one request.
struct RequestUpdate {
  std::string request_id;
  std::vector<int32_t> new_token_ids;  // the sampled token, if any
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
};

struct SchedulerStats {
  int64_t num_preemptions = 0;
  int64_t num_rejected = 0;
};

class Scheduler {
 public:
  // `pool` and `connector` (null: none) must outlive the scheduler.
  static Result<std::unique_ptr<Scheduler>> create(const SchedulerConfig& config, BlockPool& pool,
                                                   KvConnector* connector = nullptr);

  // Queues a request (status waiting). Refuses, with a message naming the
  // request and the limit: a duplicate id, an empty prompt, invalid sampling
  // parameters, positions + max_tokens beyond max_model_len, more KV blocks
  // than the pool has.
  Status add_request(std::shared_ptr<Request> req);
  // Aborted at the next schedule(); unknown ids are ignored.
  void abort_request(const std::string& id);
  // Ends a request now (e.g. the engine matched a stop string); frees blocks.
  void finish_request(const std::string& id, FinishReason reason, std::string message = {});

  SchedulerOutput schedule();
  // `sampled_token_ids`: one per scheduled entry with needs_logits, in order.
  Result<std::vector<RequestUpdate>> update_from_output(const SchedulerOutput& out,
                                                        std::span<const int32_t> sampled_token_ids);

  std::shared_ptr<Request> get_request(const std::string& id) const;
  const std::vector<std::shared_ptr<Request>>& running() const { return running_; }
  const std::deque<std::shared_ptr<Request>>& waiting() const { return waiting_; }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  int32_t num_waiting() const {
    return static_cast<int32_t>(waiting_.size() + waiting_for_kv_.size());
  }
  // Admitted by the connector but waiting for their external KV to load.
  int32_t num_waiting_for_kv() const { return static_cast<int32_t>(waiting_for_kv_.size()); }
  bool has_unfinished_requests() const { return !requests_.empty(); }
  const SchedulerConfig& config() const { return config_; }
  const SchedulerStats& stats() const { return stats_; }
  BlockPool& pool() { return pool_; }

 private:
  Scheduler(const SchedulerConfig& config, BlockPool& pool, KvConnector* connector);

  enum class Admission { kAdmitted, kWait, kLoading, kRejected };
  Admission try_admit(Request& req, int32_t& budget, SchedulerOutput& out, Status& error);
  void preempt(Request& req, SchedulerOutput& out);
  void finish(Request& req, FinishReason reason, std::string message);
  void release_blocks(Request& req);
  void update_block_hashes(Request& req);
  void register_full_blocks(Request& req);
  int32_t blocks_for(int32_t num_positions) const {
    return (num_positions + config_.block_size - 1) / config_.block_size;
  }
  ScheduledRequest make_entry(Request& req, int32_t num_tokens) const;
  // Admits waiting requests (parked ones first) while budget and seats allow.
  void admit_waiting(int32_t& budget, SchedulerOutput& out);
  void reject(Request& req, const Status& error, SchedulerOutput& out);

  SchedulerConfig config_;
  BlockPool& pool_;
  NullKvConnector null_connector_;
  KvConnector* connector_;
  std::unordered_map<std::string, std::shared_ptr<Request>> requests_;  // unfinished
  std::deque<std::shared_ptr<Request>> waiting_;                        // FCFS
  std::deque<std::shared_ptr<Request>> waiting_for_kv_;                 // FCFS, KV loading
  std::vector<std::shared_ptr<Request>> running_;                       // admission order
  std::unordered_set<std::string> pending_aborts_;
  std::vector<std::string> finished_since_schedule_;
  SchedulerStats stats_;
};

}  // namespace cartserve
