// A cartridge served at TP=2 answers as at TP=1, through the whole serving
// stack (engine, scheduler, cartridge tiers, connector): the tiny-llama
// fixture's tokenizer and chat template over random weights with 12 q heads
// and 3 KV heads (ranks hold KV heads {0} and {1, 2}), and at TP=4 (KV heads
// replicated). The cartridge file is whole; each rank loads its heads.
//
// Tolerance: fp32 compute and an fp32 cartridge; the ranks change only the
// order of the o_proj/down sums, so logprobs agree to rounding: bound 1e-4
// (observed values printed), and the greedy tokens are the same.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cartridge/cartridge_io.h"
#include "chat_template/prompt_builder.h"
#include "random_model.h"
#include "server/serving_stack.h"
#include "test_util.h"

namespace cartserve {
namespace {

constexpr float kTol = 1e-4f;

// tiny-llama's tokenizer and template; 12 q / 3 KV heads of random weights.
const Model& tp_model() {
  static std::unique_ptr<Model> m;
  if (!m) {
    LoadOptions o;
    o.progress = false;
    o.summary = false;
    auto r = load_model(testing::fixture_path("model/tiny-llama"), o);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    if (!r.ok()) return *testing::random_model({});
    m = std::move(r).value();
    testing::RandomModelSpec s;
    s.hidden = m->config.hidden_size;
    testing::randomize_layers(*m, s);
  }
  return *m;
}

std::unique_ptr<ServingStack> make_stack(const Model& m, const std::string& cartridge, int tp,
                                         const char* mode = "virtual") {
  ServeOptions o;
  o.model = m.path;
  o.max_num_seqs = 4;
  o.max_model_len = 512;
  o.max_num_batched_tokens = 64;  // the prompts prefill in several chunks
  o.kv_cache_tokens = 64 * 16;
  o.tensor_parallel_size = tp;
  nlohmann::json cfg = {
      {"kv_connector", "CartridgeConnector"},
      {"kv_connector_extra_config",
       {{"cartridges", {{{"cartridge_id", "doc"}, {"path", cartridge}}}}, {"mode", mode}}}};
  o.kv_transfer_config = cfg.dump();
  auto s = build_serving_stack(m, o);
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return s.ok() ? std::move(s).value() : nullptr;
}

struct Answer {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
};

Answer ask(Engine& e, std::vector<int32_t> prompt, int32_t virtual_tokens) {
  static int n = 0;
  GenerateRequest g;
  g.id = "tp" + std::to_string(n++);
  g.prompt_token_ids = std::move(prompt);
  g.sampling.temperature = 0;
  g.sampling.max_tokens = 12;
  g.sampling.ignore_eos = true;
  g.sampling.logprobs = true;
  g.num_virtual_tokens = virtual_tokens;
  g.cartridge_ids = {"doc"};
  g.prefix_salt = "doc-salt";
  auto stream = e.submit(std::move(g));
  Answer a;
  for (bool done = false; !done;) {
    for (auto& o : stream->next(std::chrono::milliseconds(200))) {
      EXPECT_TRUE(o.error.ok()) << o.error.to_string();
      a.tokens.insert(a.tokens.end(), o.token_ids.begin(), o.token_ids.end());
      for (const auto& s : o.logprobs)
        a.logprobs.push_back(s.logprob);
      done = done || o.finished;
    }
  }
  return a;
}

TEST(TpCartridge, ServedAtTwoAndFourRanksAnswersAsAtOne) {
  const Model& m = tp_model();
  ASSERT_EQ(m.config.num_kv_heads, 3);
  const std::string text =
      "The lighthouse of Alexandria stood on the island of Pharos. It guided ships into the "
      "harbour for centuries, until earthquakes brought it down. Its keeper was called Sostratus.";
  testing::TempDir dir;
  // The same document prefilled at TP=1 and at TP=2 (exported head by head
  // from the ranks): equal KV.
  CartridgeBuildOptions bo;
  bo.dtype = DType::kF32;
  bo.chunk = 32;
  auto built1 = build_cartridge(m, text, bo);
  ASSERT_TRUE(built1.ok()) << built1.status().to_string();
  bo.tensor_parallel_size = 2;
  auto built2 = build_cartridge(m, text, bo);
  ASSERT_TRUE(built2.ok()) << built2.status().to_string();
  ASSERT_EQ(built1->token_ids, built2->token_ids);
  ASSERT_EQ(built2->num_kv_heads, 3);
  float dkv = 0.f;
  for (size_t l = 0; l < built1->keys.size(); ++l) {
    for (const auto* t : {&built1->keys, &built1->values}) {
      const Tensor& a = (*t)[l];
      const Tensor& b = (t == &built1->keys ? built2->keys : built2->values)[l];
      ASSERT_EQ(a.numel(), b.numel());
      for (int64_t i = 0; i < a.numel(); ++i)
        dkv = std::max(dkv, std::fabs(a.data<float>()[i] - b.data<float>()[i]));
    }
  }
  EXPECT_LT(dkv, kTol);
  const std::string path1 = dir.file("doc1.pt"), path2 = dir.file("doc2.pt");
  ASSERT_TRUE(save_cartridge(path1, *built1).ok());
  ASSERT_TRUE(save_cartridge(path2, *built2).ok());

  const PromptBuilder prompts(m);
  auto suffix =
      prompts.chat({{"user", "Who kept the lighthouse?"}}, true, /*after_cartridge=*/true);
  ASSERT_TRUE(suffix.ok());
  const int32_t p = built1->num_tokens;

  auto ref_stack = make_stack(m, path1, 1);
  ASSERT_TRUE(ref_stack);
  const Answer ref = ask(*ref_stack->engine, *suffix, p);
  ASSERT_EQ(ref.tokens.size(), 12u);
  ASSERT_EQ(ref.logprobs.size(), 12u);

  struct Run {
    int tp;
    const std::string* path;
  } runs[] = {{2, &path1}, {2, &path2}, {4, &path1}};
  for (const Run& r : runs) {
    auto s = make_stack(m, *r.path, r.tp);
    ASSERT_TRUE(s);
    const Answer a = ask(*s->engine, *suffix, p);
    float d = 0.f;
    for (size_t i = 0; i < std::min(a.logprobs.size(), ref.logprobs.size()); ++i)
      d = std::max(d, std::fabs(a.logprobs[i] - ref.logprobs[i]));
    std::printf(
        "[tp] cartridge (%d tokens, built at TP=%d) served at TP=%d: %s greedy tokens, "
        "max|dlogprob| %.2e; built KV max|d| %.2e\n",
        p, r.path == &path1 ? 1 : 2, r.tp, a.tokens == ref.tokens ? "same" : "DIFFERENT", d, dkv);
    EXPECT_EQ(a.tokens, ref.tokens) << "TP=" << r.tp;
    EXPECT_LT(d, kTol) << "TP=" << r.tp;
    // The cartridge really was loaded into the ranks' KV (one promotion).
    EXPECT_EQ(s->device_tier->counters().promotions, 1u);
  }

  // Prefix mode: the whole prompt (document turn + question), its first
  // tokens served from the cartridge's blocks.
  auto full = prompts.chat({{"system", text}, {"user", "Who kept the lighthouse?"}}, true, false);
  ASSERT_TRUE(full.ok());
  ASSERT_EQ(std::vector<int32_t>(full->begin(), full->begin() + p), built1->token_ids);
  auto ref_prefix_stack = make_stack(m, path1, 1, "prefix");
  ASSERT_TRUE(ref_prefix_stack);
  const Answer ref_prefix = ask(*ref_prefix_stack->engine, *full, 0);
  ASSERT_EQ(ref_prefix.tokens.size(), 12u);
  auto s2 = make_stack(m, path2, 2, "prefix");
  ASSERT_TRUE(s2);
  const Answer a = ask(*s2->engine, *full, 0);
  float d = 0.f;
  for (size_t i = 0; i < std::min(a.logprobs.size(), ref_prefix.logprobs.size()); ++i)
    d = std::max(d, std::fabs(a.logprobs[i] - ref_prefix.logprobs[i]));
  std::printf(
      "[tp] prefix mode, cartridge built at TP=2 served at TP=2: %s greedy tokens, "
      "max|dlogprob| %.2e\n",
      a.tokens == ref_prefix.tokens ? "same" : "DIFFERENT", d);
  EXPECT_EQ(a.tokens, ref_prefix.tokens);
  EXPECT_LT(d, kTol);
  EXPECT_EQ(s2->connector->num_requests_served(), 1u);
}

}  // namespace
}  // namespace cartserve
