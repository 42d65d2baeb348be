// The host side of shared-prefix ("cascade") decode attention: which
// sequences of a decode step attend over a shared prefix together, as the
// device work list of ops::cuda::cascade_prefix_attention. Plain C++ (no
// CUDA), so the grouping is tested without a GPU.
//
// A sequence's prefix is the part of its keys the scheduler reports as
// shared (StepInput::shared_prefix: full blocks of a cartridge or of cached
// prompt blocks), cut to whole blocks before its query; it takes the cascade
// path when that is at least `min_prefix` positions, whether or not another
// sequence of the step shares it, so its attention is computed the same way
// alone or batched. Sequences with the same prefix length and the same
// block ids over it form a group; a group's members are cut into tiles of
// kCascadeTileRows / gqa_group sequences, each tile into the prefix's key
// splits (kernels/cascade_split.h).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace cartserve {

struct CascadePlan {
  std::vector<int32_t> prefix_len;  // [num_seqs]: keys [0, prefix_len) on the cascade path
  std::vector<int32_t> members;     // sequence indices, group by group, ascending in a group
  // [num_items * 4]: first member (index into members), member count, key
  // split, prefix length.
  std::vector<int32_t> items;

  int32_t num_items() const { return static_cast<int32_t>(items.size() / 4); }
  bool empty() const { return items.empty(); }
};

// Fills `plan` for a step. Only sequences of one query row take part (decode
// rows; in a mixed step the others go through the prefill kernel).
// shared_prefix: [num_seqs] or empty (no cascade); query_start [num_seqs + 1];
// block_table [num_seqs, max_blocks].
// gqa_group: query heads per KV head (<= kCascadeTileRows). min_prefix <= 0
// turns the cascade off.
void plan_cascade(std::span<const int32_t> shared_prefix, std::span<const int32_t> query_start,
                  std::span<const int32_t> context_lens, std::span<const int32_t> block_table,
                  int32_t max_blocks, int32_t block_size, int32_t gqa_group, int32_t min_prefix,
                  CascadePlan& plan);

}  // namespace cartserve
