// Tokenizer::from_gguf: GGUF tokenizer metadata (tokenizer.ggml.*) into a
// TokenizerSpec equal to the model's own tokenizer.json.
//
// NOTE: GGUF does not store the pre-tokenizer, only its name
// (tokenizer.ggml.pre); the table below restores what the HF tokenizer.json
// of that family holds. llama.cpp hand-codes the same splits; where its
// regexes differ in form from HF's (e.g. '[sS] for (?i:'s) in qwen2) we use
// HF's, since HF is the reference encoding.
#include <algorithm>
#include <climits>
#include <string_view>

#include "core/logging.h"
#include "formats/gguf.h"
#include "tokenizer/spm_merges.h"
#include "tokenizer/tokenizer_impl.h"

namespace cartserve {
namespace {

// Meta Llama 3 tokenizer.json, Split(Regex, Isolated) before ByteLevel(use_regex=false).
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2 tokenizer.json: as Llama 3 but single digits.
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum class PreFamily { kLlama3, kQwen2, kSmolLm, kGpt2 };

// GGUF token types (llama.cpp's llama_token_type).
constexpr int32_t kTypeUnknown = 2, kTypeControl = 3, kTypeUserDefined = 4;

Result<PreFamily> pre_family(std::string_view pre) {
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") return PreFamily::kLlama3;
  if (pre == "qwen2") return PreFamily::kQwen2;
  if (pre == "smollm") return PreFamily::kSmolLm;
  if (pre == "gpt-2" || pre == "gpt2") return PreFamily::kGpt2;
  if (pre.empty() || pre == "default") {
    // Files written before tokenizer.ggml.pre existed. GPT-2's ByteLevel regex
    // is what a tokenizer.json ByteLevel pre-tokenizer does by default, and
    // llama.cpp's own "default" starts from the same pattern.
    LOG_WARN("tokenizer: GGUF has tokenizer.ggml.pre '{}'; using the GPT-2 split regex",
             pre.empty() ? "(none)" : pre);
    return PreFamily::kGpt2;
  }
  return make_error(ErrorCode::kUnsupported,
                    "GGUF tokenizer.ggml.pre '{}' is not supported (known: llama-bpe, llama3, "
                    "llama-v3, qwen2, smollm, gpt-2, default)",
                    pre);
}

Result<std::unique_ptr<PreTokenizer>> make_pre_tokenizer(PreFamily f) {
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  switch (f) {
    case PreFamily::kLlama3:
    case PreFamily::kQwen2: {
      CS_ASSIGN_OR_RETURN(Regex re,
                          Regex::compile(f == PreFamily::kLlama3 ? kLlama3Pattern : kQwen2Pattern));
      steps.push_back(make_split_pre_tokenizer(std::move(re), SplitBehavior::kIsolated, false));
      CS_ASSIGN_OR_RETURN(auto bl, make_byte_level_pre_tokenizer(false, false));
      steps.push_back(std::move(bl));
      break;
    }
    case PreFamily::kSmolLm: {
      // SmolLM2 tokenizer.json: Sequence[Digits(individual), ByteLevel(regex)].
      steps.push_back(make_digits_pre_tokenizer(true));
      CS_ASSIGN_OR_RETURN(auto bl, make_byte_level_pre_tokenizer(false, true));
      steps.push_back(std::move(bl));
      break;
    }
    case PreFamily::kGpt2: {
      CS_ASSIGN_OR_RETURN(auto bl, make_byte_level_pre_tokenizer(false, true));
      steps.push_back(std::move(bl));
      break;
    }
  }
  return make_sequence_pre_tokenizer(std::move(steps));
}

// An optional id-valued key: absent -> nullopt.
Status read_optional_id(const GgufFile& file, const char* key, std::optional<int32_t>* out) {
  if (file.find(key) == nullptr) return Status();
  CS_ASSIGN_OR_RETURN(int64_t v, file.get_int(key));
  if (v < 0 || v > INT32_MAX) {
    return make_error(ErrorCode::kCorrupt, "{}: {} = {} is not a token id", file.path(), key, v);
  }
  *out = static_cast<int32_t>(v);
  return Status();
}

Status read_optional_bool(const GgufFile& file, const char* key, std::optional<bool>* out) {
  if (file.find(key) == nullptr) return Status();
  CS_ASSIGN_OR_RETURN(*out, file.get_bool(key));
  return Status();
}

}  // namespace

Result<GgufTokenizerData> read_gguf_tokenizer_data(const GgufFile& file) {
  GgufTokenizerData d;
  if (file.find("tokenizer.ggml.model") == nullptr) {
    return make_error(ErrorCode::kNotFound, "{}: no tokenizer (tokenizer.ggml.model is missing)",
                      file.path());
  }
  CS_ASSIGN_OR_RETURN(d.model, file.get_string("tokenizer.ggml.model"));
  if (file.find("tokenizer.ggml.pre") != nullptr) {
    CS_ASSIGN_OR_RETURN(d.pre, file.get_string("tokenizer.ggml.pre"));
  }
  CS_ASSIGN_OR_RETURN(d.tokens, file.get_string_array("tokenizer.ggml.tokens"));
  if (file.find("tokenizer.ggml.merges") != nullptr) {
    CS_ASSIGN_OR_RETURN(d.merges, file.get_string_array("tokenizer.ggml.merges"));
  } else if (d.model == "gpt2") {
    return make_error(ErrorCode::kCorrupt, "{}: BPE tokenizer without tokenizer.ggml.merges",
                      file.path());
  }
  if (file.find("tokenizer.ggml.scores") != nullptr) {
    CS_ASSIGN_OR_RETURN(d.scores, file.get_float_array("tokenizer.ggml.scores"));
  }
  CS_RETURN_IF_ERROR(
      read_optional_bool(file, "tokenizer.ggml.add_space_prefix", &d.add_space_prefix));
  if (file.find("tokenizer.ggml.token_type") != nullptr) {
    CS_ASSIGN_OR_RETURN(std::vector<int64_t> types,
                        file.get_int_array("tokenizer.ggml.token_type"));
    d.token_types.reserve(types.size());
    for (int64_t t : types)
      d.token_types.push_back(static_cast<int32_t>(std::clamp<int64_t>(t, -1, 255)));
  }
  CS_RETURN_IF_ERROR(read_optional_id(file, "tokenizer.ggml.bos_token_id", &d.bos_id));
  CS_RETURN_IF_ERROR(read_optional_id(file, "tokenizer.ggml.eos_token_id", &d.eos_id));
  CS_RETURN_IF_ERROR(read_optional_id(file, "tokenizer.ggml.eot_token_id", &d.eot_id));
  CS_RETURN_IF_ERROR(read_optional_id(file, "tokenizer.ggml.eom_token_id", &d.eom_id));
  CS_RETURN_IF_ERROR(read_optional_id(file, "tokenizer.ggml.unknown_token_id", &d.unk_id));
  CS_RETURN_IF_ERROR(read_optional_id(file, "tokenizer.ggml.padding_token_id", &d.pad_id));
  CS_RETURN_IF_ERROR(read_optional_bool(file, "tokenizer.ggml.add_bos_token", &d.add_bos));
  CS_RETURN_IF_ERROR(read_optional_bool(file, "tokenizer.ggml.add_eos_token", &d.add_eos));
  return d;
}

namespace {

// Vocabulary and added tokens shared by both GGUF tokenizer models.
void fill_vocab(const GgufTokenizerData& data, TokenizerSpec& spec) {
  spec.vocab.reserve(data.tokens.size());
  for (size_t i = 0; i < data.tokens.size(); ++i) {
    spec.vocab[data.tokens[i]] = static_cast<int32_t>(i);  // a repeated text: the last id wins
    const int32_t type = data.token_types.empty() ? 1 : data.token_types[i];
    if (type == kTypeControl || type == kTypeUnknown || type == kTypeUserDefined) {
      // Control (and unknown) tokens are special; user-defined ones are added
      // but not special. Both match the raw text, like llama.cpp.
      AddedToken t;
      t.content = data.tokens[i];
      t.id = static_cast<int32_t>(i);
      t.special = type != kTypeUserDefined;
      spec.added.push_back(std::move(t));
    }
  }
}

Status read_merges(const GgufTokenizerData& data, TokenizerSpec& spec) {
  spec.merges.reserve(data.merges.size());
  for (size_t i = 0; i < data.merges.size(); ++i) {
    const std::string& m = data.merges[i];
    const size_t sp = m.find(' ', 1);  // as llama.cpp: the first space after the first byte
    if (sp == std::string::npos) {
      return make_error(ErrorCode::kCorrupt, "GGUF: tokenizer.ggml.merges[{}] '{}' has no space", i,
                        m);
    }
    spec.merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }
  return Status();
}

// tokenizer.ggml.model "llama": SentencePiece BPE, as the model's own
// tokenizer.json (Llama 2: normalizer Prepend("▁") + Replace(" ", "▁"), no
// pre-tokenizer, byte fallback, decoder Replace/ByteFallback/Fuse/Strip).
// llama.cpp likewise prefixes a space at the start and after special tokens.
Result<Tokenizer> from_gguf_spm(const GgufTokenizerData& data) {
  TokenizerSpec spec;
  spec.source = "GGUF";
  fill_vocab(data, spec);
  if (!data.merges.empty()) {
    CS_RETURN_IF_ERROR(read_merges(data, spec));
  } else {
    if (data.scores.size() != data.tokens.size()) {
      return make_error(ErrorCode::kCorrupt,
                        "GGUF: tokenizer.ggml.scores has {} entries for {} tokens (a SentencePiece "
                        "vocabulary without merges needs one score per token)",
                        data.scores.size(), data.tokens.size());
    }
    spec.merges = spm_merges_from_scores(data.tokens, data.scores);
  }
  spec.bpe.byte_level = false;
  spec.bpe.byte_fallback = true;
  spec.bpe.fuse_unk = true;
  if (data.unk_id && static_cast<size_t>(*data.unk_id) < data.tokens.size())
    spec.bpe.unk_token = data.tokens[*data.unk_id];
  const std::string kMeta = "\u2581";
  const bool prefix = data.add_space_prefix.value_or(true);
  std::vector<Normalizer::Step> norm;
  if (prefix) norm.push_back(Normalizer::prepend(kMeta));
  norm.push_back(Normalizer::replace(" ", kMeta));
  spec.normalizer = Normalizer(std::move(norm));
  using K = DecoderStep::Kind;
  std::vector<DecoderStep> dec = {DecoderStep{K::kReplace, kMeta, std::string(1, ' '), 0, true},
                                  DecoderStep{K::kByteFallback, {}, {}, 0, true},
                                  DecoderStep{K::kFuse, {}, {}, 0, true}};
  if (prefix) dec.push_back(DecoderStep{K::kStrip, std::string(1, ' '), {}, 1, true});
  spec.decoder = std::move(dec);
  spec.bos_id = data.bos_id;
  spec.eos_id = data.eos_id;
  if (data.eot_id) spec.extra_stop_ids.push_back(*data.eot_id);
  if (data.eom_id) spec.extra_stop_ids.push_back(*data.eom_id);
  spec.add_bos = data.add_bos.value_or(true);  // SentencePiece models add BOS (llama.cpp)
  return build_tokenizer(std::move(spec));
}

}  // namespace

Result<Tokenizer> Tokenizer::from_gguf(const GgufTokenizerData& data) {
  if (data.model != "gpt2" && data.model != "llama") {
    return make_error(ErrorCode::kUnsupported,
                      "GGUF tokenizer.ggml.model '{}' is not supported ('gpt2', byte-level BPE, "
                      "and 'llama', SentencePiece BPE, are)",
                      data.model);
  }
  if (data.tokens.empty())
    return make_error(ErrorCode::kCorrupt, "GGUF: tokenizer.ggml.tokens is empty");
  if (!data.token_types.empty() && data.token_types.size() != data.tokens.size()) {
    return make_error(ErrorCode::kCorrupt,
                      "GGUF: tokenizer.ggml.token_type has {} entries for {} tokens",
                      data.token_types.size(), data.tokens.size());
  }
  if (data.model == "llama") return from_gguf_spm(data);
  CS_ASSIGN_OR_RETURN(PreFamily family, pre_family(data.pre));

  TokenizerSpec spec;
  spec.source = "GGUF";
  fill_vocab(data, spec);
  CS_RETURN_IF_ERROR(read_merges(data, spec));
  spec.bpe.ignore_merges = family == PreFamily::kLlama3;  // Llama 3's tokenizer.json sets it
  if (family == PreFamily::kQwen2) spec.normalizer = Normalizer({Normalizer::Form::kNfc});
  CS_ASSIGN_OR_RETURN(spec.pre_tokenizer, make_pre_tokenizer(family));

  spec.bos_id = data.bos_id;
  spec.eos_id = data.eos_id;
  if (data.eot_id) spec.extra_stop_ids.push_back(*data.eot_id);
  if (data.eom_id) spec.extra_stop_ids.push_back(*data.eom_id);
  // Llama 3 prepends <|begin_of_text|> (its post_processor); the others do not.
  spec.add_bos = data.add_bos.value_or(family == PreFamily::kLlama3);
  return build_tokenizer(std::move(spec));
}

}  // namespace cartserve
