// The CUDA sampler (kernels/sampling_ops.h) against the CPU Sampler
// (runtime/cpu/sampler.h): the same logits, parameters, histories, seeds and
// draw indices must give the same tokens, the same ranks and top ids, and
// logprobs within 1e-4.
//
// Token agreement is expected to be exact: the device computes the CPU's
// weights bit for bit (a port of glibc's expf) and its thresholds with the
// same float operations. The one allowed source of disagreement is the
// weight sums: the CPU adds the float weights in double in its candidate
// order, the device adds them exactly (fixed point); the two totals differ by
// at most n * 2^-53 relatively, so a draw (or a top_p cut) can only differ
// when its target falls within ~1e-11 of a cumulative boundary. The sampled
// tests print their agreement and allow floor(draws / 1000) disagreements per
// batch for that reason (none is expected; batches here are smaller than
// 1000 rows, so in practice every token must match).
//
// Every test skips itself when no CUDA device is usable (CI has none).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/sampling_ops.h"
#include "runtime/cpu/sampler.h"
#include "runtime/cuda/device_sampling.h"

namespace cartserve {
namespace {

namespace cu = ops::cuda;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kVocabs[] = {49152, 128256};

// ---- device helpers (self-contained) ---------------------------------------

bool gpu_available() {
  static const bool ok = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return ok;
}

#define REQUIRE_GPU()                                                 \
  do {                                                                \
    if (!gpu_available()) GTEST_SKIP() << "no CUDA device available"; \
  } while (0)

void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
#define CUDA_OK(expr) cuda_ok((expr), #expr)

template <typename T>
class Dev {
 public:
  explicit Dev(size_t n) : n_(n) {
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<size_t>(n, 1) * sizeof(T)));
    CUDA_OK(cudaMemset(p_, 0xFF, std::max<size_t>(n, 1) * sizeof(T)));  // poison
  }
  explicit Dev(const std::vector<T>& v) : Dev(v.size()) {
    if (!v.empty()) CUDA_OK(cudaMemcpy(p_, v.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  T* get() const { return p_; }
  std::vector<T> download() const {
    std::vector<T> v(n_);
    CUDA_OK(cudaDeviceSynchronize());
    if (n_ > 0) CUDA_OK(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// ---- rows ------------------------------------------------------------------

// One row to sample: its parameters and histories (the CPU SampleRow's spans
// point into these).
struct Row {
  SamplingParams sp;
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;  // its length is the draw index
  std::vector<int32_t> eos;
  uint64_t seed = 0;
};

struct Batch {
  int vocab = 0;
  std::vector<float> logits;  // [rows, vocab]
  std::vector<Row> rows;
  float* row_logits(size_t r) { return logits.data() + r * static_cast<size_t>(vocab); }
};

struct Results {
  std::vector<int32_t> token;
  std::vector<float> logprob;
  std::vector<int32_t> rank;
  std::vector<int32_t> top_ids;  // [rows, 20]
  std::vector<float> top_lp;     // [rows, 20]
};

bool wants_logprobs(const SamplingParams& sp) {
  return sp.logprobs || sp.top_logprobs > 0;
}

// Row i of the batch as a step's sample row (views into the batch).
SamplerRow sample_row(const Batch& b, size_t i) {
  const Row& r = b.rows[i];
  SamplerRow s;
  s.row = static_cast<int32_t>(i);
  s.params = &r.sp;
  s.prompt_token_ids = r.prompt;
  s.output_token_ids = r.output;
  s.eos_token_ids = r.eos;
  s.seed = r.seed;
  return s;
}

std::vector<SampleResult> run_cpu(const Batch& b) {
  std::vector<SamplerRow> rows(b.rows.size());
  for (size_t i = 0; i < rows.size(); ++i)
    rows[i] = sample_row(b, i);
  std::vector<SampleResult> out;
  const Sampler sampler(&ThreadPool::global());
  const Status st = sampler.sample(b.logits, b.vocab, rows, out);
  if (!st.ok()) throw std::runtime_error("CPU sampler failed");
  return out;
}

// The device row parameters and edit lists, as the CUDA backend builds them.
void build_device_rows(const Batch& b, std::vector<cu::SampleRowParams>& params,
                       std::vector<cu::TokenEdit>& edits) {
  params.clear();
  edits.clear();
  for (size_t i = 0; i < b.rows.size(); ++i) {
    const cu::SampleRowParams p = cuda::device_sample_row(sample_row(b, i), b.vocab, edits);
    params.push_back(p);
  }
}

// Runs the device sampler; `logits_after` gets the logits buffer afterwards.
// parallel_draws: as sample()'s (false: every row by its single CTA).
Results run_gpu(const Batch& b, std::vector<float>* logits_after = nullptr,
                bool parallel_draws = true) {
  std::vector<cu::SampleRowParams> params;
  std::vector<cu::TokenEdit> edits;
  build_device_rows(b, params, edits);
  const size_t n = b.rows.size();
  Dev<float> logits(b.logits);
  Dev<cu::SampleRowParams> d_params(params);
  Dev<cu::TokenEdit> d_edits(edits);
  const int max_edits = static_cast<int>(edits.size());
  Dev<uint8_t> ws(cu::sample_workspace_bytes(static_cast<int>(n), b.vocab, max_edits));
  CUDA_OK(
      cudaMemset(ws.get(), 0, cu::sample_workspace_bytes(static_cast<int>(n), b.vocab, max_edits)));
  Dev<int32_t> token(n), rank(n), top_ids(n * cu::kMaxTopLogprobs);
  Dev<float> logprob(n), top_lp(n * cu::kMaxTopLogprobs);
  cudaStream_t s = nullptr;
  CUDA_OK(cudaStreamCreate(&s));
  cu::sample(logits.get(), b.vocab, d_params.get(), static_cast<int>(n), d_edits.get(), ws.get(),
             max_edits, token.get(), logprob.get(), rank.get(), top_ids.get(), top_lp.get(),
             parallel_draws, s);
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaStreamDestroy(s));
  Results r{token.download(), logprob.download(), rank.download(), top_ids.download(),
            top_lp.download()};
  if (logits_after) *logits_after = logits.download();
  return r;
}

// ---- random data -----------------------------------------------------------

// Logits shaped like a model's: a normal bulk plus a few strong tokens.
void fill_logits(float* x, int vocab, std::mt19937_64& rng, float stddev, int n_strong,
                 bool bf16_round) {
  std::normal_distribution<float> bulk(0.0f, stddev);
  for (int i = 0; i < vocab; ++i)
    x[i] = bulk(rng);
  std::uniform_int_distribution<int> tok(0, vocab - 1);
  std::uniform_real_distribution<float> boost(2.0f, 12.0f);
  for (int j = 0; j < n_strong; ++j)
    x[tok(rng)] += boost(rng);
  if (bf16_round) {  // logits from a bf16 LM head: many exact ties
    for (int i = 0; i < vocab; ++i) {
      uint32_t u;
      std::memcpy(&u, &x[i], 4);
      u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
      std::memcpy(&x[i], &u, 4);
    }
  }
}

std::vector<int32_t> random_tokens(std::mt19937_64& rng, int vocab, size_t n) {
  std::uniform_int_distribution<int32_t> tok(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (auto& t : v)
    t = tok(rng);
  return v;
}

// A batch of `rows` rows of random logits; `make` sets each row's parameters
// and histories (and may edit its logits).
template <typename Make>
Batch make_batch(int vocab, int rows, uint64_t seed, Make make) {
  Batch b;
  b.vocab = vocab;
  b.logits.resize(static_cast<size_t>(rows) * vocab);
  b.rows.resize(static_cast<size_t>(rows));
  std::mt19937_64 rng(seed);
  for (int r = 0; r < rows; ++r) {
    Row& row = b.rows[static_cast<size_t>(r)];
    std::uniform_int_distribution<int> kind(0, 3);
    const int k = kind(rng);
    fill_logits(b.row_logits(static_cast<size_t>(r)), vocab, rng, k == 1 ? 1.0f : 2.5f,
                k == 2 ? 0 : 12, k == 3);
    row.seed = rng();
    // The draw index is the output length: vary it (0 .. 300).
    row.output = random_tokens(rng, vocab, std::uniform_int_distribution<size_t>(0, 300)(rng));
    row.sp.max_tokens = 4096;
    make(row, b.row_logits(static_cast<size_t>(r)), rng);
  }
  return b;
}

// ---- comparison ------------------------------------------------------------

struct Agreement {
  size_t rows = 0;
  size_t same = 0;
};

// Tokens (allowed disagreements: `allowed_per_1000` per 1000 rows, see the
// header), logprobs, ranks and top ids against the CPU.
Agreement compare(const char* what, const Batch& b, const std::vector<SampleResult>& cpu,
                  const Results& gpu, int allowed_per_1000) {
  Agreement a;
  a.rows = b.rows.size();
  for (size_t i = 0; i < a.rows; ++i) {
    const SamplingParams& sp = b.rows[i].sp;
    if (cpu[i].token == gpu.token[i]) {
      ++a.same;
    } else {
      std::printf("[%s] row %zu: cpu %d gpu %d (T %g top_k %d top_p %g min_p %g, draw %zu)\n", what,
                  i, cpu[i].token, gpu.token[i], sp.temperature, sp.top_k, sp.top_p, sp.min_p,
                  b.rows[i].output.size());
    }
    if (!wants_logprobs(sp)) continue;
    // Logprobs are of the raw logits: compare on the token each side chose.
    if (cpu[i].token == gpu.token[i]) {
      EXPECT_NEAR(cpu[i].logprob, gpu.logprob[i], 1e-4) << what << " row " << i;
      EXPECT_EQ(cpu[i].rank, gpu.rank[i]) << what << " row " << i;
    }
    const size_t base = i * cu::kMaxTopLogprobs;
    EXPECT_EQ(cpu[i].top_logprobs.size(), static_cast<size_t>(sp.top_logprobs));
    if (cpu[i].top_logprobs.size() != static_cast<size_t>(sp.top_logprobs)) continue;
    for (int j = 0; j < sp.top_logprobs; ++j) {
      EXPECT_EQ(cpu[i].top_logprobs[static_cast<size_t>(j)].token,
                gpu.top_ids[base + static_cast<size_t>(j)])
          << what << " row " << i << " top " << j;
      EXPECT_NEAR(cpu[i].top_logprobs[static_cast<size_t>(j)].logprob,
                  gpu.top_lp[base + static_cast<size_t>(j)], 1e-4)
          << what << " row " << i << " top " << j;
    }
    for (int j = sp.top_logprobs; j < cu::kMaxTopLogprobs; ++j)
      EXPECT_EQ(gpu.top_ids[base + static_cast<size_t>(j)], -1) << what << " row " << i;
  }
  std::printf("[%s] vocab %d: %zu / %zu tokens identical to the CPU sampler\n", what, b.vocab,
              a.same, a.rows);
  const size_t allowed = a.rows * static_cast<size_t>(allowed_per_1000) / 1000;
  EXPECT_LE(a.rows - a.same, allowed) << what << ": too many disagreements";
  return a;
}

// Runs both samplers on a batch and compares.
void check(const char* what, const Batch& b, int allowed_per_1000 = 1) {
  const std::vector<SampleResult> cpu = run_cpu(b);
  const Results gpu = run_gpu(b);
  compare(what, b, cpu, gpu, allowed_per_1000);
}

// The k-th largest value of a row (1-based k).
float kth_largest(const float* x, int vocab, int k) {
  std::vector<float> v(x, x + vocab);
  std::nth_element(v.begin(), v.begin() + (k - 1), v.end(), std::greater<float>());
  return v[static_cast<size_t>(k - 1)];
}

// ---- tests -----------------------------------------------------------------

TEST(CudaSampling, GreedyWithPlantedTies) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    Batch b = make_batch(vocab, 96, 11, [vocab](Row& row, float* x, std::mt19937_64& rng) {
      row.sp.temperature = (rng() % 2) ? 0.0f : 5e-6f;
      // The maximum at 2..6 ids: the lowest must win.
      float mx = *std::max_element(x, x + vocab);
      const int ties = 2 + static_cast<int>(rng() % 5);
      for (int j = 0; j < ties; ++j)
        x[rng() % static_cast<uint64_t>(vocab)] = mx;
      // Some rows also have penalties or a mask that move the argmax.
      if (rng() % 3 == 0) {
        row.sp.repetition_penalty = 1.5f;
        row.prompt = random_tokens(rng, vocab, 50);
        for (int i = 0; i < vocab; ++i)
          if (x[i] == mx) row.prompt.push_back(i);
      }
      if (rng() % 3 == 0) {
        row.sp.min_tokens = static_cast<int32_t>(row.output.size()) + 1;
        for (int i = 0; i < vocab && row.eos.size() < 3; ++i)
          if (x[i] == mx) row.eos.push_back(i);
      }
      if (rng() % 4 == 0) row.sp.logprobs = true;
    });
    check("greedy", b, /*allowed_per_1000=*/0);
  }
}

TEST(CudaSampling, TemperatureOnly) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    Batch b = make_batch(vocab, 256, 21, [](Row& row, float*, std::mt19937_64& rng) {
      const float temps[] = {0.05f, 0.3f, 0.7f, 1.0f, 1.3f, 2.0f};
      row.sp.temperature = temps[rng() % 6];
    });
    check("temperature", b);
  }
}

TEST(CudaSampling, TopKWithTiesAtTheKth) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    Batch b = make_batch(vocab, 192, 31, [vocab](Row& row, float* x, std::mt19937_64& rng) {
      const int ks[] = {1, 2, 5, 20, 50, 1000};
      row.sp.top_k = ks[rng() % 6];
      row.sp.temperature = (rng() % 2) ? 1.0f : 0.6f;
      // Copies of the k-th value (kept by the CPU: ties at the boundary stay).
      const float kth = kth_largest(x, vocab, row.sp.top_k);
      const int copies = static_cast<int>(rng() % 4);
      for (int j = 0; j < copies; ++j)
        x[rng() % static_cast<uint64_t>(vocab)] = kth;
    });
    check("top_k", b);
  }
}

TEST(CudaSampling, TopP) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    Batch b = make_batch(vocab, 384, 41, [](Row& row, float*, std::mt19937_64& rng) {
      const float ps[] = {0.05f, 0.3f, 0.5f, 0.8f, 0.9f, 0.95f, 0.99f, 0.999f};
      row.sp.top_p = ps[rng() % 8];
      const float temps[] = {0.5f, 0.8f, 1.0f, 1.5f};
      row.sp.temperature = temps[rng() % 4];
    });
    check("top_p", b);
  }
}

// top_p over a row of equal logits (the CPU's lo == hi path: id order).
TEST(CudaSampling, TopPAllEqual) {
  REQUIRE_GPU();
  Batch b = make_batch(49152, 64, 43, [](Row& row, float* x, std::mt19937_64& rng) {
    const float v = (rng() % 2) ? 0.0f : 1.25f;
    for (int i = 0; i < 49152; ++i)
      x[i] = (rng() % 4 == 0) ? kNegInf : v;
    row.sp.top_p = 0.5f;
  });
  check("top_p equal", b);
}

TEST(CudaSampling, MinP) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    Batch b = make_batch(vocab, 192, 51, [](Row& row, float*, std::mt19937_64& rng) {
      const float ps[] = {0.001f, 0.01f, 0.05f, 0.2f, 0.9f};
      row.sp.min_p = ps[rng() % 5];
      row.sp.temperature = (rng() % 2) ? 1.0f : 0.7f;
    });
    check("min_p", b);
  }
}

TEST(CudaSampling, Combinations) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    Batch b = make_batch(vocab, 384, 61, [](Row& row, float*, std::mt19937_64& rng) {
      const float temps[] = {0.2f, 0.7f, 1.0f, 1.4f};
      const int ks[] = {0, 0, 5, 40, 200, 5000};
      const float ps[] = {1.0f, 1.0f, 0.5f, 0.9f, 0.95f};
      const float mps[] = {0.0f, 0.0f, 0.02f, 0.1f};
      row.sp.temperature = temps[rng() % 4];
      row.sp.top_k = ks[rng() % 6];
      row.sp.top_p = ps[rng() % 5];
      row.sp.min_p = mps[rng() % 4];
    });
    check("combinations", b);
  }
}

TEST(CudaSampling, Penalties) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    Batch b = make_batch(vocab, 256, 71, [vocab](Row& row, float* x, std::mt19937_64& rng) {
      row.prompt = random_tokens(rng, vocab, rng() % 3000);
      // Repeats in the output (counts > 1), some of them strong tokens.
      const int best = static_cast<int>(std::max_element(x, x + vocab) - x);
      for (int j = 0; j < 20; ++j)
        row.output.push_back(row.output.empty() ? best : row.output[rng() % row.output.size()]);
      const float reps[] = {1.0f, 1.1f, 1.3f, 0.8f};
      const float pens[] = {0.0f, 0.5f, -0.5f, 2.0f};
      row.sp.repetition_penalty = reps[rng() % 4];
      row.sp.frequency_penalty = pens[rng() % 4];
      row.sp.presence_penalty = pens[rng() % 4];
      const int mode = static_cast<int>(rng() % 4);
      if (mode == 0) row.sp.temperature = 0.0f;
      if (mode == 1) row.sp.top_p = 0.9f;
      if (mode == 2) row.sp.top_k = 50;
      if (rng() % 4 == 0) row.sp.top_logprobs = 5;
    });
    check("penalties", b);
  }
}

TEST(CudaSampling, MinTokensMask) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    Batch b = make_batch(vocab, 192, 81, [vocab](Row& row, float* x, std::mt19937_64& rng) {
      // EOS and stop ids among the strongest tokens, so masking them matters.
      std::vector<int32_t> order(static_cast<size_t>(vocab));
      for (int i = 0; i < vocab; ++i)
        order[static_cast<size_t>(i)] = i;
      std::partial_sort(order.begin(), order.begin() + 8, order.end(),
                        [x](int32_t a, int32_t b) { return x[a] > x[b]; });
      row.eos = {order[0], order[3]};
      row.sp.stop_token_ids = {order[1], order[5], order[1]};
      row.sp.ignore_eos = rng() % 3 == 0;
      const int32_t n_out = static_cast<int32_t>(row.output.size());
      row.sp.min_tokens = (rng() % 4 == 0) ? n_out : n_out + 1 + static_cast<int32_t>(rng() % 5);
      const int mode = static_cast<int>(rng() % 3);
      if (mode == 0) row.sp.temperature = 0.0f;
      if (mode == 1) row.sp.top_p = 0.8f;
      if (rng() % 2 == 0) {
        row.sp.repetition_penalty = 1.2f;
        row.prompt = {order[0], order[2], order[4]};
      }
      row.sp.logprobs = rng() % 2 == 0;
    });
    check("min_tokens", b);
  }
}

// Everything masked (or -inf): the CPU falls back to the argmax (id 0).
TEST(CudaSampling, AllMaskedFallsBackToArgmax) {
  REQUIRE_GPU();
  Batch b = make_batch(49152, 16, 91, [](Row& row, float* x, std::mt19937_64& rng) {
    for (int i = 0; i < 49152; ++i)
      x[i] = kNegInf;
    row.eos = {7, 1234};
    x[7] = 3.0f;
    x[1234] = 5.0f;
    row.sp.min_tokens = static_cast<int32_t>(row.output.size()) + 1;
    row.sp.temperature = (rng() % 2) ? 0.0f : 1.0f;
    if (rng() % 2) row.sp.top_p = 0.5f;
  });
  check("all masked", b, 0);
}

TEST(CudaSampling, Logprobs) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    Batch b = make_batch(vocab, 128, 101, [vocab](Row& row, float* x, std::mt19937_64& rng) {
      const int ns[] = {0, 1, 5, 20};
      row.sp.logprobs = true;
      row.sp.top_logprobs = ns[rng() % 4];
      row.sp.temperature = (rng() % 3 == 0) ? 0.0f : 1.0f;
      // Ties among the best values (the top list orders them by id).
      const float v = kth_largest(x, vocab, 3);
      for (int j = 0; j < 3; ++j)
        x[rng() % static_cast<uint64_t>(vocab)] = v;
      if (rng() % 3 == 0) {  // penalties must not change the raw logprobs
        row.sp.repetition_penalty = 1.4f;
        row.prompt = random_tokens(rng, vocab, 200);
      }
    });
    check("logprobs", b);
  }
}

// The row is cut into chunks of 4096 logits, one CTA each: vocabularies of
// one partial chunk, exactly one, one logit past it, and one so wide that the
// top 20 cannot be merged from the chunks' lists (the whole-row select runs).
// The best values are planted on both sides of a chunk edge, so the argmax
// and the top lists break ties across chunks.
TEST(CudaSampling, ChunkEdges) {
  REQUIRE_GPU();
  for (int vocab : {1000, 4096, 4097, 12289, 500000}) {
    Batch b = make_batch(vocab, 48, 111, [vocab](Row& row, float* x, std::mt19937_64& rng) {
      const float mx = *std::max_element(x, x + vocab) + 1.0f;
      for (int at : {4095, 4096, 8191, 8192, vocab - 1})
        if (at < vocab && rng() % 2) x[at] = mx;
      const int ns[] = {-1, 0, 1, 20};
      const int n = ns[rng() % 4];
      row.sp.logprobs = n >= 0;
      row.sp.top_logprobs = std::max(n, 0);
      row.sp.temperature = (rng() % 3 == 0) ? 1.0f : 0.0f;
      if (rng() % 4 == 0) {  // an edit may move the argmax
        row.sp.presence_penalty = (rng() % 2) ? 3.0f : -3.0f;
        row.output = {static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab)),
                      static_cast<int32_t>(std::min(4096, vocab - 1))};
      }
    });
    check("chunk edges", b, 0);
  }
}

// A row's token and logprobs are the same bits alone and in a batch.
TEST(CudaSampling, SameBitsAloneAndInABatch) {
  REQUIRE_GPU();
  Batch b = make_batch(128256, 24, 112, [](Row& row, float*, std::mt19937_64& rng) {
    row.sp.logprobs = true;
    row.sp.top_logprobs = static_cast<int32_t>(rng() % 21);
    row.sp.temperature = (rng() % 2) ? 0.7f : 0.0f;
  });
  const Results all = run_gpu(b);
  for (size_t i : {size_t{0}, size_t{9}, size_t{23}}) {
    Batch one = b;
    one.rows = {b.rows[i]};
    one.logits.assign(b.row_logits(i), b.row_logits(i) + b.vocab);
    const Results r = run_gpu(one);
    EXPECT_EQ(r.token[0], all.token[i]) << "row " << i;
    EXPECT_EQ(0, std::memcmp(&r.logprob[0], &all.logprob[i], 4)) << "row " << i;
    EXPECT_EQ(r.rank[0], all.rank[i]) << "row " << i;
    const size_t base = i * cu::kMaxTopLogprobs;
    for (int j = 0; j < cu::kMaxTopLogprobs; ++j) {
      EXPECT_EQ(r.top_ids[static_cast<size_t>(j)], all.top_ids[base + static_cast<size_t>(j)]);
      EXPECT_EQ(0, std::memcmp(&r.top_lp[static_cast<size_t>(j)],
                               &all.top_lp[base + static_cast<size_t>(j)], 4));
    }
  }
}

// The draws without top_k and top_p go through the chunk-parallel draw
// kernel, or (parallel_draws off) through the row's single CTA: the same
// tokens, logprobs and ranks either way.
TEST(CudaSampling, DrawKernelOrSingleCtaSameResults) {
  REQUIRE_GPU();
  Batch b = make_batch(128256, 32, 113, [](Row& row, float*, std::mt19937_64& rng) {
    row.sp.logprobs = (rng() % 2) != 0;
    row.sp.temperature = (rng() % 4 == 0) ? 0.0f : 0.9f;
    if (rng() % 3 == 0) row.sp.min_p = 0.05f;
    if (rng() % 3 == 0) {
      row.sp.presence_penalty = 1.5f;
      row.output = random_tokens(rng, 128256, 30);
    }
  });
  std::vector<float> after_parallel, after_single;
  const Results par = run_gpu(b, &after_parallel, true);
  const Results one = run_gpu(b, &after_single, false);
  EXPECT_EQ(par.token, one.token);
  EXPECT_EQ(par.rank, one.rank);
  EXPECT_EQ(0, std::memcmp(par.logprob.data(), one.logprob.data(), 4 * par.logprob.size()));
  EXPECT_EQ(after_parallel, b.logits);  // edits undone by the draw kernel
  EXPECT_EQ(after_single, b.logits);
  check("draw kernel", b);
}

TEST(CudaSampling, TokenLogprobs) {
  REQUIRE_GPU();
  for (int vocab : kVocabs) {
    for (int top_n : {0, 3, 20}) {
      const int rows = 64;
      std::mt19937_64 rng(111 + static_cast<uint64_t>(top_n));
      std::vector<float> logits(static_cast<size_t>(rows) * vocab);
      for (int r = 0; r < rows; ++r)
        fill_logits(logits.data() + static_cast<size_t>(r) * vocab, vocab, rng, 2.0f, 8,
                    r % 2 == 1);
      std::vector<int32_t> tokens = random_tokens(rng, vocab, rows);
      Dev<float> d_logits(logits);
      Dev<int32_t> d_tokens(tokens), rank(rows), top_ids(rows * cu::kMaxTopLogprobs);
      Dev<float> lp(rows), top_lp(rows * cu::kMaxTopLogprobs);
      cu::token_logprobs(d_logits.get(), vocab, rows, d_tokens.get(), top_n, lp.get(), rank.get(),
                         top_ids.get(), top_lp.get(), nullptr);
      const auto g_lp = lp.download();
      const auto g_rank = rank.download();
      const auto g_ids = top_ids.download();
      const auto g_top = top_lp.download();
      for (int r = 0; r < rows; ++r) {
        SampleResult res;
        Sampler::logprobs(logits.data() + static_cast<size_t>(r) * vocab, vocab,
                          tokens[static_cast<size_t>(r)], top_n, res);
        const auto ri = static_cast<size_t>(r);
        EXPECT_NEAR(res.logprob, g_lp[ri], 1e-4) << "row " << r;
        EXPECT_EQ(res.rank, g_rank[ri]) << "row " << r;
        for (int j = 0; j < top_n; ++j) {
          const size_t k = ri * cu::kMaxTopLogprobs + static_cast<size_t>(j);
          EXPECT_EQ(res.top_logprobs[static_cast<size_t>(j)].token, g_ids[k]) << "row " << r;
          EXPECT_NEAR(res.top_logprobs[static_cast<size_t>(j)].logprob, g_top[k], 1e-4);
        }
      }
    }
  }
}

// Same inputs, same bits; the logits come back unchanged (edits undone).
TEST(CudaSampling, DeterministicAndLogitsRestored) {
  REQUIRE_GPU();
  Batch b = make_batch(128256, 64, 121, [](Row& row, float*, std::mt19937_64& rng) {
    row.sp.temperature = 0.8f;
    row.sp.top_p = 0.9f;
    row.sp.top_k = (rng() % 2) ? 0 : 100;
    row.sp.repetition_penalty = 1.2f;
    row.sp.frequency_penalty = 0.3f;
    row.prompt = random_tokens(rng, 128256, 500);
    row.sp.min_tokens = static_cast<int32_t>(row.output.size()) + 1;
    row.eos = {2, 3};
    row.sp.top_logprobs = 20;
  });
  std::vector<float> after1, after2;
  const Results r1 = run_gpu(b, &after1);
  const Results r2 = run_gpu(b, &after2);
  EXPECT_EQ(r1.token, r2.token);
  EXPECT_EQ(0, std::memcmp(r1.logprob.data(), r2.logprob.data(), r1.logprob.size() * 4));
  EXPECT_EQ(r1.rank, r2.rank);
  EXPECT_EQ(r1.top_ids, r2.top_ids);
  EXPECT_EQ(0, std::memcmp(r1.top_lp.data(), r2.top_lp.data(), r1.top_lp.size() * 4));
  ASSERT_EQ(after1.size(), b.logits.size());
  EXPECT_EQ(0, std::memcmp(after1.data(), b.logits.data(), b.logits.size() * 4))
      << "the edits were not undone";
  compare("deterministic", b, run_cpu(b), r1, 1);
}

// A row holding NaN or +inf gets token -1 (the CPU fails it); the others are
// unaffected.
TEST(CudaSampling, BadRows) {
  REQUIRE_GPU();
  Batch b = make_batch(49152, 4, 131, [](Row& row, float*, std::mt19937_64&) {
    row.sp.temperature = 1.0f;
    row.sp.logprobs = true;
  });
  b.row_logits(1)[100] = std::numeric_limits<float>::quiet_NaN();
  b.row_logits(2)[200] = std::numeric_limits<float>::infinity();
  const Results g = run_gpu(b);
  EXPECT_EQ(g.token[1], -1);
  EXPECT_EQ(g.token[2], -1);
  Batch good = b;
  good.rows = {b.rows[0], b.rows[3]};
  good.logits.assign(b.logits.begin(), b.logits.begin() + 49152);
  good.logits.insert(good.logits.end(), b.logits.begin() + 3 * 49152, b.logits.end());
  const std::vector<SampleResult> cpu = run_cpu(good);
  EXPECT_EQ(g.token[0], cpu[0].token);
  EXPECT_EQ(g.token[3], cpu[1].token);
}

// The sampler's exp is glibc's expf bit for bit (the weights are the CPU's).
TEST(CudaSampling, ExpMatchesGlibc) {
  REQUIRE_GPU();
  std::mt19937_64 rng(141);
  std::vector<float> x;
  std::uniform_real_distribution<float> neg(-110.0f, 0.0f);
  for (int i = 0; i < (1 << 22); ++i)
    x.push_back(neg(rng));
  for (float v :
       {0.0f, -0.0f, -1e-30f, -87.9f, -88.0f, -103.0f, -103.3f, -103.9f, -104.0f, -1e30f, kNegInf})
    x.push_back(v);
  Dev<float> d_x(x), d_y(x.size());
  cu::sampler_expf(d_x.get(), d_y.get(), static_cast<int>(x.size()), nullptr);
  const auto y = d_y.download();
  size_t diff = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float ref = std::exp(x[i]);
    if (std::memcmp(&ref, &y[i], 4) != 0 && diff++ < 5)
      std::printf("exp(%a): glibc %a device %a\n", x[i], ref, y[i]);
  }
  EXPECT_EQ(diff, 0u);
}

}  // namespace
}  // namespace cartserve
