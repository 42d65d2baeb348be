#include "runtime/cpu/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "test_util.h"

namespace cartserve {
namespace {

SamplingParams params_from_json(const nlohmann::json& j) {
  SamplingParams p;
  p.temperature = j.value("temperature", 1.0f);
  p.top_k = j.value("top_k", 0);
  p.top_p = j.value("top_p", 1.0f);
  p.min_p = j.value("min_p", 0.0f);
  p.repetition_penalty = j.value("repetition_penalty", 1.0f);
  p.frequency_penalty = j.value("frequency_penalty", 0.0f);
  p.presence_penalty = j.value("presence_penalty", 0.0f);
  p.min_tokens = j.value("min_tokens", 0);
  p.ignore_eos = j.value("ignore_eos", false);
  p.stop_token_ids = j.value("stop_token_ids", std::vector<int32_t>{});
  p.max_tokens = 100;
  return p;
}

struct Fixture {
  int32_t vocab = 0;
  std::vector<int32_t> prompt, output, eos;
  nlohmann::json cases;
};

Fixture load_fixture() {
  std::ifstream f(testing::fixture_path("sampler/distributions.json"));
  EXPECT_TRUE(f.good());
  const auto doc = nlohmann::json::parse(f);
  Fixture fx;
  fx.vocab = doc["vocab"];
  fx.prompt = doc["prompt"].get<std::vector<int32_t>>();
  fx.output = doc["output"].get<std::vector<int32_t>>();
  fx.eos = doc["eos"].get<std::vector<int32_t>>();
  fx.cases = doc["cases"];
  return fx;
}

SamplerRow row_for(const SamplingParams& p, const Fixture& fx, uint64_t seed = 0) {
  SamplerRow r;
  r.params = &p;
  r.prompt_token_ids = fx.prompt;
  r.output_token_ids = fx.output;
  r.eos_token_ids = fx.eos;
  r.seed = seed;
  return r;
}

std::vector<double> dense(const std::vector<TokenLogprob>& sparse, int32_t vocab) {
  std::vector<double> d(static_cast<size_t>(vocab), 0.0);
  for (const auto& t : sparse)
    d[static_cast<size_t>(t.token)] = t.logprob;
  return d;
}

// Distributions after penalties, temperature, min_p, top_k, top_p against the
// torch reference (tools/make_sampler_fixtures.py), within 1e-6.
TEST(Sampler, DistributionMatchesTorchReference) {
  const Fixture fx = load_fixture();
  ASSERT_EQ(fx.cases.size(), 15u);
  for (size_t c = 0; c < fx.cases.size(); ++c) {
    SCOPED_TRACE(fx.cases[c]["params"].dump());
    const SamplingParams p = params_from_json(fx.cases[c]["params"]);
    const auto logits_d = fx.cases[c]["logits"].get<std::vector<double>>();
    const std::vector<float> logits(logits_d.begin(), logits_d.end());
    const auto want = fx.cases[c]["probs"].get<std::vector<double>>();
    std::vector<TokenLogprob> got_sparse;
    ASSERT_TRUE(Sampler::distribution(logits, row_for(p, fx), got_sparse).ok());
    const auto got = dense(got_sparse, fx.vocab);
    for (int32_t i = 0; i < fx.vocab; ++i) {
      EXPECT_NEAR(got[static_cast<size_t>(i)], want[static_cast<size_t>(i)], 1e-6) << "token " << i;
      // Same support exactly.
      EXPECT_EQ(got[static_cast<size_t>(i)] > 0, want[static_cast<size_t>(i)] > 0) << "token " << i;
    }
  }
}

// Empirical frequencies over many seeded draws follow the reference
// distribution, and never leave its support.
TEST(Sampler, EmpiricalSamplingFollowsDistributionAndSupport) {
  const Fixture fx = load_fixture();
  const int kDraws = 20000;
  for (size_t c : {0u, 1u, 4u, 5u, 7u, 8u, 9u, 11u}) {
    SCOPED_TRACE(fx.cases[c]["params"].dump());
    const SamplingParams p = params_from_json(fx.cases[c]["params"]);
    const auto logits_d = fx.cases[c]["logits"].get<std::vector<double>>();
    const std::vector<float> logits(logits_d.begin(), logits_d.end());
    const auto want = fx.cases[c]["probs"].get<std::vector<double>>();
    Sampler sampler;
    std::vector<int> counts(static_cast<size_t>(fx.vocab), 0);
    std::vector<SamplerRow> rows;
    for (int d = 0; d < kDraws; ++d)
      rows.push_back(row_for(p, fx, 1000 + static_cast<uint64_t>(d)));
    std::vector<float> batch;
    for (int d = 0; d < kDraws; ++d)
      batch.insert(batch.end(), logits.begin(), logits.end());
    std::vector<SampleResult> out;
    ASSERT_TRUE(sampler.sample(batch, fx.vocab, rows, out).ok());
    for (const auto& r : out)
      ++counts[static_cast<size_t>(r.token)];
    for (int32_t i = 0; i < fx.vocab; ++i) {
      const double pi = want[static_cast<size_t>(i)];
      const double f = counts[static_cast<size_t>(i)] / static_cast<double>(kDraws);
      if (pi == 0.0) {
        EXPECT_EQ(counts[static_cast<size_t>(i)], 0) << "token " << i << " outside the support";
      } else {
        const double sigma = std::sqrt(pi * (1 - pi) / kDraws);
        EXPECT_NEAR(f, pi, 5 * sigma + 1e-4) << "token " << i;
      }
    }
  }
}

TEST(Sampler, GreedyTiesGoToLowestId) {
  const std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 3.0f, 2.9f};
  SamplingParams p;
  p.temperature = 0.0f;
  SamplerRow r;
  r.params = &p;
  Sampler s;
  std::vector<SampleResult> out;
  ASSERT_TRUE(s.sample(logits, 6, std::span(&r, 1), out).ok());
  EXPECT_EQ(out[0].token, 1);
  // Also the argmax after penalties: token 1 seen in the prompt, 3 and 4 not.
  p.repetition_penalty = 2.0f;
  const std::vector<int32_t> prompt = {1};
  r.prompt_token_ids = prompt;
  ASSERT_TRUE(s.sample(logits, 6, std::span(&r, 1), out).ok());
  EXPECT_EQ(out[0].token, 3);
  // Tiny temperatures are greedy too.
  p.temperature = 1e-6f;
  p.repetition_penalty = 1.0f;
  ASSERT_TRUE(s.sample(logits, 6, std::span(&r, 1), out).ok());
  EXPECT_EQ(out[0].token, 1);
}

TEST(Sampler, TemperatureSharpensAndFlattens) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.0f, -1.0f};
  auto dist = [&](float t) {
    SamplingParams p;
    p.temperature = t;
    SamplerRow r;
    r.params = &p;
    std::vector<TokenLogprob> d;
    EXPECT_TRUE(Sampler::distribution(logits, r, d).ok());
    return dense(d, 4);
  };
  for (float t : {0.25f, 0.5f, 1.0f, 2.0f}) {
    const auto d = dist(t);
    double z = 0;
    for (float l : logits)
      z += std::exp(l / t);
    for (int i = 0; i < 4; ++i)
      EXPECT_NEAR(d[static_cast<size_t>(i)], std::exp(logits[static_cast<size_t>(i)] / t) / z,
                  1e-7);
  }
  EXPECT_GT(dist(0.5f)[1], dist(1.0f)[1]);
  EXPECT_LT(dist(2.0f)[1], dist(1.0f)[1]);
}

TEST(Sampler, PenaltiesAgainstHandComputedLogits) {
  // vocab 6; prompt {0, 1}; output {1, 2, 2, 5}.
  const std::vector<float> logits = {2.0f, -1.0f, 0.5f, 1.0f, -2.0f, 3.0f};
  const std::vector<int32_t> prompt = {0, 1}, output = {1, 2, 2, 5};
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  SamplerRow r;
  r.params = &p;
  r.prompt_token_ids = prompt;
  r.output_token_ids = output;
  // repetition over {0, 1, 2, 5}: 2/2, -1*2, 0.5/2, 3/2; then output counts 1:1, 2:2, 5:1.
  const std::vector<double> want_logits = {1.0,  -2.0 - 0.5 - 0.25, 0.25 - 1.0 - 0.25, 1.0,
                                           -2.0, 1.5 - 0.5 - 0.25};
  double z = 0;
  for (double l : want_logits)
    z += std::exp(l);
  std::vector<TokenLogprob> d;
  ASSERT_TRUE(Sampler::distribution(logits, r, d).ok());
  const auto got = dense(d, 6);
  for (size_t i = 0; i < 6; ++i)
    EXPECT_NEAR(got[i], std::exp(want_logits[i]) / z, 1e-7) << i;
}

TEST(Sampler, MinTokensMasksStopTokens) {
  const std::vector<float> logits = {5.0f, 1.0f, 4.0f, 0.0f};
  SamplingParams p;
  p.temperature = 0.0f;
  p.min_tokens = 2;
  p.stop_token_ids = {2};
  const std::vector<int32_t> eos = {0};
  std::vector<int32_t> output = {3};
  SamplerRow r;
  r.params = &p;
  r.eos_token_ids = eos;
  r.output_token_ids = output;
  Sampler s;
  std::vector<SampleResult> out;
  ASSERT_TRUE(s.sample(logits, 4, std::span(&r, 1), out).ok());
  EXPECT_EQ(out[0].token, 1);  // 0 (EOS) and 2 (stop id) masked
  output.push_back(3);
  r.output_token_ids = output;
  ASSERT_TRUE(s.sample(logits, 4, std::span(&r, 1), out).ok());
  EXPECT_EQ(out[0].token, 0);
}

TEST(Sampler, SeedReproducibleRegardlessOfBatchOrder) {
  const int32_t vocab = 1000;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 2.f);
  std::vector<std::vector<float>> logits(5, std::vector<float>(vocab));
  for (auto& row : logits) {
    for (auto& v : row)
      v = nd(rng);
  }
  std::vector<SamplingParams> ps(5);
  ps[1].top_k = 50;
  ps[2].top_p = 0.9f;
  ps[3].min_p = 0.05f;
  ps[4].temperature = 0.7f;
  const std::vector<int32_t> outputs = {1, 2, 3};
  auto row = [&](size_t i, uint64_t seed) {
    SamplerRow r;
    r.params = &ps[i];
    r.output_token_ids = outputs;
    r.seed = seed;
    return r;
  };
  ThreadPool pool(3);
  Sampler s(&pool);
  auto run = [&](const std::vector<size_t>& order, const std::vector<uint64_t>& seeds) {
    std::vector<float> batch;
    std::vector<SamplerRow> rows;
    for (size_t k = 0; k < order.size(); ++k) {
      batch.insert(batch.end(), logits[order[k]].begin(), logits[order[k]].end());
      rows.push_back(row(order[k], seeds[k]));
    }
    std::vector<SampleResult> out;
    EXPECT_TRUE(s.sample(batch, vocab, rows, out).ok());
    std::map<size_t, int32_t> by_row;
    for (size_t k = 0; k < order.size(); ++k)
      by_row[order[k]] = out[k].token;
    return by_row;
  };
  const auto a = run({0, 1, 2, 3, 4}, {10, 11, 12, 13, 14});
  const auto b = run({4, 2, 0, 3, 1}, {14, 12, 10, 13, 11});
  const auto c = run({3}, {13});
  const auto d = run({2, 2, 2}, {12, 12, 12});
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.at(3), c.at(3));
  EXPECT_EQ(a.at(2), d.at(2));
  // Other seeds give other draws (for some of 20 seeds at least).
  int differ = 0;
  for (uint64_t seed = 100; seed < 120; ++seed)
    differ += run({0}, {seed}).at(0) != a.at(0);
  EXPECT_GT(differ, 5);
  // The draw index is the output length: a different step draws differently.
  EXPECT_NE(Sampler::uniform(10, 3), Sampler::uniform(10, 4));
  EXPECT_EQ(Sampler::uniform(10, 3), Sampler::uniform(10, 3));
}

TEST(Sampler, LogprobsAreRawAndSumToOne) {
  const Fixture fx = load_fixture();
  // Case 11 has penalties: logprobs still come from the raw logits (vLLM default).
  const auto& c = fx.cases[11];
  SamplingParams p = params_from_json(c["params"]);
  p.logprobs = true;
  p.top_logprobs = 5;
  const auto logits_d = c["logits"].get<std::vector<double>>();
  const std::vector<float> logits(logits_d.begin(), logits_d.end());
  const auto raw = c["raw_logprobs"].get<std::vector<double>>();
  SamplerRow r = row_for(p, fx, 77);
  Sampler s;
  std::vector<SampleResult> out;
  ASSERT_TRUE(s.sample(logits, fx.vocab, std::span(&r, 1), out).ok());
  const SampleResult& res = out[0];
  EXPECT_NEAR(res.logprob, raw[static_cast<size_t>(res.token)], 1e-5);
  int higher = 0;
  for (double v : raw)
    higher += v > raw[static_cast<size_t>(res.token)];
  EXPECT_EQ(res.rank, higher + 1);
  ASSERT_EQ(res.top_logprobs.size(), 5u);
  std::vector<size_t> idx(raw.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return raw[a] > raw[b]; });
  for (size_t k = 0; k < 5; ++k) {
    EXPECT_EQ(res.top_logprobs[k].token, static_cast<int32_t>(idx[k]));
    EXPECT_NEAR(res.top_logprobs[k].logprob, raw[idx[k]], 1e-5);
  }
  // All of a small vocabulary: probabilities sum to 1 within 1e-5.
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.f, 4.f);
  std::vector<float> small(16);
  for (auto& v : small)
    v = nd(rng);
  SamplingParams all;
  all.top_logprobs = 16;
  SamplerRow ra;
  ra.params = &all;
  ASSERT_TRUE(s.sample(small, 16, std::span(&ra, 1), out).ok());
  ASSERT_EQ(out[0].top_logprobs.size(), 16u);
  double sum = 0;
  for (const auto& t : out[0].top_logprobs)
    sum += std::exp(static_cast<double>(t.logprob));
  EXPECT_NEAR(sum, 1.0, 1e-5);
  // Without logprobs requested nothing is filled.
  SamplingParams none;
  SamplerRow rn;
  rn.params = &none;
  ASSERT_TRUE(s.sample(small, 16, std::span(&rn, 1), out).ok());
  EXPECT_TRUE(out[0].top_logprobs.empty());
}

TEST(Sampler, LargeVocabLogprobsSumToOne) {
  const int32_t vocab = 128256;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 3.f);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (auto& v : logits)
    v = nd(rng);
  SamplingParams p;
  p.logprobs = true;
  p.top_logprobs = 20;
  p.top_p = 0.9f;
  p.top_k = 100;
  SamplerRow r;
  r.params = &p;
  Sampler s;
  std::vector<SampleResult> out;
  ASSERT_TRUE(s.sample(logits, vocab, std::span(&r, 1), out).ok());
  long double m = *std::max_element(logits.begin(), logits.end()), z = 0;
  for (float v : logits)
    z += std::exp(static_cast<long double>(v) - m);
  const long double lse = m + std::log(z);
  EXPECT_NEAR(out[0].logprob, static_cast<double>(logits[static_cast<size_t>(out[0].token)] - lse),
              1e-5);
  long double total = 0;
  for (float v : logits)
    total += std::exp(static_cast<long double>(v) - lse);
  EXPECT_NEAR(static_cast<double>(total), 1.0, 1e-5);
  // top_k = 100 and top_p: the token is among the 100 best.
  EXPECT_LE(out[0].rank, 100);
}

TEST(Sampler, RejectsNanLogitsAndBadShapes) {
  std::vector<float> logits = {0.f, NAN, 1.f};
  SamplingParams p;
  SamplerRow r;
  r.params = &p;
  Sampler s;
  std::vector<SampleResult> out;
  const Status st = s.sample(logits, 3, std::span(&r, 1), out);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("row 0"), std::string::npos);
  EXPECT_FALSE(s.sample(logits, 2, std::span(&r, 1), out).ok());
}

}  // namespace
}  // namespace cartserve
