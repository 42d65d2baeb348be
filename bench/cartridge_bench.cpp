// Time to first token with a cartridge, against its baselines, in one run:
//   - the same question tokens with no document in front: the floor a
//     cartridge can reach (it only adds attention over the cartridge's KV);
//   - the question as a plain chat (template's default system prompt, no
//     document): what a user without the document would send;
//   - resident cartridge + question (virtual mode): what cartridges buy;
//   - whole document + question in the prompt (no cartridge, prefix cache off):
//     what a server without cartridges pays;
// and cartridge load times: disk -> KV blocks (cold) and host tier -> KV blocks.
// Each figure is the median of several repeats after a warm-up.
//
// Usage: cartridge_bench MODEL DOCUMENT.txt [--out FILE.json] [--repeats N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "cartridge/cartridge_io.h"
#include "chat_template/prompt_builder.h"
#include "core/mapped_file.h"
#include "model/model.h"
#include "server/serving_stack.h"

using namespace cartserve;
using bench::Clock;
using bench::median;
using nlohmann::json;

namespace {

// A serving stack, with the cartridge file `cartridge` registered as "doc" when given.
std::unique_ptr<ServingStack> make_stack(const Model& m, const std::string& cartridge,
                                         bool prefix_cache) {
  ServeOptions o;
  o.model = m.path;
  o.max_num_seqs = 4;
  o.max_model_len = 4096;
  o.max_num_batched_tokens = 4096;
  o.kv_cache_tokens = 600 * 16;
  o.enable_prefix_caching = prefix_cache;
  if (!cartridge.empty()) {
    json cfg = {{"kv_connector", "CartridgeConnector"},
                {"kv_connector_extra_config",
                 {{"cartridges", {{{"cartridge_id", "doc"}, {"path", cartridge}}}},
                  {"host_capacity_bytes", 4ull << 30}}}};  // device budget: half the KV cache
    o.kv_transfer_config = cfg.dump();
  }
  auto s = build_serving_stack(m, o);
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", s.status().to_string().c_str());
    return nullptr;
  }
  return std::move(s).value();
}

// Seconds from submission to the first output token.
double ttft(Engine& e, const std::vector<int32_t>& prompt, int32_t virtual_tokens, bool cartridge) {
  static int n = 0;
  GenerateRequest g;
  g.id = "b" + std::to_string(n++);
  g.prompt_token_ids = prompt;
  g.sampling.temperature = 0;
  g.sampling.max_tokens = 1;
  g.num_virtual_tokens = virtual_tokens;
  if (cartridge) {
    g.cartridge_ids = {"doc"};
    g.prefix_salt = "doc";
  }
  const auto t0 = Clock::now();
  auto s = e.submit(std::move(g));
  double first = -1;
  for (bool done = false; !done;) {
    for (auto& o : s->next(std::chrono::milliseconds(50))) {
      if (first < 0 && !o.token_ids.empty())
        first = std::chrono::duration<double>(Clock::now() - t0).count();
      done = done || o.finished;
    }
  }
  return first;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL DOCUMENT.txt [--out FILE.json] [--repeats N]\n", argv[0]);
    return 2;
  }
  std::string out_path = "cartridge_bench.json";
  int repeats = 5;
  for (int i = 3; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--out") out_path = argv[i + 1];
    if (std::string(argv[i]) == "--repeats") repeats = std::max(1, std::atoi(argv[i + 1]));
  }
  LoadOptions lo;
  lo.progress = false;
  auto loaded = load_model(argv[1], lo);
  auto text = read_file(argv[2]);
  if (!loaded.ok() || !text.ok()) {
    std::fprintf(stderr, "error: cannot load the model or the document\n");
    return 1;
  }
  const Model& m = **loaded;
  const std::string question = "What is the main subject of the document, in one sentence?";

  // The cartridge (bf16 on disk, as built by default) and the three prompts.
  auto built = build_cartridge(m, *text, CartridgeBuildOptions{});
  if (!built.ok()) return 1;
  const std::string path = "/tmp/cartserve_bench_doc.pt";
  if (!save_cartridge(path, *built).ok()) return 1;
  const PromptBuilder prompts(m);
  const auto full_ids = *prompts.chat({{"system", *text}, {"user", question}}, true, false);
  const auto suffix_ids = *prompts.chat({{"user", question}}, true, /*after_cartridge=*/true);
  const auto alone_ids = *prompts.chat({{"user", question}}, true, false);
  const int32_t p = built->num_tokens;

  auto plain = make_stack(m, "", /*prefix_cache=*/false);
  auto carts = make_stack(m, path, true);
  if (!plain || !carts) return 1;

  std::vector<double> t_floor, t_alone, t_full, t_cart, t_cold, t_host;
  ttft(*plain->engine, alone_ids, 0, false);  // warm-up
  for (int r = 0; r < repeats; ++r) {
    t_floor.push_back(ttft(*plain->engine, suffix_ids, 0, false));
    t_alone.push_back(ttft(*plain->engine, alone_ids, 0, false));
    t_full.push_back(ttft(*plain->engine, full_ids, 0, false));
  }
  // Cold: evict from device and host, so the first request loads from disk.
  for (int r = 0; r < repeats; ++r) {
    (void)carts->cartridges->evict("doc", Tier::kDevice);
    (void)carts->cartridges->evict("doc", Tier::kHost);
    t_cold.push_back(ttft(*carts->engine, suffix_ids, p, true));
    // Host-resident only: the promotion is a copy into KV blocks.
    (void)carts->cartridges->evict("doc", Tier::kDevice);
    t_host.push_back(ttft(*carts->engine, suffix_ids, p, true));
    t_cart.push_back(ttft(*carts->engine, suffix_ids, p, true));  // resident
  }
  const double floor = median(t_floor), alone = median(t_alone), whole = median(t_full),
               resident = median(t_cart);
  const double cold = median(t_cold), host = median(t_host);
  json j = {{"benchmark", "cartridge_bench"},
            {"model", m.config.model_id},
            {"backend", "cpu fp32"},
            {"document", std::filesystem::path(argv[2]).filename().string()},
            {"document_tokens", p},
            {"question_tokens_with_cartridge", suffix_ids.size()},
            {"question_alone_tokens", alone_ids.size()},
            {"full_prompt_tokens", full_ids.size()},
            {"cartridge_file_bytes", built->nbytes()},
            {"repeats", repeats},
            {"ttft_ms",
             {{"question_tokens_only (floor)", 1e3 * floor},
              {"question_as_plain_chat", 1e3 * alone},
              {"resident_cartridge", 1e3 * resident},
              {"document_in_prompt (baseline)", 1e3 * whole},
              {"cartridge_from_host_tier", 1e3 * host},
              {"cartridge_from_disk", 1e3 * cold}}},
            {"load_ms",
             {{"host_to_kv_blocks", 1e3 * (host - resident)},
              {"disk_to_kv_blocks", 1e3 * (cold - resident)}}},
            {"ratios",
             {{"resident_vs_document_in_prompt", whole / resident},
              {"resident_vs_floor", resident / floor}}}};
  std::printf("%-34s %10s\n", "time to first token", "ms");
  for (const auto& [k, v] : j["ttft_ms"].items())
    std::printf("%-34s %10.1f\n", k.c_str(), v.get<double>());
  std::printf(
      "resident cartridge is %.1fx faster than the document in the prompt, %.2fx the floor\n",
      whole / resident, resident / floor);
  std::ofstream(out_path) << j.dump(2) << "\n";
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}
