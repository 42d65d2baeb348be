// Internals shared by tokenizer.cpp and the two loaders (hf_json.cpp,
// gguf_tokenizer.cpp): a loader fills a TokenizerSpec, build_tokenizer()
// checks it and makes the Tokenizer.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace cartserve {

// Everything that defines a byte-level BPE tokenizer, in native form.
struct TokenizerSpec {
  std::string source;  // "tokenizer.json" or "GGUF", for messages
  VocabMap vocab;      // model vocabulary: byte-level token text -> id
  std::vector<std::pair<std::string, std::string>> merges;  // rank order
  BpeOptions bpe;
  std::vector<AddedToken> added;
  Normalizer normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::optional<int32_t> bos_id, eos_id;
  std::vector<int32_t> extra_stop_ids;  // eot/eom ids named by the source
  bool add_bos = false;
};

Result<Tokenizer> build_tokenizer(TokenizerSpec spec);

// Texts of special tokens that end generation besides eos (llama.cpp's
// end-of-generation list plus Llama 3's <|end_of_text|>).
const std::vector<std::string>& end_of_turn_texts();

struct Tokenizer::Impl {
  BpeModel bpe;
  Normalizer normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  AddedTokenMatcher raw_matcher;         // added tokens with normalized == false
  AddedTokenMatcher normalized_matcher;  // added tokens with normalized == true
  VocabMap added_ids;                    // added token content -> id
  std::vector<std::string> id_text;      // [vocab_size] as in the vocabulary
  std::vector<std::string> id_bytes;     // [vocab_size] byte-level decoded
  std::vector<uint8_t> id_special;       // [vocab_size] 1 for special added tokens
  std::optional<int32_t> bos_id, eos_id;
  std::vector<int32_t> stop_ids;  // sorted, unique
  bool add_bos = false;

  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
};

}  // namespace cartserve
