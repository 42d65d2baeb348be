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
#include "tokenizer/decoder.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unigram.h"

namespace cartserve {

// Everything that defines a tokenizer, in native form: byte-level BPE (the
// pre-tokenizer ends with ByteLevel, ByteLevel decoder) or SentencePiece-style
// (BPE with byte fallback or Unigram, Metaspace or Prepend/Replace, a decoder
// chain).
struct TokenizerSpec {
  std::string source;  // "tokenizer.json" or "GGUF", for messages
  VocabMap vocab;      // model vocabulary: token text (byte-level form for byte-level BPE) -> id
  std::vector<std::pair<std::string, std::string>> merges;  // rank order
  BpeOptions bpe;
  std::optional<UnigramSpec> unigram;  // set: a Unigram model instead of BPE
  // Unset: the ByteLevel decoder. Set: a SentencePiece-style decoder chain.
  std::optional<std::vector<DecoderStep>> decoder;
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
  BpeModel bpe;                           // unless unigram
  std::unique_ptr<UnigramModel> unigram;  // the model when set
  std::unique_ptr<SpmDecoder> spm;        // decoder of a SentencePiece-style tokenizer
  Normalizer normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  AddedTokenMatcher raw_matcher;         // added tokens with normalized == false
  AddedTokenMatcher normalized_matcher;  // added tokens with normalized == true
  VocabMap added_ids;                    // added token content -> id
  std::vector<std::string> id_text;      // [vocab_size] as in the vocabulary
  std::vector<std::string> id_bytes;     // [vocab_size] what the token stands for (decoded)
  std::vector<uint8_t> id_special;       // [vocab_size] 1 for special added tokens
  std::optional<int32_t> bos_id, eos_id;
  std::vector<int32_t> stop_ids;  // sorted, unique
  bool add_bos = false;

  void encode_text(std::string_view text, bool at_text_start, std::vector<int32_t>& out) const;
  const VocabMap& model_vocab() const { return unigram ? unigram->vocab() : bpe.vocab(); }
};

}  // namespace cartserve
