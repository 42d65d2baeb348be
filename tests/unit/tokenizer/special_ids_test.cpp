// bos / eos / stop ids / add_bos of the four real vocabularies, through the
// GGUF path and the tokenizer.json path (with and without a config).
#include <gtest/gtest.h>

#include <algorithm>

#include "tokenizer_test_util.h"

namespace cartserve::testing {
namespace {

Tokenizer gguf_tokenizer(const std::string& model) {
  auto t = Tokenizer::from_gguf(fixture_gguf(tokenizer_fixture(model)));
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return t.ok() ? std::move(t).value() : Tokenizer();
}

using Ids = std::vector<int32_t>;

TEST(SpecialIds, SmolLm2) {
  const Tokenizer t = gguf_tokenizer("smollm2");
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_FALSE(t.add_bos_by_default());  // the GGUF says add_bos_token = false
  EXPECT_EQ(t.stop_ids(), (Ids{0, 2}));  // <|endoftext|>, <|im_end|>
  EXPECT_EQ(t.token_to_id("<|im_start|>"), 1);
  EXPECT_EQ(t.token_text(1), "<|im_start|>");
  EXPECT_EQ(t.token_bytes(1), "<|im_start|>");
  EXPECT_TRUE(t.is_special(16));  // <empty_output>
  EXPECT_FALSE(t.is_special(17));
  EXPECT_EQ(t.token_text(17), "!");
  EXPECT_EQ(t.vocab_size(), 49152);
  // Out-of-range ids are harmless.
  EXPECT_EQ(t.token_text(-5), "");
  EXPECT_EQ(t.token_bytes(1 << 30), "");
  EXPECT_FALSE(t.is_special(-1));
}

TEST(SpecialIds, Llama3) {
  const Tokenizer t = gguf_tokenizer("llama3");
  EXPECT_EQ(t.bos_id(), 128000);
  EXPECT_EQ(t.eos_id(), 128001);
  EXPECT_TRUE(t.add_bos_by_default());
  // <|end_of_text|>, <|eot_id|> (this Llama 3.0 vocabulary has no <|eom_id|>:
  // 128008 is <|reserved_special_token_4|> there).
  EXPECT_EQ(t.stop_ids(), (Ids{128001, 128009}));
  EXPECT_EQ(t.token_to_id("<|eot_id|>"), 128009);
}

TEST(SpecialIds, Qwen2) {
  const Tokenizer t = gguf_tokenizer("qwen2");
  EXPECT_EQ(t.eos_id(), 151643);
  EXPECT_FALSE(t.add_bos_by_default());
  EXPECT_EQ(t.stop_ids(), (Ids{151643, 151645}));  // <|endoftext|>, <|im_end|>
  // User-defined tokens are added (matched in text) but not special.
  const auto pad = t.token_to_id("[PAD151646]");
  ASSERT_TRUE(pad.has_value());
  EXPECT_FALSE(t.is_special(*pad));
  EXPECT_EQ(t.encode("x[PAD151646]", false).back(), *pad);
  EXPECT_EQ(t.decode(std::vector<int32_t>{*pad}, /*skip_special=*/true), "[PAD151646]");
}

TEST(SpecialIds, Gpt2) {
  const Tokenizer t = gguf_tokenizer("gpt2");
  EXPECT_EQ(t.eos_id(), 50256);
  EXPECT_FALSE(t.add_bos_by_default());
  EXPECT_EQ(t.stop_ids(), (Ids{50256}));
}

TEST(SpecialIds, Llama3TokenizerJsonUsesPostProcessorAndConfig) {
  const Json& fx = tokenizer_fixture("llama3");
  const std::string text = hf_json_text(fx.at("tokenizer_json"), fixture_gguf(fx), false);
  auto plain = Tokenizer::from_hf_json(text);
  ASSERT_TRUE(plain.ok()) << plain.status().to_string();
  EXPECT_EQ(plain->bos_id(), 128000);  // from the TemplateProcessing post_processor
  EXPECT_TRUE(plain->add_bos_by_default());
  EXPECT_FALSE(plain->eos_id().has_value());
  EXPECT_EQ(plain->stop_ids(), (Ids{128001, 128009}));

  HfTokenizerConfig config;
  config.eos_token = "<|eot_id|>";
  config.add_bos_token = false;
  auto configured = Tokenizer::from_hf_json(text, config);
  ASSERT_TRUE(configured.ok()) << configured.status().to_string();
  EXPECT_EQ(configured->eos_id(), 128009);
  EXPECT_FALSE(configured->add_bos_by_default());
}

TEST(SpecialIds, GgufEotAndEomIdsStop) {
  GgufTokenizerData d = fixture_gguf(tokenizer_fixture("gpt2"));
  d.eot_id = 100;
  d.eom_id = 200;
  d.add_bos = true;
  d.bos_id = 50256;
  auto t = Tokenizer::from_gguf(d);
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ(t->stop_ids(), (Ids{100, 200, 50256}));
  EXPECT_TRUE(t->add_bos_by_default());
}

}  // namespace
}  // namespace cartserve::testing
