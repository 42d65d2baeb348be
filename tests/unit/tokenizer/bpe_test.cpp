// BPE merge order, unknown bytes, long inputs and concurrent use. Expected ids
// of the tiny cases were checked with `tokenizers` 0.23.3 (same JSON).
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tiny_tokenizer.h"
#include "tokenizer_test_util.h"

namespace cartserve::testing {
namespace {

Tokenizer from_json(const Json& j) {
  auto t = Tokenizer::from_hf_json(j.dump());
  EXPECT_TRUE(t.ok()) << t.status().to_string();
  return t.ok() ? std::move(t).value() : Tokenizer();
}

using Ids = std::vector<int32_t>;

TEST(Bpe, LowestRankMergesFirst) {
  // "b c" ranks before "a b": a + bc, then "a bc" -> abc.
  EXPECT_EQ(
      from_json(tiny_tokenizer_json({"bc", "ab", "abc"}, {"b c", "a b", "a bc"})).encode("abc"),
      (Ids{258}));
  // "a b" first: ab + c, and there is no "ab c" merge.
  EXPECT_EQ(
      from_json(tiny_tokenizer_json({"ab", "bc", "abc"}, {"a b", "b c", "a bc"})).encode("abc"),
      (Ids{256, 'c'}));
}

TEST(Bpe, LeftmostPairWinsATie) {
  const Tokenizer t = from_json(tiny_tokenizer_json({"aa"}, {"a a"}));
  EXPECT_EQ(t.encode("aaa"), (Ids{256, 'a'}));
  EXPECT_EQ(t.encode("aaaa"), (Ids{256, 256}));
  EXPECT_EQ(t.encode("aaaaa"), (Ids{256, 256, 'a'}));
}

TEST(Bpe, BytesMissingFromTheVocabulary) {
  Json j = tiny_tokenizer_json({"<unk>"}, {}, "z");
  EXPECT_EQ(from_json(j).encode("azza"), (Ids{'a', 'a'}));  // no unk token: dropped
  j["model"]["unk_token"] = "<unk>";
  EXPECT_EQ(from_json(j).encode("aza"), (Ids{'a', 256, 'a'}));
  EXPECT_EQ(from_json(j).encode("azza"), (Ids{'a', 256, 256, 'a'}));
  j["model"]["fuse_unk"] = true;
  EXPECT_EQ(from_json(j).encode("azza"), (Ids{'a', 256, 'a'}));
  EXPECT_EQ(from_json(j).encode("zz"), (Ids{256}));
}

TEST(Bpe, InvalidUtf8InputIsRepairedNotFatal) {
  const Tokenizer t = from_json(tiny_tokenizer_json({}, {}));
  EXPECT_EQ(t.encode("a\xFF"
                     "b"),
            t.encode("a\xEF\xBF\xBD"
                     "b"));
  EXPECT_EQ(t.encode("\xF0\x9F"), t.encode("\xEF\xBF\xBD"));
  EXPECT_EQ(t.decode(t.encode("x\xC0\xAFy")), "x\xEF\xBF\xBD\xEF\xBF\xBDy");
}

// Pieces of 100k+ bytes (whitespace runs, one long word, digits) must stay
// near-linear: a quadratic merge loop or regex scan takes minutes here.
TEST(Bpe, LongPiecesAreNotQuadratic) {
  auto t = Tokenizer::from_gguf(fixture_gguf(tokenizer_fixture("smollm2")));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  const std::vector<std::string> texts = {std::string(200000, ' ') + "x", std::string(200000, 'a'),
                                          std::string(100000, '\n'), std::string(60000, '9'), [] {
                                            std::string s;
                                            for (int i = 0; i < 30000; ++i)
                                              s += "\xF0\x9F\x98\x82";
                                            return s;
                                          }()};
  for (const std::string& text : texts) {
    const auto t0 = std::chrono::steady_clock::now();
    const Ids ids = t->encode(text);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(secs, 10.0) << escaped(text, 20) << " (" << text.size() << " bytes)";
    EXPECT_EQ(t->decode(ids), text);
    EXPECT_LE(ids.size(), text.size());
  }
}

TEST(Bpe, ConcurrentEncodesAgree) {
  auto t = Tokenizer::from_gguf(fixture_gguf(tokenizer_fixture("gpt2")));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  std::vector<std::string> texts;
  for (const Json& c : tokenizer_fixture("gpt2").at("cases"))
    texts.push_back(c.at("text").get<std::string>());
  std::vector<Ids> want;
  for (const auto& s : texts)
    want.push_back(t->encode(s));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (t->encode(texts[(i + k) % texts.size()]) != want[(i + k) % texts.size()]) {
            ++mismatches[k];
          }
        }
      }
    });
  }
  for (auto& th : threads)
    th.join();
  for (int m : mismatches)
    EXPECT_EQ(m, 0);
}

}  // namespace
}  // namespace cartserve::testing
