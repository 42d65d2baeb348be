// PCRE2 regex for pre-tokenizer splits, compiled with UTF + UCP so \p{L},
// \p{N} and \s follow Unicode (as Oniguruma does in HF `tokenizers`), and
// JIT-compiled when the platform allows.
//
// NOTE: subjects must be valid UTF-8 (the tokenizer repairs its input once);
// matching then skips PCRE2's per-call UTF check, which would otherwise make
// iterating over a long text quadratic.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace cartserve {

struct MatchSpan {
  size_t begin = 0;
  size_t end = 0;
};

class Regex {
 public:
  // kInvalidArgument (with PCRE2's message and offset) for a bad pattern.
  static Result<Regex> compile(std::string_view pattern);
  // A pattern that matches `literal` exactly.
  static Result<Regex> literal(std::string_view literal);

  // All non-overlapping, non-empty matches, left to right (empty matches are
  // skipped and the search moves on by one character). Appends to `out`.
  void find_all(std::string_view subject, std::vector<MatchSpan>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Code;
  std::shared_ptr<const Code> code_;  // immutable; shared by copies and threads
  std::string pattern_;
};

}  // namespace cartserve
