// Per-request sampling and stopping parameters (OpenAI fields plus vLLM's
// extensions), already parsed from JSON at the HTTP edge.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"

namespace cartserve {

struct SamplingParams {
  // Sampling. temperature < kGreedyEpsilon means greedy (argmax, ties to the
  // lowest id). top_k <= 0 and top_p == 1 and min_p == 0 disable those filters.
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  // Reproducibility: the same seed, prompt and parameters give the same tokens
  // whatever the batch. Without one the engine draws a seed per request.
  std::optional<uint64_t> seed;

  // Penalties. repetition (HF/vLLM): over prompt and output tokens, positive
  // logits divided, negative multiplied. presence/frequency (OpenAI): over
  // output tokens only, logit -= presence * [count > 0] + frequency * count.
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;

  // Stopping. The request's EOS ids stop it unless ignore_eos; stop_token_ids
  // always do (vLLM). Until min_tokens are generated, both are masked out.
  int32_t max_tokens = 16;
  int32_t min_tokens = 0;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;  // stop strings, matched on the detokenized text
  bool ignore_eos = false;
  bool include_stop_str_in_output = false;
  bool skip_special_tokens = true;

  // Logprobs of the raw model distribution (vLLM's default "raw_logprobs":
  // log-softmax of the logits before penalties, temperature and filters).
  bool logprobs = false;
  int32_t top_logprobs = 0;
  // Logprobs of the prompt tokens with this many alternatives each (-1: off),
  // for echo. Such a request skips the prefix cache so every prompt position
  // is computed.
  int32_t prompt_logprobs = -1;

  // Completions per prompt. The engine fans n > 1 out into n requests
  // (the scheduler sees one sequence per request).
  int32_t n = 1;

  static constexpr float kGreedyEpsilon = 1e-5f;
  static constexpr int32_t kMaxTopLogprobs = 20;
  bool greedy() const { return temperature < kGreedyEpsilon; }

  // Range checks; the message names the offending field. vocab_size <= 0
  // skips the token-id checks.
  Status validate(int32_t vocab_size = 0) const;
};

}  // namespace cartserve
