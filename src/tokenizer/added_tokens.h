// Added (and special) tokens: found in the text before pre-tokenization,
// leftmost-longest, with HF's lstrip / rstrip / single_word rules
// (AddedVocabulary::find_matches in `tokenizers`).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cartserve {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;      // skipped by decode(skip_special); matched only with parse_special
  bool single_word = false;  // only where not inside a word
  bool lstrip = false;       // swallows the whitespace on its left
  bool rstrip = false;       // swallows the whitespace on its right
  bool normalized = false;   // matched in normalized text (else in the raw text)
};

// A run of text (id < 0) or one added token.
struct Segment {
  std::string_view text;
  int32_t id = -1;
};

class AddedTokenMatcher {
 public:
  // `patterns[i]` is what token i is matched as (its content, or its
  // normalized content for normalized tokens).
  void build(std::vector<AddedToken> tokens, const std::vector<std::string>& patterns);
  bool empty() const { return tokens_.empty(); }

  // Appends the segments of `text` to `out`: token matches and the text
  // between them. Special tokens are left in the text when !parse_special.
  void split(std::string_view text, bool parse_special, std::vector<Segment>& out) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // byte -> node index
    int32_t token = -1;                             // index into tokens_ ending here
  };
  // Longest pattern starting at text[pos]: token index and end, or -1.
  int32_t longest_at(std::string_view text, size_t pos, size_t* end) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;                // trie over pattern bytes; nodes_[0] is the root
  std::array<bool, 256> first_byte_ = {};  // bytes that start some pattern
};

}  // namespace cartserve
