// One engine step as it crosses the runtime seam: flat arrays in, sampled
// token ids (plus logprobs where asked) out. Full-vocabulary logits stay
// behind the seam.
//
// NOTE: layout of a step's input.
//  - Rows are tokens; sequence s owns rows [query_start[s], query_start[s+1]).
//  - Row i writes its K/V at slot_mapping[i] and sits at RoPE position
//    positions[i]. Sequence s attends over positions [0, context_lens[s])
//    (its own rows are the last ones, causal), position p at slot
//    block_table[s * max_blocks + p / B] * B + p % B; entries past a
//    sequence's blocks are the null block 0.
//  - samples[j] samples from the logits of row samples[j].row;
//    prompt_logprobs[k] asks for the logprobs of given tokens at a run of rows.
//  - block_copies run before the forward pass.
// Every array is flat so that it can be uploaded in one copy and replayed by
// a captured graph.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"
#include "runtime/kv_transfer.h"
#include "runtime/sampling_params.h"

namespace cartserve {

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.f;
};

// One row to sample. The spans point into the request (engine thread state),
// valid for the step.
struct SampleRow {
  int32_t row = 0;  // token row whose logits are sampled
  const SamplingParams* params = nullptr;
  std::span<const int32_t> prompt_token_ids;  // repetition penalty
  std::span<const int32_t> output_token_ids;  // penalties; its size indexes the draw
  std::span<const int32_t> eos_token_ids;     // masked before min_tokens unless ignore_eos
  uint64_t seed = 0;
};

struct SampleResult {
  int32_t token = -1;
  // Only when params.logprobs or top_logprobs > 0 (raw distribution):
  float logprob = 0.f;                     // of `token`
  int32_t rank = 0;                        // 1 + tokens with a strictly higher logprob
  std::vector<TokenLogprob> top_logprobs;  // [top_logprobs], best first, ties by id
};

// Logprobs of known tokens at consecutive rows (prompt logprobs for echo):
// row first_row + i scores targets[i].
struct PromptLogprobRows {
  int32_t first_row = 0;
  std::span<const int32_t> targets;
  int32_t top_n = 0;
};

struct PromptLogprob {
  int32_t token = 0;
  float logprob = 0.f;
  std::vector<TokenLogprob> top;
};

struct StepInput {
  std::vector<int32_t> token_ids;     // [num_tokens]
  std::vector<int32_t> positions;     // [num_tokens]
  std::vector<int32_t> slot_mapping;  // [num_tokens]
  std::vector<int32_t> query_start;   // [num_seqs + 1]
  std::vector<int32_t> context_lens;  // [num_seqs]
  std::vector<int32_t> block_table;   // [num_seqs, max_blocks], padded with 0
  // [num_seqs] or empty: 1 when the sequence's rows are prompt tokens
  // (prefill), 0 when they are generated ones (decode). The CPU backend runs
  // each kind through one kernel whatever the batch (ops::cpu::LinearKernel), so a
  // request's logits do not depend on what it is batched with. Empty: a
  // sequence of one row counts as decode.
  std::vector<uint8_t> prompt_rows;
  // [num_seqs] or empty: leading KV positions of the sequence that lie in
  // shared, immutable full blocks (a cartridge's, cached prompt blocks),
  // a multiple of the block size and before its rows. A hint: a backend may
  // attend over them once for every sequence with the same blocks (shared-
  // prefix attention); the result is the same function either way.
  std::vector<int32_t> shared_prefix;
  int32_t max_blocks = 0;
  int32_t max_query_len = 0;
  int32_t max_context_len = 0;
  std::vector<SampleRow> samples;
  std::vector<PromptLogprobRows> prompt_logprobs;
  std::vector<BlockCopy> block_copies;

  int32_t num_tokens() const { return static_cast<int32_t>(token_ids.size()); }
  int32_t num_seqs() const { return static_cast<int32_t>(context_lens.size()); }
  void clear();
  // Appends one sequence: `tokens` at positions [start, start + n) over its
  // block table (positions [0, start) already in the cache). max_blocks must
  // already cover ceil((start + n) / block_size). Returns its first row.
  int32_t append_sequence(std::span<const int32_t> table, int32_t block_size, int32_t start,
                          std::span<const int32_t> tokens);
};

// The rows whose logits a step needs, into `rows` (cleared): the sampled
// rows, then (with `prompt_rows`) every prompt-logprob row.
void logit_rows(const StepInput& in, bool prompt_rows, std::vector<int32_t>& rows);

// Checks a step against a cache of `num_blocks` blocks of `block_size` and a
// vocabulary: array sizes agree, token ids, slots and block ids are in range,
// each sequence's rows are contiguous with context_len >= rows, its table
// covers its positions, and every logit row is a row of the step.
Status validate_step(const StepInput& in, std::span<const int32_t> logit_rows, int32_t vocab,
                     int32_t num_blocks, int32_t block_size);

struct StepOutput {
  std::vector<SampleResult> samples;                        // [samples.size()]
  std::vector<std::vector<PromptLogprob>> prompt_logprobs;  // [prompt_logprobs.size()]
};

}  // namespace cartserve
