#include "tokenizer/decoder.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace cartserve {

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tok, bool skip_special,
                                           bool at_text_start)
    : tok_(tok), skip_special_(skip_special) {
  if (tok_.impl_ && tok_.impl_->spm) {
    spm_ = std::make_unique<DecodeState>(*tok_.impl_->spm, at_text_start, /*eager=*/true);
  }
}

StreamingDetokenizer::~StreamingDetokenizer() = default;

// NOTE (byte-level): pending_ only ever holds the unfinished UTF-8 sequence at
// the end of what was pushed (at most 3 bytes); everything before it is
// emitted, invalid bytes as U+FFFD. The concatenated output therefore equals
// decode() of the whole stream, whatever the token boundaries.
// NOTE (SentencePiece-style): the decoder chain runs token by token; a byte
// run's characters are emitted as they complete. The output equals decode()
// (with at_text_start) unless a byte run holds invalid UTF-8: decode() turns
// such a whole run into U+FFFD per byte, the stream only its invalid bytes.
std::string StreamingDetokenizer::push(int32_t id) {
  if (id < 0 || id >= tok_.vocab_size()) return {};
  if (skip_special_ && tok_.is_special(id)) return {};
  if (spm_) {
    std::string out;
    spm_->push(tok_.token_text(id), out);
    return utf8::is_valid(out) ? out : utf8::repair(out);
  }
  pending_ += tok_.token_bytes(id);
  const size_t keep = utf8::incomplete_tail(pending_);
  std::string_view ready(pending_.data(), pending_.size() - keep);
  std::string out = utf8::is_valid(ready) ? std::string(ready) : utf8::repair(ready);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

std::string StreamingDetokenizer::flush() {
  if (spm_) {
    std::string out;
    spm_->finish(out);
    return utf8::is_valid(out) ? out : utf8::repair(out);
  }
  std::string out = utf8::repair(pending_);
  pending_.clear();
  return out;
}

}  // namespace cartserve
