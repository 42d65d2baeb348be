// Bad model inputs give a clear error naming the problem, never a crash.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "model/config.h"
#include "model/model.h"
#include "test_util.h"

namespace cartserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::fixture_path;
using testing::TempDir;

const char* kTinyConfig = R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 320,
  "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096})";

std::string error_of(const std::string& config_text) {
  auto r = parse_hf_config(config_text);
  EXPECT_FALSE(r.ok());
  return r.ok() ? "" : r.status().message();
}

TEST(HfConfig, ParsesTinyConfigAndDefaults) {
  auto c = parse_hf_config(kTinyConfig);
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
}

TEST(HfConfig, MissingAndIllTypedKeysAreNamed) {
  json j = json::parse(kTinyConfig);
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads"}) {
    json k = j;
    k.erase(key);
    EXPECT_NE(error_of(k.dump()).find(key), std::string::npos) << key;
    k[key] = "many";
    EXPECT_NE(error_of(k.dump()).find(key), std::string::npos) << key;
  }
  json k = j;
  k["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(k.dump()).find("num_key_value_heads"), std::string::npos);
  EXPECT_NE(error_of("{not json").find("JSON"), std::string::npos);
  EXPECT_NE(error_of("[1, 2]").find("JSON object"), std::string::npos);
}

TEST(HfConfig, UnknownArchitectureAndRopeAreNamed) {
  json j = json::parse(kTinyConfig);
  j["architectures"] = {"GPT2LMHeadModel"};
  auto r = parse_hf_config(j.dump());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r.status().message().find("GPT2LMHeadModel"), std::string::npos);
  j = json::parse(kTinyConfig);
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(error_of(j.dump()).find("yarn"), std::string::npos);
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  EXPECT_NE(error_of(j.dump()).find("llama3"), std::string::npos);
}

// A copy of the tiny-llama fixture whose config.json we can edit.
class TinyCopy : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const auto& e : fs::directory_iterator(fixture_path("model/tiny-llama"))) {
      fs::copy(e.path(), fs::path(dir_.path()) / e.path().filename());
    }
    config_ = json::parse(*read_file(dir_.file("config.json")));
  }
  void write_config() { std::ofstream(dir_.file("config.json")) << config_.dump(); }
  std::string load_error() {
    LoadOptions o;
    o.progress = false;
    o.summary = false;
    auto m = load_model(dir_.path(), o);
    EXPECT_FALSE(m.ok());
    return m.ok() ? "" : m.status().message();
  }
  TempDir dir_;
  json config_;
};

TEST_F(TinyCopy, LoadsUnmodified) {
  LoadOptions o;
  o.progress = false;
  auto m = load_model(dir_.path(), o);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)->config.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_FALSE((*m)->chat_template.empty());
}

TEST_F(TinyCopy, MissingTensorIsNamed) {
  config_["num_hidden_layers"] = 3;
  write_config();
  EXPECT_NE(load_error().find("model.layers.2.input_layernorm.weight"), std::string::npos);
}

TEST_F(TinyCopy, ShapeMismatchNamesTensorAndShapes) {
  config_["intermediate_size"] = 128;
  write_config();
  const std::string e = load_error();
  EXPECT_NE(e.find("w_gate"), std::string::npos) << e;
  EXPECT_NE(e.find("[160, 64]"), std::string::npos) << e;
  EXPECT_NE(e.find("[128, 64]"), std::string::npos) << e;
}

TEST_F(TinyCopy, MissingFilesAreNamed) {
  fs::remove(dir_.file("tokenizer.json"));
  EXPECT_NE(load_error().find("tokenizer.json"), std::string::npos);
  fs::remove(dir_.file("model-00002-of-00003.safetensors"));
  EXPECT_NE(load_error().find("model-00002-of-00003.safetensors"), std::string::npos);
  fs::remove(dir_.file("config.json"));
  EXPECT_NE(load_error().find("config.json"), std::string::npos);
}

TEST_F(TinyCopy, CorruptShardIsAnError) {
  testing::write_bytes(dir_.file("model-00001-of-00003.safetensors"), "\xff\xff\xff\xff garbage");
  EXPECT_FALSE(load_error().empty());
}

TEST(LoadModel, BadPathsAndTruncatedGguf) {
  LoadOptions o;
  o.progress = false;
  auto missing = load_model("/no/such/model.gguf", o);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("/no/such/model.gguf"), std::string::npos);

  TempDir dir;
  auto whole = read_file(testing::test_model_path());
  ASSERT_TRUE(whole.ok()) << "the test model is needed (scripts/fetch_model.sh)";
  for (size_t cut :
       {size_t{0}, size_t{3}, size_t{100}, size_t{4096}, whole->size() / 2, whole->size() - 1}) {
    testing::write_bytes(dir.file("cut.gguf"), whole->substr(0, cut));
    auto m = load_model(dir.file("cut.gguf"), o);
    EXPECT_FALSE(m.ok()) << cut;
  }
  // A valid GGUF that is not a model (the formats fixture): the missing key is named.
  auto not_model = load_model(fixture_path("formats/types.gguf"), o);
  ASSERT_FALSE(not_model.ok());
  EXPECT_NE(not_model.status().message().find("llama.embedding_length"), std::string::npos)
      << not_model.status().message();
}

}  // namespace
}  // namespace cartserve
