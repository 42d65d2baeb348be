#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace cartserve {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Per-thread scratch, reused across rows and steps.
struct Scratch {
  std::vector<float> x;         // [vocab] processed logits
  std::vector<int32_t> counts;  // [vocab] output-token counts, zero between uses
  std::vector<uint8_t> seen;    // [vocab] prompt/output membership, zero between uses
  std::vector<float> tmp;       // [vocab] for nth_element
  std::vector<int32_t> cand;    // candidate token ids
};

Scratch& scratch(int32_t vocab) {
  thread_local Scratch s;
  const auto v = static_cast<size_t>(vocab);
  if (s.x.size() < v) {
    s.x.resize(v);
    s.counts.assign(v, 0);
    s.seen.assign(v, 0);
    s.tmp.resize(v);
  }
  return s;
}

Status check_row(const float* raw, int32_t vocab, size_t row) {
  for (int32_t i = 0; i < vocab; ++i) {
    if (std::isnan(raw[i]) || raw[i] == std::numeric_limits<float>::infinity()) {
      return make_error(ErrorCode::kInternal, "logits row {} holds {} at token {}", row, raw[i], i);
    }
  }
  return Status::ok_status();
}

// Steps 2-3: min_tokens mask and penalties, into s.x.
void process_logits(const float* raw, int32_t vocab, const SamplerRow& row, Scratch& s) {
  const SamplingParams& sp = *row.params;
  float* x = s.x.data();
  std::copy(raw, raw + vocab, x);
  const auto in_vocab = [vocab](int32_t t) { return t >= 0 && t < vocab; };
  if (static_cast<int32_t>(row.output_token_ids.size()) < sp.min_tokens) {
    if (!sp.ignore_eos) {
      for (int32_t t : row.eos_token_ids) {
        if (in_vocab(t)) x[t] = kNegInf;
      }
    }
    for (int32_t t : sp.stop_token_ids) {
      if (in_vocab(t)) x[t] = kNegInf;
    }
  }
  if (sp.repetition_penalty != 1.0f) {
    const float r = sp.repetition_penalty;
    const auto apply = [&](std::span<const int32_t> ids) {
      for (int32_t t : ids) {
        if (!in_vocab(t) || s.seen[static_cast<size_t>(t)]) continue;
        s.seen[static_cast<size_t>(t)] = 1;
        x[t] = x[t] > 0 ? x[t] / r : x[t] * r;
      }
    };
    apply(row.prompt_token_ids);
    apply(row.output_token_ids);
    for (int32_t t : row.prompt_token_ids) {
      if (in_vocab(t)) s.seen[static_cast<size_t>(t)] = 0;
    }
    for (int32_t t : row.output_token_ids) {
      if (in_vocab(t)) s.seen[static_cast<size_t>(t)] = 0;
    }
  }
  if (sp.frequency_penalty != 0.0f || sp.presence_penalty != 0.0f) {
    for (int32_t t : row.output_token_ids) {
      if (in_vocab(t)) ++s.counts[static_cast<size_t>(t)];
    }
    for (int32_t t : row.output_token_ids) {
      if (!in_vocab(t)) continue;
      int32_t& c = s.counts[static_cast<size_t>(t)];
      if (c == 0) continue;  // handled already
      x[t] -= sp.frequency_penalty * static_cast<float>(c) + sp.presence_penalty;
      c = 0;
    }
  }
}

int32_t argmax(const float* x, int32_t vocab) {
  int32_t best = 0;
  for (int32_t i = 1; i < vocab; ++i) {
    if (x[i] > x[best]) best = i;  // strict: ties keep the lowest id
  }
  return best;
}

// Step 5 up to the draw: leaves in s.cand the support in draw order and
// returns the max logit; s.x holds temperature-scaled logits.
float build_support(int32_t vocab, const SamplingParams& sp, Scratch& s) {
  float* x = s.x.data();
  const float inv_t = 1.0f / sp.temperature;
  float m = kNegInf;
  for (int32_t i = 0; i < vocab; ++i) {
    x[i] *= inv_t;
    m = std::max(m, x[i]);
  }
  // min_p and top_k both reduce to a logit threshold.
  float threshold = kNegInf;
  if (sp.min_p > 0.0f) threshold = m + std::log(sp.min_p);
  if (sp.top_k > 0 && sp.top_k < vocab) {
    std::copy(x, x + vocab, s.tmp.begin());
    auto kth = s.tmp.begin() + (sp.top_k - 1);
    std::nth_element(s.tmp.begin(), kth, s.tmp.begin() + vocab, std::greater<float>());
    threshold = std::max(threshold, *kth);
  }
  s.cand.clear();
  for (int32_t i = 0; i < vocab; ++i) {
    if (x[i] >= threshold && x[i] > kNegInf) s.cand.push_back(i);
  }
  if (sp.top_p < 1.0f && s.cand.size() > 1) {
    const auto better = [x](int32_t a, int32_t b) {
      return x[a] > x[b] || (x[a] == x[b] && a < b);
    };
    double total = 0.0;
    for (int32_t i : s.cand)
      total += std::exp(static_cast<double>(x[i] - m));
    const double target = static_cast<double>(sp.top_p) * total;
    // Sort a growing head until it holds the top_p mass.
    size_t head = std::min<size_t>(256, s.cand.size());
    size_t keep = s.cand.size();
    for (;;) {
      std::partial_sort(s.cand.begin(), s.cand.begin() + static_cast<ptrdiff_t>(head), s.cand.end(),
                        better);
      double mass = 0.0;
      size_t j = 0;
      for (; j < head; ++j) {
        if (mass >= target) break;  // mass before token j reached top_p: drop j onwards
        mass += std::exp(static_cast<double>(x[s.cand[j]] - m));
      }
      if (mass >= target || head == s.cand.size()) {
        keep = std::max<size_t>(j, 1);
        break;
      }
      head = std::min(head * 4, s.cand.size());
    }
    s.cand.resize(keep);
  }
  return m;
}

int32_t draw(const Scratch& s, float m, double u) {
  const float* x = s.x.data();
  double total = 0.0;
  for (int32_t i : s.cand)
    total += std::exp(static_cast<double>(x[i] - m));
  const double target = u * total;
  double acc = 0.0;
  for (int32_t i : s.cand) {
    acc += std::exp(static_cast<double>(x[i] - m));
    if (acc > target) return i;
  }
  return s.cand.back();
}

void fill_logprobs(const float* raw, int32_t vocab, int32_t n_top, SampleResult& res) {
  float m = kNegInf;
  for (int32_t i = 0; i < vocab; ++i)
    m = std::max(m, raw[i]);
  double z = 0.0;
  for (int32_t i = 0; i < vocab; ++i)
    z += std::exp(static_cast<double>(raw[i] - m));
  const double lse = static_cast<double>(m) + std::log(z);
  const float chosen = raw[res.token];
  res.logprob = static_cast<float>(static_cast<double>(chosen) - lse);
  int32_t higher = 0;
  for (int32_t i = 0; i < vocab; ++i)
    higher += raw[i] > chosen ? 1 : 0;
  res.rank = higher + 1;
  res.top_logprobs.clear();
  if (n_top <= 0) return;
  // Top n by a sorted insertion into a short list (most logits fail the first test).
  std::vector<int32_t> top;
  top.reserve(static_cast<size_t>(n_top) + 1);
  for (int32_t i = 0; i < vocab; ++i) {
    if (static_cast<int32_t>(top.size()) == n_top && !(raw[i] > raw[top.back()])) continue;
    auto pos = std::upper_bound(top.begin(), top.end(), i, [raw](int32_t a, int32_t b) {
      return raw[a] > raw[b] || (raw[a] == raw[b] && a < b);
    });
    top.insert(pos, i);
    if (static_cast<int32_t>(top.size()) > n_top) top.pop_back();
  }
  for (int32_t t : top) {
    res.top_logprobs.push_back({t, static_cast<float>(static_cast<double>(raw[t]) - lse)});
  }
}

Status sample_row(const float* raw, int32_t vocab, const SamplerRow& row, size_t index,
                  SampleResult& res) {
  if (!row.params) return make_error(ErrorCode::kInternal, "sampler row {} has no params", index);
  CS_RETURN_IF_ERROR(check_row(raw, vocab, index));
  const SamplingParams& sp = *row.params;
  Scratch& s = scratch(vocab);
  process_logits(raw, vocab, row, s);
  if (sp.greedy()) {
    res.token = argmax(s.x.data(), vocab);
  } else {
    const float m = build_support(vocab, sp, s);
    if (s.cand.empty()) {  // everything masked: fall back to the raw argmax
      res.token = argmax(raw, vocab);
    } else {
      res.token = draw(s, m, Sampler::uniform(row.seed, row.output_token_ids.size()));
    }
  }
  if (sp.logprobs || sp.top_logprobs > 0) fill_logprobs(raw, vocab, sp.top_logprobs, res);
  return Status::ok_status();
}

}  // namespace

SamplerRow SamplerRow::from_request(const Request& req) {
  SamplerRow r;
  r.params = &req.sampling;
  r.prompt_token_ids = req.prompt_token_ids;
  r.output_token_ids = req.output_token_ids;
  r.eos_token_ids = req.eos_token_ids;
  r.seed = req.sampling_seed;
  return r;
}

double Sampler::uniform(uint64_t seed, uint64_t index) {
  const uint64_t h = splitmix64(splitmix64(seed) ^ (index * 0xD1B54A32D192ED03ull));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

Status Sampler::sample(std::span<const float> logits, int32_t vocab,
                       std::span<const SamplerRow> rows, std::vector<SampleResult>& out) const {
  if (vocab <= 0 || logits.size() != rows.size() * static_cast<size_t>(vocab)) {
    return make_error(ErrorCode::kInternal, "sampler: {} logits for {} rows of vocab {}",
                      logits.size(), rows.size(), vocab);
  }
  out.assign(rows.size(), SampleResult{});
  std::vector<Status> status(rows.size());
  const auto run = [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      status[i] =
          sample_row(logits.data() + i * static_cast<size_t>(vocab), vocab, rows[i], i, out[i]);
    }
  };
  if (pool_ && rows.size() > 1) {
    pool_->parallel_for(rows.size(), run);
  } else {
    run(0, rows.size());
  }
  for (auto& s : status)
    CS_RETURN_IF_ERROR(s);
  return Status::ok_status();
}

Status Sampler::distribution(std::span<const float> logits_row, const SamplerRow& row,
                             std::vector<TokenLogprob>& probs) {
  const auto vocab = static_cast<int32_t>(logits_row.size());
  if (!row.params || vocab <= 0) return make_error(ErrorCode::kInternal, "bad distribution call");
  CS_RETURN_IF_ERROR(check_row(logits_row.data(), vocab, 0));
  Scratch& s = scratch(vocab);
  process_logits(logits_row.data(), vocab, row, s);
  probs.clear();
  if (row.params->greedy()) {
    probs.push_back({argmax(s.x.data(), vocab), 1.0f});
    return Status::ok_status();
  }
  const float m = build_support(vocab, *row.params, s);
  std::vector<int32_t> ids = s.cand;
  std::sort(ids.begin(), ids.end());
  double total = 0.0;
  for (int32_t i : ids)
    total += std::exp(static_cast<double>(s.x[static_cast<size_t>(i)] - m));
  for (int32_t i : ids) {
    probs.push_back(
        {i, static_cast<float>(std::exp(static_cast<double>(s.x[static_cast<size_t>(i)] - m)) /
                               total)});
  }
  return Status::ok_status();
}

}  // namespace cartserve
