// StreamingDetokenizer on the SmolLM2 vocabulary: characters split across
// tokens are held until complete, invalid bytes become U+FFFD.
#include <gtest/gtest.h>

#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace cartserve::testing {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

class DetokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = Tokenizer::from_gguf(fixture_gguf(tokenizer_fixture("smollm2")));
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    tok_ = std::move(t).value();
  }
  // Id of the single-byte token for byte b (every byte-level vocab has one).
  int32_t byte_id(uint8_t b) {
    auto id = tok_.token_to_id(byte_level::encode(std::string(1, static_cast<char>(b))));
    EXPECT_TRUE(id.has_value());
    return id.value_or(-1);
  }
  Tokenizer tok_;
};

TEST_F(DetokenizerTest, EmojiSplitIntoSingleBytes) {
  const std::string emoji = "\xF0\x9F\x98\x80";  // U+1F600
  StreamingDetokenizer d(tok_);
  EXPECT_EQ(d.push(byte_id(0xF0)), "");
  EXPECT_EQ(d.push(byte_id(0x9F)), "");
  EXPECT_EQ(d.push(byte_id(0x98)), "");
  EXPECT_EQ(d.push(byte_id(0x80)), emoji);
  EXPECT_EQ(d.flush(), "");
}

TEST_F(DetokenizerTest, CjkSplitAcrossTokensWithTextAround) {
  // "a日" then "本b": 日 = E6 97 A5, 本 = E6 9C AC.
  StreamingDetokenizer d(tok_);
  std::string out = d.push(byte_id('a'));
  EXPECT_EQ(out, "a");
  EXPECT_EQ(d.push(byte_id(0xE6)), "");
  EXPECT_EQ(d.push(byte_id(0x97)), "");
  EXPECT_EQ(d.push(byte_id(0xA5)), "\xE6\x97\xA5");
  EXPECT_EQ(d.push(byte_id(0xE6)), "");
  EXPECT_EQ(d.push(byte_id(0x9C)), "");
  EXPECT_EQ(d.push(byte_id(0xAC)), "\xE6\x9C\xAC");
  EXPECT_EQ(d.push(byte_id('b')), "b");
}

TEST_F(DetokenizerTest, RealEncodingOfEmojiAndCjk) {
  // Whatever the vocabulary does with these, every push is valid UTF-8 and
  // the stream equals the text.
  const std::string text =
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 "
      "\xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x87\xAF\xF0\x9F\x87\xB5";
  const std::vector<int32_t> ids = tok_.encode(text);
  StreamingDetokenizer d(tok_);
  std::string all;
  int held = 0;
  for (int32_t id : ids) {
    const std::string piece = d.push(id);
    EXPECT_TRUE(utf8::is_valid(piece));
    if (piece.empty()) ++held;
    all += piece;
  }
  all += d.flush();
  EXPECT_EQ(all, text);
  EXPECT_GT(held, 0);  // some token ended mid-character
}

TEST_F(DetokenizerTest, InvalidBytesBecomeReplacementCharacters) {
  StreamingDetokenizer d(tok_);
  EXPECT_EQ(d.push(byte_id(0xF0)), "");
  EXPECT_EQ(d.push(byte_id(0x9F)), "");
  // 'x' cannot continue the sequence: the two held bytes are one U+FFFD.
  EXPECT_EQ(d.push(byte_id('x')), kFffd + "x");
  EXPECT_EQ(d.push(byte_id(0x80)), kFffd);  // stray continuation byte: not held
  EXPECT_EQ(d.push(byte_id(0xE6)), "");
  EXPECT_EQ(d.flush(), kFffd);  // unfinished at the end
  EXPECT_EQ(d.flush(), "");
}

TEST_F(DetokenizerTest, SpecialTokensSkippedOrShown) {
  const int32_t im_start = tok_.token_to_id("<|im_start|>").value_or(-1);
  ASSERT_TRUE(tok_.is_special(im_start));
  StreamingDetokenizer skipping(tok_, /*skip_special=*/true);
  EXPECT_EQ(skipping.push(im_start), "");
  StreamingDetokenizer showing(tok_, /*skip_special=*/false);
  EXPECT_EQ(showing.push(im_start), "<|im_start|>");
  // Held bytes, then a shown special token: the bytes are invalid now.
  EXPECT_EQ(showing.push(byte_id(0xE6)), "");
  EXPECT_EQ(showing.push(im_start), kFffd + "<|im_start|>");
  // Unknown ids are ignored.
  EXPECT_EQ(showing.push(-1), "");
  EXPECT_EQ(showing.push(tok_.vocab_size()), "");
}

}  // namespace
}  // namespace cartserve::testing
