// BPE model: merge ranks over token ids, applied to one pre-tokenized piece at
// a time (HF `tokenizers` models/bpe, Word::merge_all). Byte-level (GPT-2
// family) or SentencePiece-style (characters, with byte fallback: Llama 2,
// Mistral).
//
// NOTE: a byte-level piece starts as one symbol per byte (the byte's character
// in the vocabulary); a SentencePiece-style one as one symbol per character,
// and a character missing from the vocabulary becomes its UTF-8 bytes as
// "<0xNN>" tokens (byte_fallback) or unk. The lowest-rank adjacent pair merges first, leftmost on
// ties, until no pair has a merge. A min-heap over (rank, position) with lazy invalidation makes
// this O(n log n) per piece, so a 100k-byte whitespace run is as cheap as 100k short words. Results
// for short pieces are cached.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"

namespace cartserve {

struct BpeOptions {
  bool byte_level = true;      // vocabulary in GPT-2's byte-level form; else raw UTF-8 pieces
  bool byte_fallback = false;  // (not byte_level) unknown characters as <0xNN> byte tokens
  bool ignore_merges = false;  // a piece that is a whole vocab entry maps to it directly
  std::optional<std::string> unk_token;  // for bytes missing from the vocabulary (else dropped)
  bool fuse_unk = false;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using VocabMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // `vocab`: token text (byte-level form) -> id. `merges`: pairs in rank order.
  // kCorrupt when a merge names a token (or a merge result) not in `vocab`.
  static Result<BpeModel> create(VocabMap vocab,
                                 const std::vector<std::pair<std::string, std::string>>& merges,
                                 BpeOptions options);

  BpeModel();
  ~BpeModel();
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;

  // Appends the ids of one pre-tokenized piece (raw bytes). Thread-safe.
  // NOTE: SentencePiece-style pieces can be whole texts (Llama 2's pipeline
  // has no pre-tokenizer); when no vocabulary token holds "▁" after another
  // character, no merge can cross the start of a "▁" word, so the piece is
  // cut there and each word merged (and cached) alone: same ids, faster.
  void encode_piece(std::string_view bytes, std::vector<int32_t>& out) const;

  const VocabMap& vocab() const { return vocab_; }
  size_t merge_count() const { return merge_count_; }

 private:
  struct MergeTable;
  struct Cache;
  void merge(std::string_view bytes, std::vector<int32_t>& out) const;
  void encode_word(std::string_view bytes, std::vector<int32_t>& out) const;

  VocabMap vocab_;
  BpeOptions options_;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_ids_{};  // [byte] -> id of its character (byte_level) or of
                                         // its <0xNN> token (byte_fallback), or -1
  std::unique_ptr<MergeTable> merges_;
  std::unique_ptr<Cache> cache_;
  size_t merge_count_ = 0;
  bool split_words_ = false;  // see encode_piece
};

}  // namespace cartserve
