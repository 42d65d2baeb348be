// The GPU benchmark (issue 10's first figures; the targets are issue 11's):
// on one model, in one run,
//   - decode ms/step at batch 1 and tok/s at batch 64 (512-token contexts),
//   - prefill ms at 512, 2048 and 8192 tokens,
//   - time to first token with a resident 2048-token cartridge and a 64-token
//     question, and with the cartridge promoted from the host tier at request
//     time (promotion GB/s),
// each beside its floor from the device-to-device copy bandwidth and the
// bf16 GEMM rate measured in the same run, and where a batch-1 decode step's
// and an 8192-token prefill's time goes (every kernel timed alone at its
// shape, beside its floor). Decode and prefill drive the
// backend through the runtime seam (sampling included); the cartridge
// figures go through the whole engine. Writes JSON; prints a table.
//
// Usage: gpu_bench MODEL [--out gpu_bench.json] [--repeats N] [--only GROUP[,GROUP...]] [--tp N]
// GROUP (one set of figures, e.g. for a profiler run; several: their union): linear, skinny, ops,
// sampling, attention, decode, decode1 (batch 1 only), cartdecode (decode over a shared cartridge
// prefix, shared-prefix attention on and off), prefill or ttft. --tp N: the backend and serving
// figures through N tensor-parallel ranks on GPUs 0..N-1 (the floors stay
// one GPU's; the kernel tables are one GPU's).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "cartridge/cartridge_io.h"
#include "kernels/cuda_ops.h"
#include "kernels/persistent_timeline.h"
#include "kernels/sampling_ops.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/gemm.h"
#include "server/serving_stack.h"

using namespace cartserve;
using bench::Clock;
using bench::median;
using bench::seconds_since;
using nlohmann::json;

namespace {

std::vector<int32_t> random_ids(int n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(100, vocab - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& x : v)
    x = d(rng);
  return v;
}

// Device-to-device copy bandwidth (bytes read + written per second).
double copy_bandwidth() {
  const size_t bytes = size_t{2} << 30;
  void *a = nullptr, *b = nullptr;
  cudaMalloc(&a, bytes);
  cudaMalloc(&b, bytes);
  cudaMemset(a, 1, bytes);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<double> t;
  for (int i = 0; i < 12; ++i) {
    cudaEventRecord(e0);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i >= 2) t.push_back(ms / 1e3);
  }
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / median(t);
}

// bf16 GEMM rate (FLOP/s) at 8192^3 through the backend's cuBLASLt path.
double gemm_rate() {
  const int n = 8192;
  const size_t elems = static_cast<size_t>(n) * n;
  __nv_bfloat16 *x = nullptr, *w = nullptr, *y = nullptr;
  void* ws = nullptr;
  cudaMalloc(&x, elems * 2);
  cudaMalloc(&w, elems * 2);
  cudaMalloc(&y, elems * 2);
  cudaMalloc(&ws, 32 << 20);
  std::vector<uint16_t> h(elems);
  std::mt19937 rng(1);
  for (auto& v : h)
    v = f32_to_bf16(std::normal_distribution<float>(0.f, 1.f)(rng));
  cudaMemcpy(x, h.data(), elems * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(w, h.data(), elems * 2, cudaMemcpyHostToDevice);
  auto g = cuda::Gemm::create(ws, 32 << 20);
  std::vector<double> t;
  if (g.ok()) {
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (int i = 0; i < 12; ++i) {
      cudaEventRecord(e0);
      (void)(*g)->run(x, w, y, false, n, n, n, nullptr);
      cudaEventRecord(e1);
      cudaEventSynchronize(e1);
      float ms = 0;
      cudaEventElapsedTime(&ms, e0, e1);
      if (i >= 2) t.push_back(ms / 1e3);
    }
  }
  cudaFree(x);
  cudaFree(w);
  cudaFree(y);
  cudaFree(ws);
  return t.empty() ? 0.0 : 2.0 * n * static_cast<double>(n) * n / median(t);
}

// An environment variable set for a scope (the backend reads its opt-in
// switches when created), then restored.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) {
      setenv(name_, old_.c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

// Sequences driven straight through a backend: prefill, then decode steps
// (greedy sampling, as a server step does).
class Batch {
 public:
  // top_logprobs >= 1: every decode row also asks for its token's logprob and
  // that many top logprobs (load_gen --logprobs sends 1).
  Batch(Backend& b, int vocab, int top_logprobs = 0) : b_(b), vocab_(vocab) {
    greedy_.logprobs = top_logprobs > 0;
    greedy_.top_logprobs = top_logprobs;
  }

  // Adds `count` sequences of `len` random tokens (prefilled, not timed).
  Status add(int count, int len, int chunk_tokens) {
    return add_after({}, count, len, chunk_tokens);
  }
  // Prefills `prefix` random tokens (a multiple of the block size) into
  // blocks of their own and returns them: a prefix to share, as a resident
  // cartridge's blocks are.
  Result<std::vector<int32_t>> shared_prefix(int prefix, int chunk_tokens) {
    Batch p(b_, vocab_);
    p.next_block_ = next_block_;
    CS_RETURN_IF_ERROR(p.add(1, prefix, chunk_tokens));
    next_block_ = p.next_block_;
    std::vector<int32_t> blocks = p.seqs_[0].table;
    blocks.resize(static_cast<size_t>(prefix / b_.kv_spec().block_size));
    return blocks;
  }
  // Adds `count` sequences of `len` random tokens after the positions of the
  // `shared` blocks (prefilled, not timed); their decode steps hint the
  // shared prefix (StepInput::shared_prefix).
  Status add_after(const std::vector<int32_t>& shared, int count, int len, int chunk_tokens) {
    const int B = b_.kv_spec().block_size;
    const int start = static_cast<int>(shared.size()) * B;
    StepInput in;
    for (int i = 0; i < count; ++i) {
      Seq s;
      s.len = start + len;
      s.shared = start;
      s.table = shared;
      for (int k = 0; k < (len + 256 + B - 1) / B; ++k)
        s.table.push_back(next_block_++);
      seqs_.push_back(s);
    }
    // Prefill in steps of up to chunk_tokens tokens.
    size_t first = seqs_.size() - static_cast<size_t>(count);
    while (first < seqs_.size()) {
      in.clear();
      in.max_blocks = static_cast<int32_t>(seqs_[first].table.size());
      size_t e = first;
      int tokens = 0;
      while (e < seqs_.size() && tokens + len <= std::max(chunk_tokens, len)) {
        const auto ids = random_ids(len, vocab_, static_cast<unsigned>(e));
        const int32_t row = in.append_sequence(seqs_[e].table, B, start, ids);
        in.samples.push_back(sample_row(row + len - 1));
        tokens += len;
        ++e;
      }
      CS_RETURN_IF_ERROR(b_.execute(in, out_));
      first = e;
    }
    return {};
  }
  // The median seconds of `timed` decode steps after `warmup` untimed ones.
  Result<double> median_step(int warmup, int timed) {
    std::vector<double> t;
    for (int i = 0; i < warmup + timed; ++i) {
      CS_ASSIGN_OR_RETURN(const double s, step());
      if (i >= warmup) t.push_back(s);
    }
    return median(t);
  }
  // One decode step over every sequence; seconds.
  Result<double> step() {
    const int B = b_.kv_spec().block_size;
    StepInput in;
    in.max_blocks = static_cast<int32_t>(seqs_[0].table.size());
    for (size_t i = 0; i < seqs_.size(); ++i) {
      const int32_t tok = 1000 + static_cast<int32_t>(i);
      in.append_sequence(seqs_[i].table, B, seqs_[i].len, std::span<const int32_t>(&tok, 1));
      in.samples.push_back(sample_row(static_cast<int32_t>(i)));
      in.shared_prefix.push_back(seqs_[i].shared);
    }
    const auto t0 = Clock::now();
    CS_RETURN_IF_ERROR(b_.execute(in, out_));
    const double t = seconds_since(t0);
    for (auto& s : seqs_)
      ++s.len;
    return t;
  }

 private:
  struct Seq {
    int len = 0;
    int shared = 0;  // leading positions in shared blocks
    std::vector<int32_t> table;
  };
  SampleRow sample_row(int32_t row) {
    SampleRow r;
    r.row = row;
    r.params = &greedy_;
    return r;
  }
  Backend& b_;
  int vocab_;
  SamplingParams greedy_ = [] {
    SamplingParams p;
    p.temperature = 0;
    return p;
  }();
  std::vector<Seq> seqs_;
  int32_t next_block_ = 1;
  StepOutput out_;
};

// A random cartridge of `tokens` tokens for `model`, bf16, written to `path`.
Status write_random_cartridge(const Model& model, int tokens, const std::string& path) {
  CartridgeData c;
  c.num_layers = model.config.num_layers;
  c.num_kv_heads = model.config.num_kv_heads;
  c.head_dim = model.config.head_dim;
  c.num_tokens = tokens;
  c.dtype = DType::kBF16;
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.f, 1.f);
  for (int l = 0; l < c.num_layers; ++l) {
    for (int v = 0; v < 2; ++v) {
      Tensor t(DType::kBF16, {c.num_kv_heads, tokens, c.head_dim});
      auto* p = t.data<uint16_t>();
      for (int64_t i = 0; i < t.numel(); ++i)
        p[i] = f32_to_bf16(d(rng));
      (v ? c.values : c.keys).push_back(std::move(t));
    }
  }
  return save_cartridge(path, c);
}

// Seconds from submission to the first token of a request on `stack`.
double ttft(ServingStack& stack, const std::vector<int32_t>& prompt, int32_t virtual_tokens) {
  static int n = 0;
  GenerateRequest g;
  g.id = "ttft-" + std::to_string(n++);
  g.prompt_token_ids = prompt;
  g.sampling.temperature = 0;
  g.sampling.max_tokens = 1;
  if (virtual_tokens > 0) {
    g.num_virtual_tokens = virtual_tokens;
    g.cartridge_ids = {"doc"};
    g.prefix_salt = "doc";
  }
  const auto t0 = Clock::now();
  auto s = stack.engine->submit(std::move(g));
  double first = -1;
  for (bool done = false; !done;) {
    for (auto& o : s->next(std::chrono::milliseconds(20))) {
      if (!o.error.ok()) std::fprintf(stderr, "ttft: %s\n", o.error.message().c_str());
      if (first < 0 && (!o.token_ids.empty() || o.finished)) first = seconds_since(t0);
      done = done || o.finished;
    }
  }
  return first;
}

// Device memory for a bench table, freed with it.
struct DeviceScratch {
  std::vector<void*> ptrs;
  template <typename T>
  T* alloc(size_t n, int fill = 0) {
    void* p = nullptr;
    cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T));
    cudaMemset(p, fill, std::max<size_t>(n, 1) * sizeof(T));
    ptrs.push_back(p);
    return static_cast<T*>(p);
  }
  template <typename T>
  T* upload(const std::vector<T>& v) {
    T* p = alloc<T>(v.size());
    cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
    return p;
  }
  ~DeviceScratch() {
    for (void* p : ptrs)
      cudaFree(p);
  }
};

// Microseconds per launch of `op`: 20 back-to-back launches between events,
// median of 5 (after 2 warm-up rounds); about what a graph replay costs it.
double launch_us(const std::function<void()>& op) {
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  std::vector<double> t;
  for (int r = 0; r < 7; ++r) {
    cudaEventRecord(e0);
    for (int i = 0; i < 20; ++i)
      op();
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    if (r >= 2) t.push_back(ms * 1e3 / 20);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return median(t);
}

struct LinearShape {
  const char* name;
  int in, out;  // y[n, out] = x[n, in] @ w[out, in]^T
};

// The model's linear layers as the CUDA backend runs them (fused QKV and
// gate/up), the LM head last.
std::vector<LinearShape> linear_shapes(const ModelConfig& c) {
  const int kvd = c.num_kv_heads * c.head_dim;
  return {{"qkv", c.hidden_size, c.q_dim() + 2 * kvd},
          {"o", c.q_dim(), c.hidden_size},
          {"gate_up", c.hidden_size, 2 * c.intermediate_size},
          {"down", c.intermediate_size, c.hidden_size},
          {"lm_head", c.hidden_size, c.vocab_size}};
}

// Weight copies that timed launches take in turn, filling at least
// kRotateBytes (several times the L2), so every launch reads its weights from
// memory as a decode step does. bf16 0x3c3c (~0.01: finite, not zero).
class RotatingWeights {
 public:
  RotatingWeights(DeviceScratch& d, size_t min_elems)
      : elems_(std::max(min_elems, kRotateBytes / 2)), w_(d.alloc<__nv_bfloat16>(elems_, 0x3c)) {}
  const __nv_bfloat16* next(const LinearShape& sh) {
    const size_t elems = static_cast<size_t>(sh.in) * sh.out;
    return w_ + (k_++ % std::max<size_t>(1, elems_ / elems)) * elems;
  }

 private:
  static constexpr size_t kRotateBytes = size_t{256} << 20;
  size_t elems_;
  __nv_bfloat16* w_;
  size_t k_ = 0;
};

// The model's linear layers alone, at the row counts of decode: the skinny
// (CARTSERVE_SKINNY) and gemv (CARTSERVE_DECODE_GEMV) kernels against
// cuBLASLt on the same shapes (weights only: they dominate the bytes), as a
// fraction of the copy bandwidth; cuBLASLt both with its heuristic's pick
// (the backend's default) and with candidates timed (CARTSERVE_GEMM_TUNE).
json linear_layers(const ModelConfig& c, double copy_bw) {
  const std::vector<LinearShape> shapes = linear_shapes(c);
  constexpr int kRows[] = {1, 2, 4, 8, 16, 32, 64, 128};
  size_t w_elems = 0, x_elems = 0, y_elems = 0;
  for (const LinearShape& sh : shapes) {
    w_elems = std::max(w_elems, static_cast<size_t>(sh.in) * sh.out);
    x_elems = std::max(x_elems, static_cast<size_t>(128) * sh.in);
    y_elems = std::max(y_elems, static_cast<size_t>(128) * sh.out);
  }
  DeviceScratch d;
  RotatingWeights weights(d, w_elems);
  auto* x = d.alloc<__nv_bfloat16>(x_elems, 0x3c);
  float* y = d.alloc<float>(y_elems);
  void* ws = d.alloc<uint8_t>(32 << 20);
  auto with_gemv = cuda::Gemm::create(ws, 32 << 20, true, false);
  auto cublas = cuda::Gemm::create(ws, 32 << 20, false, false, true);
  auto heuristic = cuda::Gemm::create(ws, 32 << 20, false, false, false);
  auto skinny = cuda::Gemm::create(ws, 32 << 20, false, true, false, 0);
  auto fixed = cuda::Gemm::create(ws, 32 << 20, false, false, false, 0, true);
  json rows = json::array();
  if (!with_gemv.ok() || !cublas.ok() || !heuristic.ok() || !skinny.ok() || !fixed.ok())
    return rows;
  // The LM head writes fp32 logits, the others bf16.
  auto fp32_out = [](const LinearShape& sh) { return sh.name == std::string("lm_head"); };
  auto time_us = [&](cuda::Gemm& g, const LinearShape& sh, int n, bool decode) {
    return launch_us([&] {
      (void)g.run(x, weights.next(sh), y, fp32_out(sh), n, sh.in, sh.out, nullptr, decode);
    });
  };
  std::printf("%-8s %3s %10s %10s %10s %10s %10s %8s %8s %8s %8s %6s %6s\n", "linear", "n",
              "skinny us", "gemv us", "heur. us", "tuned us", "fixed us", "skinny %", "gemv %",
              "tuned %", "fixed %", "splitk", "fix.sk");
  for (const LinearShape& sh : shapes) {
    const double bytes = 2.0 * sh.in * static_cast<double>(sh.out);
    for (const int n : kRows) {
      const double k = time_us(**skinny, sh, n, true), b = time_us(**cublas, sh, n, false);
      const double hb = time_us(**heuristic, sh, n, false);
      // One configuration for every decode run of up to 64 rows (CARTSERVE_GEMM_FIXED).
      const double fx = n <= cuda::Gemm::kFixedMaxRows ? time_us(**fixed, sh, n, true) : hb;
      const cuda::Gemm::Choice fc = (**fixed).choice(n, sh.in, sh.out, fp32_out(sh));
      // gemv takes at most kGemvMaxRows rows (more go to cuBLASLt).
      const double g = n <= ops::cuda::kGemvMaxRows ? time_us(**with_gemv, sh, n, false) : b;
      const double floor_us = 1e6 * bytes / copy_bw;
      const cuda::Gemm::Choice tuned = (**cublas).choice(n, sh.in, sh.out, fp32_out(sh));
      rows.push_back({{"layer", sh.name},
                      {"tuned_algo", tuned.algo_id},
                      {"tuned_tile", tuned.tile},
                      {"tuned_split_k", tuned.split_k},
                      {"tuned_reduction", tuned.scheme},
                      {"fixed_us", fx},
                      {"fixed_fraction_of_floor", floor_us / fx},
                      {"fixed_algo", fc.algo_id},
                      {"fixed_tile", fc.tile},
                      {"fixed_split_k", fc.split_k},
                      {"in", sh.in},
                      {"out", sh.out},
                      {"rows", n},
                      {"weight_bytes", bytes},
                      {"floor_us", floor_us},
                      {"skinny_us", k},
                      {"gemv_us", g},
                      {"cublaslt_us", b},
                      {"cublaslt_heuristic_us", hb},
                      {"skinny_fraction_of_floor", floor_us / k},
                      {"gemv_fraction_of_floor", floor_us / g},
                      {"cublaslt_fraction_of_floor", floor_us / b}});
      std::printf(
          "%-8s %3d %10.2f %10.2f %10.2f %10.2f %10.2f %7.0f%% %7.0f%% %7.0f%% %7.0f%% %6d %6d\n",
          sh.name, n, k, g, hb, b, fx, 100.0 * floor_us / k, 100.0 * floor_us / g,
          100.0 * floor_us / b, 100.0 * floor_us / fx, tuned.split_k, fc.split_k);
    }
  }
  return rows;
}

// The skinny kernel's launch shapes on the same layers: wk warps splitting k
// (it changes the bits, so the backend's choice depends only on `in`) by mt
// m-tiles per CTA (it does not), against cuBLASLt's heuristic pick.
json skinny_shapes(const ModelConfig& c, double copy_bw) {
  std::vector<LinearShape> shapes = linear_shapes(c);
  shapes.pop_back();  // not the LM head (the slowest to sweep, and never skinny's job alone)
  constexpr int kRows[] = {1, 4, 16, 64, 128};
  size_t x_elems = 0, y_elems = 0;
  for (const LinearShape& sh : shapes) {
    x_elems = std::max(x_elems, static_cast<size_t>(128) * sh.in);
    y_elems = std::max(y_elems, static_cast<size_t>(128) * sh.out);
  }
  DeviceScratch d;
  RotatingWeights weights(d, 0);
  auto* x = d.alloc<__nv_bfloat16>(x_elems, 0x3c);
  auto* y = d.alloc<__nv_bfloat16>(y_elems);
  void* ws = d.alloc<uint8_t>(32 << 20);
  auto heuristic = cuda::Gemm::create(ws, 32 << 20, false, false, false);
  json rows = json::array();
  if (!heuristic.ok()) return rows;
  std::printf("%-8s %3s %8s %s\n", "skinny", "n", "cublas", "us by wk x mt (2x1 2x2 2x4 4x1 ...)");
  for (const LinearShape& sh : shapes) {
    const double floor_us = 1e6 * 2.0 * sh.in * sh.out / copy_bw;
    for (const int n : kRows) {
      const double cub = launch_us([&] {
        (void)(*heuristic)->run(x, weights.next(sh), y, false, n, sh.in, sh.out, nullptr, false);
      });
      json row = {{"layer", sh.name},
                  {"in", sh.in},
                  {"out", sh.out},
                  {"rows", n},
                  {"floor_us", floor_us},
                  {"cublaslt_heuristic_us", cub},
                  {"default_wk", ops::cuda::skinny_gemm_split(sh.in)}};
      json shapes_us = json::object();
      std::printf("%-8s %3d %8.2f", sh.name, n, cub);
      for (const int wk : {2, 4, 8}) {
        for (const int mt : {1, 2, 4}) {
          const double us = launch_us([&] {
            ops::cuda::skinny_gemm_shaped(x, weights.next(sh), y, false, n, sh.in, sh.out, nullptr,
                                          wk, mt);
          });
          shapes_us[std::to_string(wk) + "x" + std::to_string(mt)] = us;
          std::printf(" %6.2f", us);
        }
      }
      std::printf("\n");
      row["skinny_us_by_wk_x_mt"] = shapes_us;
      rows.push_back(row);
    }
  }
  return rows;
}

constexpr int kMaxSplits = 32;  // split-KV cap, as the CUDA backend's

// A paged KV layer of `seqs` sequences, each with `q_len` query rows at the
// end of a `ctx`-position context (blocks of 16, no sharing), bf16 filled
// with 0x3c3c, and the attention batch over it.
struct PagedSetup {
  static constexpr int kBlock = 16;
  ops::cuda::KvLayer kv;
  ops::cuda::AttnBatch ab;
  PagedSetup(DeviceScratch& d, const ModelConfig& c, int seqs, int q_len, int ctx) {
    const int KVD = c.num_kv_heads * c.head_dim;
    const int blocks_per_seq = (ctx + kBlock - 1) / kBlock;
    std::vector<int32_t> qs(static_cast<size_t>(seqs) + 1), ctxs(static_cast<size_t>(seqs), ctx),
        bt;
    for (int i = 0; i < seqs; ++i) {
      qs[static_cast<size_t>(i) + 1] = (i + 1) * q_len;
      for (int b = 0; b < blocks_per_seq; ++b)
        bt.push_back(i * blocks_per_seq + b);
    }
    const size_t pool_elems = static_cast<size_t>(seqs) * blocks_per_seq * 2 * kBlock * KVD;
    auto* pool = d.alloc<ops::cuda::bf16>(pool_elems, 0x3c);
    kv.k = pool;
    kv.v = pool + static_cast<size_t>(kBlock) * KVD;
    kv.block_stride = int64_t{2} * kBlock * KVD;
    kv.block_size = kBlock;
    kv.num_kv_heads = c.num_kv_heads;
    kv.head_dim = c.head_dim;
    ab.query_start = d.upload(qs);
    ab.context_lens = d.upload(ctxs);
    ab.block_table = d.upload(bt);
    ab.num_seqs = seqs;
    ab.max_blocks = blocks_per_seq;
    ab.num_tokens = seqs * q_len;
    ab.max_query_len = q_len;
    ab.max_context_len = blocks_per_seq * kBlock;
  }
  // Slot of sequence i's last position (its blocks are contiguous).
  int32_t last_slot(int i, int ctx) const {
    return (i * ab.max_blocks + (ctx - 1) / kBlock) * kBlock + (ctx - 1) % kBlock;
  }
};

// Whether the backends of this run take the norm-folded forward (the
// budget tables then time its scaled RoPE and SwiGLU instead of add_rms_norm).
bool folded_forward() {
  return cuda::CudaOptions::fold_norms_by_default() && cuda::Gemm::plain_by_default();
}

// Where the last persistent decode step's time went, by phase
// (CARTSERVE_PERSISTENT_TIMELINE=1; null otherwise).
json persistent_timeline(Backend& b, int layers) {
  auto* cb = dynamic_cast<cuda::CudaBackend*>(&b);
  if (cb == nullptr || !cb->persistent_decode()) return nullptr;
  auto t = cb->persistent_timeline();
  if (!t.ok() || t->empty()) return nullptr;
  const ops::PersistentTimeline s =
      ops::summarize_persistent_timeline(*t, layers, cb->persistent_ctas());
  json phases = json::array();
  std::printf("persistent step %.1f us (%d CTAs), per layer:\n", s.step_us, cb->persistent_ctas());
  for (const auto& ph : s.phases) {
    phases.push_back({{"phase", ph.phase},
                      {"work_max_us", ph.work_max_us},
                      {"work_mean_us", ph.work_mean_us},
                      {"barrier_us", ph.barrier_us}});
    std::printf("  %-9s work %.2f us (slowest CTA) %.2f (mean), barrier %.2f us\n", ph.phase,
                ph.work_max_us, ph.work_mean_us, ph.barrier_us);
  }
  return {{"step_us", s.step_us}, {"ctas", cb->persistent_ctas()}, {"phases", phases}};
}

int device_sms() {
  int dev = 0, sms = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  return sms;
}

// Attention time against its split count: decode at batch 1 and 64 over
// 513-position contexts and at 256 over 1025, and the TTFT shape (a 64-token
// question after a 2048-position cartridge) through the prefill kernel;
// "auto" marks the count the backend picks.
json attention_splits(const ModelConfig& c, double copy_bw) {
  namespace k = ops::cuda;
  const int Q = c.q_dim(), KVD = c.num_kv_heads * c.head_dim, QKV = Q + 2 * KVD;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int sms = device_sms();
  json rows = json::array();
  std::printf("attention                                splits   us/launch  KV read GB/s\n");
  struct Shape {
    int seqs, q_len, ctx;
  };
  for (const Shape sh :
       {Shape{1, 1, 513}, Shape{64, 1, 513}, Shape{256, 1, 1025}, Shape{1, 64, 2112}}) {
    DeviceScratch d;
    PagedSetup ps(d, c, sh.seqs, sh.q_len, sh.ctx);
    const int rows_q = sh.seqs * sh.q_len;
    auto* qkv = d.alloc<k::bf16>(static_cast<size_t>(rows_q) * QKV, 0x3c);
    auto* out = d.alloc<k::bf16>(static_cast<size_t>(rows_q) * Q);
    void* ws =
        d.alloc<uint8_t>(k::decode_workspace_bytes(rows_q, c.num_heads, c.head_dim, kMaxSplits));
    const bool decode = sh.q_len == 1;
    const int auto_splits =
        decode
            ? k::decode_num_splits(sh.seqs, c.num_kv_heads, ps.ab.max_context_len, kMaxSplits, sms)
            : k::prefill_num_splits(sh.q_len, 1, c.num_heads, c.num_kv_heads, ps.ab.max_context_len,
                                    kMaxSplits, sms, c.head_dim);
    const double kv_bytes = 2.0 * 2.0 * sh.seqs * sh.ctx * KVD;
    for (int splits : {1, 2, 3, 4, 6, 8, 16, 32, auto_splits}) {
      const double us = launch_us([&] {
        if (decode) {
          k::paged_attention_decode(qkv, QKV, ps.kv, ps.ab, out, c.num_heads, scale, splits, ws,
                                    nullptr);
        } else {
          k::paged_attention_prefill(qkv, QKV, ps.kv, ps.ab, out, c.num_heads, scale, splits, ws,
                                     nullptr);
        }
      });
      const bool is_auto = splits == auto_splits;
      rows.push_back({{"kernel", decode ? "decode" : "prefill"},
                      {"seqs", sh.seqs},
                      {"query_rows", sh.q_len},
                      {"context", sh.ctx},
                      {"splits", splits},
                      {"auto", is_auto},
                      {"us", us},
                      {"kv_floor_us", 1e6 * kv_bytes / copy_bw}});
      std::printf("  %-7s seqs=%-3d q=%-3d ctx=%-5d %7d%s %10.2f %12.0f\n",
                  decode ? "decode" : "prefill", sh.seqs, sh.q_len, sh.ctx, splits,
                  is_auto ? "*" : " ", us, kv_bytes / us / 1e3);
    }
  }
  return rows;
}

// The causal prefill attention kernel's CTA shapes (rows per CTA x keys per
// K/V tile) on one layer: a whole 8192- and 2048-token prompt, and the TTFT
// shape (a 64-token question after 2048 cartridge positions, split as the
// backend splits it); "default" marks prefill_tile's pick.
json prefill_tiles(const ModelConfig& c, double gemm_flops) {
  namespace k = ops::cuda;
  const int Q = c.q_dim(), KVD = c.num_kv_heads * c.head_dim, QKV = Q + 2 * KVD;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int sms = device_sms();
  json rows = json::array();
  std::printf("prefill attention            tile   splits   us/launch   TFLOP/s\n");
  std::vector<k::PrefillTile> tiles = {{64, 64}, {128, 64}, {128, 64, 32}};
  if (c.head_dim == 128) {
    tiles.insert(tiles.begin(), {k::PrefillTile{64, 32}, {128, 32}, {128, 32, 32}});
    tiles.push_back({128, 64, 16, true});  // the wgmma kernel
  }
  for (const auto& [q_len, ctx] :
       {std::pair{8192, 8192}, std::pair{2048, 2048}, std::pair{64, 2112}}) {
    DeviceScratch d;
    PagedSetup ps(d, c, 1, q_len, ctx);
    auto* qkv = d.alloc<k::bf16>(static_cast<size_t>(q_len) * QKV, 0x3c);
    auto* out = d.alloc<k::bf16>(static_cast<size_t>(q_len) * Q);
    void* ws =
        d.alloc<uint8_t>(k::decode_workspace_bytes(q_len, c.num_heads, c.head_dim, kMaxSplits));
    // Causal: query i sees ctx - q_len + i + 1 keys; QK^T and PV, 2 FLOP per MAC.
    const double pairs = static_cast<double>(q_len) * (ctx - q_len) + q_len * (q_len + 1) / 2.0;
    const double flops = 4.0 * pairs * c.head_dim * c.num_heads;
    const k::PrefillTile def = k::prefill_tile(q_len, 1, c.head_dim);
    for (const k::PrefillTile t : tiles) {
      // The split count the backend would take with this tile.
      const int splits =
          k::prefill_num_splits(q_len, 1, c.num_heads, c.num_kv_heads, ps.ab.max_context_len,
                                kMaxSplits, sms, c.head_dim, t);
      const double us = launch_us([&] {
        k::paged_attention_prefill(qkv, QKV, ps.kv, ps.ab, out, c.num_heads, scale, splits, ws,
                                   nullptr, nullptr, t);
      });
      const bool is_def = t.rows == def.rows && t.bn == def.bn && t.warp_rows == def.warp_rows &&
                          t.wgmma == def.wgmma;
      rows.push_back({{"query_rows", q_len},
                      {"context", ctx},
                      {"rows_per_cta", t.rows},
                      {"keys_per_tile", t.bn},
                      {"rows_per_warp", t.warp_rows},
                      {"wgmma", t.wgmma},
                      {"splits", splits},
                      {"default", is_def},
                      {"us", us},
                      {"tflop_per_s", flops / us / 1e6},
                      {"fraction_of_gemm_rate", flops / (us * 1e-6) / gemm_flops}});
      std::printf("  q=%-5d ctx=%-5d %4dx%-2d/%-2d%s%s %6d %11.1f %9.0f\n", q_len, ctx, t.rows,
                  t.bn, t.warp_rows, t.wgmma ? "wg" : "  ", is_def ? "*" : " ", splits, us,
                  flops / us / 1e6);
    }
  }
  return rows;
}

// The sampler alone (ops::cuda::sample, one CTA per row) on random logits of
// the model's vocabulary, at 1 and 64 rows: greedy, greedy with the chosen
// token's logprob, with 1 and 20 top logprobs (what load_gen --logprobs and
// the OpenAI top_logprobs ask), and temperature-1 draws: plain (the OpenAI
// API's default), top_k 50 and top_p 0.9. The floor: the logits' bytes read
// once at the copy rate.
json sampling_ops(const ModelConfig& c, double copy_bw) {
  namespace k = ops::cuda;
  const int vocab = c.vocab_size;
  struct Variant {
    const char* name;
    float temperature, top_p;
    int num_logprobs;
    int top_k;
  };
  const Variant variants[] = {
      {"greedy", 0.f, 1.f, -1, 0},        {"greedy_logprob", 0.f, 1.f, 0, 0},
      {"greedy_top1", 0.f, 1.f, 1, 0},    {"greedy_top20", 0.f, 1.f, 20, 0},
      {"temperature_1", 1.f, 1.f, -1, 0}, {"top_k_50", 1.f, 1.f, -1, 50},
      {"top_p_0.9", 1.f, 0.9f, -1, 0}};
  json rows = json::array();
  std::printf("sampling                 rows   us/launch   floor us\n");
  for (const int n : {1, 64}) {
    DeviceScratch d;
    std::mt19937 rng(7);
    std::normal_distribution<float> dist(0.f, 3.f);
    std::vector<float> h(static_cast<size_t>(n) * vocab);
    for (float& v : h)
      v = dist(rng);
    float* logits = d.upload(h);
    void* ws = d.alloc<uint8_t>(k::sample_workspace_bytes(n, vocab, 0));
    auto* token = d.alloc<int32_t>(static_cast<size_t>(n));
    auto* logprob = d.alloc<float>(static_cast<size_t>(n));
    auto* rank = d.alloc<int32_t>(static_cast<size_t>(n));
    auto* top_ids = d.alloc<int32_t>(static_cast<size_t>(n) * k::kMaxTopLogprobs);
    auto* top_lp = d.alloc<float>(static_cast<size_t>(n) * k::kMaxTopLogprobs);
    const double floor_us = 1e6 * 4.0 * n * vocab / copy_bw;
    for (const Variant& v : variants) {
      std::vector<k::SampleRowParams> p(static_cast<size_t>(n));
      for (int r = 0; r < n; ++r) {
        p[static_cast<size_t>(r)].temperature = v.temperature;
        p[static_cast<size_t>(r)].top_p = v.top_p;
        p[static_cast<size_t>(r)].num_logprobs = v.num_logprobs;
        p[static_cast<size_t>(r)].top_k = v.top_k;
        p[static_cast<size_t>(r)].seed = 11u + static_cast<uint64_t>(r);
      }
      const k::SampleRowParams* dp = d.upload(p);
      const bool lp = v.num_logprobs >= 0, top = v.num_logprobs > 0;
      const double us = launch_us([&] {
        k::sample(logits, vocab, dp, n, nullptr, ws, 0, token, lp ? logprob : nullptr,
                  lp ? rank : nullptr, top ? top_ids : nullptr, top ? top_lp : nullptr,
                  v.temperature > 0.f, nullptr);
      });
      rows.push_back({{"variant", v.name}, {"rows", n}, {"us", us}, {"floor_us", floor_us}});
      std::printf("  %-20s %6d %11.1f %10.1f\n", v.name, n, us, floor_us);
    }
  }
  return rows;
}

// Where a decode step's time goes besides the linear layers: every other op
// of one layer at decode shapes (`batch` sequences of 512-token contexts),
// each timed alone (launch_us), with the bytes it moves.
json decode_ops(const ModelConfig& c, double copy_bw, int batch) {
  namespace k = ops::cuda;
  const int n = batch, H = c.hidden_size, Q = c.q_dim(), KVD = c.num_kv_heads * c.head_dim;
  const int QKV = Q + 2 * KVD, FF = c.intermediate_size, kCtx = 513;
  DeviceScratch d;
  PagedSetup ps(d, c, n, 1, kCtx);
  const k::KvLayer& kv = ps.kv;
  const k::AttnBatch& ab = ps.ab;
  auto* table = d.alloc<k::bf16>(static_cast<size_t>(1000) * H, 0x3c);
  std::vector<int32_t> ids(static_cast<size_t>(n)), pos(ids.size()), slots(ids.size());
  for (int i = 0; i < n; ++i) {
    ids[static_cast<size_t>(i)] = 100 + i;
    pos[static_cast<size_t>(i)] = kCtx - 1;
    slots[static_cast<size_t>(i)] = ps.last_slot(i, kCtx);
  }
  const int32_t* d_ids = d.upload(ids);
  const int32_t* d_pos = d.upload(pos);
  const int32_t* d_slots = d.upload(slots);
  std::vector<float> inv(static_cast<size_t>(c.head_dim / 2), 0.01f);
  const float* d_inv = d.upload(inv);
  float* x = d.alloc<float>(static_cast<size_t>(n) * H);
  auto* delta = d.alloc<k::bf16>(static_cast<size_t>(n) * H, 0x3c);
  auto* norm_w = d.alloc<k::bf16>(static_cast<size_t>(H), 0x3c);
  auto* xn = d.alloc<k::bf16>(static_cast<size_t>(n) * H);
  auto* qkv = d.alloc<k::bf16>(static_cast<size_t>(n) * QKV, 0x3c);
  auto* attn = d.alloc<k::bf16>(static_cast<size_t>(n) * Q);
  auto* gu = d.alloc<k::bf16>(static_cast<size_t>(n) * 2 * FF, 0x3c);
  auto* act = d.alloc<k::bf16>(static_cast<size_t>(n) * FF);
  const int splits =
      k::decode_num_splits(n, c.num_kv_heads, ab.max_context_len, kMaxSplits, device_sms());
  void* ws = d.alloc<uint8_t>(k::decode_workspace_bytes(n, c.num_heads, c.head_dim, kMaxSplits));
  // Zeroed counters: the merge in the split kernel, as the backend runs it.
  auto* counters = d.alloc<unsigned>(k::decode_merge_counters(n, c.num_heads));
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  struct Op {
    const char* name;
    int per_step;  // launches per decode step (per layer, or once)
    double bytes;  // per launch
    std::function<void()> run;
  };
  const double nd = n;
  // The norm-folded forward (CudaOptions::fold_norms) runs the scaled RoPE
  // and SwiGLU and no add_rms_norm; the unfolded one the others.
  const bool fold = folded_forward();
  const int L = c.num_layers;
  auto* xb = d.alloc<k::bf16>(static_cast<size_t>(n) * H, 0x3c);  // bf16 residual
  const k::RowRmsScale rs{xb, H, c.rms_norm_eps};
  const Op ops[] = {
      {"embedding", 1, nd * H * (2 + 4), [&] { k::embedding(table, d_ids, x, n, H, nullptr); }},
      {"add_rms_norm", fold ? 0 : 2 * L, nd * H * (4 + 4 + 2 + 2),
       [&] { k::add_rms_norm(x, delta, norm_w, xn, n, H, c.rms_norm_eps, nullptr); }},
      {"rope_qkv_write", fold ? 0 : L, nd * (2.0 * QKV * 2 + 2.0 * KVD * 2),
       [&] {
         k::rope_qkv_write(qkv, nullptr, d_pos, d_inv, d_slots, kv, n, c.num_heads, nullptr);
       }},
      {"rope_qkv_write_scaled", fold ? L : 0, nd * (2.0 * QKV * 2 + 2.0 * KVD * 2 + 2.0 * H),
       [&] {
         k::rope_qkv_write(qkv, nullptr, d_pos, d_inv, d_slots, kv, n, c.num_heads, nullptr, rs);
       }},
      {"attention_decode", c.num_layers, nd * (kCtx * 2.0 * KVD * 2 + 2.0 * Q * 2),
       [&] {
         k::paged_attention_decode(qkv, QKV, kv, ab, attn, c.num_heads, scale, splits, ws, nullptr,
                                   nullptr, counters);
       }},
      {"attention_decode_two_kernels", 0, nd * (kCtx * 2.0 * KVD * 2 + 2.0 * Q * 2),
       [&] {
         k::paged_attention_decode(qkv, QKV, kv, ab, attn, c.num_heads, scale, splits, ws, nullptr);
       }},
      {"silu_mul", fold ? 0 : L, nd * FF * (4 + 2), [&] { k::silu_mul(gu, act, n, FF, nullptr); }},
      {"silu_mul_scaled", fold ? L : 0, nd * (FF * (4 + 2) + 2.0 * H),
       [&] { k::silu_mul_scaled(gu, act, n, FF, rs, nullptr); }},
  };
  json rows = json::array();
  double total_us = 0;
  std::printf("decode batch %d, other ops     us/launch  launches  us/step  bytes %%\n", batch);
  for (const Op& op : ops) {
    const double us = launch_us(op.run);
    const double floor_us = 1e6 * op.bytes / copy_bw;
    total_us += us * op.per_step;
    rows.push_back({{"op", op.name},
                    {"us_per_launch", us},
                    {"launches_per_step", op.per_step},
                    {"us_per_step", us * op.per_step},
                    {"bytes_per_launch", op.bytes},
                    {"floor_us_per_launch", floor_us}});
    std::printf("  %-26s %9.2f %9d %8.1f %6.0f%%\n", op.name, us, op.per_step, us * op.per_step,
                100.0 * floor_us / us);
  }
  std::printf("  %-26s %29.1f\n", "sum", total_us);
  return {{"batch", batch}, {"context", kCtx}, {"ops", rows}, {"sum_us_per_step", total_us}};
}

// Where a batch-1 decode step's time goes: every kernel of the step timed
// alone (the linear layers at 1 row through the backend's default cuBLASLt
// pick, the other ops from decode_ops) times its launches per step, beside
// its floor (its bytes over the copy bandwidth), against the measured step.
json decode_b1_budget(const ModelConfig& c, const json& linear, const json& ops, double step_ms) {
  json rows = json::array();
  double sum_us = 0, floor_us = 0;
  auto add = [&](const std::string& name, int per_step, double us, double floor) {
    rows.push_back({{"kernel", name},
                    {"launches_per_step", per_step},
                    {"us_per_launch", us},
                    {"us_per_step", us * per_step},
                    {"floor_us_per_step", floor * per_step}});
    sum_us += us * per_step;
    floor_us += floor * per_step;
  };
  for (const json& r : linear) {
    if (r["rows"] != 1) continue;
    const std::string layer = r["layer"];
    add("linear_" + layer, layer == "lm_head" ? 1 : c.num_layers, r["cublaslt_heuristic_us"],
        r["floor_us"]);
  }
  for (const json& o : ops["ops"])
    add(o["op"], o["launches_per_step"], o["us_per_launch"], o["floor_us_per_launch"]);
  std::printf("decode batch 1 budget: kernels timed alone %.0f us (floor %.0f), step %.0f us\n",
              sum_us, floor_us, 1e3 * step_ms);
  return {{"kernels", rows},
          {"sum_us_timed_alone", sum_us},
          {"floor_us", floor_us},
          {"step_us_measured", 1e3 * step_ms}};
}

// Where a long prefill's time goes: every kernel of one `n`-token prompt
// (one sequence, causal, no cartridge) timed alone at its prefill shape
// times its launches, beside its floor (GEMMs and attention: FLOPs over the
// measured GEMM rate; the rest: bytes over the copy bandwidth), against the
// measured prefill. The lm_head runs on the last row only.
json prefill_budget(const ModelConfig& c, double copy_bw, double gemm_flops, int n,
                    double measured_ms) {
  namespace k = ops::cuda;
  const int H = c.hidden_size, Q = c.q_dim(), KVD = c.num_kv_heads * c.head_dim;
  const int QKV = Q + 2 * KVD, FF = c.intermediate_size, L = c.num_layers;
  DeviceScratch d;
  PagedSetup ps(d, c, 1, n, n);
  std::vector<int32_t> pos(static_cast<size_t>(n)), slots(pos.size());
  for (int i = 0; i < n; ++i) {
    pos[static_cast<size_t>(i)] = i;
    slots[static_cast<size_t>(i)] = i;  // the sequence's blocks are 0, 1, 2, ...
  }
  const int32_t* d_pos = d.upload(pos);
  const int32_t* d_slots = d.upload(slots);
  std::vector<int32_t> ids(static_cast<size_t>(n), 100);
  const int32_t* d_ids = d.upload(ids);
  std::vector<float> inv(static_cast<size_t>(c.head_dim / 2), 0.01f);
  const float* d_inv = d.upload(inv);
  // Every weight matrix is at most [max(QKV, 2 FF, vocab), H] or [H, FF].
  auto* w = d.alloc<k::bf16>(static_cast<size_t>(std::max({QKV, FF * 2, c.vocab_size})) * H, 0x3c);
  auto* table = d.alloc<k::bf16>(static_cast<size_t>(1000) * H, 0x3c);
  float* x = d.alloc<float>(static_cast<size_t>(n) * H);
  auto* in = d.alloc<k::bf16>(static_cast<size_t>(n) * std::max(FF, Q), 0x3c);
  auto* delta = d.alloc<k::bf16>(static_cast<size_t>(n) * H, 0x3c);
  auto* norm_w = d.alloc<k::bf16>(static_cast<size_t>(H), 0x3c);
  auto* qkv = d.alloc<k::bf16>(static_cast<size_t>(n) * QKV, 0x3c);
  auto* attn = d.alloc<k::bf16>(static_cast<size_t>(n) * Q);
  auto* gu = d.alloc<k::bf16>(static_cast<size_t>(n) * 2 * FF, 0x3c);
  auto* act = d.alloc<k::bf16>(static_cast<size_t>(n) * FF);
  float* logits = d.alloc<float>(static_cast<size_t>(c.vocab_size));
  void* gws = d.alloc<uint8_t>(32 << 20);
  auto gemm = cuda::Gemm::create(gws, 32 << 20, false, false, false);
  if (!gemm.ok()) return json::object();
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const int splits = k::prefill_num_splits(n, 1, c.num_heads, c.num_kv_heads, ps.ab.max_context_len,
                                           kMaxSplits, device_sms(), c.head_dim);
  void* aws = d.alloc<uint8_t>(k::decode_workspace_bytes(n, c.num_heads, c.head_dim, kMaxSplits));
  auto linear = [&](const k::bf16* xin, void* y, bool f32, int rows, int i, int o) {
    (void)(*gemm)->run(xin, w, y, f32, rows, i, o, nullptr);
  };
  const double nd = n;
  struct Op {
    std::string name;
    int launches;
    double flops, bytes;  // per launch; the floor is the larger of the two times
    std::function<void()> run;
  };
  const bool fold = folded_forward();  // as in decode_ops
  auto* xb = d.alloc<k::bf16>(static_cast<size_t>(n) * H, 0x3c);
  const k::RowRmsScale rs{fold ? xb : nullptr, H, c.rms_norm_eps};
  const Op ops[] = {
      {"embedding", 1, 0, nd * H * (2 + 4), [&] { k::embedding(table, d_ids, x, n, H, nullptr); }},
      {"add_rms_norm", fold ? 0 : 2 * L, 0, nd * H * (4 + 4 + 2 + 2),
       [&] { k::add_rms_norm(x, delta, norm_w, in, n, H, c.rms_norm_eps, nullptr); }},
      {"linear_qkv", L, 2 * nd * H * QKV, 2.0 * H * QKV,
       [&] { linear(in, qkv, false, n, H, QKV); }},
      {fold ? "rope_qkv_write_scaled" : "rope_qkv_write", L, 0,
       nd * (2.0 * QKV * 2 + 2.0 * KVD * 2 + (fold ? 2.0 * H : 0.0)),
       [&] {
         k::rope_qkv_write(qkv, nullptr, d_pos, d_inv, d_slots, ps.kv, n, c.num_heads, nullptr, rs);
       }},
      {"attention_prefill", L, 4.0 * c.num_heads * c.head_dim * nd * (nd + 1) / 2,
       nd * (2.0 * QKV + 2.0 * Q),
       [&] {
         k::paged_attention_prefill(qkv, QKV, ps.kv, ps.ab, attn, c.num_heads, scale, splits, aws,
                                    nullptr);
       }},
      {"linear_o", L, 2 * nd * Q * H, 2.0 * Q * H, [&] { linear(attn, in, false, n, Q, H); }},
      {"linear_gate_up", L, 2 * nd * H * 2 * FF, 2.0 * H * 2 * FF,
       [&] { linear(in, gu, false, n, H, 2 * FF); }},
      {fold ? "silu_mul_scaled" : "silu_mul", L, 0, nd * (FF * (4 + 2) + (fold ? 2.0 * H : 0.0)),
       [&] {
         if (fold) {
           k::silu_mul_scaled(gu, act, n, FF, rs, nullptr);
         } else {
           k::silu_mul(gu, act, n, FF, nullptr);
         }
       }},
      {"linear_down", L, 2 * nd * FF * H, 2.0 * FF * H, [&] { linear(act, in, false, n, FF, H); }},
      {"linear_lm_head", 1, 2.0 * H * c.vocab_size, 2.0 * H * c.vocab_size,
       [&] { linear(in, logits, true, 1, H, c.vocab_size); }},
  };
  json rows = json::array();
  double sum_us = 0, floor_sum = 0;
  std::printf("prefill %d budget         us/launch  launches    ms/prefill  floor ms   %%\n", n);
  for (const Op& op : ops) {
    const double us = launch_us(op.run);
    const double floor_us = 1e6 * std::max(op.flops / gemm_flops, op.bytes / copy_bw);
    sum_us += us * op.launches;
    floor_sum += floor_us * op.launches;
    rows.push_back({{"kernel", op.name},
                    {"launches", op.launches},
                    {"us_per_launch", us},
                    {"ms_per_prefill", us * op.launches / 1e3},
                    {"floor_ms_per_prefill", floor_us * op.launches / 1e3},
                    {"tflop_per_s", op.flops > 0 ? op.flops / us / 1e6 : 0.0}});
    std::printf("  %-22s %10.1f %9d %12.2f %9.2f %4.0f%%\n", op.name.c_str(), us, op.launches,
                us * op.launches / 1e3, floor_us * op.launches / 1e3, 100.0 * floor_us / us);
  }
  std::printf("  sum timed alone %.1f ms (floor %.1f), measured prefill %.1f ms\n", sum_us / 1e3,
              floor_sum / 1e3, measured_ms);
  return {{"tokens", n},
          {"attention_splits", splits},
          {"kernels", rows},
          {"sum_ms_timed_alone", sum_us / 1e3},
          {"floor_ms", floor_sum / 1e3},
          {"prefill_ms_measured", measured_ms}};
}

// A decode figure (ms per step of `batch` sequences beside its floor), printed.
json decode_figure(const std::string& key, int batch, double ms, double floor_ms) {
  std::printf("%-40s %9.3f ms/step %9.0f tok/s   floor %.3f ms (%.0f%%)\n", key.c_str(), ms,
              batch / (ms / 1e3), floor_ms, 100.0 * floor_ms / ms);
  return {{"ms_per_step", ms},
          {"tokens_per_s", batch / (ms / 1e3)},
          {"floor_ms_per_step", floor_ms},
          {"fraction_of_floor", floor_ms / ms}};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: %s MODEL [--out FILE] [--repeats N] [--only GROUP[,GROUP...]] [--tp N]\n",
                 argv[0]);
    return 2;
  }
  std::string out_path = "gpu_bench.json";
  int repeats = 5;
  std::string only;  // one group of figures (a profiler run), else all
  int tp = 1;        // --tp N: decode and prefill through N ranks on GPUs 0..N-1 (NCCL)
  // --only GROUP[,GROUP...]
  auto want = [&](const char* group) {
    if (only.empty()) return true;
    const std::string g = group;
    for (size_t at = 0; at <= only.size();) {
      const size_t end = std::min(only.find(',', at), only.size());
      if (only.compare(at, end - at, g) == 0) return true;
      at = end + 1;
    }
    return false;
  };
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--out") out_path = argv[i + 1];
    if (std::string(argv[i]) == "--repeats") repeats = std::max(1, std::atoi(argv[i + 1]));
    if (std::string(argv[i]) == "--only") only = argv[i + 1];
    if (std::string(argv[i]) == "--tp") tp = std::atoi(argv[i + 1]);
  }
  ServeOptions o;
  o.model = argv[1];
  o.device = "cuda";
  o.max_num_batched_tokens = 8192;
  o.max_num_seqs = 256;
  o.tensor_parallel_size = tp;
  auto model = load_model_for(o, false);
  if (!model.ok()) {
    std::fprintf(stderr, "error: %s\n", model.status().message().c_str());
    return 1;
  }
  const Model& m = **model;
  const ModelConfig& c = m.config;
  // 8448 positions (the 8192-token prefill and its decode), or a shorter
  // model's whole context (SmolLM2: 8192; its decode figures fit). Read by
  // make_backend, not by the load.
  o.max_model_len = static_cast<int32_t>(std::min<int64_t>(8448, c.max_position_embeddings));
  const double copy_bw = copy_bandwidth();
  const double flops = gemm_rate();

  json j = {
      {"benchmark", "gpu_bench"},
      {"model", m.path},
      {"repeats", repeats},
      {"folded_norms", folded_forward()},
      // decode steps of 1-4 sequences through the persistent kernel
      {"persistent_decode", folded_forward() && cuda::CudaOptions::persistent_decode_by_default()}};
  int dev = 0;
  cudaDeviceProp prop{};
  cudaGetDevice(&dev);
  cudaGetDeviceProperties(&prop, dev);
  j["gpu"] = prop.name;
  j["ceilings"] = {{"copy_bytes_per_s", copy_bw}, {"bf16_gemm_flop_per_s", flops}};
  j["tensor_parallel_size"] = tp;
  const double params = static_cast<double>(c.num_parameters());
  const double weight_bytes = 2.0 * params;
  const double kv_token_bytes = static_cast<double>(c.kv_bytes_per_token(2));
  std::printf("ceilings: copy %.0f GB/s, bf16 GEMM %.0f TFLOP/s\n", copy_bw / 1e9, flops / 1e12);

  json figures = json::object();
  if (want("linear")) j["linear_layers"] = linear_layers(c, copy_bw);
  if (want("linear") || want("skinny")) j["skinny_shapes"] = skinny_shapes(c, copy_bw);
  if (want("ops")) j["decode_other_ops"] = {decode_ops(c, copy_bw, 1), decode_ops(c, copy_bw, 64)};
  if (want("ops") || want("sampling")) j["sampling_ops"] = sampling_ops(c, copy_bw);
  if (want("ops") || want("attention")) j["attention_splits"] = attention_splits(c, copy_bw);
  if (want("ops") || want("attention")) j["prefill_tiles"] = prefill_tiles(c, flops);
  if (want("decode") || want("decode1") || want("prefill")) {
    auto backend = make_backend(m, o);
    if (!backend.ok()) {
      std::fprintf(stderr, "error: %s\n", backend.status().message().c_str());
      return 1;
    }
    Backend& b = **backend;
    // Decode at batch 1 and 64 over 512-token contexts, and 256 over 1024.
    for (const auto& [batch, ctx] : {std::pair{1, 512}, std::pair{64, 512}, std::pair{256, 1024}}) {
      if (!want("decode") && !(batch == 1 && want("decode1"))) break;
      Batch seqs(b, c.vocab_size);
      if (auto st = seqs.add(batch, ctx, 8192); !st.ok()) {
        std::fprintf(stderr, "decode setup: %s\n", st.message().c_str());
        return 1;
      }
      auto step_s = seqs.median_step(10, 20 * repeats);
      if (!step_s.ok()) {
        std::fprintf(stderr, "decode: %s\n", step_s.status().message().c_str());
        return 1;
      }
      const double ms = 1e3 * *step_s;
      const double floor_ms =
          1e3 * (weight_bytes + batch * (ctx + 10.0) * kv_token_bytes) / copy_bw;
      const std::string key = "decode_batch_" + std::to_string(batch) +
                              (ctx == 512 ? std::string() : "_ctx_" + std::to_string(ctx));
      figures[key] = decode_figure(key, batch, ms, floor_ms);
      if (batch == 1) {  // the same step with a logprob and one top logprob per row (load_gen's)
        Batch lp(b, c.vocab_size, 1);
        if (lp.add(batch, ctx, 8192).ok()) {
          if (auto lp_s = lp.median_step(10, 20 * repeats); lp_s.ok()) {
            figures["decode_batch_1_logprobs"] =
                decode_figure("decode_batch_1_logprobs", batch, 1e3 * *lp_s, floor_ms);
          }
        }
        if (auto tl = persistent_timeline(b, c.num_layers); !tl.is_null()) {
          j["persistent_timeline_b1"] = tl;
        }
      }
    }
    // Prefill of one sequence.
    for (int n : {512, 2048, 8192}) {
      if (!want("prefill")) break;
      std::vector<double> t;
      for (int r = 0; r < 2 + repeats; ++r) {
        Batch seqs(b, c.vocab_size);
        const auto t0 = Clock::now();
        if (auto st = seqs.add(1, n, 8192); !st.ok()) {
          std::fprintf(stderr, "prefill %d: %s\n", n, st.message().c_str());
          return 1;
        }
        if (r >= 2) t.push_back(seconds_since(t0));
      }
      const double ms = 1e3 * median(t);
      const double fl = 2.0 * params * n + 2.0 * c.num_layers * c.q_dim() * double(n) * n;
      const double floor_ms = 1e3 * fl / flops;
      const std::string key = "prefill_" + std::to_string(n);
      figures[key] = {
          {"ms", ms}, {"flops", fl}, {"floor_ms", floor_ms}, {"fraction_of_floor", floor_ms / ms}};
      std::printf("%-28s %9.3f ms   floor %.3f ms (%.0f%%)\n", key.c_str(), ms, floor_ms,
                  100.0 * floor_ms / ms);
    }
  }
  // Decode over a shared 2048-position prefix (a resident cartridge) with a
  // 64-token question of each sequence's own after it: shared-prefix
  // attention before the decode splits (the default), beside them on a side
  // stream (CARTSERVE_CASCADE_SIDE_STREAM), and off (--cascade-min-prefix 0).
  struct CartVariant {
    int min_prefix;
    const char* side_stream;
    const char* suffix;
  };
  for (const CartVariant v : {CartVariant{256, "0", ""}, CartVariant{256, "1", "_side_stream"},
                              CartVariant{0, "0", "_no_cascade"}}) {
    if (!want("cartdecode")) break;
    const ScopedEnv side("CARTSERVE_CASCADE_SIDE_STREAM", v.side_stream);
    ServeOptions oc = o;
    oc.cascade_min_prefix = v.min_prefix;
    auto backend = make_backend(m, oc);
    if (!backend.ok()) {
      std::fprintf(stderr, "error: %s\n", backend.status().message().c_str());
      return 1;
    }
    constexpr int kPrefix = 2048, kOwn = 64;
    for (const int batch : {1, 16, 64, 256}) {
      Batch seqs(**backend, c.vocab_size);
      auto shared = seqs.shared_prefix(kPrefix, 8192);
      Status st = shared.ok() ? seqs.add_after(*shared, batch, kOwn, 8192) : shared.status();
      if (!st.ok()) {
        std::fprintf(stderr, "cartridge decode setup: %s\n", st.message().c_str());
        return 1;
      }
      auto step_s = seqs.median_step(10, 20 * repeats);
      if (!step_s.ok()) {
        std::fprintf(stderr, "cartridge decode: %s\n", step_s.status().message().c_str());
        return 1;
      }
      const double ms = 1e3 * *step_s;
      // The prefix's KV read once, each sequence's own positions once.
      const double floor_ms =
          1e3 * (weight_bytes + (kPrefix + batch * (kOwn + 10.0)) * kv_token_bytes) / copy_bw;
      const std::string on_key = "decode_cartridge_2048_batch_" + std::to_string(batch);
      const std::string key = on_key + v.suffix;
      figures[key] = decode_figure(key, batch, ms, floor_ms);
      if (v.min_prefix == 0) {
        for (const std::string& k : {on_key, on_key + "_side_stream"}) {
          if (figures.contains(k))
            figures[k]["speedup_vs_no_cascade"] = ms / figures[k]["ms_per_step"].get<double>();
        }
      }
    }
  }
  // A 2048-token cartridge's KV loaded into blocks by the backend from
  // page-locked host memory (what the host tier holds), staged (DMA, then an
  // import kernel) and direct (the kernel reads the mapped host memory;
  // CARTSERVE_KV_LOAD_DIRECT), against plain DMA of the same bytes (one copy
  // per tensor): the promotion's bus rate without the engine around it.
  if (want("ttft") || want("transfer")) {
    json loads = json::object();
    for (const bool direct : {false, true}) {
      const ScopedEnv load_env("CARTSERVE_KV_LOAD_DIRECT", direct ? "1" : "0");
      auto backend = make_backend(m, o);
      if (!backend.ok()) {
        std::fprintf(stderr, "error: %s\n", backend.status().message().c_str());
        return 1;
      }
      Backend& b = **backend;
      constexpr int kTokens = 2048;
      const size_t tensor_bytes = static_cast<size_t>(c.num_kv_heads) * kTokens * c.head_dim * 2;
      HostKv kv;
      kv.dtype = DType::kBF16;
      kv.num_tokens = kTokens;
      std::vector<std::shared_ptr<void>> keep;  // [layers * 2] pinned [heads, tokens, dim]
      for (int l = 0; l < 2 * c.num_layers; ++l) {
        std::shared_ptr<void> p = b.host_buffer(tensor_bytes);
        if (!p) {
          std::fprintf(stderr, "transfer: no page-locked host memory\n");
          return 1;
        }
        std::memset(p.get(), 0x3c, tensor_bytes);  // finite bf16 (0.0115)
        (l % 2 ? kv.values : kv.keys).push_back(p.get());
        keep.push_back(std::move(p));
      }
      std::vector<int32_t> ids;
      for (int i = 0; i < kTokens / b.kv_spec().block_size; ++i)
        ids.push_back(1 + i);
      const KvBlockList blocks = KvBlockList::whole(std::move(ids));
      std::vector<double> load_s, dma_s;
      void* dst = nullptr;
      if (cudaMalloc(&dst, tensor_bytes) != cudaSuccess) return 1;
      for (int r = 0; r < repeats + 1; ++r) {
        auto t0 = Clock::now();
        auto id = b.start_kv_load(kv, blocks);
        const Status st = id.ok() ? b.wait_transfer(*id) : id.status();
        if (!st.ok()) {
          std::fprintf(stderr, "transfer: %s\n", st.message().c_str());
          return 1;
        }
        if (r > 0) load_s.push_back(seconds_since(t0));
        t0 = Clock::now();
        for (const auto& p : keep)
          cudaMemcpyAsync(dst, p.get(), tensor_bytes, cudaMemcpyHostToDevice, nullptr);
        cudaDeviceSynchronize();
        if (r > 0) dma_s.push_back(seconds_since(t0));
      }
      cudaFree(dst);
      const double bytes = static_cast<double>(keep.size() * tensor_bytes);
      const double load_gbs = bytes / median(load_s) / 1e9;
      const double dma_gbs = bytes / median(dma_s) / 1e9;
      const char* mode = direct ? "direct" : "staged";
      loads[mode] = {{"bytes", bytes},
                     {"ms", 1e3 * median(load_s)},
                     {"gb_per_s", load_gbs},
                     {"plain_dma_gb_per_s", dma_gbs},
                     {"fraction_of_dma", load_gbs / dma_gbs}};
      std::printf("kv load 2048 tokens (%s) %9.3f ms   %.1f GB/s (plain DMA %.1f GB/s)\n", mode,
                  1e3 * median(load_s), load_gbs, dma_gbs);
    }
    figures["kv_load_2048_tokens_from_pinned_host"] = loads;
  }
  // Cartridges through the engine: resident, and promoted from the host tier.
  if (want("ttft")) {
    const int kTokens = 2048, kQuestion = 64;
    const std::string path = "/tmp/cartserve_gpu_bench_cartridge.safetensors";
    if (auto st = write_random_cartridge(m, kTokens, path); !st.ok()) {
      std::fprintf(stderr, "cartridge: %s\n", st.message().c_str());
      return 1;
    }
    ServeOptions so = o;
    so.max_num_seqs = 8;
    so.max_model_len = 4096;
    so.max_num_batched_tokens = 4096;
    json cfg = {{"kv_connector", "CartridgeConnector"},
                {"kv_connector_extra_config",
                 {{"cartridges", {{{"cartridge_id", "doc"}, {"path", path}}}}}}};
    so.kv_transfer_config = cfg.dump();
    auto stack = build_serving_stack(m, so);
    if (!stack.ok()) {
      std::fprintf(stderr, "stack: %s\n", stack.status().message().c_str());
      return 1;
    }
    const auto q = random_ids(kQuestion, c.vocab_size, 11);
    (void)ttft(**stack, q, kTokens);  // cold: disk -> host -> blocks
    std::vector<double> resident, promoted, alone;
    for (int r = 0; r < repeats + 1; ++r) {
      resident.push_back(ttft(**stack, q, kTokens));
      alone.push_back(ttft(**stack, random_ids(kQuestion, c.vocab_size, 50 + r), 0));
      (void)(*stack)->cartridges->evict("doc", Tier::kDevice);
      promoted.push_back(ttft(**stack, q, kTokens));
    }
    const double bytes = kTokens * kv_token_bytes;  // bf16 K and V of every layer
    const double res_ms = 1e3 * median(resident), host_ms = 1e3 * median(promoted);
    const double fl = 2.0 * params * kQuestion +
                      4.0 * c.num_layers * c.q_dim() * double(kQuestion) * (kTokens + kQuestion);
    const double floor_ms = 1e3 * std::max(weight_bytes / copy_bw, fl / flops);
    figures["ttft_resident_cartridge_2048_question_64"] = {
        {"ms", res_ms}, {"floor_ms", floor_ms}, {"question_alone_ms", 1e3 * median(alone)}};
    figures["ttft_cartridge_promoted_from_host"] = {
        {"ms", host_ms},
        {"cartridge_bytes", bytes},
        {"promotion_ms", host_ms - res_ms},
        {"promotion_gb_per_s", bytes / ((host_ms - res_ms) / 1e3) / 1e9}};
    std::printf("%-28s %9.3f ms   floor %.3f ms; question alone %.3f ms\n", "ttft resident cart",
                res_ms, floor_ms, 1e3 * median(alone));
    std::printf("%-28s %9.3f ms   promotion %.1f GB/s\n", "ttft promoted from host", host_ms,
                bytes / ((host_ms - res_ms) / 1e3) / 1e9);
  }
  if (j.contains("linear_layers") && j.contains("decode_other_ops") &&
      figures.contains("decode_batch_1"))
    j["decode_b1_budget"] = decode_b1_budget(c, j["linear_layers"], j["decode_other_ops"][0],
                                             figures["decode_batch_1"]["ms_per_step"]);
  if (figures.contains("prefill_8192"))
    j["prefill_8192_budget"] =
        prefill_budget(c, copy_bw, flops, 8192, figures["prefill_8192"]["ms"]);
  j["figures"] = figures;
  std::ofstream(out_path) << j.dump(1);
  return 0;
}
