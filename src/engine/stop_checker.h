// When generation stops. Two levels:
// - token level (check_token_stop, used by the scheduler after each sampled
//   token): EOS ids unless ignore_eos, stop_token_ids, max_tokens, the
//   context length; nothing stops before min_tokens except the length limits.
// - text level (StopStringMatcher, used by the engine on the detokenized
//   stream): stop strings, which may span several tokens. The matched string
//   is cut from the output (unless include_stop_str_in_output) and text that
//   could still become a stop string is held back while streaming.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/request.h"

namespace cartserve {

struct TokenStop {
  FinishReason reason = FinishReason::kNone;
  std::optional<int32_t> stop_token;  // set for a stop_token_ids match (vLLM's stop_reason)
};

// Looks at the request's last output token. `max_model_len` bounds positions.
TokenStop check_token_stop(const Request& req, int32_t max_model_len);

class StopStringMatcher {
 public:
  StopStringMatcher(std::vector<std::string> stops, bool include_stop_str_in_output);

  struct Step {
    std::string text;  // safe to emit now
    bool stopped = false;
    std::string matched;  // the stop string that matched
  };
  // Feeds newly detokenized text (valid UTF-8). After a stop, returns nothing.
  Step push(std::string_view text);
  // At the end of generation (not stopped): the held-back text.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  bool include_;
  size_t max_len_ = 0;
  std::string held_;  // text not emitted yet
  bool stopped_ = false;
};

}  // namespace cartserve
