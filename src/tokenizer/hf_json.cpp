// Tokenizer::from_hf_json: a HF tokenizer.json (model BPE, byte-level or
// SentencePiece-style with byte fallback, or Unigram) into a TokenizerSpec.
// Every field is type-checked; a file we cannot honour exactly (another model
// type, an unknown pre-tokenizer...) is a clear kUnsupported naming the field,
// never a silently different tokenization.
#include <algorithm>

#include <nlohmann/json.hpp>

#include "core/logging.h"
#include "tokenizer/metaspace.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace cartserve {
namespace {

using json = nlohmann::json;

// Member `key` of object j, or nullptr when absent or null.
const json* member(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

Status type_error(const std::string& path, const char* want, const json& got) {
  return make_error(ErrorCode::kCorrupt, "tokenizer.json: {} must be {}, not {}", path, want,
                    got.type_name());
}

Status read_bool(const json& j, const char* key, const std::string& path, bool* out) {
  const json* v = member(j, key);
  if (v == nullptr) return Status();  // keep the default
  if (!v->is_boolean()) return type_error(path + "." + key, "a boolean", *v);
  *out = v->get<bool>();
  return Status();
}

Status read_string(const json& j, const char* key, const std::string& path,
                   std::optional<std::string>* out) {
  const json* v = member(j, key);
  if (v == nullptr) return Status();
  if (!v->is_string()) return type_error(path + "." + key, "a string", *v);
  *out = v->get<std::string>();
  return Status();
}

std::string type_of(const json& j) {
  const json* t = member(j, "type");
  return t != nullptr && t->is_string() ? t->get<std::string>() : std::string();
}

// A literal {"String": ...} pattern (Replace); a Regex one is kUnsupported.
Result<std::string> string_pattern(const json& j, const std::string& path) {
  const json* pat = member(j, "pattern");
  const json* str = pat ? member(*pat, "String") : nullptr;
  if (pat != nullptr && member(*pat, "Regex") != nullptr) {
    return make_error(ErrorCode::kUnsupported,
                      "tokenizer.json: {}.pattern: a Regex Replace is not supported (String is)",
                      path);
  }
  if (str == nullptr || !str->is_string()) {
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.pattern must be {{\"String\": ...}}",
                      path);
  }
  return str->get<std::string>();
}

Result<std::string> required_string(const json& j, const char* key, const std::string& path) {
  std::optional<std::string> v;
  CS_RETURN_IF_ERROR(read_string(j, key, path, &v));
  if (!v) return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.{} is missing", path, key);
  return *v;
}

bool is_one_char(std::string_view s) {
  return !s.empty() && utf8::decode(s, 0).len == static_cast<int>(s.size());
}

// Metaspace's replacement and prepend scheme, from either serialization
// (prepend_scheme, or the older add_prefix_space: true -> always).
Status parse_metaspace_fields(const json& j, const std::string& path, std::string* replacement,
                              PrependScheme* scheme) {
  CS_ASSIGN_OR_RETURN(*replacement, required_string(j, "replacement", path));
  if (!is_one_char(*replacement)) {
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.replacement must be one character",
                      path);
  }
  std::optional<std::string> ps;
  CS_RETURN_IF_ERROR(read_string(j, "prepend_scheme", path, &ps));
  bool add_prefix_space = true;
  CS_RETURN_IF_ERROR(read_bool(j, "add_prefix_space", path, &add_prefix_space));
  if (!ps) {
    *scheme = add_prefix_space ? PrependScheme::kAlways : PrependScheme::kNever;
  } else if (*ps == "always") {
    *scheme = PrependScheme::kAlways;
  } else if (*ps == "first") {
    *scheme = PrependScheme::kFirst;
  } else if (*ps == "never") {
    *scheme = PrependScheme::kNever;
  } else {
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.prepend_scheme '{}' is unknown",
                      path, *ps);
  }
  return Status();
}

Status parse_normalizer(const json& j, const std::string& path, int depth,
                        std::vector<Normalizer::Step>& steps) {
  if (depth > 16)
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: {} nests too deeply", path);
  const std::string type = type_of(j);
  if (type == "Sequence") {
    const json* list = member(j, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.normalizers must be a list", path);
    }
    for (size_t i = 0; i < list->size(); ++i) {
      CS_RETURN_IF_ERROR(parse_normalizer((*list)[i], fmt::format("{}.normalizers[{}]", path, i),
                                          depth + 1, steps));
    }
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    Normalizer::Step st;
    st.form = type == "NFC"    ? Normalizer::Form::kNfc
              : type == "NFD"  ? Normalizer::Form::kNfd
              : type == "NFKC" ? Normalizer::Form::kNfkc
                               : Normalizer::Form::kNfkd;
    steps.push_back(st);
  } else if (type == "Prepend") {
    CS_ASSIGN_OR_RETURN(std::string text, required_string(j, "prepend", path));
    steps.push_back(Normalizer::prepend(std::move(text)));
  } else if (type == "Replace") {
    CS_ASSIGN_OR_RETURN(std::string pattern, string_pattern(j, path));
    CS_ASSIGN_OR_RETURN(std::string content, required_string(j, "content", path));
    steps.push_back(Normalizer::replace(std::move(pattern), std::move(content)));
  } else {
    return make_error(ErrorCode::kUnsupported,
                      "tokenizer.json: {} of type '{}' is not supported (NFC, NFD, NFKC, NFKD, "
                      "Prepend, Replace and Sequence are)",
                      path, type);
  }
  return Status();
}

Result<SplitBehavior> parse_behavior(const json& j, const std::string& path) {
  const json* b = member(j, "behavior");
  if (b == nullptr || !b->is_string()) {
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.behavior must be a string", path);
  }
  const std::string s = b->get<std::string>();
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.behavior '{}' is unknown", path, s);
}

Result<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const json& j, const std::string& path,
                                                          int depth) {
  if (depth > 16) {
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: {} nests too deeply", path);
  }
  const std::string type = type_of(j);
  if (type == "Sequence") {
    const json* list = member(j, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.pretokenizers must be a list",
                        path);
    }
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list->size(); ++i) {
      const std::string p = fmt::format("{}.pretokenizers[{}]", path, i);
      CS_ASSIGN_OR_RETURN(auto step, parse_pre_tokenizer((*list)[i], p, depth + 1));
      if (!steps.empty() && steps.back()->ends_with_byte_level()) {
        return make_error(ErrorCode::kUnsupported,
                          "tokenizer.json: {} follows a ByteLevel pre-tokenizer; ByteLevel must "
                          "come last",
                          p);
      }
      steps.push_back(std::move(step));
    }
    return make_sequence_pre_tokenizer(std::move(steps));
  }
  if (type == "Split") {
    const json* pat = member(j, "pattern");
    const json* re = pat ? member(*pat, "Regex") : nullptr;
    const json* str = pat ? member(*pat, "String") : nullptr;
    if ((re == nullptr || !re->is_string()) && (str == nullptr || !str->is_string())) {
      return make_error(ErrorCode::kCorrupt,
                        "tokenizer.json: {}.pattern must be {{\"Regex\": ...}} or {{\"String\": "
                        "...}}",
                        path);
    }
    CS_ASSIGN_OR_RETURN(SplitBehavior behavior, parse_behavior(j, path));
    bool invert = false;
    CS_RETURN_IF_ERROR(read_bool(j, "invert", path, &invert));
    Result<Regex> regex = re != nullptr ? Regex::compile(re->get<std::string>())
                                        : Regex::literal(str->get<std::string>());
    if (!regex.ok()) return regex.status().with_context("tokenizer.json: " + path);
    return make_split_pre_tokenizer(std::move(regex).value(), behavior, invert);
  }
  if (type == "Digits") {
    bool individual = false;
    CS_RETURN_IF_ERROR(read_bool(j, "individual_digits", path, &individual));
    return make_digits_pre_tokenizer(individual);
  }
  if (type == "ByteLevel") {
    bool add_prefix_space = true, use_regex = true;  // HF defaults
    CS_RETURN_IF_ERROR(read_bool(j, "add_prefix_space", path, &add_prefix_space));
    CS_RETURN_IF_ERROR(read_bool(j, "use_regex", path, &use_regex));
    return make_byte_level_pre_tokenizer(add_prefix_space, use_regex);
  }
  if (type == "Metaspace") {
    std::string replacement;
    PrependScheme scheme = PrependScheme::kAlways;
    CS_RETURN_IF_ERROR(parse_metaspace_fields(j, path, &replacement, &scheme));
    bool split = true;  // HF default
    CS_RETURN_IF_ERROR(read_bool(j, "split", path, &split));
    return make_metaspace_pre_tokenizer(std::move(replacement), scheme, split);
  }
  return make_error(ErrorCode::kUnsupported,
                    "tokenizer.json: {} of type '{}' is not supported (Sequence, Split, Digits, "
                    "ByteLevel and Metaspace are)",
                    path, type);
}

// Flattens the decoder into steps; a lone ByteLevel (or a Sequence holding only
// it) leaves `steps` unset: the byte-level decoder.
Status parse_decoder(const json& j, const std::string& path, int depth,
                     std::optional<std::vector<DecoderStep>>& steps) {
  if (depth > 16)
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: {} nests too deeply", path);
  const std::string type = type_of(j);
  if (type == "Sequence") {
    const json* list = member(j, "decoders");
    if (list == nullptr || !list->is_array()) {
      return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.decoders must be a list", path);
    }
    if (list->size() == 1 && type_of((*list)[0]) == "ByteLevel") return Status();
    if (!steps) steps.emplace();
    for (size_t i = 0; i < list->size(); ++i) {
      CS_RETURN_IF_ERROR(
          parse_decoder((*list)[i], fmt::format("{}.decoders[{}]", path, i), depth + 1, steps));
    }
    return Status();
  }
  if (type == "ByteLevel") {
    if (depth == 0) return Status();
    return make_error(ErrorCode::kUnsupported,
                      "tokenizer.json: {}: ByteLevel inside a decoder Sequence with other steps is "
                      "not supported",
                      path);
  }
  if (!steps) steps.emplace();
  DecoderStep st;
  if (type == "Replace") {
    st.kind = DecoderStep::Kind::kReplace;
    CS_ASSIGN_OR_RETURN(st.pattern, string_pattern(j, path));
    CS_ASSIGN_OR_RETURN(st.content, required_string(j, "content", path));
  } else if (type == "ByteFallback") {
    st.kind = DecoderStep::Kind::kByteFallback;
  } else if (type == "Fuse") {
    st.kind = DecoderStep::Kind::kFuse;
  } else if (type == "Strip") {
    st.kind = DecoderStep::Kind::kStrip;
    CS_ASSIGN_OR_RETURN(st.pattern, required_string(j, "content", path));
    const json* start = member(j, "start");
    const json* stop = member(j, "stop");
    if (start == nullptr || !start->is_number_unsigned() || stop == nullptr ||
        !stop->is_number_unsigned()) {
      return make_error(ErrorCode::kCorrupt,
                        "tokenizer.json: {}.start and .stop must be non-negative integers", path);
    }
    if (stop->get<uint64_t>() != 0) {
      return make_error(ErrorCode::kUnsupported,
                        "tokenizer.json: {}: Strip with stop > 0 is not supported", path);
    }
    st.start = static_cast<size_t>(std::min<uint64_t>(start->get<uint64_t>(), 1u << 20));
  } else if (type == "Metaspace") {
    st.kind = DecoderStep::Kind::kMetaspace;
    PrependScheme scheme = PrependScheme::kAlways;
    CS_RETURN_IF_ERROR(parse_metaspace_fields(j, path, &st.pattern, &scheme));
    st.prepend = scheme != PrependScheme::kNever;
  } else {
    return make_error(ErrorCode::kUnsupported,
                      "tokenizer.json: {} of type '{}' is not supported (ByteLevel, Replace, "
                      "ByteFallback, Fuse, Strip, Metaspace and Sequence are)",
                      path, type);
  }
  steps->push_back(std::move(st));
  return Status();
}

// The first special token of a TemplateProcessing "single" template, if any
// (nested in a Sequence of processors for Llama 3).
std::optional<std::string> template_bos(const json* j, int depth = 0) {
  if (j == nullptr || depth > 8) return std::nullopt;
  const std::string type = type_of(*j);
  if (type == "Sequence") {
    const json* list = member(*j, "processors");
    if (list == nullptr || !list->is_array()) return std::nullopt;
    for (const json& p : *list) {
      if (auto t = template_bos(&p, depth + 1)) return t;
    }
    return std::nullopt;
  }
  if (type != "TemplateProcessing") return std::nullopt;
  const json* single = member(*j, "single");
  if (single == nullptr || !single->is_array() || single->empty()) return std::nullopt;
  const json* st = member((*single)[0], "SpecialToken");
  const json* id = st ? member(*st, "id") : nullptr;
  if (id == nullptr || !id->is_string()) return std::nullopt;
  return id->get<std::string>();
}

// {"type": "Unigram", "vocab": [[piece, score], ...], "unk_id", "byte_fallback"}.
Status parse_unigram(const json& model, TokenizerSpec& spec) {
  UnigramSpec u;
  CS_RETURN_IF_ERROR(read_bool(model, "byte_fallback", "model", &u.byte_fallback));
  if (const json* unk = member(model, "unk_id")) {
    if (!unk->is_number_integer() || unk->get<int64_t>() < 0 || unk->get<int64_t>() > INT32_MAX)
      return type_error("model.unk_id", "a token id", *unk);
    u.unk_id = static_cast<int32_t>(unk->get<int64_t>());
  }
  const json* vocab = member(model, "vocab");
  if (vocab == nullptr || !vocab->is_array()) {
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: model.vocab must be a list");
  }
  u.pieces.reserve(vocab->size());
  for (size_t i = 0; i < vocab->size(); ++i) {
    const json& e = (*vocab)[i];
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number()) {
      return make_error(ErrorCode::kCorrupt,
                        "tokenizer.json: model.vocab[{}] must be [piece, score]", i);
    }
    u.pieces.emplace_back(e[0].get<std::string>(), e[1].get<double>());
    spec.vocab[u.pieces.back().first] = static_cast<int32_t>(i);
  }
  spec.unigram = std::move(u);
  return Status();
}

Status parse_model(const json& model, TokenizerSpec& spec) {
  const std::string type = type_of(model);
  if (type == "Unigram") return parse_unigram(model, spec);
  if (!type.empty() && type != "BPE") {
    return make_error(ErrorCode::kUnsupported,
                      "tokenizer.json: model type '{}' is not supported (BPE and Unigram are)",
                      type);
  }
  CS_RETURN_IF_ERROR(read_bool(model, "byte_fallback", "model", &spec.bpe.byte_fallback));
  if (const json* d = member(model, "dropout")) {
    if (!d->is_number() || d->get<double>() != 0.0) {
      return make_error(ErrorCode::kUnsupported,
                        "tokenizer.json: model.dropout makes encoding random; not supported");
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    std::optional<std::string> v;
    CS_RETURN_IF_ERROR(read_string(model, key, "model", &v));
    if (v && !v->empty()) {
      return make_error(ErrorCode::kUnsupported, "tokenizer.json: model.{} '{}' is not supported",
                        key, *v);
    }
  }
  CS_RETURN_IF_ERROR(read_bool(model, "ignore_merges", "model", &spec.bpe.ignore_merges));
  CS_RETURN_IF_ERROR(read_bool(model, "fuse_unk", "model", &spec.bpe.fuse_unk));
  CS_RETURN_IF_ERROR(read_string(model, "unk_token", "model", &spec.bpe.unk_token));

  const json* vocab = member(model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: model.vocab must be an object");
  }
  spec.vocab.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it->is_number_integer())
      return type_error("model.vocab['" + it.key() + "']", "an integer", *it);
    const int64_t id = it->get<int64_t>();
    if (id < 0 || id > INT32_MAX) {
      return make_error(ErrorCode::kCorrupt,
                        "tokenizer.json: model.vocab['{}'] = {} is not a valid id", it.key(), id);
    }
    spec.vocab[it.key()] = static_cast<int32_t>(id);
  }

  const json* merges = member(model, "merges");
  if (merges == nullptr || !merges->is_array()) {
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: model.merges must be a list");
  }
  spec.merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    if (m.is_string()) {  // legacy "a b": exactly one space (HF)
      const std::string& s = m.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
        return make_error(ErrorCode::kCorrupt,
                          "tokenizer.json: model.merges[{}] '{}' is not two tokens separated by "
                          "one space",
                          i, s);
      }
      spec.merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      spec.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return make_error(ErrorCode::kCorrupt,
                        "tokenizer.json: model.merges[{}] must be \"a b\" or [\"a\", \"b\"]", i);
    }
  }
  return Status();
}

Status parse_added_tokens(const json* list, TokenizerSpec& spec) {
  if (list == nullptr) return Status();
  if (!list->is_array()) return type_error("added_tokens", "a list", *list);
  auto next_id = static_cast<int32_t>(spec.vocab.size());
  VocabMap assigned;
  for (size_t i = 0; i < list->size(); ++i) {
    const json& j = (*list)[i];
    const std::string path = fmt::format("added_tokens[{}]", i);
    const json* id = member(j, "id");
    const json* content = member(j, "content");
    if (id == nullptr || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() > INT32_MAX) {
      return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.id must be a valid id", path);
    }
    if (content == nullptr || !content->is_string()) {
      return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}.content must be a string", path);
    }
    AddedToken t;
    t.content = content->get<std::string>();
    if (t.content.empty()) continue;  // HF ignores empty added tokens
    // Ids as HF assigns them (AddedVocabulary::add_tokens), which is the
    // declared id in any consistent file: an earlier added token with the same
    // content, else the model token, else the next free id after the model's.
    if (auto it = assigned.find(t.content); it != assigned.end()) {
      t.id = it->second;
    } else if (auto in_vocab = spec.vocab.find(t.content); in_vocab != spec.vocab.end()) {
      t.id = in_vocab->second;
    } else {
      t.id = next_id++;
    }
    assigned[t.content] = t.id;
    if (t.id != id->get<int64_t>()) {
      LOG_WARN("tokenizer.json: added token '{}' declares id {} but gets id {} (as in HF)",
               t.content, id->get<int64_t>(), t.id);
    }
    CS_RETURN_IF_ERROR(read_bool(j, "special", path, &t.special));
    t.normalized = !t.special;  // HF's default when the field is absent
    CS_RETURN_IF_ERROR(read_bool(j, "normalized", path, &t.normalized));
    CS_RETURN_IF_ERROR(read_bool(j, "single_word", path, &t.single_word));
    CS_RETURN_IF_ERROR(read_bool(j, "lstrip", path, &t.lstrip));
    CS_RETURN_IF_ERROR(read_bool(j, "rstrip", path, &t.rstrip));
    spec.added.push_back(std::move(t));
  }
  return Status();
}

Result<std::optional<int32_t>> resolve(const TokenizerSpec& spec,
                                       const std::optional<std::string>& text, const char* what) {
  if (!text) return std::optional<int32_t>();
  for (const AddedToken& t : spec.added) {
    if (t.content == *text) return std::optional<int32_t>(t.id);
  }
  if (auto it = spec.vocab.find(*text); it != spec.vocab.end()) {
    return std::optional<int32_t>(it->second);
  }
  return make_error(ErrorCode::kInvalidArgument, "{} '{}' is not in the tokenizer's vocabulary",
                    what, *text);
}

Result<Tokenizer> parse(std::string_view json_text, const HfTokenizerConfig& config) {
  json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return make_error(ErrorCode::kCorrupt, "tokenizer.json is not valid JSON");
  }
  if (!root.is_object()) return type_error("the top level", "an object", root);
  TokenizerSpec spec;
  spec.source = "tokenizer.json";
  const json* model = member(root, "model");
  if (model == nullptr) return make_error(ErrorCode::kCorrupt, "tokenizer.json: no model");
  CS_RETURN_IF_ERROR(parse_model(*model, spec));
  CS_RETURN_IF_ERROR(parse_added_tokens(member(root, "added_tokens"), spec));
  if (const json* n = member(root, "normalizer")) {
    std::vector<Normalizer::Step> steps;
    CS_RETURN_IF_ERROR(parse_normalizer(*n, "normalizer", 0, steps));
    spec.normalizer = Normalizer(std::move(steps));
  }
  // No pre_tokenizer: the whole text is one piece (Llama 2's legacy pipeline).
  if (const json* pre = member(root, "pre_tokenizer")) {
    CS_ASSIGN_OR_RETURN(spec.pre_tokenizer, parse_pre_tokenizer(*pre, "pre_tokenizer", 0));
  }
  const json* decoder = member(root, "decoder");
  if (decoder == nullptr) {
    return make_error(ErrorCode::kUnsupported,
                      "tokenizer.json: no decoder; ids could not be turned back into text");
  }
  CS_RETURN_IF_ERROR(parse_decoder(*decoder, "decoder", 0, spec.decoder));

  const std::optional<std::string> tmpl_bos = template_bos(member(root, "post_processor"));
  CS_ASSIGN_OR_RETURN(spec.bos_id,
                      resolve(spec, config.bos_token ? config.bos_token : tmpl_bos, "bos_token"));
  CS_ASSIGN_OR_RETURN(spec.eos_id, resolve(spec, config.eos_token, "eos_token"));
  spec.add_bos = config.add_bos_token.value_or(tmpl_bos.has_value());
  if (spec.add_bos && !spec.bos_id) {
    LOG_WARN("tokenizer: add_bos_token is set but no bos token is known; BOS is not added");
  }
  return build_tokenizer(std::move(spec));
}

}  // namespace

Result<Tokenizer> Tokenizer::from_hf_json(std::string_view json_text,
                                          const HfTokenizerConfig& config) {
  try {
    return parse(json_text, config);
  } catch (const std::exception& e) {  // defensive: every access above is type-checked
    return make_error(ErrorCode::kCorrupt, "tokenizer.json: {}", e.what());
  }
}

}  // namespace cartserve
