// Bad or unsupported tokenizer.json / GGUF tokenizer data: a clear error that
// names the offending field, never a crash.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tiny_tokenizer.h"
#include "tokenizer_test_util.h"

namespace cartserve::testing {
namespace {

using ::testing::HasSubstr;

Status json_error(const Json& j, const HfTokenizerConfig& config = {}) {
  auto t = Tokenizer::from_hf_json(j.dump(), config);
  return t.ok() ? Status() : t.status();
}

TEST(LoaderErrors, TinyTokenizerLoads) {
  EXPECT_TRUE(json_error(tiny_tokenizer_json({"ab"}, {"a b"})).ok());
}

TEST(LoaderErrors, NotJson) {
  for (const char* text : {"", "not json", "{\"model\": ", "[1, 2]", "\xFF\xFE"}) {
    auto t = Tokenizer::from_hf_json(text);
    ASSERT_FALSE(t.ok()) << text;
    EXPECT_EQ(t.status().code(), ErrorCode::kCorrupt) << text;
  }
  auto t = Tokenizer::from_hf_json("{}");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("no model"));
}

TEST(LoaderErrors, ModelFields) {
  Json j = tiny_tokenizer_json({}, {});
  j["model"]["type"] = "WordPiece";
  Status s = json_error(j);
  EXPECT_EQ(s.code(), ErrorCode::kUnsupported);
  EXPECT_THAT(s.message(), HasSubstr("WordPiece"));

  j = tiny_tokenizer_json({}, {});
  j["model"]["byte_fallback"] = true;
  EXPECT_THAT(json_error(j).message(), HasSubstr("byte_fallback"));

  j = tiny_tokenizer_json({}, {});
  j["model"]["dropout"] = 0.1;
  EXPECT_THAT(json_error(j).message(), HasSubstr("dropout"));

  j = tiny_tokenizer_json({}, {});
  j["model"]["vocab"]["x"] = "seven";
  s = json_error(j);
  EXPECT_EQ(s.code(), ErrorCode::kCorrupt);
  EXPECT_THAT(s.message(), HasSubstr("model.vocab['x']"));

  j = tiny_tokenizer_json({}, {});
  j["model"]["vocab"]["x"] = -3;
  EXPECT_EQ(json_error(j).code(), ErrorCode::kCorrupt);

  j = tiny_tokenizer_json({}, {});
  j["model"]["vocab"]["huge"] = 2000000000;  // would need a 2G-entry table
  EXPECT_EQ(json_error(j).code(), ErrorCode::kCorrupt);

  j = tiny_tokenizer_json({}, {});
  j["model"]["vocab"] = Json::array();
  EXPECT_THAT(json_error(j).message(), HasSubstr("model.vocab"));

  j = tiny_tokenizer_json({}, {});
  j["model"]["ignore_merges"] = "yes";
  EXPECT_THAT(json_error(j).message(), HasSubstr("model.ignore_merges must be a boolean"));
}

TEST(LoaderErrors, Merges) {
  // A merge whose result is not a token.
  Status s = json_error(tiny_tokenizer_json({}, {"a b"}));
  EXPECT_EQ(s.code(), ErrorCode::kCorrupt);
  EXPECT_THAT(s.message(), HasSubstr("'ab'"));
  // A merge naming an unknown token.
  s = json_error(tiny_tokenizer_json({"ab"}, {"a q\xC4\xA0"}));
  EXPECT_EQ(s.code(), ErrorCode::kCorrupt);
  // Legacy strings need exactly one space.
  EXPECT_THAT(json_error(tiny_tokenizer_json({"ab"}, {"ab"})).message(), HasSubstr("merges[0]"));
  EXPECT_THAT(json_error(tiny_tokenizer_json({"ab"}, {"a b c"})).message(), HasSubstr("merges[0]"));
  Json j = tiny_tokenizer_json({"ab"}, {});
  j["model"]["merges"] = Json::array({Json::array({"a"})});
  EXPECT_THAT(json_error(j).message(), HasSubstr("merges[0]"));
  j["model"]["merges"] = Json::array({42});
  EXPECT_THAT(json_error(j).message(), HasSubstr("merges[0]"));
}

TEST(LoaderErrors, PipelineParts) {
  Json j = tiny_tokenizer_json({}, {});
  j["pre_tokenizer"] = {{"type", "Metaspace"}};  // no replacement
  Status s = json_error(j);
  EXPECT_EQ(s.code(), ErrorCode::kCorrupt);
  EXPECT_THAT(s.message(), HasSubstr("pre_tokenizer.replacement"));
  // A SentencePiece-style pre-tokenizer with the byte-level decoder.
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}};
  s = json_error(j);
  EXPECT_EQ(s.code(), ErrorCode::kUnsupported);
  EXPECT_THAT(s.message(), HasSubstr("ByteLevel decoder does not fit"));
  j["pre_tokenizer"]["prepend_scheme"] = "sometimes";
  EXPECT_THAT(json_error(j).message(), HasSubstr("prepend_scheme 'sometimes'"));

  j["pre_tokenizer"] = nullptr;
  EXPECT_EQ(json_error(j).code(), ErrorCode::kUnsupported);

  // ByteLevel must come last (it is where text becomes byte-level symbols).
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "ByteLevel"}}, {{"type", "Digits"}}}}};
  EXPECT_THAT(json_error(j).message(), HasSubstr("ByteLevel must come last"));

  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         {{{"type", "Split"},
                           {"pattern", {{"Regex", "(unclosed"}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                          {{"type", "ByteLevel"}}}}};
  s = json_error(j);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("(unclosed"));

  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "x"}};
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Sideways";
  EXPECT_THAT(json_error(j).message(), HasSubstr("Sideways"));

  // Deep nesting is refused, not recursed into without end.
  Json deep = {{"type", "ByteLevel"}};
  for (int i = 0; i < 40; ++i)
    deep = {{"type", "Sequence"}, {"pretokenizers", {deep}}};
  j["pre_tokenizer"] = deep;
  EXPECT_THAT(json_error(j).message(), HasSubstr("nests too deeply"));

  j = tiny_tokenizer_json({}, {});
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_THAT(json_error(j).message(), HasSubstr("Lowercase"));

  j = tiny_tokenizer_json({}, {});
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_THAT(json_error(j).message(), HasSubstr("WordPiece"));
  j["decoder"] = nullptr;
  EXPECT_EQ(json_error(j).code(), ErrorCode::kUnsupported);
}

TEST(LoaderErrors, AddedTokensAndConfig) {
  Json j = tiny_tokenizer_json({}, {});
  j["added_tokens"] = Json::array({{{"id", 300}}});
  EXPECT_THAT(json_error(j).message(), HasSubstr("added_tokens[0].content"));
  j["added_tokens"] = Json::array({{{"id", "x"}, {"content", "<s>"}}});
  EXPECT_THAT(json_error(j).message(), HasSubstr("added_tokens[0].id"));

  j = tiny_tokenizer_json({}, {});
  HfTokenizerConfig config;
  config.eos_token = "</nope>";
  Status s = json_error(j, config);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("</nope>"));
}

GgufTokenizerData tiny_gguf() {
  GgufTokenizerData d;
  d.model = "gpt2";
  d.pre = "gpt-2";
  for (int b = 0; b < 256; ++b)
    d.tokens.push_back(byte_level::encode(std::string(1, static_cast<char>(b))));
  d.tokens.push_back("ab");
  d.tokens.push_back("<|endoftext|>");
  d.token_types.assign(d.tokens.size(), 1);
  d.token_types.back() = 3;
  d.merges = {"a b"};
  d.eos_id = 257;
  return d;
}

TEST(LoaderErrors, Gguf) {
  auto ok = Tokenizer::from_gguf(tiny_gguf());
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  EXPECT_EQ(ok->encode("ab<|endoftext|>"), (std::vector<int32_t>{256, 257}));
  EXPECT_EQ(ok->stop_ids(), (std::vector<int32_t>{257}));

  GgufTokenizerData d = tiny_gguf();
  d.model = "bert";
  auto t = Tokenizer::from_gguf(d);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), ErrorCode::kUnsupported);
  EXPECT_THAT(t.status().message(), HasSubstr("'bert'"));

  // SentencePiece ("llama") without merges needs a score per token.
  d = tiny_gguf();
  d.model = "llama";
  d.merges.clear();
  d.scores = {0.0};
  t = Tokenizer::from_gguf(d);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(t.status().message(), HasSubstr("tokenizer.ggml.scores"));

  d = tiny_gguf();
  d.pre = "deepseek-coder";
  t = Tokenizer::from_gguf(d);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), ErrorCode::kUnsupported);
  EXPECT_THAT(t.status().message(), HasSubstr("deepseek-coder"));

  for (const char* pre : {"", "default"}) {  // old files: GPT-2 split
    d = tiny_gguf();
    d.pre = pre;
    EXPECT_TRUE(Tokenizer::from_gguf(d).ok()) << pre;
  }

  d = tiny_gguf();
  d.tokens.clear();
  d.token_types.clear();
  EXPECT_EQ(Tokenizer::from_gguf(d).status().code(), ErrorCode::kCorrupt);

  d = tiny_gguf();
  d.token_types.pop_back();
  EXPECT_THAT(Tokenizer::from_gguf(d).status().message(), HasSubstr("token_type"));

  d = tiny_gguf();
  d.merges = {"ab"};
  EXPECT_THAT(Tokenizer::from_gguf(d).status().message(), HasSubstr("merges[0]"));

  d = tiny_gguf();
  d.merges = {"a c"};  // "ac" is not a token
  EXPECT_EQ(Tokenizer::from_gguf(d).status().code(), ErrorCode::kCorrupt);

  d = tiny_gguf();
  d.bos_id = 9999;
  t = Tokenizer::from_gguf(d);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(t.status().message(), HasSubstr("bos id 9999"));

  d = tiny_gguf();
  d.pre = "gpt-2";
  d.tokens.erase(d.tokens.begin() + 'a');  // vocab without the 'a' character...
  d.token_types.pop_back();
  EXPECT_FALSE(Tokenizer::from_gguf(d).ok());  // ...breaks merge "a b"
}

TEST(LoaderErrors, DefaultConstructedTokenizerIsInert) {
  const Tokenizer t;
  EXPECT_TRUE(t.encode("hello").empty());
  EXPECT_EQ(t.decode(std::vector<int32_t>{1, 2}), "");
  EXPECT_EQ(t.vocab_size(), 0);
  EXPECT_EQ(t.token_bytes(0), "");
  EXPECT_FALSE(t.token_to_id("a").has_value());
  EXPECT_TRUE(t.stop_ids().empty());
}

}  // namespace
}  // namespace cartserve::testing
