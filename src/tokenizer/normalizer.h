// Unicode normalizers of tokenizer.json (NFC, NFD, NFKC, NFKD and Sequence
// of them), through utf8proc. Qwen2's tokenizer.json uses NFC.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace cartserve {

class Normalizer {
 public:
  enum class Form { kNfc, kNfd, kNfkc, kNfkd };

  Normalizer() = default;
  explicit Normalizer(std::vector<Form> steps) : steps_(std::move(steps)) {}

  bool empty() const { return steps_.empty(); }
  // `text` must be valid UTF-8. ASCII text comes back unchanged without work.
  std::string apply(std::string_view text) const;

 private:
  std::vector<Form> steps_;
};

}  // namespace cartserve
