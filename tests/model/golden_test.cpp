// Our fp32 forward pass against HF transformers (tools/make_model_fixtures.py),
// with fp32 and with bf16 weight matrices.
//
// Tolerance: both sides compute in fp32 from identical fp32 weights (GGUF
// dequantized by gguf-py vs our dequantizer, bit-exact; bf16 safetensors
// upcast exactly). Differences come only from summation order (BLAS vs torch
// GEMMs, RMSNorm accumulation, softmax), which over 30 layers stays near
// 1e-4 on logits of magnitude 10-30 (observed: <= 8e-5). We allow 5e-4
// absolute on SmolLM2 (about 2e-5 relative to the logit range) and 1e-4 on
// the 2-layer tiny models (observed: <= 1e-5), and require top-1 agreement
// at every position.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "backend_driver.h"
#include "model/model.h"
#include "server/serving_stack.h"
#include "test_util.h"

namespace cartserve {
namespace {

using nlohmann::json;
using testing::BackendDriver;
using testing::fixture_path;

// The CPU backend for `model` with room for `tokens` positions in blocks of `block_size`.
std::unique_ptr<Backend> cpu_backend(const Model& model, int tokens, int block_size = 16) {
  ServeOptions o;
  o.block_size = block_size;
  o.kv_cache_tokens = tokens;
  auto b = make_backend(model, o);
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  return b.ok() ? std::move(b).value() : nullptr;
}

json load_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return json::parse(in);
}

std::vector<float> load_f32(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  EXPECT_TRUE(in.good()) << path;
  const auto size = static_cast<size_t>(in.tellg());
  std::vector<float> v(size / 4);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(size));
  return v;
}

int argmax(const float* row, int n) {
  return static_cast<int>(std::max_element(row, row + n) - row);
}

std::vector<int32_t> greedy(BackendDriver& runner, const std::vector<int32_t>& prompt, int n,
                            int vocab) {
  runner.reset();
  auto logits = runner.append(prompt);
  EXPECT_TRUE(logits.ok()) << logits.status().to_string();
  std::vector<int32_t> out;
  for (int i = 0; i < n && logits.ok(); ++i) {
    const int32_t t = argmax(logits->data(), vocab);
    out.push_back(t);
    const int32_t one[1] = {t};
    logits = runner.append(one);
    EXPECT_TRUE(logits.ok()) << logits.status().to_string();
  }
  return out;
}

// One golden prompt through `model`: every position's logits against the
// reference's top-64, top-1 agreement, and how far our top-1 is above the
// reference's top-1 where they differ (0 where they agree).
struct GoldenComparison {
  std::vector<float> logits;  // [ids, vocab]
  size_t tokens = 0;
  float max_diff = 0.f;
  int top1_agree = 0;
  float worst_gap = 0.f;
};

GoldenComparison compare_to_golden(const Model& model, const json& p, int chunk = 128) {
  GoldenComparison g;
  const int vocab = model.config.vocab_size;
  const auto ids = p["ids"].get<std::vector<int32_t>>();
  g.tokens = ids.size();
  auto backend = cpu_backend(model, static_cast<int>(ids.size()) + 8);
  BackendDriver runner(*backend);
  auto logits = runner.append(ids, /*all_logits=*/true, chunk);
  EXPECT_TRUE(logits.ok()) << logits.status().to_string();
  if (!logits.ok()) return g;
  g.logits = std::move(logits).value();
  const auto& top_ids = p["top_ids"];
  const auto& top_logits = p["top_logits"];
  for (size_t pos = 0; pos < ids.size(); ++pos) {
    const float* row = g.logits.data() + pos * vocab;
    for (size_t k = 0; k < top_ids[pos].size(); ++k) {
      const int id = top_ids[pos][k].get<int>();
      g.max_diff = std::max(g.max_diff, std::fabs(row[id] - top_logits[pos][k].get<float>()));
    }
    const int ours = argmax(row, vocab), ref = top_ids[pos][0].get<int>();
    g.top1_agree += ours == ref;
    g.worst_gap = std::max(g.worst_gap, row[ours] - row[ref]);
  }
  return g;
}

class SmolLM2Golden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    LoadOptions opts;
    opts.progress = false;
    auto m = load_model(testing::test_model_path(), opts);
    ASSERT_TRUE(m.ok()) << m.status().to_string();
    model_ = std::move(m).value().release();
    golden_ = new json(load_json(fixture_path("model/smollm2_golden.json")));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete golden_;
  }
  static Model* model_;
  static json* golden_;
};
Model* SmolLM2Golden::model_ = nullptr;
json* SmolLM2Golden::golden_ = nullptr;

TEST_F(SmolLM2Golden, ConfigMatchesMetadata) {
  const ModelConfig& c = model_->config;
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_NEAR(c.num_parameters(), 134.5e6, 0.5e6);
}

TEST_F(SmolLM2Golden, LogitsMatchTransformers) {
  const int vocab = model_->config.vocab_size;
  for (const auto& p : (*golden_)["prompts"]) {
    const GoldenComparison g = compare_to_golden(*model_, p);
    ASSERT_EQ(g.logits.size(), g.tokens * vocab);
    const auto last = load_f32(fixture_path("model/" + p["last_logits_file"].get<std::string>()));
    ASSERT_EQ(last.size(), static_cast<size_t>(vocab));
    float last_diff = 0.f;
    const float* row = g.logits.data() + (g.tokens - 1) * vocab;
    for (int i = 0; i < vocab; ++i)
      last_diff = std::max(last_diff, std::fabs(row[i] - last[i]));
    std::printf(
        "[golden] smollm2 %-6s tokens=%4zu top64 max|diff|=%.2e last-row max|diff|=%.2e "
        "top1 agreement %d/%zu\n",
        p["name"].get<std::string>().c_str(), g.tokens, g.max_diff, last_diff, g.top1_agree,
        g.tokens);
    EXPECT_LT(g.max_diff, 5e-4f) << p["name"];
    EXPECT_LT(last_diff, 5e-4f) << p["name"];
    EXPECT_EQ(g.top1_agree, static_cast<int>(g.tokens)) << p["name"];
  }
}

// bf16 weight matrices (--dtype bfloat16) against the same fp32 reference.
// Rounding each weight to bf16 changes it by up to 2^-9 relative (random
// sign), so logits move by a few hundredths to tenths over 30 layers rather
// than by summation noise. Observed: top-64 max |diff| <= 0.165, top-1 equal
// at 567/570 positions of the long prompt (all elsewhere), and where they
// differ the two candidates are within 0.008 of each other. Bounds with about
// 2x headroom: top-64 within 0.35, top-1 equal at >= 98% of positions, and
// any disagreement a near tie (within 0.1), not a different answer.
TEST(SmolLM2GoldenBf16, LogitsStayCloseToTransformers) {
  LoadOptions opts;
  opts.progress = false;
  opts.weight_dtype = DType::kBF16;
  auto m = load_model(testing::test_model_path(), opts);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  const json golden = load_json(fixture_path("model/smollm2_golden.json"));
  for (const auto& p : golden["prompts"]) {
    const GoldenComparison g = compare_to_golden(**m, p);
    std::printf(
        "[golden bf16 weights] smollm2 %-6s tokens=%4zu top64 max|diff|=%.3f top1 agreement "
        "%d/%zu, worst top-1 gap %.3f\n",
        p["name"].get<std::string>().c_str(), g.tokens, g.max_diff, g.top1_agree, g.tokens,
        g.worst_gap);
    EXPECT_LT(g.max_diff, 0.35f) << p["name"];
    EXPECT_GE(g.top1_agree, static_cast<int>(0.98 * static_cast<double>(g.tokens))) << p["name"];
    EXPECT_LT(g.worst_gap, 0.1f) << p["name"];
  }
}

// The default CPU path (--dtype auto): the GGUF's matrices kept quantized
// (Q4_1 layers, Q8_0 embeddings and tied LM head), activations quantized to
// int16 per block of 32 for products of up to 16 rows (kernels/quant_ops.h).
// The prompts run in chunks of 16 so that every product takes the integer
// kernels (bigger prefill chunks use sgemm on dequantized weights: fp32 as
// above). The reference is the fp32 forward pass on the same dequantized
// weights, so the only difference is the activations' rounding (<= half a
// step of each block's scale, max|x| / 32767). Tolerance (the issue's):
// top-1 equal at >= 99% of positions; besides, any disagreement must be a
// near tie (within 0.25) and top-64 logits within 0.05. Observed: top-1 at
// 650/650 positions, top-64 max |diff| 0.011 (int8 activations, as ggml's
// q8_1, gave 624/650 and 2.2: see quant_ops.h).
TEST(SmolLM2GoldenQuantized, DefaultPathTop1AgreesWithFp32Reference) {
  LoadOptions opts;
  opts.progress = false;
  opts.keep_quantized = true;
  auto m = load_model(testing::test_model_path(), opts);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  ASSERT_NE((*m)->weights.layers[0].wq.block_type(), 0u);
  ASSERT_NE((*m)->weights.lm_head.block_type(), 0u);
  // The weights held in memory: at most 1.1x the GGUF file (issue 14).
  const auto file_bytes = std::filesystem::file_size(testing::test_model_path());
  std::printf("[golden quantized] weights in memory %zu bytes, GGUF file %ju bytes: %.3fx\n",
              (*m)->weights.nbytes(), static_cast<uintmax_t>(file_bytes),
              static_cast<double>((*m)->weights.nbytes()) / static_cast<double>(file_bytes));
  EXPECT_LE(static_cast<double>((*m)->weights.nbytes()), 1.1 * static_cast<double>(file_bytes));
  const json golden = load_json(fixture_path("model/smollm2_golden.json"));
  int agree = 0;
  size_t total = 0;
  for (const auto& p : golden["prompts"]) {
    const GoldenComparison g = compare_to_golden(**m, p, /*chunk=*/16);
    std::printf(
        "[golden quantized] smollm2 %-6s tokens=%4zu top64 max|diff|=%.3f top1 agreement "
        "%d/%zu, worst top-1 gap %.3f\n",
        p["name"].get<std::string>().c_str(), g.tokens, g.max_diff, g.top1_agree, g.tokens,
        g.worst_gap);
    EXPECT_LT(g.max_diff, 0.05f) << p["name"];
    EXPECT_LT(g.worst_gap, 0.25f) << p["name"];
    agree += g.top1_agree;
    total += g.tokens;
  }
  std::printf("[golden quantized] top-1 agreement %d/%zu = %.2f%%\n", agree, total,
              100.0 * agree / static_cast<double>(total));
  EXPECT_GE(agree, static_cast<int>(std::ceil(0.99 * static_cast<double>(total))));
}

TEST_F(SmolLM2Golden, TokenizerGivesTheReferenceIds) {
  // The reference tokenized with transformers' GGUF tokenizer; the prompts
  // hold no multi-digit numbers, where its missing Digits split would differ.
  for (const auto& p : (*golden_)["prompts"]) {
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(model_->tokenizer.encode(p["text"].get<std::string>()), ids) << p["name"];
  }
}

TEST_F(SmolLM2Golden, ChunkedAndDecodeEqualOneShotPrefill) {
  // The same logits whether the prompt runs at once, in odd-sized chunks across
  // block boundaries, or token by token (paged attention over earlier blocks).
  const int vocab = model_->config.vocab_size;
  const auto ids = (*golden_)["prompts"][1]["ids"].get<std::vector<int32_t>>();
  auto ba = cpu_backend(*model_, 64, 16), bb = cpu_backend(*model_, 64, 4),
       bc = cpu_backend(*model_, 64, 16);
  BackendDriver a(*ba), b(*bb), c(*bc);
  auto la = a.append(ids, true, 512);
  auto lb = b.append(ids, true, 7);
  ASSERT_TRUE(la.ok() && lb.ok());
  std::vector<float> lc;
  for (int32_t t : ids) {
    const int32_t one[1] = {t};
    auto r = c.append(one);
    ASSERT_TRUE(r.ok());
    lc.insert(lc.end(), r->begin(), r->end());
  }
  float d_ab = 0.f, d_ac = 0.f;
  for (size_t i = 0; i < la->size(); ++i) {
    d_ab = std::max(d_ab, std::fabs((*la)[i] - (*lb)[i]));
    d_ac = std::max(d_ac, std::fabs((*la)[i] - lc[i]));
  }
  EXPECT_LT(d_ab, 1e-3f);
  EXPECT_LT(d_ac, 1e-3f);
  (void)vocab;
}

TEST_F(SmolLM2Golden, Greedy64EqualsTransformers) {
  for (const auto& p : (*golden_)["prompts"]) {
    if (!p.contains("greedy")) continue;
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    const auto want = p["greedy"].get<std::vector<int32_t>>();
    auto backend = cpu_backend(*model_, static_cast<int>(ids.size() + want.size()) + 1);
    BackendDriver runner(*backend);
    EXPECT_EQ(greedy(runner, ids, static_cast<int>(want.size()), model_->config.vocab_size), want)
        << p["name"];
  }
}

// `file`: another file of the same weights (a GGUF) to load instead of the folder.
void check_tiny(const std::string& name, const std::string& file = "") {
  LoadOptions opts;
  opts.progress = false;
  auto m = load_model(fixture_path("model/" + (file.empty() ? name : file)), opts);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  const Model& model = **m;
  const int vocab = model.config.vocab_size;
  const json golden = load_json(fixture_path("model/" + name + "/golden.json"));
  for (const auto& p : golden["prompts"]) {
    const auto ids = p["ids"].get<std::vector<int32_t>>();
    auto backend = cpu_backend(model, 128, 16);
    BackendDriver runner(*backend);
    auto logits = runner.append(ids, true, 5);
    ASSERT_TRUE(logits.ok()) << logits.status().to_string();
    float max_diff = 0.f;
    int agree = 0;
    for (size_t pos = 0; pos < ids.size(); ++pos) {
      const auto ref = p["logits"][pos].get<std::vector<float>>();
      ASSERT_EQ(ref.size(), static_cast<size_t>(vocab));
      const float* row = logits->data() + pos * vocab;
      for (int i = 0; i < vocab; ++i)
        max_diff = std::max(max_diff, std::fabs(row[i] - ref[i]));
      agree += argmax(row, vocab) == argmax(ref.data(), vocab);
    }
    std::printf("[golden] %s tokens=%zu max|diff|=%.2e top1 agreement %d/%zu\n", name.c_str(),
                ids.size(), max_diff, agree, ids.size());
    EXPECT_LT(max_diff, 1e-4f);
    EXPECT_EQ(agree, static_cast<int>(ids.size()));
    const auto want = p["greedy"].get<std::vector<int32_t>>();
    EXPECT_EQ(greedy(runner, ids, static_cast<int>(want.size()), vocab), want);
  }
  // Newer fixtures: the HF tokenizer's ids (no BOS) and decode of a few texts.
  if (golden.contains("texts") && file.empty()) {
    for (const auto& t : golden["texts"]) {
      const auto text = t["text"].get<std::string>();
      const auto ids = t["ids"].get<std::vector<int32_t>>();
      EXPECT_EQ(model.tokenizer.encode(text), ids) << text;
      EXPECT_EQ(model.tokenizer.decode(ids), t["decoded"].get<std::string>());
    }
  }
}

TEST(TinyGolden, LlamaSafetensorsShardedLlama3Rope) {
  check_tiny("tiny-llama");
}
TEST(TinyGolden, Qwen2SafetensorsWithBias) {
  check_tiny("tiny-qwen2");
}
// Qwen3: per-head q/k RMSNorm before RoPE, head_dim 32 != hidden / heads.
TEST(TinyGolden, Qwen3QkNormTied) {
  check_tiny("tiny-qwen3");
}
TEST(TinyGolden, Qwen3QkNormUntied) {
  check_tiny("tiny-qwen3-untied");
}
// The same Qwen3 weights as a GGUF (arch qwen3, F32; no Q/K permutation).
TEST(TinyGolden, Qwen3Gguf) {
  check_tiny("tiny-qwen3", "tiny-qwen3.gguf");
}
// Mistral as a GGUF (arch llama: Q/K rows permuted as llama.cpp writes them;
// tokenizer.ggml.model "llama": SentencePiece BPE with byte tokens).
TEST(TinyGolden, MistralGgufSentencePieceVocab) {
  check_tiny("tiny-mistral", "tiny-mistral.gguf");
  auto m = load_model(fixture_path("model/tiny-mistral.gguf"), LoadOptions{.progress = false});
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  const Tokenizer& tok = (*m)->tokenizer;
  EXPECT_TRUE(tok.add_bos_by_default());
  // The GGUF's reading is Llama 2's (a "▁" before each text segment); on text
  // that does not start with a space it equals the folder's Metaspace tokenizer.
  const json golden = load_json(fixture_path("model/tiny-mistral/golden.json"));
  int n = 0;
  for (const auto& t : golden["texts"]) {
    const auto text = t["text"].get<std::string>();
    if (text.empty() || text[0] == ' ') continue;
    EXPECT_EQ(tok.encode(text), t["ids"].get<std::vector<int32_t>>()) << text;
    EXPECT_EQ(tok.decode(t["ids"].get<std::vector<int32_t>>()), t["decoded"].get<std::string>());
    ++n;
  }
  EXPECT_GE(n, 3);
}
// Mistral with a SentencePiece-style tokenizer (byte fallback, Metaspace).
TEST(TinyGolden, MistralSentencePieceTokenizer) {
  check_tiny("tiny-mistral");
  auto m = load_model(fixture_path("model/tiny-mistral"), LoadOptions{.progress = false});
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)->tokenizer.bos_id(), 1);
  EXPECT_TRUE((*m)->tokenizer.add_bos_by_default());
}

}  // namespace
}  // namespace cartserve
