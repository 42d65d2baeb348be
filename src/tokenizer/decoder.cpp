#include "tokenizer/decoder.h"

#include "tokenizer/utf8.h"

namespace cartserve {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

bool one_char(std::string_view s) {
  return !s.empty() && utf8::decode(s, 0).len == static_cast<int>(s.size());
}

void replace_all(std::string& s, std::string_view pattern, std::string_view content) {
  if (s.find(pattern) == std::string::npos) return;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(pattern, pos)) != std::string::npos; pos = hit + pattern.size()) {
    out.append(s, pos, hit - pos);
    out += content;
  }
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Per-token steps (Replace, Metaspace). `first`: the token is the text's first.
std::string apply_token_steps(const std::vector<DecoderStep>& steps, std::string_view token,
                              bool first) {
  std::string s(token);
  for (const DecoderStep& st : steps) {
    if (st.kind == DecoderStep::Kind::kReplace) {
      replace_all(s, st.pattern, st.content);
    } else if (st.kind == DecoderStep::Kind::kMetaspace) {
      replace_all(s, st.pattern, first && st.prepend ? "" : " ");
    }
  }
  return s;
}

}  // namespace

Result<SpmDecoder> SpmDecoder::create(std::vector<DecoderStep> steps) {
  SpmDecoder d;
  bool per_chunk = false, fused = false, stripped = false;
  for (size_t i = 0; i < steps.size(); ++i) {
    DecoderStep& st = steps[i];
    switch (st.kind) {
      case DecoderStep::Kind::kReplace:
        if (!one_char(st.pattern)) {
          return make_error(ErrorCode::kUnsupported,
                            "decoder step {}: Replace pattern '{}' is not one character", i,
                            st.pattern);
        }
        (per_chunk ? d.after_ : d.before_).push_back(std::move(st));
        break;
      case DecoderStep::Kind::kMetaspace:
        if (i != 0 || !one_char(st.pattern)) {
          return make_error(ErrorCode::kUnsupported,
                            "decoder step {}: Metaspace is supported as the first step only, with "
                            "a one-character replacement",
                            i);
        }
        d.before_.push_back(std::move(st));
        break;
      case DecoderStep::Kind::kByteFallback:
        if (per_chunk) {
          return make_error(ErrorCode::kUnsupported,
                            "decoder step {}: ByteFallback after Fuse or a second ByteFallback", i);
        }
        d.byte_fallback_ = true;
        per_chunk = true;
        break;
      case DecoderStep::Kind::kFuse:
        per_chunk = fused = true;
        break;
      case DecoderStep::Kind::kStrip:
        if (!fused || stripped || !one_char(st.pattern)) {
          return make_error(ErrorCode::kUnsupported,
                            "decoder step {}: Strip is supported once, after Fuse, with a "
                            "one-character content and stop 0",
                            i);
        }
        stripped = true;
        d.after_.push_back(std::move(st));
        break;
    }
  }
  return d;
}

std::optional<uint8_t> SpmDecoder::byte_of(std::string_view t) const {
  // HF: exactly "<0x" + two hex digits + ">".
  if (!byte_fallback_ || t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return {};
  const int hi = hex_digit(t[3]), lo = hex_digit(t[4]);
  if (hi < 0 || lo < 0) return {};
  return static_cast<uint8_t>(hi * 16 + lo);
}

std::string SpmDecoder::token_text(std::string_view token) const {
  std::string s = apply_token_steps(before_, token, /*first=*/false);
  if (auto b = byte_of(s)) return std::string(1, static_cast<char>(*b));
  for (const DecoderStep& st : after_) {
    if (st.kind == DecoderStep::Kind::kReplace) replace_all(s, st.pattern, st.content);
  }
  return s;
}

DecodeState::DecodeState(const SpmDecoder& dec, bool at_text_start, bool eager)
    : dec_(dec), eager_(eager), index_(at_text_start ? 0 : 1) {
  if (at_text_start) {
    for (const DecoderStep& st : dec_.after_) {
      if (st.kind == DecoderStep::Kind::kStrip) strip_left_ = st.start;
    }
  }
}

void DecodeState::emit(std::string chunk, std::string& out) {
  for (const DecoderStep& st : dec_.after_) {
    if (st.kind == DecoderStep::Kind::kReplace) {
      replace_all(chunk, st.pattern, st.content);
    } else if (st.kind == DecoderStep::Kind::kStrip) {
      size_t cut = 0;
      while (strip_left_ > 0 && cut < chunk.size()) {
        if (chunk.compare(cut, st.pattern.size(), st.pattern) != 0) {
          strip_left_ = 0;  // the output has started with something else
          break;
        }
        cut += st.pattern.size();
        --strip_left_;
      }
      chunk.erase(0, cut);
    }
  }
  out += chunk;
}

void DecodeState::push(std::string_view token, std::string& out) {
  const bool first = index_ == 0;
  ++index_;
  std::string s = apply_token_steps(dec_.before_, token, first);
  if (auto b = dec_.byte_of(s)) {
    run_.push_back(static_cast<char>(*b));
    ++run_len_;
    if (!eager_) return;
    // Emit every complete character; an invalid subpart becomes U+FFFD per byte.
    std::string ready;
    size_t pos = 0;
    while (pos < run_.size()) {
      const utf8::Decoded d = utf8::decode(run_, pos);
      if (d.truncated) break;
      if (d.len > 0) {
        ready.append(run_, pos, d.len);
        pos += d.len;
      } else {
        for (int k = 0; k < -d.len; ++k)
          ready += kReplacementChar;
        pos += -d.len;
      }
    }
    run_.erase(0, pos);
    if (!ready.empty()) emit(std::move(ready), out);
    return;
  }
  end_run(out);
  emit(std::move(s), out);
}

void DecodeState::end_run(std::string& out) {
  if (run_len_ == 0) return;
  std::string chunk;
  if (utf8::is_valid(run_)) {
    chunk = std::move(run_);
  } else {
    for (size_t k = 0; k < run_.size(); ++k)
      chunk += kReplacementChar;
  }
  run_.clear();
  run_len_ = 0;
  emit(std::move(chunk), out);
}

void DecodeState::finish(std::string& out) {
  end_run(out);
}

}  // namespace cartserve
