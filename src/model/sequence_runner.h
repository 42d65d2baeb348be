// Runs one sequence through LlamaForward with its own contiguous KV blocks:
// prefill (optionally in chunks) then token-by-token decode. Used by
// `cartserve generate`, cartridge building and the golden tests; the serving
// engine batches many sequences through the scheduler instead.
#pragma once

#include <span>
#include <vector>

#include "core/status.h"
#include "model/kv_cache.h"
#include "model/llama.h"

namespace cartserve {

class SequenceRunner {
 public:
  // Room for `max_tokens` positions; KV blocks of `block_size`.
  SequenceRunner(const Model& model, int max_tokens, int block_size = 16);

  // Appends `tokens` (in chunks of at most `chunk` rows) and returns logits:
  // all rows when `all_logits`, else only the last: [rows, vocab].
  Result<std::vector<float>> append(std::span<const int32_t> tokens, bool all_logits = false,
                                    int chunk = 512);

  int length() const { return length_; }
  int capacity() const { return capacity_; }
  void reset() { length_ = 0; }
  const KvCache& cache() const { return cache_; }
  LlamaForward& forward() { return forward_; }
  // Slot of position `pos` (blocks are laid out contiguously from block 0).
  int slot(int pos) const { return pos; }

 private:
  LlamaForward forward_;
  int block_size_;
  int capacity_;
  KvCache cache_;
  std::vector<int32_t> block_table_;  // [capacity / block_size]: 0, 1, 2, ...
  int length_ = 0;
};

}  // namespace cartserve
