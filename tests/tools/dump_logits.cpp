// Runs prompts given as token ids straight through a backend (cpu or cuda)
// and writes what a reference comparison needs: every position's logits
// (float32, [tokens, vocab] per prompt) and a greedy continuation with, at
// each generated step, the gap between the best and second-best logit (so a
// comparison can tell a real disagreement from a near tie).
//
// Usage: dump_logits MODEL PROMPTS.json OUT_DIR [--device cuda] [--greedy N] [--tp N]
//   --tp N: through N tensor-parallel ranks (cuda: GPUs 0..N-1 over NCCL; cpu: threads)
//   PROMPTS.json: {"prompts": [[ids...], ...]} or {"prompts": [{"ids": [...]}, ...]}
//   OUT_DIR/logits_<i>.f32, OUT_DIR/greedy.json
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend_driver.h"
#include "server/serving_stack.h"

using namespace cartserve;
using nlohmann::json;

namespace {

int fail(const std::string& m) {
  std::fprintf(stderr, "error: %s\n", m.c_str());
  return 1;
}

// Best and second-best logit of a row: (token, gap).
std::pair<int32_t, float> top2(const float* row, int vocab) {
  int32_t best = 0;
  for (int i = 1; i < vocab; ++i)
    best = row[i] > row[best] ? i : best;
  float second = -INFINITY;
  for (int i = 0; i < vocab; ++i) {
    if (i != best) second = std::max(second, row[i]);
  }
  return {best, row[best] - second};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: %s MODEL PROMPTS.json OUT_DIR [--device D] [--greedy N] [--tp N]\n",
                 argv[0]);
    return 2;
  }
  ServeOptions o;
  o.model = argv[1];
  int greedy = 64;
  for (int i = 4; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--device") o.device = argv[i + 1];
    if (k == "--greedy") greedy = std::atoi(argv[i + 1]);
    if (k == "--tp") o.tensor_parallel_size = std::atoi(argv[i + 1]);
  }
  std::ifstream pin(argv[2]);
  if (!pin) return fail(std::string("cannot read ") + argv[2]);
  const json pj = json::parse(pin);
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& p : pj["prompts"])
    prompts.push_back((p.is_object() ? p["ids"] : p).get<std::vector<int32_t>>());
  size_t longest = 0;
  for (const auto& p : prompts)
    longest = std::max(longest, p.size());

  auto model = load_model_for(o, /*progress=*/false);
  if (!model.ok()) return fail(model.status().message());
  const int vocab = (*model)->config.vocab_size;
  o.max_model_len = static_cast<int32_t>(longest) + greedy + 16;
  o.kv_cache_tokens = *o.max_model_len;
  o.max_num_batched_tokens = 512;
  o.max_num_seqs = 4;
  auto backend = make_backend(**model, o);
  if (!backend.ok()) return fail(backend.status().message());
  testing::BackendDriver driver(**backend);

  json out = json::array();
  for (size_t i = 0; i < prompts.size(); ++i) {
    driver.reset();
    auto logits = driver.append(prompts[i], /*all_logits=*/true, 512);
    if (!logits.ok()) return fail(logits.status().message());
    const std::string file = std::string(argv[3]) + "/logits_" + std::to_string(i) + ".f32";
    std::ofstream f(file, std::ios::binary);
    f.write(reinterpret_cast<const char*>(logits->data()),
            static_cast<std::streamsize>(logits->size() * sizeof(float)));
    json g = {{"prompt", i}, {"tokens", json::array()}, {"gaps", json::array()}};
    std::vector<float> last(logits->end() - vocab, logits->end());
    for (int t = 0; t < greedy; ++t) {
      const auto [tok, gap] = top2(last.data(), vocab);
      g["tokens"].push_back(tok);
      g["gaps"].push_back(gap);
      const int32_t one[1] = {tok};
      auto next = driver.append(one);
      if (!next.ok()) return fail(next.status().message());
      last = std::move(next).value();
    }
    out.push_back(g);
    std::fprintf(stderr, "prompt %zu: %zu tokens, %d greedy\n", i, prompts[i].size(), greedy);
  }
  std::ofstream(std::string(argv[3]) + "/greedy.json")
      << json{{"backend", (*backend)->name()}, {"greedy", out}}.dump(1);
  return 0;
}
