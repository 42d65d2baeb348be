#include "tokenizer/added_tokens.h"

#include <algorithm>

#include "tokenizer/unicode_props.h"
#include "tokenizer/utf8.h"

namespace cartserve {
namespace {

// Start of the code point that ends at s[end) (s valid UTF-8, end > 0).
size_t prev_char(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80)
    --i;
  return i;
}

bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  return unicode::is_word_char(utf8::decode(s, prev_char(s, s.size())).cp);
}

bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  return unicode::is_word_char(utf8::decode(s, 0).cp);
}

// Start of the whitespace run at the end of s (s.size() if none).
size_t leftmost_space_at_end(std::string_view s) {
  size_t i = s.size();
  while (i > 0) {
    const size_t p = prev_char(s, i);
    if (!unicode::is_white_space(utf8::decode(s, p).cp)) break;
    i = p;
  }
  return i;
}

// Length of the whitespace run at the start of s.
size_t space_run_at_start(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const utf8::Decoded d = utf8::decode(s, i);
    if (d.len <= 0 || !unicode::is_white_space(d.cp)) break;
    i += static_cast<size_t>(d.len);
  }
  return i;
}

}  // namespace

void AddedTokenMatcher::build(std::vector<AddedToken> tokens,
                              const std::vector<std::string>& patterns) {
  tokens_ = std::move(tokens);
  nodes_.assign(1, Node{});
  first_byte_.fill(false);
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& p = patterns[t];
    if (p.empty()) continue;  // HF ignores empty added tokens
    first_byte_[static_cast<uint8_t>(p[0])] = true;
    int32_t n = 0;
    for (char c : p) {
      const auto b = static_cast<uint8_t>(c);
      int32_t child = -1;
      for (const auto& [k, v] : nodes_[n].next) {
        if (k == b) child = v;
      }
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[n].next.emplace_back(b, child);
        nodes_.push_back(Node{});
      }
      n = child;
    }
    nodes_[n].token = static_cast<int32_t>(t);  // a later duplicate wins
  }
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, size_t pos, size_t* end) const {
  int32_t best = -1;
  int32_t n = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto b = static_cast<uint8_t>(text[i]);
    int32_t child = -1;
    for (const auto& [k, v] : nodes_[n].next) {
      if (k == b) {
        child = v;
        break;
      }
    }
    if (child < 0) break;
    n = child;
    if (nodes_[n].token >= 0) {
      best = nodes_[n].token;
      *end = i + 1;
    }
  }
  return best;
}

void AddedTokenMatcher::split(std::string_view text, bool parse_special,
                              std::vector<Segment>& out) const {
  if (text.empty()) return;
  if (tokens_.empty()) {
    out.push_back({text, -1});
    return;
  }
  // NOTE: as in HF, all leftmost-longest matches are found first (on the
  // unmodified text), then filtered and widened by the strip rules; a skipped
  // match still hides whatever shorter token lies inside it.
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    size_t stop = 0;
    const int32_t t = longest_at(text, pos, &stop);
    if (t < 0) {
      ++pos;
      continue;
    }
    size_t start = pos;
    pos = stop;  // the next match starts after this one in any case
    const AddedToken& tok = tokens_[static_cast<size_t>(t)];
    if (tok.special && !parse_special) continue;
    if (tok.single_word) {
      const bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
      const bool stop_space = stop == text.size() || !starts_with_word(text.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) start = std::max(leftmost_space_at_end(text.substr(0, start)), start_offset);
    if (tok.rstrip) stop += space_run_at_start(text.substr(stop));
    start = std::min(start, stop);  // only overlapping strips could invert them
    if (start_offset < start) out.push_back({text.substr(start_offset, start - start_offset), -1});
    out.push_back({text.substr(start, stop - start), tok.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({text.substr(start_offset), -1});
}

}  // namespace cartserve
