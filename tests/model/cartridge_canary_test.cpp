// Tier 0.5, the canary, at the engine level: a cartridge built from a text
// gives the same next-token distribution for a question as the text plus the
// question prefilled without it, in both placement modes.
//
// Tolerance: an fp32 cartridge holds exactly the K/V a full prefill computes
// for those positions (same kernels; only BLAS blocking may differ with the
// chunk size), so the logprobs agree to ~1e-5 (observed: 1.6e-5); we allow 1e-3. A bf16
// cartridge rounds K/V to 8 bits of mantissa: we report its difference and
// require the same top-1 token and |diff| < 0.05 on the top-20 logprobs
// (observed: 6e-3).
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "cartridge/cartridge_io.h"
#include "cartridge/catalog.h"
#include "cartridge/residency.h"
#include "core/mapped_file.h"
#include "engine/cartridge_builder.h"
#include "engine/cartridge_connector.h"
#include "engine/cpu_backend.h"
#include "engine/engine.h"
#include "model/model.h"
#include "test_util.h"
#include "tokenizer/chat_template.h"

namespace cartserve {
namespace {

using testing::TempDir;

const Model& smollm2() {
  static std::unique_ptr<Model> m = [] {
    LoadOptions o;
    o.progress = false;
    o.summary = false;
    auto r = load_model(testing::test_model_path(), o);
    EXPECT_TRUE(r.ok()) << r.status().to_string();
    return r.ok() ? std::move(r).value() : nullptr;
  }();
  return *m;
}

// {token -> logprob} of the first generated token's top-20.
using TopLogprobs = std::map<int32_t, float>;

struct EngineRig {
  std::unique_ptr<CartridgeCatalog> catalog;
  std::shared_ptr<KvBlockAllocator> allocator;
  std::unique_ptr<ResidencyManager> residency;
  std::unique_ptr<CartridgeConnector> connector;
  std::unique_ptr<Engine> engine;
};

EngineRig make_engine(const Model& m, const std::string& cartridge_path, CartridgeMode mode) {
  EngineRig s;
  EngineConfig ec;
  ec.scheduler.block_size = 16;
  ec.scheduler.max_num_seqs = 4;
  ec.scheduler.max_model_len = 2048;
  ec.scheduler.max_num_batched_tokens = 512;
  ec.num_kv_blocks = 200;
  KvConnector* conn = nullptr;
  if (!cartridge_path.empty()) {
    s.catalog = std::make_unique<CartridgeCatalog>();
    ServedModelInfo info{m.config.model_id, m.config.num_layers, m.config.num_kv_heads,
                         m.config.head_dim};
    auto e = inspect_cartridge_file("doc", cartridge_path, "", info, 16);
    EXPECT_TRUE(e.ok()) << e.status().to_string();
    ResidencyConfig rc;
    rc.host_budget_bytes = 1ull << 30;
    rc.device_budget_bytes = 1ull << 30;
    rc.device_dtype = DType::kF32;
    s.allocator = std::make_shared<KvBlockAllocator>(m.config.num_layers, m.config.kv_dim(), 16);
    s.residency = std::make_unique<ResidencyManager>(rc, cartridge_file_loader(), s.allocator);
    EXPECT_TRUE(s.residency->add_cartridge("doc", cartridge_path, e->manifest).ok());
    EXPECT_TRUE(s.catalog->add(*e).ok());
    s.connector =
        std::make_unique<CartridgeConnector>(*s.residency, s.allocator, *s.catalog, mode, 16);
    conn = s.connector.get();
  }
  auto eng =
      Engine::create(m, std::make_unique<CpuBackend>(m, ec.num_kv_blocks, 16), ec, nullptr, conn);
  EXPECT_TRUE(eng.ok()) << eng.status().to_string();
  s.engine = std::move(eng).value();
  return s;
}

TopLogprobs first_token_logprobs(Engine& e, std::vector<int32_t> prompt, int32_t virtual_tokens,
                                 bool with_cartridge) {
  GenerateRequest g;
  static int n = 0;
  g.id = "r" + std::to_string(n++);
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

// Max |diff| over the union of both top-20 sets (missing entries count fully).
float max_diff(const TopLogprobs& a, const TopLogprobs& b, bool& same_top1) {
  float d = 0.f;
  for (const auto& [t, v] : a) {
    auto it = b.find(t);
    d = std::max(d, it == b.end() ? 99.f : std::fabs(v - it->second));
  }
  auto best = [](const TopLogprobs& m) {
    return std::max_element(m.begin(), m.end(),
                            [](auto& x, auto& y) { return x.second < y.second; })
        ->first;
  };
  same_top1 = !a.empty() && !b.empty() && best(a) == best(b);
  return d;
}

class Canary : public ::testing::TestWithParam<DType> {};

TEST_P(Canary, CartridgeEqualsFullPrefillInBothModes) {
  const Model& m = smollm2();
  auto doc = read_file(testing::fixture_path("text/long_prompt.txt"));
  ASSERT_TRUE(doc.ok());
  const std::string text = doc->substr(0, 1500);
  const std::string question = "Where did the most famous of the ancient lights stand?";
  TempDir dir;
  CartridgeBuildOptions bo;
  bo.dtype = GetParam();
  bo.progress = false;
  auto built = build_cartridge(m, text, bo);
  ASSERT_TRUE(built.ok()) << built.status().to_string();
  const std::string path = dir.file("doc.pt");
  ASSERT_TRUE(save_cartridge(path, *built).ok());
  const int32_t p = built->num_tokens;

  // The full prompt: [system: doc, user: q] rendered and tokenized; it must
  // begin with the cartridge's tokens (prefix property of the template).
  auto tmpl = ChatTemplate::parse(m.chat_template);
  ASSERT_TRUE(tmpl.ok());
  ChatTemplateOptions co;
  auto full_text = tmpl->render({{"system", text}, {"user", question}}, co);
  co.add_generation_prompt = false;
  auto prefix_text = tmpl->render({{"system", text}}, co);
  ASSERT_TRUE(full_text.ok() && prefix_text.ok());
  ASSERT_EQ(full_text->compare(0, prefix_text->size(), *prefix_text), 0);
  const auto full_ids = m.tokenizer.encode(*full_text);
  const auto suffix_ids = m.tokenizer.encode(full_text->substr(prefix_text->size()));
  ASSERT_EQ(std::vector<int32_t>(full_ids.begin(), full_ids.begin() + p), built->token_ids);

  EngineRig plain = make_engine(m, "", CartridgeMode::kVirtual);
  const TopLogprobs ref = first_token_logprobs(*plain.engine, full_ids, 0, false);

  EngineRig virt = make_engine(m, path, CartridgeMode::kVirtual);
  const TopLogprobs v = first_token_logprobs(*virt.engine, suffix_ids, p, true);
  EngineRig pre = make_engine(m, path, CartridgeMode::kPrefix);
  const TopLogprobs f = first_token_logprobs(*pre.engine, full_ids, 0, true);

  bool top1_v = false, top1_f = false;
  const float dv = max_diff(ref, v, top1_v);
  const float df = max_diff(ref, f, top1_f);
  std::printf(
      "[canary] %s cartridge (%d tokens): virtual max|dlogprob|=%.2e, prefix max|dlogprob|=%.2e\n",
      dtype_name(GetParam()), p, dv, df);
  EXPECT_TRUE(top1_v && top1_f);
  const float tol = GetParam() == DType::kF32 ? 1e-3f : 0.05f;
  EXPECT_LT(dv, tol);
  EXPECT_LT(df, tol);
  // The cartridge really was used (one device copy, served twice).
  EXPECT_EQ(virt.residency->counters().device.promotions, 1u);
  EXPECT_EQ(pre.connector->num_requests_served(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Canary, ::testing::Values(DType::kF32, DType::kBF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace cartserve
