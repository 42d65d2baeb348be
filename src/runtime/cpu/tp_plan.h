// Tensor parallelism: which attention heads and which slice of the MLP
// intermediate each of N ranks computes (plain arithmetic, the same on the
// CPU's in-process ranks and on GPUs).
//
// NOTE: the split.
//  - KV heads. N <= kv heads: rank r holds the contiguous KV heads
//    [floor(r * kv / N), floor((r + 1) * kv / N)) (uneven when N does not
//    divide kv, e.g. 3 heads over 2 ranks: {0} and {1, 2}) and every q head of
//    those KV heads. N > kv heads: KV heads are replicated; rank r holds KV
//    head floor(r * kv / N) only, and the m ranks sharing a KV head split its
//    group of q heads in contiguous parts (part i of m: [floor(i * g / m),
//    floor((i + 1) * g / m)) of the group's g = heads / kv q heads).
//    Either way each q head is computed on exactly one rank, next to its KV
//    head, and a rank's q heads map onto its KV heads with the model's own
//    grouping (local q head j uses local KV head j / (local q / local kv)).
//  - MLP: gate/up rows and down columns [ff_begin, ff_end), contiguous
//    slices of the intermediate, their boundaries on multiples of
//    `ff_align` (a quantized down_proj's block size) when it divides the
//    intermediate size into at least N blocks (else on any element).
//  - Everything else (embedding, norms, LM head) is whole on every rank; the
//    o_proj and down partial sums are all-reduced, so every rank keeps the
//    full residual stream.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace cartserve {

struct TpRank {
  int32_t q_head_begin = 0, q_head_end = 0;    // q heads [begin, end)
  int32_t kv_head_begin = 0, kv_head_end = 0;  // KV heads [begin, end)
  int32_t ff_begin = 0, ff_end = 0;            // intermediate columns [begin, end)

  int32_t num_q_heads() const { return q_head_end - q_head_begin; }
  int32_t num_kv_heads() const { return kv_head_end - kv_head_begin; }
  int32_t ff_size() const { return ff_end - ff_begin; }
};

struct TpPlan {
  int32_t size = 1;  // N
  int32_t num_heads = 0, num_kv_heads = 0, intermediate = 0;
  bool kv_replicated = false;  // N > KV heads: some KV heads live on several ranks
  std::vector<TpRank> ranks;   // [N]

  // The rank that exports KV head `h` (the first one holding it). A rank
  // owns either all of its KV heads (disjoint ranges) or none (a replica).
  int32_t kv_head_owner(int32_t h) const;
  // Largest KV head count of any rank (what a rank's KV pool is sized for).
  int32_t max_kv_heads_per_rank() const;
  // One line for the log: "TP=4 over 12 q / 3 KV heads: KV heads replicated
  // (rank 0: q 0-1 kv 0, ...)".
  std::string describe() const;
};

// kInvalidArgument unless N is 1, 2, 4 or 8, heads divide into KV groups,
// N <= q heads and N <= intermediate (every rank gets work).
Result<TpPlan> make_tp_plan(int32_t num_heads, int32_t num_kv_heads, int32_t intermediate,
                            int32_t size, int32_t ff_align = 1);

}  // namespace cartserve
