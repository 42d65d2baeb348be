// Sampler cost for one decode step of a large batch: logits [batch, vocab]
// (default 64 x 128256, Llama 3's vocabulary), for several parameter mixes,
// single-threaded and on the thread pool. Median of repetitions; JSON out.
// The floor printed beside each figure is one read of the logits at the
// memcpy bandwidth measured in the same run.
//
// Usage: sampler_bench [--batch N] [--vocab V] [--reps R] [--threads T] [--out FILE.json]
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
#include "runtime/cpu/sampler.h"

using namespace cartserve;
using Clock = std::chrono::steady_clock;

namespace {

template <typename F>
double median_seconds(int reps, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int batch = 64, vocab = 128256, reps = 7, threads = 0;
  std::string out_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--batch")
      batch = std::atoi(argv[i + 1]);
    else if (a == "--vocab")
      vocab = std::atoi(argv[i + 1]);
    else if (a == "--reps")
      reps = std::atoi(argv[i + 1]);
    else if (a == "--threads")
      threads = std::atoi(argv[i + 1]);
    else if (a == "--out")
      out_path = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (batch <= 0 || vocab <= 1 || reps <= 0) {
    std::fprintf(stderr, "batch, vocab and reps must be positive\n");
    return 2;
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<float> logits(static_cast<size_t>(batch) *
                            static_cast<size_t>(vocab));  // [batch, vocab]
  for (auto& v : logits)
    v = nd(rng);
  std::vector<float> copy(logits.size());
  const double t_copy =
      median_seconds(reps, [&] { std::memcpy(copy.data(), logits.data(), logits.size() * 4); });

  std::vector<int32_t> history(512);  // penalties over 512 tokens per row
  for (auto& t : history)
    t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));

  struct Mix {
    const char* name;
    SamplingParams p;
    bool penalties;
  };
  std::vector<Mix> mixes;
  auto add = [&](const char* name, auto set, bool pen = false) {
    SamplingParams p;
    set(p);
    mixes.push_back({name, p, pen});
  };
  add("greedy", [](SamplingParams& p) { p.temperature = 0; });
  add("temperature", [](SamplingParams& p) { p.temperature = 0.8f; });
  add("top_k_50", [](SamplingParams& p) { p.top_k = 50; });
  add("top_p_0.9", [](SamplingParams& p) { p.top_p = 0.9f; });
  add("top_k_top_p_min_p", [](SamplingParams& p) {
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
  });
  add(
      "penalties_logprobs_20",
      [](SamplingParams& p) {
        p.repetition_penalty = 1.1f;
        p.frequency_penalty = 0.3f;
        p.presence_penalty = 0.2f;
        p.logprobs = true;
        p.top_logprobs = 20;
      },
      true);

  ThreadPool pool(threads > 0 ? static_cast<size_t>(threads) : ThreadPool::global().size());
  nlohmann::json results = nlohmann::json::array();
  for (const auto& m : mixes) {
    std::vector<SamplerRow> rows(static_cast<size_t>(batch));
    for (int i = 0; i < batch; ++i) {
      rows[static_cast<size_t>(i)].params = &m.p;
      rows[static_cast<size_t>(i)].seed = static_cast<uint64_t>(i);
      if (m.penalties) {
        rows[static_cast<size_t>(i)].prompt_token_ids = history;
        rows[static_cast<size_t>(i)].output_token_ids = std::span(history).first(128);
      }
    }
    std::vector<SampleResult> out;
    for (int par = 0; par < 2; ++par) {
      Sampler s(par ? &pool : nullptr);
      bool ok = true;
      const double t =
          median_seconds(reps, [&] { ok = ok && s.sample(logits, vocab, rows, out).ok(); });
      if (!ok) {
        std::fprintf(stderr, "sampling failed for %s\n", m.name);
        return 1;
      }
      const int n_threads = par ? static_cast<int>(pool.size()) : 1;
      std::printf("%-24s threads %2d: %8.2f ms per step (%.1f us per row)\n", m.name, n_threads,
                  t * 1e3, t * 1e6 / batch);
      results.push_back({{"mix", m.name}, {"threads", n_threads}, {"ms_per_step", t * 1e3}});
    }
  }
  std::printf("floor: one read of the logits %.2f ms (memcpy %.1f GB/s)\n", t_copy * 1e3,
              2.0 * static_cast<double>(logits.size()) * 4 / t_copy / 1e9);
  nlohmann::json doc = {
      {"bench", "sampler"},        {"batch", batch},    {"vocab", vocab}, {"reps", reps},
      {"memcpy_ms", t_copy * 1e3}, {"results", results}};
  if (!out_path.empty()) {
    std::ofstream(out_path) << doc.dump(1) << "\n";
  } else {
    std::printf("%s\n", doc.dump().c_str());
  }
  return 0;
}
