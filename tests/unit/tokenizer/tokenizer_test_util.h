// Shared by the tokenizer tests: fixtures from tools/make_tokenizer_fixtures.py,
// the GGUF vocabularies they were made from, and readable failure output.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/sha256.h"
#include "formats/gguf.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace cartserve::testing {

using Json = nlohmann::json;

inline const Json& tokenizer_fixture(const std::string& name) {
  static std::map<std::string, Json> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  auto text = read_file(fixture_path("tokenizer/" + name + ".json"));
  EXPECT_TRUE(text.ok()) << text.status().to_string();
  Json j = text.ok() ? Json::parse(*text) : Json::object();
  return cache.emplace(name, std::move(j)).first->second;
}

// The GGUF named by a fixture ("models/..." is the test model, "ref/..." a
// reference vocabulary), read once per process.
inline const GgufTokenizerData& fixture_gguf(const Json& fixture) {
  static std::map<std::string, GgufTokenizerData> cache;
  const std::string rel = fixture.at("gguf").get<std::string>();
  auto it = cache.find(rel);
  if (it != cache.end()) return it->second;
  const std::string path =
      rel.rfind("models/", 0) == 0 ? test_model_path() : ref_path(rel.substr(4));
  GgufTokenizerData data;
  auto file = GgufFile::open(path);
  EXPECT_TRUE(file.ok()) << file.status().to_string() << " (run scripts/setup.sh)";
  if (file.ok()) {
    auto d = read_gguf_tokenizer_data(*file);
    EXPECT_TRUE(d.ok()) << d.status().to_string();
    if (d.ok()) data = std::move(d).value();
  }
  // The fixture was made from exactly this vocabulary.
  Sha256 h;
  for (const auto& t : data.tokens)
    h.update(t.data(), t.size() + 1);  // with the NUL
  h.update("\1", 1);
  for (const auto& m : data.merges)
    h.update(m.data(), m.size() + 1);
  EXPECT_EQ(Sha256::hex(h.finish()), fixture.at("vocab_sha256").get<std::string>())
      << path << " is not the vocabulary the fixture was made from";
  return cache.emplace(rel, std::move(data)).first->second;
}

// tokenizer.json text: the fixture's skeleton plus the GGUF's vocab and merges,
// the merges as "a b" strings or as ["a", "b"] pairs.
inline std::string hf_json_text(const Json& skeleton, const GgufTokenizerData& data,
                                bool pair_merges) {
  Json j = skeleton;
  Json vocab = Json::object();
  for (size_t i = 0; i < data.tokens.size(); ++i)
    vocab[data.tokens[i]] = i;
  Json merges = Json::array();
  for (const std::string& m : data.merges) {
    if (pair_merges) {
      const size_t sp = m.find(' ', 1);
      merges.push_back(Json::array({m.substr(0, sp), m.substr(sp + 1)}));
    } else {
      merges.push_back(m);
    }
  }
  j["model"]["vocab"] = std::move(vocab);
  j["model"]["merges"] = std::move(merges);
  return j.dump();
}

inline std::vector<int32_t> ids_of(const Json& j) {
  return j.get<std::vector<int32_t>>();
}

// One fixture case with the defaults of tools/make_tokenizer_fixtures.py
// applied (fields equal to their default are not stored).
struct FixtureCase {
  std::string text;
  std::vector<int32_t> ids, ids_no_special;
  std::string decoded, decoded_skip;
};
inline FixtureCase fixture_case(const Json& c) {
  FixtureCase f;
  f.text = c.at("text").get<std::string>();
  f.ids = ids_of(c.at("ids"));
  f.ids_no_special = c.contains("ids_no_special") ? ids_of(c.at("ids_no_special")) : f.ids;
  f.decoded = c.contains("decoded") ? c.at("decoded").get<std::string>() : f.text;
  f.decoded_skip = c.contains("decoded_skip") ? c.at("decoded_skip").get<std::string>() : f.decoded;
  return f;
}

// Printable form of text for failure messages (\n, \t and non-ASCII escaped).
inline std::string escaped(std::string_view s, size_t max_len = 120) {
  std::string out;
  for (size_t i = 0; i < s.size() && out.size() < max_len; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c >= 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  if (out.size() >= max_len) out += "...";
  return out;
}

}  // namespace cartserve::testing
