// Cartridges of a Qwen3 model (tiny-qwen3: per-head q/k RMSNorm before RoPE).
//
// 1. What a Qwen3 cartridge holds: its keys are the cache's keys after k_norm
//    and RoPE, equal to HF transformers' past_key_values for the same tokens
//    (fixture: tools/make_model_fixtures.py, "cache" in golden.json). Both
//    sides compute in fp32 from the same bf16 weights; 1e-4 absolute.
// 2. The canary: a cartridge saved as .pt and served (virtual and prefix
//    modes) gives the same first-token top-20 logprobs as the document in the
//    prompt, |dlogprob| <= 1e-5 (fp32 cartridge, fp32 CPU compute), as for Llama.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

#include "cartridge/cartridge_io.h"
#include "chat_template/prompt_builder.h"
#include "core/mapped_file.h"
#include "model/model.h"
#include "server/serving_stack.h"
#include "test_util.h"

namespace cartserve {
namespace {

using nlohmann::json;
using testing::TempDir;

const Model& tiny_qwen3() {
  static std::unique_ptr<Model> m;
  if (!m) {
    LoadOptions o;
    o.progress = false;
    o.summary = false;
    auto r = load_model(testing::fixture_path("model/tiny-qwen3"), o);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    if (r.ok()) m = std::move(r).value();
  }
  return *m;
}

json golden() {
  auto text = read_file(testing::fixture_path("model/tiny-qwen3/golden.json"));
  EXPECT_TRUE(text.ok());
  return text.ok() ? json::parse(*text) : json::object();
}

// max |a - b| over a cartridge tensor [H, T, D] and a nested HF list [H][T][D].
float max_abs_diff(const Tensor& t, const json& ref) {
  const Tensor f = t.to(DType::kF32);
  const float* p = f.data<float>();
  float d = 0.f;
  size_t i = 0;
  for (const auto& head : ref) {
    for (const auto& row : head) {
      for (const auto& x : row)
        d = std::max(d, std::fabs(p[i++] - x.get<float>()));
    }
  }
  EXPECT_EQ(static_cast<int64_t>(i), f.numel());
  return d;
}

TEST(Qwen3Cartridge, HoldsKeysAfterQkNormAndRope) {
  const Model& m = tiny_qwen3();
  ASSERT_TRUE(m.config.qk_norm);
  const json cache = golden().at("cache");
  CartridgeBuildOptions bo;
  bo.raw = true;  // the text as a completion prompt: exactly HF's ids (no BOS)
  bo.dtype = DType::kF32;
  auto built = build_cartridge(m, cache.at("text").get<std::string>(), bo);
  ASSERT_TRUE(built.ok()) << built.status().to_string();
  ASSERT_EQ(built->token_ids, cache.at("ids").get<std::vector<int32_t>>());
  ASSERT_EQ(built->num_layers, static_cast<int32_t>(cache.at("keys").size()));
  ASSERT_EQ(built->head_dim, 32);
  for (int32_t l = 0; l < built->num_layers; ++l) {
    const float dk = max_abs_diff(built->keys[l], cache.at("keys")[l]);
    const float dv = max_abs_diff(built->values[l], cache.at("values")[l]);
    std::printf("[qwen3 cartridge] layer %d: max|dK|=%.2e max|dV|=%.2e vs HF past_key_values\n", l,
                dk, dv);
    EXPECT_LT(dk, 1e-4f);
    EXPECT_LT(dv, 1e-4f);
  }
}

using TopLogprobs = std::map<int32_t, float>;

std::unique_ptr<ServingStack> make_stack(const Model& m, const std::string& cartridge_path,
                                         const char* mode) {
  ServeOptions o;
  o.model = m.path;
  o.device = "cpu";
  o.max_num_seqs = 4;
  o.max_model_len = 1024;
  o.max_num_batched_tokens = 512;
  o.kv_cache_tokens = 100 * 16;
  if (!cartridge_path.empty()) {
    json cfg = {
        {"kv_connector", "CartridgeConnector"},
        {"kv_connector_extra_config",
         {{"cartridges", {{{"cartridge_id", "doc"}, {"path", cartridge_path}}}}, {"mode", mode}}}};
    o.kv_transfer_config = cfg.dump();
  }
  auto s = build_serving_stack(m, o);
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return s.ok() ? std::move(s).value() : nullptr;
}

TopLogprobs first_token_logprobs(Engine& e, std::vector<int32_t> prompt, int32_t virtual_tokens,
                                 bool with_cartridge) {
  static int n = 0;
  GenerateRequest g;
  g.id = "q" + std::to_string(n++);
  g.prompt_token_ids = std::move(prompt);
  g.sampling.temperature = 0;
  g.sampling.max_tokens = 1;
  g.sampling.logprobs = true;
  g.sampling.top_logprobs = 20;
  g.num_virtual_tokens = virtual_tokens;
  if (with_cartridge) {
    g.cartridge_ids = {"doc"};
    g.prefix_salt = "doc-salt";
  }
  auto stream = e.submit(std::move(g));
  TopLogprobs out;
  for (bool done = false; !done;) {
    for (auto& o : stream->next(std::chrono::milliseconds(200))) {
      EXPECT_TRUE(o.error.ok()) << o.error.to_string();
      for (const auto& s : o.logprobs) {
        for (const auto& t : s.top_logprobs)
          out[t.token] = t.logprob;
      }
      done = done || o.finished;
    }
  }
  return out;
}

float max_diff(const TopLogprobs& a, const TopLogprobs& b) {
  float d = a.empty() ? 99.f : 0.f;
  for (const auto& [t, v] : a) {
    auto it = b.find(t);
    d = std::max(d, it == b.end() ? 99.f : std::fabs(v - it->second));
  }
  return d;
}

TEST(Qwen3Cartridge, CanaryFromPtEqualsDocumentInPrompt) {
  const Model& m = tiny_qwen3();
  auto doc = read_file(testing::fixture_path("text/long_prompt.txt"));
  ASSERT_TRUE(doc.ok());
  const std::string text = doc->substr(0, 600);
  const std::string question = "Where did the most famous of the ancient lights stand?";
  TempDir dir;
  CartridgeBuildOptions bo;
  bo.dtype = DType::kF32;
  auto built = build_cartridge(m, text, bo);
  ASSERT_TRUE(built.ok()) << built.status().to_string();
  const std::string path = dir.file("doc.pt");
  ASSERT_TRUE(save_cartridge(path, *built).ok());
  // The .pt reads back as it was written.
  auto back = load_cartridge(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->num_tokens, built->num_tokens);
  EXPECT_EQ(back->token_ids, built->token_ids);
  const int32_t p = built->num_tokens;

  const PromptBuilder prompts(m);
  auto full = prompts.chat({{"system", text}, {"user", question}}, true, false);
  auto suffix = prompts.chat({{"user", question}}, true, /*after_cartridge=*/true);
  ASSERT_TRUE(full.ok() && suffix.ok());
  ASSERT_EQ(std::vector<int32_t>(full->begin(), full->begin() + p), built->token_ids);
  ASSERT_EQ(std::vector<int32_t>(full->begin() + p, full->end()), *suffix);

  auto plain = make_stack(m, "", "virtual");
  const TopLogprobs ref = first_token_logprobs(*plain->engine, *full, 0, false);
  auto virt = make_stack(m, path, "virtual");
  const TopLogprobs v = first_token_logprobs(*virt->engine, *suffix, p, true);
  auto pre = make_stack(m, path, "prefix");
  const TopLogprobs f = first_token_logprobs(*pre->engine, *full, 0, true);
  const float dv = max_diff(ref, v), df = max_diff(ref, f);
  std::printf(
      "[canary] qwen3 fp32 cartridge (%d tokens): virtual max|dlogprob|=%.2e, prefix "
      "max|dlogprob|=%.2e\n",
      p, dv, df);
  EXPECT_EQ(ref.size(), 20u);
  EXPECT_LE(dv, 1e-5f);
  EXPECT_LE(df, 1e-5f);
  EXPECT_EQ(virt->device_tier->counters().promotions, 1u);
  EXPECT_EQ(pre->connector->num_requests_served(), 1u);
}

}  // namespace
}  // namespace cartserve
