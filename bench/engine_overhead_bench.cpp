// The engine's own cost per step, with no model behind it: a backend that
// samples a token per row without computing (NullBackend), so a step's time
// is the scheduler, the step input, sampling bookkeeping, detokenisation,
// stop checks and publishing to the request streams. This is the host time
// the GPU would wait for between steps (the engine does not overlap the
// host's work with the device's yet); it sits beside the GPU step times of
// bench/gpu_bench.cpp to show the serving overhead.
//
//   engine_overhead_bench MODEL [--out FILE] [--tokens N]
// MODEL: any model cartserve loads (its config and tokenizer are used; the
// weights are loaded but never run). For each concurrency C in 1, 16, 64,
// 256: C requests of a 64-token prompt and N output tokens (ignore_eos),
// all submitted at once; reports host microseconds per engine step and per
// output token.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_util.h"
#include "engine/engine.h"
#include "kv/block_pool.h"
#include "server/serving_stack.h"

namespace cartserve {
namespace {

using bench::Clock;
using bench::seconds_since;
using json = nlohmann::json;

// Samples token 100 + (step * 7 + row) % 1000 for every sampled row; no
// compute, no KV. Transfers are refused (no cartridges here).
class NullBackend final : public Backend {
 public:
  explicit NullBackend(const ModelConfig& c, int32_t num_blocks) {
    spec_.dtype = DType::kBF16;
    spec_.block_size = 16;
    spec_.num_blocks = num_blocks;
    spec_.num_layers = c.num_layers;
    spec_.num_kv_heads = c.num_kv_heads;
    spec_.head_dim = c.head_dim;
  }
  std::string name() const override { return "null"; }
  const KvSpec& kv_spec() const override { return spec_; }
  Status execute(const StepInput& in, StepOutput& out) override {
    out.samples.assign(in.samples.size(), SampleResult{});
    for (size_t i = 0; i < out.samples.size(); ++i)
      out.samples[i].token = 100 + static_cast<int32_t>((step_ * 7 + i) % 1000);
    out.prompt_logprobs.clear();
    ++step_;
    return {};
  }
  Status logits(const StepInput&, std::vector<float>&) override {
    return Status(ErrorCode::kUnsupported, "null backend");
  }
  Result<TransferId> start_kv_load(const HostKv&, const KvBlockList&) override {
    return make_error(ErrorCode::kUnsupported, "null backend");
  }
  Result<TransferId> start_kv_save(const KvBlockList&, const HostKv&) override {
    return make_error(ErrorCode::kUnsupported, "null backend");
  }
  std::optional<Status> poll_transfer(TransferId) override {
    return Status(ErrorCode::kNotFound, "no transfers");
  }
  Status wait_transfer(TransferId) override { return Status(ErrorCode::kNotFound, "no transfers"); }

 private:
  KvSpec spec_;
  uint64_t step_ = 0;
};

}  // namespace
}  // namespace cartserve

int main(int argc, char** argv) {
  using namespace cartserve;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL [--out FILE] [--tokens N]\n", argv[0]);
    return 2;
  }
  std::string out_path = "engine_overhead_bench.json";
  int tokens = 128;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--out") out_path = argv[i + 1];
    if (std::string(argv[i]) == "--tokens") tokens = std::max(1, std::atoi(argv[i + 1]));
  }
  ServeOptions o;
  o.model = argv[1];
  auto model = load_model_for(o, false);
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", model.status().message().c_str());
    return 1;
  }
  const ModelConfig& c = (*model)->config;
  constexpr int kPrompt = 64, kMaxSeqs = 256;
  const int32_t blocks = 1 + kMaxSeqs * ((kPrompt + tokens + 15) / 16 + 1);
  NullBackend backend(c, blocks);
  auto pool = BlockPool::create(blocks, /*enable_caching=*/false);
  if (!pool.ok()) {
    std::fprintf(stderr, "error: %s\n", pool.status().message().c_str());
    return 1;
  }
  EngineConfig cfg;
  cfg.scheduler.max_num_seqs = kMaxSeqs;
  cfg.scheduler.max_num_batched_tokens = 8192;
  cfg.scheduler.max_model_len = kPrompt + tokens + 16;
  auto engine = Engine::create(**model, backend, *pool, cfg);
  if (!engine.ok()) {
    std::fprintf(stderr, "error: %s\n", engine.status().message().c_str());
    return 1;
  }
  json rows = json::array();
  std::printf("concurrency  steps  us/step  us/output token\n");
  for (int conc : {1, 16, 64, 256}) {
    const int64_t steps0 = (*engine)->stats().num_steps;
    std::vector<std::shared_ptr<RequestStream>> streams;
    const auto t0 = Clock::now();
    for (int r = 0; r < conc; ++r) {
      GenerateRequest g;
      g.id = "r" + std::to_string(conc) + "-" + std::to_string(r);
      for (int k = 0; k < kPrompt; ++k)
        g.prompt_token_ids.push_back(100 + (r * 131 + k * 17) % 5000);
      g.sampling.max_tokens = tokens;
      g.sampling.ignore_eos = true;
      streams.push_back((*engine)->submit(std::move(g)));
    }
    int64_t out_tokens = 0;
    for (auto& s : streams) {
      while (true) {
        bool done = false;
        for (const EngineOutput& e : s->next(std::chrono::milliseconds(100))) {
          if (!e.error.ok()) {
            std::fprintf(stderr, "request failed: %s\n", e.error.message().c_str());
            return 1;
          }
          out_tokens += static_cast<int64_t>(e.token_ids.size());
          done = done || e.finished;
        }
        if (done) break;
      }
    }
    const double sec = seconds_since(t0);
    const int64_t steps = (*engine)->stats().num_steps - steps0;
    const double us_step = 1e6 * sec / static_cast<double>(std::max<int64_t>(steps, 1));
    const double us_token = 1e6 * sec / static_cast<double>(std::max<int64_t>(out_tokens, 1));
    rows.push_back({{"concurrency", conc},
                    {"steps", steps},
                    {"output_tokens", out_tokens},
                    {"seconds", sec},
                    {"us_per_step", us_step},
                    {"us_per_output_token", us_token}});
    std::printf("%11d %6lld %8.1f %16.2f\n", conc, static_cast<long long>(steps), us_step,
                us_token);
  }
  json j = {{"benchmark", "engine_overhead_bench"},
            {"model", o.model},
            {"prompt_tokens", kPrompt},
            {"output_tokens_per_request", tokens},
            {"backend", "null (no compute)"},
            {"results", rows}};
  std::ofstream(out_path) << j.dump(1);
  return 0;
}
