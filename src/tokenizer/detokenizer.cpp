#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace cartserve {

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tok, bool skip_special)
    : tok_(tok), skip_special_(skip_special) {}

// NOTE: pending_ only ever holds the unfinished UTF-8 sequence at the end of
// what was pushed (at most 3 bytes); everything before it is emitted, invalid
// bytes as U+FFFD. The concatenated output therefore equals decode() of the
// whole stream, whatever the token boundaries.
std::string StreamingDetokenizer::push(int32_t id) {
  if (id < 0 || id >= tok_.vocab_size()) return {};
  if (skip_special_ && tok_.is_special(id)) return {};
  pending_ += tok_.token_bytes(id);
  const size_t keep = utf8::incomplete_tail(pending_);
  std::string_view ready(pending_.data(), pending_.size() - keep);
  std::string out = utf8::is_valid(ready) ? std::string(ready) : utf8::repair(ready);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StreamingDetokenizer::flush() {
  std::string out = utf8::repair(pending_);
  pending_.clear();
  return out;
}

}  // namespace cartserve
