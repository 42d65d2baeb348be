// CPU prefill and decode throughput of the fp32 reference backend, with the
// physical floors measured in the same run:
//  - memory bandwidth (large memcpy) -> decode floor = weight bytes / bandwidth
//  - BLAS sgemm rate (1024^3)        -> prefill floor = 2 * params * tokens / rate
// Optionally runs llama.cpp's llama-bench on the same GGUF as the baseline
// (--llama-bench PATH; llama.cpp is built beside this repo, never committed).
//
// Usage: cpu_model_bench MODEL [--out FILE.json] [--llama-bench PATH] [--threads N]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/thread_pool.h"
#include "model/llama.h"
#include "model/model.h"
#include "model/sequence_runner.h"

using namespace cartserve;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

template <typename F>
double median_seconds(int reps, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Bytes read + written per second by a large multi-threaded copy.
double measure_bandwidth() {
  const size_t n = 256u << 20;  // 256 MiB, well beyond caches
  std::vector<char> a(n, 1), b(n, 2);
  auto& pool = ThreadPool::global();
  const double s = median_seconds(5, [&] {
    pool.parallel_for(
        n, [&](size_t lo, size_t hi) { std::memcpy(b.data() + lo, a.data() + lo, hi - lo); },
        1 << 20);
  });
  return 2.0 * static_cast<double>(n) / s;
}

double measure_sgemm_flops() {
  const int m = 1024;
  std::vector<float> a(static_cast<size_t>(m) * m, 0.5f), b(a.size(), 0.25f), c(a.size());
  const double s = median_seconds(5, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, m, 1.f, a.data(), m, b.data(), m,
                0.f, c.data(), m);
  });
  return 2.0 * m * m * static_cast<double>(m) / s;
}

std::vector<int32_t> random_tokens(int n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(100, vocab - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& t : v)
    t = d(rng);
  return v;
}

// Batched decode: `batch` sequences each with `ctx` tokens of context, one step.
double decode_batch_seconds(const Model& model, int batch, int ctx, int steps) {
  const int bs = 16;
  const int blocks_per_seq = (ctx + steps + bs - 1) / bs;
  KvCache cache(model.config.num_layers, batch * blocks_per_seq, bs, model.config.kv_dim());
  LlamaForward fwd(model);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(batch));
  for (int s = 0; s < batch; ++s) {
    for (int b = 0; b < blocks_per_seq; ++b)
      tables[s].push_back(s * blocks_per_seq + b);
  }
  std::vector<float> logits;
  // Prefill every sequence (not timed).
  for (int s = 0; s < batch; ++s) {
    ForwardBatch fb;
    fb.tokens = random_tokens(ctx, model.config.vocab_size, 100 + s);
    for (int i = 0; i < ctx; ++i) {
      fb.positions.push_back(i);
      fb.slots.push_back(tables[s][i / bs] * bs + i % bs);
    }
    fb.seqs.push_back({0, ctx, ctx, tables[s].data(), blocks_per_seq});
    fb.logit_rows = {ctx - 1};
    if (!fwd.forward(fb, cache, logits).ok()) return -1;
  }
  std::vector<double> times;
  for (int step = 0; step < steps; ++step) {
    ForwardBatch fb;
    const int pos = ctx + step;
    for (int s = 0; s < batch; ++s) {
      fb.tokens.push_back(1000 + s + step);
      fb.positions.push_back(pos);
      fb.slots.push_back(tables[s][pos / bs] * bs + pos % bs);
      fb.seqs.push_back({s, 1, pos + 1, tables[s].data(), blocks_per_seq});
      fb.logit_rows.push_back(s);
    }
    const auto t0 = Clock::now();
    if (!fwd.forward(fb, cache, logits).ok()) return -1;
    times.push_back(seconds_since(t0));
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

json run_llama_bench(const std::string& exe, const std::string& model, int threads) {
  const std::string cmd = exe + " -m '" + model + "' -p 128,512 -n 64 -r 3 -t " +
                          std::to_string(threads) + " -o json 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return json{{"error", "cannot run " + exe}};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0)
    out.append(buf, n);
  const int rc = pclose(p);
  json j = json::parse(out, nullptr, false);
  if (rc != 0 || j.is_discarded()) return json{{"error", "llama-bench failed"}, {"output", out}};
  json res = json::array();
  for (const auto& e : j) {
    res.push_back({{"n_prompt", e.value("n_prompt", 0)},
                   {"n_gen", e.value("n_gen", 0)},
                   {"tokens_per_s", e.value("avg_ts", 0.0)},
                   {"type", e.value("model_type", "")}});
  }
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL [--out FILE.json] [--llama-bench PATH] [--threads N]\n",
                 argv[0]);
    return 2;
  }
  const std::string model_path = argv[1];
  std::string out_path = "cpu_model_bench.json";
  std::string llama_bench;
  int threads = static_cast<int>(ThreadPool::global().size());
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--out") out_path = argv[i + 1];
    if (k == "--llama-bench") llama_bench = argv[i + 1];
    if (k == "--threads") threads = std::atoi(argv[i + 1]);
  }
  LoadOptions opts;
  opts.progress = false;
  auto loaded = load_model(model_path, opts);
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", loaded.status().to_string().c_str());
    return 1;
  }
  const Model& model = **loaded;
  const double bandwidth = measure_bandwidth();
  const double flops = measure_sgemm_flops();
  const double weight_bytes = static_cast<double>(model.weights.nbytes());
  const double params = static_cast<double>(model.config.num_parameters());

  json results = json::array();
  std::printf("%-28s %12s %12s %10s\n", "case", "tok/s", "floor tok/s", "of floor");
  auto add = [&](const std::string& name, double tok_s, double floor_tok_s, json extra) {
    std::printf("%-28s %12.1f %12.1f %9.1f%%\n", name.c_str(), tok_s, floor_tok_s,
                100.0 * tok_s / floor_tok_s);
    extra["case"] = name;
    extra["tokens_per_s"] = tok_s;
    extra["floor_tokens_per_s"] = floor_tok_s;
    extra["fraction_of_floor"] = tok_s / floor_tok_s;
    results.push_back(extra);
  };

  for (int n : {128, 512}) {
    const auto ids = random_tokens(n, model.config.vocab_size, 7);
    SequenceRunner runner(model, n);
    const double s = median_seconds(3, [&] {
      runner.reset();
      (void)runner.append(ids);
    });
    add("prefill " + std::to_string(n), n / s, flops / (2.0 * params), json{{"tokens", n}});
  }
  for (int batch : {1, 4, 16}) {
    const double s = decode_batch_seconds(model, batch, 128, 16);
    // Each step reads all weights once (batch amortises) plus the KV of every sequence.
    const double floor_step = weight_bytes / bandwidth;
    add("decode batch " + std::to_string(batch) + " ctx 128", batch / s, batch / floor_step,
        json{{"batch", batch}, {"context", 128}, {"ms_per_step", 1000.0 * s}});
  }
  json out = {{"benchmark", "cpu_model_bench"},
              {"model", model.config.model_id},
              {"parameters", params},
              {"weight_bytes", weight_bytes},
              {"threads", threads},
              {"measured_bandwidth_bytes_per_s", bandwidth},
              {"measured_sgemm_flops", flops},
              {"results", results}};
  if (!llama_bench.empty()) {
    out["baseline_llama_cpp"] = run_llama_bench(llama_bench, model_path, threads);
    std::printf("llama.cpp baseline: %s\n", out["baseline_llama_cpp"].dump().c_str());
  }
  std::ofstream(out_path) << out.dump(2) << "\n";
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}
