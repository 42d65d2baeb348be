// Tokenizer: the encode pipeline of HF `tokenizers` for byte-level BPE and
// SentencePiece-style tokenizers (BPE with byte fallback, Unigram).
//
// NOTE: encode() runs, in this order (as TokenizerImpl::encode_single_sequence):
//   1. added tokens with normalized=false are split out of the raw text;
//   2. each remaining piece is normalized (NFC for Qwen2), and added tokens
//      with normalized=true are split out of it;
//   3. the pre-tokenizer splits the rest (regex / Digits / ByteLevel /
//      Metaspace, which needs to know whether a piece starts the text);
//   4. each pre-token goes through the model (BPE: one symbol per byte, or
//      per character with byte fallback; Unigram: Viterbi).
// decode() concatenates the byte-level-decoded tokens and repairs the result
// to valid UTF-8, as the ByteLevel decoder does; a SentencePiece-style
// tokenizer runs its decoder chain (decoder.h).
#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "tokenizer/byte_level.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace cartserve {
namespace {

// Ids above this are treated as corrupt input rather than allocated.
constexpr int32_t kMaxVocabId = 1 << 24;

}  // namespace

const std::vector<std::string>& end_of_turn_texts() {
  static const std::vector<std::string> texts = {
      "<|eot_id|>",    "<|eom_id|>",      "<|im_end|>", "<|end|>",           "<end_of_turn>",
      "<|endoftext|>", "<|end_of_text|>", "<EOT>",      "<end_of_utterance>"};
  return texts;
}

Result<Tokenizer> build_tokenizer(TokenizerSpec spec) {
  auto impl = std::make_unique<Tokenizer::Impl>();
  const bool byte_level = spec.pre_tokenizer && spec.pre_tokenizer->ends_with_byte_level();
  if (!spec.pre_tokenizer) spec.pre_tokenizer = make_sequence_pre_tokenizer({});
  if (byte_level) {
    if (spec.decoder) {
      return make_error(ErrorCode::kUnsupported,
                        "{}: a ByteLevel pre-tokenizer needs the ByteLevel decoder", spec.source);
    }
    if (spec.unigram) {
      return make_error(ErrorCode::kUnsupported,
                        "{}: a Unigram model with a ByteLevel pre-tokenizer is not supported",
                        spec.source);
    }
    if (spec.bpe.byte_fallback) {
      return make_error(ErrorCode::kUnsupported,
                        "{}: model.byte_fallback (SentencePiece-style BPE) with a ByteLevel "
                        "pre-tokenizer is not supported",
                        spec.source);
    }
  } else {
    if (!spec.decoder) {
      return make_error(ErrorCode::kUnsupported,
                        "{}: the pre-tokenizer does not end with ByteLevel, so the ByteLevel "
                        "decoder does not fit; a SentencePiece-style tokenizer needs its decoder "
                        "chain (Replace, ByteFallback, Fuse, Strip, Metaspace)",
                        spec.source);
    }
    spec.bpe.byte_level = false;
    Result<SpmDecoder> dec = SpmDecoder::create(std::move(*spec.decoder));
    if (!dec.ok()) return dec.status().with_context(spec.source);
    impl->spm = std::make_unique<SpmDecoder>(std::move(dec).value());
  }
  if (spec.vocab.empty())
    return make_error(ErrorCode::kCorrupt, "{}: empty vocabulary", spec.source);

  int32_t max_id = -1;
  for (const auto& [text, id] : spec.vocab) {
    if (id < 0 || id >= kMaxVocabId) {
      return make_error(ErrorCode::kCorrupt, "{}: token '{}' has id {} outside [0, {})",
                        spec.source, text, id, kMaxVocabId);
    }
    max_id = std::max(max_id, id);
  }
  for (const AddedToken& t : spec.added) {
    if (t.id < 0 || t.id >= kMaxVocabId) {
      return make_error(ErrorCode::kCorrupt, "{}: added token '{}' has id {} outside [0, {})",
                        spec.source, t.content, t.id, kMaxVocabId);
    }
    max_id = std::max(max_id, t.id);
  }
  const auto n = static_cast<size_t>(max_id) + 1;
  impl->id_text.assign(n, std::string());
  impl->id_special.assign(n, 0);
  for (const auto& [text, id] : spec.vocab)
    impl->id_text[id] = text;
  for (const AddedToken& t : spec.added) {
    impl->id_text[t.id] = t.content;
    impl->id_special[t.id] = t.special ? 1 : 0;
    impl->added_ids[t.content] = t.id;
  }
  impl->id_bytes.resize(n);
  for (size_t i = 0; i < n; ++i) {
    impl->id_bytes[i] = impl->spm ? impl->spm->token_text(impl->id_text[i])
                                  : byte_level::decode_token(impl->id_text[i]);
  }
  // HF decodes a normalized added token from its normalized form.
  for (const AddedToken& t : spec.added) {
    if (t.normalized && !spec.normalizer.empty() && !impl->spm) {
      impl->id_bytes[t.id] = byte_level::decode_token(spec.normalizer.apply(t.content));
    }
  }

  // Normalized added tokens are matched by their normalized form (HF).
  std::vector<AddedToken> raw, normalized;
  std::vector<std::string> raw_pat, normalized_pat;
  for (AddedToken& t : spec.added) {
    if (t.content.empty()) continue;
    if (t.normalized) {
      normalized_pat.push_back(spec.normalizer.apply(t.content));
      normalized.push_back(std::move(t));
    } else {
      raw_pat.push_back(t.content);
      raw.push_back(std::move(t));
    }
  }
  impl->raw_matcher.build(std::move(raw), raw_pat);
  impl->normalized_matcher.build(std::move(normalized), normalized_pat);

  if (spec.unigram) {
    CS_ASSIGN_OR_RETURN(UnigramModel u, UnigramModel::create(std::move(*spec.unigram)));
    impl->unigram = std::make_unique<UnigramModel>(std::move(u));
  } else {
    CS_ASSIGN_OR_RETURN(impl->bpe, BpeModel::create(std::move(spec.vocab), spec.merges, spec.bpe));
  }
  impl->normalizer = std::move(spec.normalizer);
  impl->pre_tokenizer = std::move(spec.pre_tokenizer);

  auto check_id = [&](std::optional<int32_t> id, const char* what) -> Status {
    if (id && (*id < 0 || static_cast<size_t>(*id) >= n)) {
      return make_error(ErrorCode::kCorrupt, "{}: {} id {} is outside the vocabulary (size {})",
                        spec.source, what, *id, n);
    }
    return Status();
  };
  CS_RETURN_IF_ERROR(check_id(spec.bos_id, "bos"));
  CS_RETURN_IF_ERROR(check_id(spec.eos_id, "eos"));
  impl->bos_id = spec.bos_id;
  impl->eos_id = spec.eos_id;
  impl->add_bos = spec.add_bos && spec.bos_id.has_value();

  std::vector<int32_t>& stops = impl->stop_ids;
  if (spec.eos_id) stops.push_back(*spec.eos_id);
  for (int32_t id : spec.extra_stop_ids) {
    if (id >= 0 && static_cast<size_t>(id) < n) stops.push_back(id);
  }
  for (const std::string& text : end_of_turn_texts()) {
    auto it = impl->added_ids.find(text);
    if (it != impl->added_ids.end() && impl->id_special[it->second]) stops.push_back(it->second);
  }
  std::sort(stops.begin(), stops.end());
  stops.erase(std::unique(stops.begin(), stops.end()), stops.end());

  Tokenizer tok;
  tok.impl_ = std::move(impl);
  return tok;
}

void Tokenizer::Impl::encode_text(std::string_view text, bool at_text_start,
                                  std::vector<int32_t>& out) const {
  PieceList list;
  list.pieces.push_back(text);
  list.at_text_start = at_text_start;
  pre_tokenizer->split(list);
  for (std::string_view piece : list.pieces) {
    if (unigram) {
      unigram->encode_piece(piece, out);
    } else {
      bpe.encode_piece(piece, out);
    }
  }
}

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> out;
  if (!impl_ || text.empty()) return out;
  // Invalid UTF-8 is repaired first (U+FFFD), as a Python str would have it.
  std::string repaired;
  if (!utf8::is_valid(text)) {
    repaired = utf8::repair(text);
    text = repaired;
  }
  out.reserve(text.size() / 3 + 4);
  std::vector<Segment> raw_segments, segments;
  impl_->raw_matcher.split(text, parse_special, raw_segments);
  for (const Segment& raw : raw_segments) {
    if (raw.id >= 0) {
      out.push_back(raw.id);
      continue;
    }
    // Whether this segment starts the text (offset 0 of the original).
    const bool raw_at_start = raw.text.data() == text.data();
    std::string normalized;
    std::string_view t = raw.text;
    if (!impl_->normalizer.empty()) {
      normalized = impl_->normalizer.apply(t);
      t = normalized;
    }
    segments.clear();
    impl_->normalized_matcher.split(t, parse_special, segments);
    for (const Segment& s : segments) {
      if (s.id >= 0) {
        out.push_back(s.id);
      } else {
        impl_->encode_text(s.text, raw_at_start && s.text.data() == t.data(), out);
      }
    }
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  if (!impl_) return bytes;
  if (impl_->spm) {
    DecodeState state(*impl_->spm, /*at_text_start=*/true, /*eager=*/false);
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= impl_->id_text.size()) continue;
      if (skip_special && impl_->id_special[id]) continue;
      state.push(impl_->id_text[id], bytes);
    }
    state.finish(bytes);
    return utf8::is_valid(bytes) ? bytes : utf8::repair(bytes);
  }
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= impl_->id_bytes.size())
      continue;  // as HF: unknown ids vanish
    if (skip_special && impl_->id_special[id]) continue;
    bytes += impl_->id_bytes[id];
  }
  return utf8::is_valid(bytes) ? bytes : utf8::repair(bytes);
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  static const std::string kEmpty;
  if (!impl_ || id < 0 || static_cast<size_t>(id) >= impl_->id_bytes.size()) return kEmpty;
  return impl_->id_bytes[id];
}

const std::string& Tokenizer::token_text(int32_t id) const {
  static const std::string kEmpty;
  if (!impl_ || id < 0 || static_cast<size_t>(id) >= impl_->id_text.size()) return kEmpty;
  return impl_->id_text[id];
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token_text) const {
  if (!impl_) return std::nullopt;
  if (auto it = impl_->added_ids.find(token_text); it != impl_->added_ids.end()) return it->second;
  const VocabMap& v = impl_->model_vocab();
  if (auto it = v.find(token_text); it != v.end()) return it->second;
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  return impl_ && id >= 0 && static_cast<size_t>(id) < impl_->id_special.size() &&
         impl_->id_special[id] != 0;
}

int32_t Tokenizer::vocab_size() const {
  return impl_ ? static_cast<int32_t>(impl_->id_text.size()) : 0;
}
std::optional<int32_t> Tokenizer::bos_id() const {
  return impl_ ? impl_->bos_id : std::nullopt;
}
std::optional<int32_t> Tokenizer::eos_id() const {
  return impl_ ? impl_->eos_id : std::nullopt;
}

const std::vector<int32_t>& Tokenizer::stop_ids() const {
  static const std::vector<int32_t> kNone;
  return impl_ ? impl_->stop_ids : kNone;
}

bool Tokenizer::add_bos_by_default() const {
  return impl_ && impl_->add_bos;
}

}  // namespace cartserve
