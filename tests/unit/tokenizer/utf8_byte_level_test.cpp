// UTF-8 repair (Unicode's maximal-subpart rule) and GPT-2's byte mapping.
#include <gtest/gtest.h>

#include <string>

#include "tokenizer/byte_level.h"
#include "tokenizer/utf8.h"

namespace cartserve {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

// The Unicode Standard, chapter 3, Table 3-8 "U+FFFD for Non-Shortest Form
// Sequences" / maximal subparts: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64.
TEST(Utf8, RepairFollowsUnicodeTable3_8) {
  const std::string in = "\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64";
  const std::string want = "a" + kFffd + kFffd + kFffd + "b" + kFffd + "c" + kFffd + kFffd + "d";
  EXPECT_FALSE(utf8::is_valid(in));
  EXPECT_EQ(utf8::repair(in), want);
}

TEST(Utf8, RejectsOverlongsSurrogatesAndOutOfRange) {
  EXPECT_EQ(utf8::repair("\xC0\xAF"), kFffd + kFffd);                          // overlong '/'
  EXPECT_EQ(utf8::repair("\xE0\x80\xAF"), kFffd + kFffd + kFffd);              // overlong, 3 bytes
  EXPECT_EQ(utf8::repair("\xED\xA0\x80"), kFffd + kFffd + kFffd);              // surrogate U+D800
  EXPECT_EQ(utf8::repair("\xF4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);  // > U+10FFFF
  EXPECT_EQ(utf8::repair("\xFF\xFE"), kFffd + kFffd);
  EXPECT_EQ(utf8::repair("\xF0\x9F\x98"), kFffd);   // truncated at the end: one U+FFFD
  EXPECT_TRUE(utf8::is_valid("\xF4\x8F\xBF\xBF"));  // U+10FFFF
  EXPECT_TRUE(utf8::is_valid("plain ASCII text that is longer than eight bytes"));
  EXPECT_TRUE(utf8::is_valid(std::string("nul\0inside", 10)));
  EXPECT_EQ(utf8::repair("ok \xE6\x97\xA5"), "ok \xE6\x97\xA5");
}

TEST(Utf8, IncompleteTail) {
  EXPECT_EQ(utf8::incomplete_tail(""), 0u);
  EXPECT_EQ(utf8::incomplete_tail("abc"), 0u);
  EXPECT_EQ(utf8::incomplete_tail("a\xF0"), 1u);
  EXPECT_EQ(utf8::incomplete_tail("a\xF0\x9F"), 2u);
  EXPECT_EQ(utf8::incomplete_tail("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(utf8::incomplete_tail("a\xF0\x9F\x98\x80"), 0u);
  EXPECT_EQ(utf8::incomplete_tail("\xC3\xA9\xE2"), 1u);  // complete é, then a lead byte
  EXPECT_EQ(utf8::incomplete_tail("\xE2\x82"), 2u);
  EXPECT_EQ(utf8::incomplete_tail("x\x80"), 0u);  // stray continuation: invalid, not held
  EXPECT_EQ(utf8::incomplete_tail("x\xFF"), 0u);
  EXPECT_EQ(utf8::incomplete_tail("x\xE0\x80"), 0u);  // can never become valid
}

TEST(ByteLevel, Gpt2Mapping) {
  EXPECT_EQ(byte_level::byte_to_char(' '), U'\u0120');   // Ġ
  EXPECT_EQ(byte_level::byte_to_char('\n'), U'\u010A');  // Ċ
  EXPECT_EQ(byte_level::byte_to_char('\t'), U'\u0109');  // ĉ
  EXPECT_EQ(byte_level::byte_to_char('a'), U'a');
  EXPECT_EQ(byte_level::byte_to_char(0xAD), U'\u0143');  // soft hyphen -> Ń
  EXPECT_EQ(byte_level::byte_to_char(0xFF), U'\u00FF');
  EXPECT_EQ(byte_level::encode(" hi\n"), "\xC4\xA0hi\xC4\x8A");
}

TEST(ByteLevel, DecodeTokenIsTheInverseOrTheRawText) {
  std::string all;
  for (int b = 0; b < 256; ++b)
    all.push_back(static_cast<char>(b));
  EXPECT_EQ(byte_level::decode_token(byte_level::encode(all)), all);
  EXPECT_EQ(byte_level::decode_token("\xC4\xA0hello"), " hello");
  EXPECT_EQ(byte_level::decode_token("<|im_start|>"), "<|im_start|>");
  // ' ' and CJK are not byte characters: HF keeps such a token's own text.
  EXPECT_EQ(byte_level::decode_token("a b"), "a b");
  EXPECT_EQ(byte_level::decode_token("\xE6\x97\xA5"), "\xE6\x97\xA5");
}

}  // namespace
}  // namespace cartserve
