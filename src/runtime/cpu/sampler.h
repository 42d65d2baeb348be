// Token sampling from logits rows [n, vocab], each with its own parameters.
//
// NOTE: order of operations per row (vLLM v1's sampler):
//   1. raw logprobs for the response: log-softmax of the model's logits,
//      before anything below (vLLM's default logprobs_mode "raw_logprobs");
//   2. min_tokens: EOS (unless ignore_eos) and stop_token_ids masked to -inf
//      while fewer than min_tokens are generated;
//   3. penalties: repetition (prompt + output), frequency and presence
//      (output only);
//   4. greedy (temperature < 1e-5): argmax, ties to the lowest id; else
//   5. temperature, then min_p (keep p >= min_p * p_max), top_k (keep logits
//      >= the k-th largest: ties at the boundary are kept), top_p (on the
//      distribution left by the above: the smallest set of most likely tokens,
//      ties ordered by id, whose mass reaches top_p), then one draw.
// Randomness: the draw for output token i of a request is a pure function of
// (sampling_seed, i) (a counter-based generator), so the same seed and prompt
// give the same tokens whatever the batch, its order, or preemptions.
// Cost per row is O(vocab) plus a partial sort for top_k/top_p; rows run in
// parallel on the thread pool when one is given.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "runtime/sampling_params.h"
#include "runtime/step.h"

namespace cartserve {

// A row to sample (runtime/step.h): logits row, parameters, histories, seed.
using SamplerRow = SampleRow;

class Sampler {
 public:
  explicit Sampler(ThreadPool* pool = nullptr) : pool_(pool) {}

  // logits: [rows.size(), vocab] row-major. Fails on a non-finite-positive or
  // NaN logit, naming the row.
  Status sample(std::span<const float> logits, int32_t vocab, std::span<const SamplerRow> rows,
                std::vector<SampleResult>& out) const;

  // The distribution row `row` samples from after steps 2-5, as (token,
  // probability) with probabilities summing to 1, sorted by token. A greedy
  // row gives its argmax with probability 1. For tests and debugging.
  static Status distribution(std::span<const float> logits_row, const SamplerRow& row,
                             std::vector<TokenLogprob>& probs);

  // The raw log-softmax of `row` at `token` (res.logprob), its rank, and the
  // top_n best tokens (best first, ties by id); res.token = token.
  static void logprobs(const float* row, int32_t vocab, int32_t token, int32_t top_n,
                       SampleResult& res);

  // Uniform double in [0, 1) for draw `index` of stream `seed`.
  static double uniform(uint64_t seed, uint64_t index);

  // A CPU step's outputs from its logits ([samples + prompt-logprob rows,
  // vocab], in the order the forward pass returns them): the sampled rows,
  // then the prompt logprobs.
  Status step_outputs(std::span<const float> logits, int32_t vocab, const StepInput& in,
                      StepOutput& out) const;

 private:
  ThreadPool* pool_;
};

}  // namespace cartserve
