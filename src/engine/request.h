// The native request the engine schedules: prompt token ids, sampling
// parameters, progress and KV block table. Owned by the engine thread; only
// `cancelled` may be touched from other threads.
//
// NOTE: positions. A request's sequence is
//   [virtual positions 0..v) [prompt tokens] [output tokens]
// where v = num_virtual_tokens: positions whose KV comes from outside with no
// token ids behind them (a cartridge used as a virtual prefix; 0 otherwise).
// Token i of prompt+output sits at position v + i (also its RoPE position).
// num_external_tokens e >= v leading positions have KV provided by the
// connector (shared, read-only blocks first in the block table); in prefix
// mode v == 0 and e covers the first prompt tokens. num_computed_tokens counts
// positions whose KV is in the cache, external ones included.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "kv/prefix_hash.h"
#include "runtime/sampling_params.h"

namespace cartserve {

enum class RequestStatus { kWaiting, kWaitingForKv, kRunning, kPreempted, kFinished };
enum class FinishReason { kNone, kStop, kLength, kAbort, kError };

const char* request_status_name(RequestStatus s);
// OpenAI's finish_reason strings: "stop", "length", "abort", "error" ("" for none).
const char* finish_reason_name(FinishReason r);

struct Request {
  std::string id;
  std::vector<int32_t> prompt_token_ids;
  SamplingParams sampling;
  // Tokens that end generation unless sampling.ignore_eos (the tokenizer's
  // EOS and end-of-turn ids), set by the engine.
  std::vector<int32_t> eos_token_ids;
  // Seed of the sampler's per-request random stream: sampling.seed if given,
  // else drawn by the engine.
  uint64_t sampling_seed = 0;
  std::chrono::steady_clock::time_point arrival_time = std::chrono::steady_clock::now();
  // Set (any thread) when the client goes away; the scheduler aborts the
  // request at its next step. May be null.
  std::shared_ptr<std::atomic<bool>> cancelled;

  // --- Cartridge hooks (issue 5): set before the request is added. -------
  int32_t num_virtual_tokens = 0;
  std::vector<std::string> cartridge_ids;  // resolved by the router, request order
  std::string prefix_salt;                 // cartridge content hash(es); "" = none

  // --- State, owned by the scheduler. -------------------------------------
  RequestStatus status = RequestStatus::kWaiting;
  FinishReason finish_reason = FinishReason::kNone;
  std::string finish_message;  // error text for kError
  // vLLM's stop_reason: the stop token id or stop string that ended it.
  std::variant<std::monostate, int32_t, std::string> stop_reason;
  std::vector<int32_t> output_token_ids;
  int32_t num_computed_tokens = 0;
  int32_t num_external_tokens = 0;
  std::vector<int32_t> block_table;  // [ceil(positions / block_size)] block ids
  // Chained hashes of full blocks from block index num_virtual_tokens / B on,
  // for the root (prefix_salt, num_external_tokens) they were computed with.
  std::vector<BlockHash> block_hashes;
  int32_t block_hashes_external = -1;  // num_external_tokens the hashes assume
  // Blocks [0, num_reported_blocks) of the table were reported to the runner.
  int32_t num_reported_blocks = 0;
  // Blocks [0, num_registered_blocks) are cached already or not ours to cache.
  int32_t num_registered_blocks = 0;
  int32_t num_cached_tokens = 0;  // prefix-cache hits at first admission (usage)
  // Leading blocks of block_table that were shared when admitted (external
  // and cached ones): full, immutable, possibly in other requests' tables.
  int32_t num_shared_blocks = 0;
  int32_t num_preemptions = 0;

  int32_t num_prompt_tokens() const { return static_cast<int32_t>(prompt_token_ids.size()); }
  int32_t num_output_tokens() const { return static_cast<int32_t>(output_token_ids.size()); }
  // Prompt plus output tokens (positions with token ids).
  int32_t num_tokens() const { return num_prompt_tokens() + num_output_tokens(); }
  // Every position of the sequence: virtual + prompt + output.
  int32_t num_positions() const { return num_virtual_tokens + num_tokens(); }
  // Token id at position `pos` (>= num_virtual_tokens).
  int32_t token_at(int32_t pos) const;
  // Prompt followed by output (a copy).
  std::vector<int32_t> all_token_ids() const;
  bool is_cancelled() const { return cancelled && cancelled->load(std::memory_order_relaxed); }
  bool is_finished() const { return status == RequestStatus::kFinished; }
};

}  // namespace cartserve
