// Normalizers of tokenizer.json: Unicode forms (NFC, NFD, NFKC, NFKD, through
// utf8proc), Prepend and Replace (literal pattern), and Sequence of them.
// Qwen2's tokenizer.json uses NFC; Llama 2's Sequence[Prepend("▁"),
// Replace(" ", "▁")] (the SentencePiece "add_dummy_prefix" and whitespace
// escape of the legacy Llama tokenizers).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace cartserve {

class Normalizer {
 public:
  enum class Form { kNfc, kNfd, kNfkc, kNfkd };
  enum class Kind { kForm, kPrepend, kReplace };
  struct Step {
    Kind kind = Kind::kForm;
    Form form = Form::kNfc;
    std::string text;     // kPrepend: what to prepend; kReplace: the literal pattern
    std::string content;  // kReplace: the replacement
  };

  Normalizer() = default;
  explicit Normalizer(std::vector<Form> forms);
  explicit Normalizer(std::vector<Step> steps) : steps_(std::move(steps)) {}

  static Step prepend(std::string text) {
    return Step{Kind::kPrepend, Form::kNfc, std::move(text), {}};
  }
  static Step replace(std::string pattern, std::string content) {
    return Step{Kind::kReplace, Form::kNfc, std::move(pattern), std::move(content)};
  }

  bool empty() const { return steps_.empty(); }
  // `text` must be valid UTF-8. ASCII text passes the Unicode forms unchanged
  // without work. Prepend applies to non-empty text only (as HF).
  std::string apply(std::string_view text) const;

 private:
  std::vector<Step> steps_;
};

}  // namespace cartserve
