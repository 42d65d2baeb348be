#include "runtime/sampling_params.h"

#include <cmath>

namespace cartserve {

Status SamplingParams::validate(int32_t vocab_size) const {
  const auto bad = [](const char* field, auto value, const char* rule) {
    return make_error(ErrorCode::kInvalidArgument, "{} must be {}, got {}", field, rule, value);
  };
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return bad("temperature", temperature, ">= 0");
  }
  if (top_k < -1) return bad("top_k", top_k, "-1, 0 (disabled) or positive");
  if (!(top_p > 0.0f && top_p <= 1.0f)) return bad("top_p", top_p, "in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return bad("min_p", min_p, "in [0, 1]");
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return bad("repetition_penalty", repetition_penalty, "> 0");
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return bad("presence_penalty", presence_penalty, "in [-2, 2]");
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return bad("frequency_penalty", frequency_penalty, "in [-2, 2]");
  }
  if (max_tokens < 1) return bad("max_tokens", max_tokens, ">= 1");
  if (min_tokens < 0 || min_tokens > max_tokens) {
    return bad("min_tokens", min_tokens, "in [0, max_tokens]");
  }
  if (top_logprobs < 0 || top_logprobs > kMaxTopLogprobs) {
    return bad("top_logprobs", top_logprobs, "in [0, 20]");
  }
  if (prompt_logprobs < -1 || prompt_logprobs > kMaxTopLogprobs) {
    return bad("prompt_logprobs", prompt_logprobs, "-1 (off) or in [0, 20]");
  }
  if (n < 1) return bad("n", n, ">= 1");
  for (const auto& s : stop) {
    if (s.empty()) return make_error(ErrorCode::kInvalidArgument, "stop strings must not be empty");
  }
  for (int32_t id : stop_token_ids) {
    if (id < 0 || (vocab_size > 0 && id >= vocab_size)) {
      return make_error(ErrorCode::kInvalidArgument,
                        "stop_token_ids holds {}, outside the vocabulary [0, {})", id, vocab_size);
    }
  }
  return Status::ok_status();
}

}  // namespace cartserve
