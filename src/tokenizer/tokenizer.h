// Tokenizers built from a HF tokenizer.json or from GGUF metadata: byte-level
// BPE (GPT-2 family: Llama 3, SmolLM/SmolLM2, Qwen2/3, Mistral-Nemo ...) and
// SentencePiece-style ones (BPE with byte fallback and Metaspace or
// Prepend/Replace: Llama 2, Mistral 7B v0.1-0.3; Unigram). Encoding must equal
// the Python `tokenizers` package exactly.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace cartserve {

struct TokenizerSpec;

// Tokenizer fields of a GGUF file (tokenizer.ggml.*), read by the model loader.
struct GgufTokenizerData {
  std::string model;                     // tokenizer.ggml.model, e.g. "gpt2"
  std::string pre;                       // tokenizer.ggml.pre, e.g. "llama-bpe", "smollm", "qwen2"
  std::vector<std::string> tokens;       // id -> token text (byte-level encoded)
  std::vector<std::string> merges;       // "a b" pairs in rank order (none for "llama": derived)
  std::vector<double> scores;            // tokenizer.ggml.scores ("llama": SentencePiece scores)
  std::optional<bool> add_space_prefix;  // tokenizer.ggml.add_space_prefix
  std::vector<int32_t>
      token_types;  // 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  std::optional<int32_t> bos_id, eos_id, eot_id, eom_id, unk_id, pad_id;
  std::optional<bool> add_bos, add_eos;
};

class GgufFile;
// Reads the tokenizer.ggml.* fields of an opened GGUF file. kNotFound when the
// file has no tokenizer; kCorrupt (naming the key) for a field of the wrong
// type or an id outside int32.
Result<GgufTokenizerData> read_gguf_tokenizer_data(const GgufFile& file);

// Per-model settings from tokenizer_config.json that affect encoding.
struct HfTokenizerConfig {
  std::optional<std::string> bos_token;  // token text, e.g. "<|begin_of_text|>"
  std::optional<std::string> eos_token;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
};

class Tokenizer {
 public:
  // tokenizer.json text; `config` may refine bos/eos and add_bos. Without a
  // config, bos and add_bos come from a TemplateProcessing post_processor
  // whose template starts with a special token (Llama 3); eos stays unset.
  // kUnsupported for what cannot be honoured exactly (e.g. WordPiece, a
  // Regex Replace), naming the field.
  static Result<Tokenizer> from_hf_json(std::string_view json_text,
                                        const HfTokenizerConfig& config = {});
  // tokenizer.ggml.pre picks the pre-tokenizer (llama-bpe/llama3/llama-v3,
  // qwen2, smollm, gpt-2; empty or "default" falls back to GPT-2's split with
  // a warning; others are kUnsupported). Control tokens are special.
  // tokenizer.ggml.model "llama" is SentencePiece BPE as Llama 2's
  // tokenizer.json has it: merges derived from the scores, byte fallback,
  // "▁" prefixed to each text segment (unless add_space_prefix is false).
  static Result<Tokenizer> from_gguf(const GgufTokenizerData& data);

  // Encodes text. Special/added tokens in the text are matched when
  // `parse_special` (as HF does for added tokens); when false, special tokens
  // are encoded as plain text (HF encode_special_tokens) while non-special
  // added tokens still match. BOS is NOT added here: callers decide (see
  // add_bos_by_default()). Invalid UTF-8 is first repaired (U+FFFD per
  // maximal invalid subpart). Thread-safe.
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;

  // Concatenated token bytes; special tokens dropped when skip_special.
  // Invalid UTF-8 (a partial sequence) is replaced by U+FFFD as HF does.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // Raw bytes of one token (byte-level decoded, or "▁" as a space and a byte
  // token as its byte; the text for special tokens).
  const std::string& token_bytes(int32_t id) const;
  // The token as written in the vocabulary (byte-level encoded form).
  const std::string& token_text(int32_t id) const;
  std::optional<int32_t> token_to_id(std::string_view token_text) const;
  bool is_special(int32_t id) const;

  int32_t vocab_size() const;
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // eos plus end-of-turn tokens (<|eot_id|>, <|im_end|>, <|eom_id|>) that end generation.
  const std::vector<int32_t>& stop_ids() const;
  bool add_bos_by_default() const;

  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

 private:
  friend Result<Tokenizer> build_tokenizer(TokenizerSpec spec);
  friend class StreamingDetokenizer;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class DecodeState;

// Turns a token stream into text without ever emitting a broken UTF-8
// sequence: bytes of an incomplete character (byte-level, or a run of
// SentencePiece byte-fallback tokens) are held until it completes.
class StreamingDetokenizer {
 public:
  // at_text_start: the stream is a whole text, so the concatenated output is
  // decode() of it (SentencePiece: the leading space of the first token is
  // stripped). False (the default) for tokens that continue a prompt, as
  // generated ones do: "▁Paris" streams as " Paris", as vLLM has it.
  explicit StreamingDetokenizer(const Tokenizer& tok, bool skip_special = true,
                                bool at_text_start = false);
  ~StreamingDetokenizer();
  // Text that became complete with this token (possibly empty).
  std::string push(int32_t id);
  // Whatever is still held (invalid trailing bytes become U+FFFD).
  std::string flush();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;               // byte-level: an unfinished character's bytes
  std::unique_ptr<DecodeState> spm_;  // SentencePiece-style: the decoder chain's state
};

}  // namespace cartserve
