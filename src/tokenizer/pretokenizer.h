// Pre-tokenizers of HF `tokenizers` that byte-level BPE models use: Split
// (regex or literal, with every SplitDelimiterBehavior and `invert`), Digits,
// ByteLevel (optional prefix space, optional GPT-2 regex) and Sequence.
//
// NOTE: pieces are views into the caller's text or into strings the PieceList
// owns (ByteLevel's add_prefix_space makes new text). The byte -> character
// mapping of ByteLevel is not done here: the BPE model works on raw bytes and
// does it implicitly (one initial symbol per byte).
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/regex.h"

namespace cartserve {

class PieceList {
 public:
  std::vector<std::string_view> pieces;
  // Whether pieces[0] starts at offset 0 of the text given to encode() (what
  // Metaspace's prepend_scheme "first" asks; false after an added token).
  bool at_text_start = false;
  // Keeps `s` alive as long as the list and returns a view of it.
  std::string_view own(std::string s) {
    owned_.push_back(std::move(s));
    return owned_.back();
  }

 private:
  std::deque<std::string> owned_;  // deque: views stay valid as it grows
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces every piece by its sub-pieces, in order; empty pieces vanish.
  virtual void split(PieceList& list) const = 0;
  // Whether the chain ends with ByteLevel (what a byte-level BPE requires).
  virtual bool ends_with_byte_level() const { return false; }
};

// The GPT-2 pattern ByteLevel(use_regex=true) splits with.
extern const char* const kGpt2SplitPattern;

std::unique_ptr<PreTokenizer> make_split_pre_tokenizer(Regex regex, SplitBehavior behavior,
                                                       bool invert);
std::unique_ptr<PreTokenizer> make_digits_pre_tokenizer(bool individual_digits);
// Fails only if the built-in GPT-2 pattern does not compile (never in practice).
Result<std::unique_ptr<PreTokenizer>> make_byte_level_pre_tokenizer(bool add_prefix_space,
                                                                    bool use_regex);
std::unique_ptr<PreTokenizer> make_sequence_pre_tokenizer(
    std::vector<std::unique_ptr<PreTokenizer>> steps);

}  // namespace cartserve
