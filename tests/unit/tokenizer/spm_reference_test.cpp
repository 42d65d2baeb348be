// SentencePiece-style tokenizers against the Python `tokenizers` package:
// Llama 2's vocabulary (ggml-vocab-llama-spm.gguf: BPE with byte fallback,
// merges derived from the scores) through from_gguf and from_hf_json, the
// Metaspace variants over the same vocabulary, and a Unigram model with byte
// fallback. Fixtures: tools/make_tokenizer_fixtures.py (whose llama_spm
// pipeline is checked there against llama.cpp's ids of the real HF Llama 2
// tokenizer).
#include <gtest/gtest.h>

#include "core/sha256.h"
#include "tokenizer/spm_merges.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace cartserve::testing {
namespace {

using Merges = std::vector<std::pair<std::string, std::string>>;

const Merges& derived_merges(const GgufTokenizerData& data) {
  static const Merges merges = spm_merges_from_scores(data.tokens, data.scores);
  return merges;
}

// tokenizer.json text: a skeleton plus the GGUF's vocabulary and the derived merges.
std::string spm_json_text(const Json& skeleton, const GgufTokenizerData& data, bool pair_merges) {
  Json j = skeleton;
  Json vocab = Json::object();
  for (size_t i = 0; i < data.tokens.size(); ++i)
    vocab[data.tokens[i]] = i;
  Json merges = Json::array();
  for (const auto& [a, b] : derived_merges(data)) {
    if (pair_merges) {
      merges.push_back(Json::array({a, b}));
    } else {
      merges.push_back(a + " " + b);
    }
  }
  j["model"]["vocab"] = std::move(vocab);
  j["model"]["merges"] = std::move(merges);
  return j.dump();
}

Tokenizer must(Result<Tokenizer> t) {
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return t.ok() ? std::move(t).value() : Tokenizer();
}

std::string unhex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

void expect_cases(const Tokenizer& tok, const Json& cases, const std::string& what) {
  for (const Json& jc : cases) {
    const FixtureCase c = fixture_case(jc);
    SCOPED_TRACE(what + " text: \"" + escaped(c.text) + "\"");
    EXPECT_EQ(tok.encode(c.text), c.ids);
    EXPECT_EQ(tok.encode(c.text, /*parse_special=*/false), c.ids_no_special);
    EXPECT_EQ(tok.decode(c.ids), c.decoded);
    EXPECT_EQ(tok.decode(c.ids, /*skip_special=*/true), c.decoded_skip);
  }
}

// Raw bytes with invalid UTF-8: the ids of their lossy decoding.
void expect_invalid_utf8(const Tokenizer& tok, const Json& cases) {
  ASSERT_FALSE(cases.empty());
  for (const Json& c : cases) {
    const std::string raw = unhex(c.at("hex").get<std::string>());
    EXPECT_EQ(tok.encode(raw), ids_of(c.at("ids"))) << c.at("hex");
  }
}

TEST(SpmMerges, DerivedAsTransformersDerivesThem) {
  const Json& fx = tokenizer_fixture("llama_spm");
  const GgufTokenizerData& data = fixture_gguf(fx);
  ASSERT_EQ(data.model, "llama");
  ASSERT_EQ(data.scores.size(), data.tokens.size());
  EXPECT_TRUE(data.merges.empty());
  const Merges& merges = derived_merges(data);
  EXPECT_EQ(static_cast<int64_t>(merges.size()), fx.at("n_merges").get<int64_t>());
  Sha256 h;
  for (const auto& [a, b] : merges) {
    const std::string m = a + " " + b;
    h.update(m.data(), m.size() + 1);  // with the NUL
  }
  EXPECT_EQ(Sha256::hex(h.finish()), fx.at("merges_sha256").get<std::string>());
}

enum class Loader { kGguf, kJsonStringMerges, kJsonPairMerges };

class LlamaSpmTest : public ::testing::TestWithParam<Loader> {
 protected:
  static Tokenizer load(Loader l) {
    const Json& fx = tokenizer_fixture("llama_spm");
    const GgufTokenizerData& data = fixture_gguf(fx);
    if (l == Loader::kGguf) return must(Tokenizer::from_gguf(data));
    return must(Tokenizer::from_hf_json(
        spm_json_text(fx.at("tokenizer_json"), data, l == Loader::kJsonPairMerges)));
  }
};

TEST_P(LlamaSpmTest, EncodeDecodeMatchTokenizers) {
  const Json& fx = tokenizer_fixture("llama_spm");
  const Tokenizer tok = load(GetParam());
  ASSERT_EQ(tok.vocab_size(), fx.at("n_tokens").get<int32_t>());
  expect_cases(tok, fx.at("cases"), "case");
  expect_cases(tok, fx.at("random_cases"), "random");
  expect_invalid_utf8(tok, fx.at("invalid_utf8"));
  EXPECT_GE(fx.at("cases").size(), 100u);
}

TEST_P(LlamaSpmTest, PrefixDecodesMatchTokenizers) {
  const Json& fx = tokenizer_fixture("llama_spm");
  const Tokenizer tok = load(GetParam());
  int n_lossy = 0;
  for (const Json& c : fx.at("prefix_decodes")) {
    const std::vector<int32_t> ids = ids_of(c.at("ids"));
    const std::string want = c.at("decoded").get<std::string>();
    EXPECT_EQ(tok.decode(ids), want) << "prefix of " << ids.size() << " ids";
    if (want.find("\xEF\xBF\xBD") != std::string::npos) ++n_lossy;
  }
  EXPECT_GT(n_lossy, 0) << "no prefix ends inside a byte-fallback run";
}

TEST_P(LlamaSpmTest, SpecialIdsAndBytes) {
  const Tokenizer tok = load(GetParam());
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_TRUE(tok.add_bos_by_default());
  if (GetParam() == Loader::kGguf) {
    EXPECT_EQ(tok.eos_id(), 2);
    EXPECT_EQ(tok.stop_ids(), std::vector<int32_t>{2});
  }
  EXPECT_TRUE(tok.is_special(1));
  EXPECT_EQ(tok.token_text(15043), "\xE2\x96\x81Hello");  // "▁Hello"
  EXPECT_EQ(tok.token_bytes(15043), " Hello");
  EXPECT_EQ(tok.token_text(13), "<0x0A>");
  EXPECT_EQ(tok.token_bytes(13), "\n");
  EXPECT_EQ(tok.token_to_id("<0x0A>"), 13);
}

// Streaming: concatenated output equals decode() for whole texts; no piece is
// broken UTF-8; byte-fallback characters are held until complete.
TEST_P(LlamaSpmTest, StreamingDetokenizerEqualsDecode) {
  const Json& fx = tokenizer_fixture("llama_spm");
  const Tokenizer tok = load(GetParam());
  int n_held = 0;
  for (const char* key : {"cases", "random_cases"}) {
    for (const Json& jc : fx.at(key)) {
      const FixtureCase c = fixture_case(jc);
      SCOPED_TRACE("text: \"" + escaped(c.text) + "\"");
      for (bool skip : {false, true}) {
        StreamingDetokenizer detok(tok, skip, /*at_text_start=*/true);
        std::string all;
        for (int32_t id : c.ids) {
          const std::string piece = detok.push(id);
          EXPECT_TRUE(utf8::is_valid(piece)) << escaped(piece);
          if (piece.empty() && tok.token_text(id).rfind("<0x", 0) == 0) ++n_held;
          all += piece;
        }
        all += detok.flush();
        EXPECT_EQ(all, skip ? c.decoded_skip : c.decoded);
      }
    }
  }
  EXPECT_GT(n_held, 0) << "no byte-fallback character was ever held";
}

// Generated tokens continue a prompt: the first one keeps its leading space.
TEST_P(LlamaSpmTest, StreamingContinuationKeepsLeadingSpace) {
  const Tokenizer tok = load(GetParam());
  const std::vector<int32_t> ids = tok.encode("Paris is nice");
  ASSERT_FALSE(ids.empty());
  StreamingDetokenizer cont(tok);
  std::string all;
  for (int32_t id : ids)
    all += cont.push(id);
  all += cont.flush();
  EXPECT_EQ(all, " Paris is nice");
  EXPECT_EQ(tok.decode(ids), "Paris is nice");
}

// Byte runs: decode() follows HF (an invalid run is U+FFFD per byte); the
// stream emits valid characters as they complete and U+FFFD per invalid byte.
TEST_P(LlamaSpmTest, ByteRuns) {
  const Tokenizer tok = load(GetParam());
  auto id = [&](const char* t) { return *tok.token_to_id(t); };
  const std::string fffd = "\xEF\xBF\xBD";
  // "é" as two byte tokens, then a stray continuation byte.
  const std::vector<int32_t> run = {id("<0xC3>"), id("<0xA9>"), id("<0xA9>"), id("x")};
  EXPECT_EQ(tok.decode(run), fffd + fffd + fffd + "x");
  StreamingDetokenizer s(tok, true, true);
  std::string out;
  out += s.push(run[0]);
  EXPECT_EQ(out, "");
  out += s.push(run[1]);
  EXPECT_EQ(out, "\xC3\xA9");
  out += s.push(run[2]);
  out += s.push(run[3]);
  out += s.flush();
  EXPECT_EQ(out, "\xC3\xA9" + fffd + "x");
  // A run cut short at the end.
  EXPECT_EQ(tok.decode(std::vector<int32_t>{id("<0xE6>"), id("<0x97>")}), fffd + fffd);
  StreamingDetokenizer t(tok, true, true);
  std::string cut = t.push(id("<0xE6>"));
  cut += t.push(id("<0x97>"));
  EXPECT_EQ(cut, "");
  cut += t.flush();
  EXPECT_EQ(cut, fffd + fffd);
}

std::string loader_name(const ::testing::TestParamInfo<Loader>& p) {
  static const char* names[] = {"Gguf", "JsonStringMerges", "JsonPairMerges"};
  return names[static_cast<int>(p.param)];
}

INSTANTIATE_TEST_SUITE_P(Loaders, LlamaSpmTest,
                         ::testing::Values(Loader::kGguf, Loader::kJsonStringMerges,
                                           Loader::kJsonPairMerges),
                         loader_name);

// Metaspace settings over Llama 2's vocabulary, and a Unigram model.
TEST(SpmVariants, EncodeDecodeMatchTokenizers) {
  const Json& fx = tokenizer_fixture("spm_variants");
  const GgufTokenizerData& data = fixture_gguf(fx);
  int n = 0;
  for (const auto& [name, v] : fx.at("variants").items()) {
    SCOPED_TRACE("variant " + name);
    const bool full = v.contains("full_json") && v.at("full_json").get<bool>();
    const std::string text =
        full ? v.at("tokenizer_json").dump() : spm_json_text(v.at("tokenizer_json"), data, false);
    const Tokenizer tok = must(Tokenizer::from_hf_json(text));
    expect_cases(tok, v.at("cases"), name);
    expect_invalid_utf8(tok, v.at("invalid_utf8"));
    // Streaming equals decode() on every case.
    for (const Json& jc : v.at("cases")) {
      const FixtureCase c = fixture_case(jc);
      StreamingDetokenizer detok(tok, false, /*at_text_start=*/true);
      std::string all;
      for (int32_t id : c.ids)
        all += detok.push(id);
      all += detok.flush();
      EXPECT_EQ(all, c.decoded) << escaped(c.text);
    }
    ++n;
  }
  EXPECT_EQ(n, 6);
}

}  // namespace
}  // namespace cartserve::testing
