// Unigram language-model tokenizer (SentencePiece "unigram", HF `tokenizers`
// models/unigram): the segmentation of a piece that maximizes the sum of the
// piece scores (Viterbi over every vocabulary entry that matches at each
// position). A character no entry covers is unk, scored min_score - 10; runs
// of unk are fused into one; with byte_fallback an unk run becomes the
// <0xNN> tokens of its bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"
#include "tokenizer/bpe.h"

namespace cartserve {

struct UnigramSpec {
  std::vector<std::pair<std::string, double>> pieces;  // [id] -> (text, score)
  std::optional<int32_t> unk_id;
  bool byte_fallback = false;
};

class UnigramModel {
 public:
  // kCorrupt for an unk_id outside the vocabulary or an empty vocabulary.
  static Result<UnigramModel> create(UnigramSpec spec);

  // Appends the ids of one pre-tokenized piece (valid UTF-8). Thread-safe.
  void encode_piece(std::string_view text, std::vector<int32_t>& out) const;

  const VocabMap& vocab() const { return vocab_; }

 private:
  struct Node {
    int32_t token = -1;  // id of the piece ending here, or -1
  };
  // Child of trie node `node` on byte b, or -1.
  int32_t child(int32_t node, uint8_t b) const;

  std::vector<double> scores_;  // [id]
  VocabMap vocab_;              // text -> id (a repeated text: the last id)
  std::vector<Node> nodes_;     // byte trie over every piece; nodes_[0] is the root
  std::unordered_map<uint64_t, int32_t> edges_;  // (node << 8 | byte) -> child
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_ids_{};  // [byte] -> id of <0xNN>, or -1
  bool byte_fallback_ = false;
  double unk_score_ = 0.0;
};

}  // namespace cartserve
