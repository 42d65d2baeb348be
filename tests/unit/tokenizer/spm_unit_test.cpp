// Hand-checked SentencePiece-style behaviour on tiny vocabularies (the HF
// comparisons are in spm_reference_test.cpp).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

namespace cartserve {
namespace {

using Json = nlohmann::json;

const char* const kMeta = "\xE2\x96\x81";  // U+2581

Json spm_decoder() {
  return {{"type", "Sequence"},
          {"decoders",
           {{{"type", "Replace"}, {"pattern", {{"String", kMeta}}}, {"content", " "}},
            {{"type", "ByteFallback"}},
            {{"type", "Fuse"}},
            {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
}

Tokenizer must(const Json& j) {
  auto t = Tokenizer::from_hf_json(j.dump());
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return t.ok() ? std::move(t).value() : Tokenizer();
}

// A token holding "▁" after another character: merges may cross a word start,
// so the piece must not be cut there.
TEST(SpmBpe, MergesAcrossWordStartWhenTheVocabularyHasThem) {
  const std::string m = kMeta;
  Json j;
  j["model"]["type"] = "BPE";
  j["model"]["byte_fallback"] = true;
  j["model"]["vocab"] =
      Json::object({{"a", 0}, {"b", 1}, {m, 2}, {"a" + m, 3}, {"a" + m + "b", 4}});
  j["model"]["merges"] = Json::array();
  j["model"]["merges"].push_back(Json::array({"a", m}));
  j["model"]["merges"].push_back(Json::array({"a" + m, "b"}));
  j["pre_tokenizer"] = Json::object(
      {{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "never"}, {"split", false}});
  j["decoder"] = spm_decoder();
  const Tokenizer tok = must(j);
  EXPECT_EQ(tok.encode("a b"), std::vector<int32_t>{4});
  EXPECT_EQ(tok.decode(std::vector<int32_t>{4}), "a b");
  // A character outside the vocabulary, no byte tokens, no unk: dropped.
  EXPECT_EQ(tok.encode("a c"), (std::vector<int32_t>{3}));
}

// Unigram: the best-scoring segmentation, unk for uncovered characters.
TEST(SpmUnigram, ViterbiPicksTheBestSegmentation) {
  const std::string m = kMeta;
  Json j;
  j["model"]["type"] = "Unigram";
  j["model"]["unk_id"] = 0;
  Json vocab = Json::array();
  for (const auto& [piece, score] : std::vector<std::pair<std::string, double>>{{"<unk>", 0.0},
                                                                                {m + "ab", -1.0},
                                                                                {m, -2.0},
                                                                                {"a", -2.0},
                                                                                {"b", -2.0},
                                                                                {"ab", -2.5},
                                                                                {m + "a", -1.2}})
    vocab.push_back(Json::array({piece, score}));
  j["model"]["vocab"] = vocab;
  j["pre_tokenizer"] =
      Json::object({{"type", "Metaspace"}, {"replacement", m}, {"prepend_scheme", "always"}});
  j["decoder"] = spm_decoder();
  const Tokenizer tok = must(j);
  // "▁ab": one piece (-1.0) beats "▁a"+"b" (-3.2) and "▁"+"ab" (-4.5).
  EXPECT_EQ(tok.encode("ab"), std::vector<int32_t>{1});
  // "▁abzz": z is covered by no piece: unk (min score - 10), the run fused.
  EXPECT_EQ(tok.encode("abzz"), (std::vector<int32_t>{1, 0}));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{1, 6}), "ab a");
}

}  // namespace
}  // namespace cartserve
