#include "runtime/cpu/sampler.h"

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

// A candidate token: its (processed) logit, weight exp((x - max) / T), id.
struct Cand {
  float x;
  float w;
  int32_t id;
};

// Strict total order: higher logit first, ties by lower id.
inline bool better(const Cand& a, const Cand& b) {
  return a.x > b.x || (a.x == b.x && a.id < b.id);
}

// Per-thread scratch, reused across rows and steps.
struct Scratch {
  std::vector<float> x;         // [vocab] processed logits (when anything applies)
  std::vector<int32_t> counts;  // [vocab] output-token counts, zero between uses
  std::vector<uint8_t> seen;    // [vocab] prompt/output membership, zero between uses
  std::vector<float> tmp;       // [vocab] for nth_element
  std::vector<Cand> cand;       // [<= vocab] the support
  std::vector<int32_t> hist_count = std::vector<int32_t>(4096);  // [kBuckets]
  std::vector<double> hist_mass = std::vector<double>(4096);     // [kBuckets]
};

Scratch& scratch(int32_t vocab) {
  thread_local Scratch s;
  const auto v = static_cast<size_t>(vocab);
  if (s.x.size() < v) {
    s.x.resize(v);
    s.counts.assign(v, 0);
    s.seen.assign(v, 0);
    s.tmp.resize(v);
    s.cand.reserve(v);
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

// Steps 2-3: min_tokens mask and penalties. Returns the logits to sample
// from: `raw` itself when nothing applies, else s.x.
const float* process_logits(const float* raw, int32_t vocab, const SamplerRow& row, Scratch& s) {
  const SamplingParams& sp = *row.params;
  const bool mask = static_cast<int32_t>(row.output_token_ids.size()) < sp.min_tokens;
  const bool rep = sp.repetition_penalty != 1.0f;
  const bool freq = sp.frequency_penalty != 0.0f || sp.presence_penalty != 0.0f;
  if (!mask && !rep && !freq) return raw;
  float* x = s.x.data();
  std::copy(raw, raw + vocab, x);
  const auto in_vocab = [vocab](int32_t t) { return t >= 0 && t < vocab; };
  if (mask) {
    if (!sp.ignore_eos) {
      for (int32_t t : row.eos_token_ids) {
        if (in_vocab(t)) x[t] = kNegInf;
      }
    }
    for (int32_t t : sp.stop_token_ids) {
      if (in_vocab(t)) x[t] = kNegInf;
    }
  }
  if (rep) {
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
  if (freq) {
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
  return x;
}

int32_t argmax(const float* x, int32_t vocab) {
  int32_t best = 0;
  for (int32_t i = 1; i < vocab; ++i) {
    if (x[i] > x[best]) best = i;  // strict: ties keep the lowest id
  }
  return best;
}

constexpr int kBuckets = 4096;

// Bucket of value v on [lo, hi] (monotonic in v: equal or higher values never
// land in a lower bucket).
inline int bucket_of(float v, double lo, double scale) {
  const double b = (static_cast<double>(v) - lo) * scale;
  return b <= 0.0 ? 0 : (b >= kBuckets - 1 ? kBuckets - 1 : static_cast<int>(b));
}

// The k-th largest finite value of x[0, n) (-inf when fewer are finite).
// O(n): a histogram over [min, max] finds the bucket holding it, and only
// that bucket is partially sorted.
float kth_largest(const float* x, int32_t n, int32_t k, Scratch& s) {
  float lo = std::numeric_limits<float>::infinity(), hi = kNegInf;
  int32_t finite = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (x[i] == kNegInf) continue;
    ++finite;
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  if (finite < k) return kNegInf;
  if (lo == hi) return hi;
  const double scale = kBuckets / (static_cast<double>(hi) - lo);
  std::vector<int32_t>& count = s.hist_count;
  std::fill(count.begin(), count.end(), 0);
  for (int32_t i = 0; i < n; ++i) {
    if (x[i] != kNegInf) ++count[static_cast<size_t>(bucket_of(x[i], lo, scale))];
  }
  int b = kBuckets - 1;
  int32_t above = 0;
  while (above + count[static_cast<size_t>(b)] < k)
    above += count[static_cast<size_t>(b--)];
  size_t m = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (x[i] != kNegInf && bucket_of(x[i], lo, scale) == b) s.tmp[m++] = x[i];
  }
  const auto kth = s.tmp.begin() + (k - above - 1);
  std::nth_element(s.tmp.begin(), kth, s.tmp.begin() + static_cast<ptrdiff_t>(m),
                   std::greater<float>());
  return *kth;
}

// Keeps in s.cand the smallest set of best candidates whose weight reaches
// top_p of the total (a candidate stays while the mass before it is below
// that). O(n): a histogram of the logits finds the bucket where the mass
// crosses top_p; only that bucket is sorted.
void apply_top_p(Scratch& s, double total, float top_p) {
  auto& c = s.cand;
  const double target = static_cast<double>(top_p) * total;
  float lo = c[0].x, hi = c[0].x;
  for (const Cand& k : c) {
    lo = std::min(lo, k.x);
    hi = std::max(hi, k.x);
  }
  if (lo == hi) {  // all equal: ties by id
    double mass = 0.0;
    size_t keep = 0;
    while (keep < c.size() && mass < target)
      mass += c[keep++].w;
    c.resize(std::max<size_t>(keep, 1));
    return;
  }
  const double scale = kBuckets / (static_cast<double>(hi) - lo);
  std::vector<double>& mass = s.hist_mass;
  std::fill(mass.begin(), mass.end(), 0.0);
  for (const Cand& k : c)
    mass[static_cast<size_t>(bucket_of(k.x, lo, scale))] += k.w;
  int b = kBuckets - 1;
  double above = 0.0;
  while (b > 0 && above + mass[static_cast<size_t>(b)] < target)
    above += mass[static_cast<size_t>(b--)];
  // Keep every bucket above b; sort bucket b and keep its best while needed.
  std::vector<Cand> edge;
  size_t w = 0;
  for (size_t j = 0; j < c.size(); ++j) {
    const int bj = bucket_of(c[j].x, lo, scale);
    if (bj > b) {
      c[w++] = c[j];
    } else if (bj == b) {
      edge.push_back(c[j]);
    }
  }
  std::sort(edge.begin(), edge.end(), better);
  double acc = above;
  for (const Cand& k : edge) {
    if (acc >= target) break;
    acc += k.w;
    c[w++] = k;
  }
  c.resize(std::max<size_t>(w, 1));
}

// Step 5 up to the draw: fills s.cand with the support and its weights;
// returns the total weight.
double build_support(const float* x, int32_t vocab, const SamplingParams& sp, Scratch& s) {
  float m = kNegInf;
  for (int32_t i = 0; i < vocab; ++i)
    m = std::max(m, x[i]);
  const float inv_t = 1.0f / sp.temperature;
  // min_p and top_k both reduce to a threshold on the logits: p_i >= min_p *
  // p_max  <=>  x_i >= m + T * ln(min_p).
  float threshold = kNegInf;
  if (sp.min_p > 0.0f) threshold = m + sp.temperature * std::log(sp.min_p);
  if (sp.top_k > 0 && sp.top_k < vocab) {
    threshold = std::max(threshold, kth_largest(x, vocab, sp.top_k, s));
  }
  s.cand.clear();
  double total = 0.0;
  for (int32_t i = 0; i < vocab; ++i) {
    if (x[i] >= threshold && x[i] > kNegInf) {
      const float w = std::exp((x[i] - m) * inv_t);
      s.cand.push_back({x[i], w, i});
      total += w;
    }
  }
  if (sp.top_p < 1.0f && s.cand.size() > 1) {
    apply_top_p(s, total, sp.top_p);
    total = 0.0;
    for (const Cand& c : s.cand)
      total += c.w;
  }
  return total;
}

int32_t draw(const Scratch& s, double total, double u) {
  const double target = u * total;
  double acc = 0.0;
  for (const Cand& c : s.cand) {
    acc += c.w;
    if (acc > target) return c.id;
  }
  return s.cand.back().id;
}

void fill_logprobs(const float* raw, int32_t vocab, int32_t n_top, SampleResult& res) {
  float m = kNegInf;
  for (int32_t i = 0; i < vocab; ++i)
    m = std::max(m, raw[i]);
  double z = 0.0;
  for (int32_t i = 0; i < vocab; ++i)
    z += std::exp(raw[i] - m);
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
  const float* x = process_logits(raw, vocab, row, s);
  if (sp.greedy()) {
    res.token = argmax(x, vocab);
  } else {
    const double total = build_support(x, vocab, sp, s);
    if (s.cand.empty() || !(total > 0.0)) {  // everything masked: fall back to the argmax
      res.token = argmax(x, vocab);
    } else {
      res.token = draw(s, total, Sampler::uniform(row.seed, row.output_token_ids.size()));
    }
  }
  if (sp.logprobs || sp.top_logprobs > 0) fill_logprobs(raw, vocab, sp.top_logprobs, res);
  return Status::ok_status();
}

}  // namespace

void Sampler::logprobs(const float* row, int32_t vocab, int32_t token, int32_t top_n,
                       SampleResult& res) {
  res.token = token;
  fill_logprobs(row, vocab, top_n, res);
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
  const float* x = process_logits(logits_row.data(), vocab, row, s);
  probs.clear();
  if (row.params->greedy()) {
    probs.push_back({argmax(x, vocab), 1.0f});
    return Status::ok_status();
  }
  const double total = build_support(x, vocab, *row.params, s);
  std::vector<Cand> c = s.cand;
  std::sort(c.begin(), c.end(), [](const Cand& a, const Cand& b) { return a.id < b.id; });
  for (const Cand& k : c)
    probs.push_back({k.id, static_cast<float>(k.w / total)});
  return Status::ok_status();
}

Status Sampler::step_outputs(std::span<const float> logits, int32_t vocab, const StepInput& in,
                             StepOutput& out) const {
  const auto v = static_cast<size_t>(vocab);
  const size_t n_samples = in.samples.size();
  CS_RETURN_IF_ERROR(sample(logits.first(n_samples * v), vocab, in.samples, out.samples));
  out.prompt_logprobs.assign(in.prompt_logprobs.size(), {});
  size_t r = n_samples;
  for (size_t k = 0; k < in.prompt_logprobs.size(); ++k) {
    const PromptLogprobRows& p = in.prompt_logprobs[k];
    for (size_t i = 0; i < p.targets.size(); ++i, ++r) {
      SampleResult res;
      logprobs(logits.data() + r * v, vocab, p.targets[i], p.top_n, res);
      out.prompt_logprobs[k].push_back({res.token, res.logprob, std::move(res.top_logprobs)});
    }
  }
  return {};
}

}  // namespace cartserve
