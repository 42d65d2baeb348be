// read_gguf_tokenizer_data on small GGUF files written here (and, through the
// other suites, on the four real vocabularies).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "formats/gguf.h"
#include "tokenizer/byte_level.h"
#include "tokenizer_test_util.h"

namespace cartserve::testing {
namespace {

using ::testing::HasSubstr;

// Little-endian GGUF v3 metadata writer (no tensors).
class GgufWriter {
 public:
  void str(const std::string& key, const std::string& v) {
    key_(key, 8);
    s(v);
    ++n_;
  }
  void u32(const std::string& key, uint32_t v) {
    key_(key, 4);
    pod(v);
    ++n_;
  }
  void i32(const std::string& key, int32_t v) {
    key_(key, 5);
    pod(v);
    ++n_;
  }
  void boolean(const std::string& key, bool v) {
    key_(key, 7);
    pod(static_cast<uint8_t>(v));
    ++n_;
  }
  void strs(const std::string& key, const std::vector<std::string>& v) {
    key_(key, 9);
    pod(uint32_t{8});
    pod(static_cast<uint64_t>(v.size()));
    for (const auto& x : v)
      s(x);
    ++n_;
  }
  void i32s(const std::string& key, const std::vector<int32_t>& v) {
    key_(key, 9);
    pod(uint32_t{5});
    pod(static_cast<uint64_t>(v.size()));
    for (int32_t x : v)
      pod(x);
    ++n_;
  }
  std::string bytes() const {
    std::string out = "GGUF";
    auto put = [&](auto v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
    put(uint32_t{3});
    put(uint64_t{0});
    put(n_);
    out += body_;
    return out;
  }

 private:
  template <typename T>
  void pod(T v) {
    body_.append(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  void s(const std::string& v) {
    pod(static_cast<uint64_t>(v.size()));
    body_ += v;
  }
  void key_(const std::string& k, uint32_t type) {
    s(k);
    pod(type);
  }
  std::string body_;
  uint64_t n_ = 0;
};

Result<GgufTokenizerData> read(const GgufWriter& w) {
  TempDir dir;
  const std::string path = dir.file("t.gguf");
  write_bytes(path, w.bytes());
  auto file = GgufFile::open(path);
  if (!file.ok()) return file.status();
  return read_gguf_tokenizer_data(*file);
}

std::vector<std::string> byte_tokens() {
  std::vector<std::string> t;
  for (int b = 0; b < 256; ++b)
    t.push_back(byte_level::encode(std::string(1, static_cast<char>(b))));
  return t;
}

TEST(GgufMetadata, ReadsTokenizerFields) {
  GgufWriter w;
  w.str("general.architecture", "llama");
  w.str("tokenizer.ggml.model", "gpt2");
  w.str("tokenizer.ggml.pre", "gpt-2");
  auto tokens = byte_tokens();
  tokens.push_back("ab");
  tokens.push_back("<|eot_id|>");
  w.strs("tokenizer.ggml.tokens", tokens);
  std::vector<int32_t> types(tokens.size(), 1);
  types.back() = 3;
  w.i32s("tokenizer.ggml.token_type", types);
  w.strs("tokenizer.ggml.merges", {"a b"});
  w.u32("tokenizer.ggml.bos_token_id", 257);
  w.i32("tokenizer.ggml.eot_token_id", 257);
  w.boolean("tokenizer.ggml.add_bos_token", true);
  auto d = read(w);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(d->model, "gpt2");
  EXPECT_EQ(d->pre, "gpt-2");
  EXPECT_EQ(d->tokens.size(), 258u);
  EXPECT_EQ(d->token_types.back(), 3);
  EXPECT_EQ(d->merges, std::vector<std::string>{"a b"});
  EXPECT_EQ(d->bos_id, 257);
  EXPECT_EQ(d->eot_id, 257);
  EXPECT_FALSE(d->eos_id.has_value());
  EXPECT_EQ(d->add_bos, true);
  EXPECT_FALSE(d->add_eos.has_value());
  auto tok = Tokenizer::from_gguf(*d);
  ASSERT_TRUE(tok.ok()) << tok.status().to_string();
  EXPECT_EQ(tok->encode("ab<|eot_id|>"), (std::vector<int32_t>{256, 257}));
  EXPECT_EQ(tok->stop_ids(), (std::vector<int32_t>{257}));
  EXPECT_TRUE(tok->add_bos_by_default());
}

TEST(GgufMetadata, Errors) {
  GgufWriter none;
  none.str("general.architecture", "llama");
  auto d = read(none);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), ErrorCode::kNotFound);
  EXPECT_THAT(d.status().message(), HasSubstr("tokenizer.ggml.model"));

  GgufWriter no_merges;
  no_merges.str("tokenizer.ggml.model", "gpt2");
  no_merges.strs("tokenizer.ggml.tokens", byte_tokens());
  d = read(no_merges);
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(), HasSubstr("tokenizer.ggml.merges"));

  GgufWriter bad_type;
  bad_type.str("tokenizer.ggml.model", "gpt2");
  bad_type.strs("tokenizer.ggml.tokens", byte_tokens());
  bad_type.strs("tokenizer.ggml.merges", {});
  bad_type.str("tokenizer.ggml.bos_token_id", "one");
  d = read(bad_type);
  ASSERT_FALSE(d.ok());
  EXPECT_THAT(d.status().message(), HasSubstr("tokenizer.ggml.bos_token_id"));

  GgufWriter negative;
  negative.str("tokenizer.ggml.model", "gpt2");
  negative.strs("tokenizer.ggml.tokens", byte_tokens());
  negative.strs("tokenizer.ggml.merges", {});
  negative.i32("tokenizer.ggml.eos_token_id", -1);
  d = read(negative);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), ErrorCode::kCorrupt);
  EXPECT_THAT(d.status().message(), HasSubstr("eos_token_id = -1"));
}

}  // namespace
}  // namespace cartserve::testing
