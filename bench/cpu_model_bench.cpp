// CPU prefill and decode throughput of our backend on its default path
// (--dtype auto: a GGUF's quantized matrices kept, kernels/quant_ops.h), again
// with bf16 weight matrices (--dtype bfloat16) and, with --fp32, fp32 ones,
// with the physical floors measured in the same run on the same machine:
//  - streaming read bandwidth (multi-threaded reduction over 256 MiB) and
//    copy bandwidth (memcpy, bytes read + written);
//  - BLAS sgemm rate (1024^3).
// Floors (the best any implementation could do on this machine):
//  - decode step >= max(bytes read / read bandwidth, FLOPs / sgemm rate),
//    where bytes = the weights touched per step (every linear weight and the
//    LM head; not the embedding table unless it is the tied LM head) plus the
//    KV of every sequence. Byte counts are reported for OUR weights (as
//    loaded: quantized, bf16 or fp32 matrices; fp32 KV) and for LLAMA.CPP's (the GGUF's tensors as
//    stored, e.g. Q4_1, and its default f16 KV); each engine is held to its own.
//  - prefill >= FLOPs / sgemm rate (linear layers, causal attention, one
//    LM-head row). llama.cpp computes quantized matmuls with integer dot
//    products that this fp32 rate does not bound; its prefill fraction is
//    printed for scale only.
// Optionally runs llama.cpp's llama-bench on the same GGUF (--llama-bench
// PATH; llama.cpp is built beside this repo, never committed) and reports the
// ratios ours / llama.cpp.
//
// Usage: cpu_model_bench MODEL [--out FILE.json] [--llama-bench PATH] [--threads N]
//                              [--reps N] [--context N] [--decode-steps N]
//                              [--fp32] [--no-bf16] [--decode-only]
#include <cblas.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "core/thread_pool.h"
#include "formats/gguf.h"
#include "model/model.h"
#include "server/serving_stack.h"

using namespace cartserve;
using bench::Clock;
using bench::seconds_since;
using nlohmann::json;

namespace {

// Sorted durations of `reps` timed calls after `warmup` untimed ones.
template <typename F>
std::vector<double> timed(int warmup, int reps, F&& f) {
  for (int i = 0; i < warmup; ++i)
    f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = Clock::now();
    f();
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t;
}

double median(const std::vector<double>& sorted) {
  return sorted[sorted.size() / 2];
}

json machine_facts() {
  json m;
  m["logical_cpus"] = std::thread::hardware_concurrency();
  // The SIMD features that decide which kernels a BLAS or ggml can use.
  static const char* const kSimd[] = {"avx2",        "fma",      "f16c",
                                      "avx512f",     "avx512bw", "avx512_vnni",
                                      "avx512_bf16", "avx_vnni", "amx_tile"};
  std::ifstream cpuinfo("/proc/cpuinfo");
  bool have_model = false, have_flags = false;
  for (std::string line; std::getline(cpuinfo, line) && !(have_model && have_flags);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    if (!have_model && line.rfind("model name", 0) == 0) {
      m["cpu_model"] = line.substr(colon + 2);
      have_model = true;
    } else if (!have_flags && line.rfind("flags", 0) == 0) {
      const std::string flags = " " + line.substr(colon + 1) + " ";
      json simd = json::array();
      for (const char* f : kSimd) {
        if (flags.find(" " + std::string(f) + " ") != std::string::npos) simd.push_back(f);
      }
      m["cpu_simd"] = simd;
      have_flags = true;
    }
  }
  return m;
}

json loadavg() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) != 3) return nullptr;
  return json::array({l[0], l[1], l[2]});
}

// CPU seconds every process on the machine has been busy (incl. steal), from
// /proc/stat; < 0 when unavailable.
double machine_busy_seconds() {
  std::ifstream stat("/proc/stat");
  std::string cpu;
  long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (!(stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal)) {
    return -1;
  }
  return static_cast<double>(user + nice + system + irq + softirq + steal) /
         static_cast<double>(sysconf(_SC_CLK_TCK));
}

// CPU seconds of this process plus its waited-for children (llama-bench).
double own_cpu_seconds() {
  double s = 0;
  for (int who : {RUSAGE_SELF, RUSAGE_CHILDREN}) {
    rusage u{};
    if (getrusage(who, &u) == 0) {
      s += static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
    }
  }
  return s;
}

// How much of the machine other processes took over an interval:
// other_cpu_share = their CPU seconds / (wall seconds x logical CPUs); 0 on a
// quiet machine, large when the interval's figures are suspect.
class CpuAccount {
 public:
  CpuAccount() : t0_(Clock::now()), busy0_(machine_busy_seconds()), own0_(own_cpu_seconds()) {}
  json finish() const {
    const double wall = seconds_since(t0_);
    const double busy = machine_busy_seconds();
    const double own = own_cpu_seconds() - own0_;
    json j = {{"wall_s", wall}, {"own_cpu_s", own}};
    if (busy0_ >= 0 && busy >= 0) {
      const double others = std::max(0.0, busy - busy0_ - own);
      const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
      j["other_cpu_s"] = others;
      j["other_cpu_share"] = others / (wall * cpus);
    }
    return j;
  }

 private:
  Clock::time_point t0_;
  double busy0_, own0_;
};

constexpr size_t kBandwidthBytes = 256u << 20;  // well beyond the last-level cache

// Bytes read + written per second by a multi-threaded memcpy.
double measure_copy_bandwidth() {
  std::vector<char> a(kBandwidthBytes, 1), b(kBandwidthBytes, 2);  // [bytes] each
  auto& pool = ThreadPool::global();
  const auto t = timed(1, 5, [&] {
    pool.parallel_for(
        a.size(), [&](size_t lo, size_t hi) { std::memcpy(b.data() + lo, a.data() + lo, hi - lo); },
        1 << 20);
  });
  return 2.0 * static_cast<double>(a.size()) / t.front();
}

// Bytes read per second by a multi-threaded reduction (what a decode step
// does to its weights).
double measure_read_bandwidth() {
  const size_t n = kBandwidthBytes / sizeof(uint64_t);
  std::vector<uint64_t> a(n);  // [n] words, not zero so the page is really mapped
  for (size_t i = 0; i < n; ++i)
    a[i] = i * 2654435761u;
  auto& pool = ThreadPool::global();
  std::vector<uint64_t> sinks(pool.size() * 64, 0);
  const auto t = timed(1, 5, [&] {
    pool.parallel_for(
        n,
        [&](size_t lo, size_t hi) {
          uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          size_t i = lo;
          for (; i + 4 <= hi; i += 4) {
            s0 += a[i];
            s1 += a[i + 1];
            s2 += a[i + 2];
            s3 += a[i + 3];
          }
          for (; i < hi; ++i)
            s0 += a[i];
          sinks[(lo / (1 << 17)) % sinks.size()] += s0 ^ s1 ^ s2 ^ s3;
        },
        1 << 17);
  });
  uint64_t all = 0;
  for (uint64_t s : sinks)
    all ^= s;
  if (all == 42) std::fprintf(stderr, " ");  // keeps the reduction alive
  return static_cast<double>(n * sizeof(uint64_t)) / t.front();
}

double measure_sgemm_flops() {
  const int m = 1024;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> a(static_cast<size_t>(m) * m), b(a.size()), c(a.size());  // [m, m] each
  for (auto& x : a)
    x = d(rng);
  for (auto& x : b)
    x = d(rng);
  const auto t = timed(1, 5, [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, m, 1.f, a.data(), m, b.data(), m,
                0.f, c.data(), m);
  });
  return 2.0 * m * m * static_cast<double>(m) / t.front();
}

std::vector<int32_t> random_tokens(int n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(100, vocab - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));  // [n]
  for (auto& t : v)
    t = d(rng);
  return v;
}

// What one forward pass costs in the ideal: bytes that must be read and
// FLOPs that must be done.
struct ModelCosts {
  double linear_params = 0;     // every layer's projections (not norms, not embeddings)
  double lm_head_params = 0;    // vocab * hidden
  double ours_step_bytes = 0;   // our weights (default path) read by one decode step
  double gguf_step_bytes = 0;   // llama.cpp's (GGUF as stored) weights read by one step
  double gguf_total_bytes = 0;  // every tensor in the GGUF
  double kv_bytes_per_token_fp32 = 0;
  double kv_bytes_per_token_f16 = 0;
  std::string gguf_types;  // "Q4_1 x 211, F32 x 61, ..."

  // Causal attention over `ctx0` earlier tokens for `n` new ones: QK^T and PV.
  double attention_flops(const ModelConfig& c, double n, double ctx0) const {
    const double pairs = n * ctx0 + n * (n + 1) / 2;
    return 4.0 * c.num_layers * c.q_dim() * pairs;
  }
  // `n` prompt tokens after `ctx0` cached ones; logits of the last row only.
  double prefill_flops(const ModelConfig& c, int n, int ctx0 = 0) const {
    return 2.0 * n * linear_params + attention_flops(c, n, ctx0) + 2.0 * lm_head_params;
  }
  // One decode step of `batch` sequences at context `ctx`.
  double decode_flops(const ModelConfig& c, int batch, int ctx) const {
    return batch * (2.0 * (linear_params + lm_head_params) + attention_flops(c, 1, ctx));
  }
};

// Weight bytes one decode step reads: every matrix and norm; the embedding
// table is gathered (a few rows), so it counts only when it is also the LM
// head (tied, fp32 or quantized) and then once.
double step_bytes(const Model& model) {
  const ModelWeights& w = model.weights;
  const bool shared = w.lm_head.raw() == w.embed.raw();
  return static_cast<double>(w.nbytes()) - (shared ? 0.0 : static_cast<double>(w.embed.nbytes()));
}

Result<ModelCosts> model_costs(const Model& model, const std::string& path) {
  const ModelConfig& c = model.config;
  ModelCosts k;
  const double h = c.hidden_size;
  k.linear_params =
      static_cast<double>(c.num_layers) *
      (h * c.q_dim() + 2 * h * c.kv_dim() + c.q_dim() * h + 3 * h * c.intermediate_size);
  k.lm_head_params = static_cast<double>(c.vocab_size) * h;
  k.ours_step_bytes = step_bytes(model);
  k.kv_bytes_per_token_fp32 = static_cast<double>(c.kv_bytes_per_token(4));
  k.kv_bytes_per_token_f16 = static_cast<double>(c.kv_bytes_per_token(2));
  if (path.size() < 5 || path.substr(path.size() - 5) != ".gguf") return k;
  CS_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::open(path));
  const bool has_output = gguf.find_tensor("output.weight") != nullptr;
  std::map<std::string, int> types;
  for (const auto& t : gguf.tensors()) {
    k.gguf_total_bytes += static_cast<double>(t.nbytes);
    if (!(has_output && t.name == "token_embd.weight")) {
      k.gguf_step_bytes += static_cast<double>(t.nbytes);
    }
    types[ggml_type_name(t.type)]++;
  }
  for (const auto& [name, count] : types) {
    if (!k.gguf_types.empty()) k.gguf_types += ", ";
    k.gguf_types += name + " x " + std::to_string(count);
  }
  return k;
}

struct Floors {
  double read_bw = 0;  // bytes/s
  double copy_bw = 0;  // bytes/s (read + written)
  double flops = 0;    // sgemm FLOP/s
};

// Floor of one decode step: reading the weights and KV, or the FLOPs,
// whichever takes longer.
json decode_floor(const ModelCosts& k, const ModelConfig& c, const Floors& f, int batch, int ctx,
                  double weight_bytes, double kv_bytes_per_token) {
  const double bytes = weight_bytes + batch * kv_bytes_per_token * ctx;
  const double t_bytes = bytes / f.read_bw;
  const double t_flops = k.decode_flops(c, batch, ctx) / f.flops;
  const double t = std::max(t_bytes, t_flops);
  return json{{"bytes_per_step", bytes},
              {"ms_per_step_bandwidth", 1000 * t_bytes},
              {"ms_per_step_compute", 1000 * t_flops},
              {"bound", t_bytes >= t_flops ? "bandwidth" : "compute"},
              {"tokens_per_s", batch / t}};
}

// The CPU backend (through the runtime seam) with room for `tokens` positions.
Result<std::unique_ptr<Backend>> cpu_backend(const Model& model, int64_t tokens) {
  ServeOptions o;
  o.kv_cache_tokens = tokens;
  return make_backend(model, o);
}

// Prefill of `ids` (one sequence, chunks of 512) on `backend`, logits of the last row.
Status prefill(Backend& backend, const std::vector<int32_t>& ids) {
  const int32_t bs = backend.kv_spec().block_size;
  const auto n = static_cast<int32_t>(ids.size());
  std::vector<int32_t> table;  // [blocks]: 1, 2, 3, ...
  for (int32_t b = 0; b < (n + bs - 1) / bs; ++b)
    table.push_back(1 + b);
  std::vector<float> logits;
  for (int32_t done = 0; done < n;) {
    const int32_t chunk = std::min(512, n - done);
    StepInput in;
    in.max_blocks = static_cast<int32_t>(table.size());
    const int32_t first =
        in.append_sequence(table, bs, done,
                           std::span<const int32_t>(ids).subspan(static_cast<size_t>(done),
                                                                 static_cast<size_t>(chunk)));
    if (done + chunk == n) in.samples.push_back(SampleRow{first + chunk - 1});
    CS_RETURN_IF_ERROR(backend.logits(in, logits));
    done += chunk;
  }
  return {};
}

// Batched decode: `batch` sequences each with `ctx` tokens of context; the
// duration of each of `steps` steps (after one untimed step), sorted.
Result<std::vector<double>> decode_steps(const Model& model, int batch, int ctx, int steps) {
  const int bs = 16;
  const int blocks_per_seq = (ctx + steps + 1 + bs - 1) / bs;
  CS_ASSIGN_OR_RETURN(auto backend,
                      cpu_backend(model, static_cast<int64_t>(batch) * blocks_per_seq * bs));
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(batch));  // [batch][blocks_per_seq]
  for (int s = 0; s < batch; ++s) {
    for (int b = 0; b < blocks_per_seq; ++b)
      tables[s].push_back(1 + s * blocks_per_seq + b);
  }
  std::vector<float> logits;         // [rows, vocab]
  for (int s = 0; s < batch; ++s) {  // prefill every sequence (not timed)
    StepInput in;
    in.max_blocks = blocks_per_seq;
    in.append_sequence(tables[s], bs, 0, random_tokens(ctx, model.config.vocab_size, 100 + s));
    in.samples.push_back(SampleRow{ctx - 1});
    CS_RETURN_IF_ERROR(backend->logits(in, logits));
  }
  std::vector<double> times;
  for (int step = 0; step <= steps; ++step) {
    StepInput in;
    in.max_blocks = blocks_per_seq;
    const int pos = ctx + step;
    for (int s = 0; s < batch; ++s) {
      const int32_t token = 1000 + s + step;
      in.append_sequence(tables[s], bs, pos, std::span<const int32_t>(&token, 1));
      in.samples.push_back(SampleRow{s});
    }
    const auto t0 = Clock::now();
    CS_RETURN_IF_ERROR(backend->logits(in, logits));
    if (step > 0) times.push_back(seconds_since(t0));  // step 0 warms up
  }
  std::sort(times.begin(), times.end());
  return times;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char ch : s)
    q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

// llama-bench: prefill 128 and 512 at depth 0, decode 64 tokens at depth 0
// and at `ctx` (our decode cases run at context `ctx`).
json run_llama_bench(const std::string& exe, const std::string& model, int threads, int ctx) {
  const std::string cmd = shell_quote(exe) + " -m " + shell_quote(model) +
                          " -p 128,512 -n 64 -d 0," + std::to_string(ctx) + " -r 5 -t " +
                          std::to_string(threads) + " -o json 2>/dev/null";
  json res = {{"command", cmd}};
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    res["error"] = "cannot run " + exe;
    return res;
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0)
    out.append(buf, n);
  const int rc = pclose(p);
  json j = json::parse(out, nullptr, false);
  if (rc != 0 || j.is_discarded() || !j.is_array()) {
    res["error"] = "llama-bench failed (exit " + std::to_string(rc) + ")";
    res["output"] = out.substr(0, 2000);
    return res;
  }
  json tests = json::array();
  for (const auto& e : j) {
    const int np = e.value("n_prompt", 0), ng = e.value("n_gen", 0), nd = e.value("n_depth", 0);
    std::string name = np > 0 ? "pp" + std::to_string(np) : "tg" + std::to_string(ng);
    if (nd > 0) name += " @ d" + std::to_string(nd);
    tests.push_back({{"test", name},
                     {"n_prompt", np},
                     {"n_gen", ng},
                     {"n_depth", nd},
                     {"tokens_per_s", e.value("avg_ts", 0.0)},
                     {"stddev_tokens_per_s", e.value("stddev_ts", 0.0)},
                     {"model_type", e.value("model_type", "")},
                     {"model_size_bytes", e.value("model_size", 0.0)},
                     {"n_threads", e.value("n_threads", 0)},
                     {"type_k", e.value("type_k", "")},
                     {"flash_attn", e.value("flash_attn", json())},
                     {"build_commit", e.value("build_commit", "")},
                     {"cpu_info", e.value("cpu_info", "")}});
  }
  res["tests"] = tests;
  return res;
}

const json* find_test(const json& baseline, const std::string& name) {
  if (!baseline.contains("tests")) return nullptr;
  for (const auto& t : baseline["tests"]) {
    if (t["test"] == name) return &t;
  }
  return nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"CPU prefill/decode tokens/s (default, bf16 and fp32 weights) with measured floors"};
  bool with_fp32 = false, no_bf16 = false, decode_only = false;
  app.add_flag("--fp32", with_fp32, "also run with fp32 weight matrices (--dtype float32)");
  app.add_flag("--no-bf16", no_bf16, "skip the bf16 weight matrices (--dtype bfloat16)");
  app.add_flag("--decode-only", decode_only, "skip the prefill cases");
  std::string model_path, out_path = "cpu_model_bench.json", llama_bench;
  int threads = 0, reps = 5, ctx = 128, steps = 16;
  app.add_option("model", model_path, "GGUF file or Hugging Face folder")->required();
  app.add_option("--out", out_path, "JSON output file");
  app.add_option("--llama-bench", llama_bench, "llama.cpp's llama-bench: run it as the baseline")
      ->check(CLI::ExistingFile);
  app.add_option("--threads", threads, "threads (0: CARTSERVE_THREADS or all cores)")
      ->check(CLI::Range(0, 1024));
  app.add_option("--reps", reps, "timed repetitions of each prefill case")
      ->check(CLI::Range(1, 100));
  app.add_option("--context", ctx, "context of the decode cases")->check(CLI::Range(1, 1 << 16));
  app.add_option("--decode-steps", steps, "timed decode steps per case")
      ->check(CLI::Range(1, 4096));
  CLI11_PARSE(app, argc, argv);

  if (threads > 0) {  // before the first use of the global pool
    setenv("CARTSERVE_THREADS", std::to_string(threads).c_str(), 1);
    openblas_set_num_threads(threads);
  }
  const int pool_threads = static_cast<int>(ThreadPool::global().size());
  const int blas_threads = openblas_get_num_threads();
  if (threads == 0) threads = pool_threads;
  const json load_start = loadavg();

  LoadOptions opts;
  opts.progress = false;
  opts.keep_quantized = true;  // the default path (--dtype auto)
  auto loaded = load_model(model_path, opts);
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", loaded.status().to_string().c_str());
    return 1;
  }
  const Model& model = **loaded;
  const ModelConfig& cfg = model.config;
  auto costs_or = model_costs(model, model_path);
  if (!costs_or.ok()) {
    std::fprintf(stderr, "error: %s\n", costs_or.status().to_string().c_str());
    return 1;
  }
  const ModelCosts& costs = *costs_or;
  const CpuAccount ours_account;
  Floors fl;
  fl.read_bw = measure_read_bandwidth();
  fl.copy_bw = measure_copy_bandwidth();
  fl.flops = measure_sgemm_flops();
  std::printf(
      "floors: read %.1f GB/s, copy %.1f GB/s (read+written), sgemm %.1f GFLOP/s; "
      "%d threads (BLAS %d, %s)\n",
      fl.read_bw / 1e9, fl.copy_bw / 1e9, fl.flops / 1e9, pool_threads, blas_threads,
      openblas_get_corename());

  json results = json::array();
  std::printf("%-38s %10s %16s %11s %9s\n", "case (ours; default unless named)", "tok/s",
              "min..max", "floor tok/s", "of floor");
  auto add = [&](const std::string& name, const std::vector<double>& tok_s_sorted, json floor,
                 json extra) {
    const double med = median(tok_s_sorted);
    const double floor_tok_s = floor["tokens_per_s"].get<double>();
    std::printf("%-38s %10.1f %7.1f..%-8.1f %11.1f %8.1f%%\n", name.c_str(), med,
                tok_s_sorted.front(), tok_s_sorted.back(), floor_tok_s, 100.0 * med / floor_tok_s);
    extra["case"] = name;
    extra["tokens_per_s"] = med;
    extra["tokens_per_s_min"] = tok_s_sorted.front();
    extra["tokens_per_s_max"] = tok_s_sorted.back();
    extra["samples"] = tok_s_sorted.size();
    extra["floor"] = floor;
    extra["fraction_of_floor"] = med / floor_tok_s;
    results.push_back(extra);
  };

  // Prefill and decode cases of one model; `label` prefixes the case names.
  auto run_cases = [&](const Model& m, const std::string& label, double step_bytes) -> bool {
    for (int n : {128, 512}) {
      if (decode_only) break;
      const auto ids = random_tokens(n, cfg.vocab_size, 7);
      auto backend = cpu_backend(m, n);
      bool ok = backend.ok();
      const auto t = timed(1, reps, [&] { ok = ok && prefill(**backend, ids).ok(); });
      if (!ok) {
        std::fprintf(stderr, "error: prefill of %d tokens failed\n", n);
        return false;
      }
      std::vector<double> tok_s;
      for (auto it = t.rbegin(); it != t.rend(); ++it)
        tok_s.push_back(n / *it);
      const double flops = costs.prefill_flops(cfg, n);
      add(label + "prefill " + std::to_string(n), tok_s,
          json{{"flops", flops}, {"bound", "compute"}, {"tokens_per_s", n * fl.flops / flops}},
          json{{"kind", "prefill"}, {"tokens", n}});
    }
    for (int batch : {1, 4, 16}) {
      auto t = decode_steps(m, batch, ctx, steps);
      if (!t.ok()) {
        std::fprintf(stderr, "error: decode batch %d: %s\n", batch, t.status().to_string().c_str());
        return false;
      }
      std::vector<double> tok_s;
      for (auto it = t->rbegin(); it != t->rend(); ++it)
        tok_s.push_back(batch / *it);
      const int mid_ctx = ctx + steps / 2;
      add(label + "decode batch " + std::to_string(batch) + " ctx " + std::to_string(ctx), tok_s,
          decode_floor(costs, cfg, fl, batch, mid_ctx, step_bytes, costs.kv_bytes_per_token_fp32),
          json{{"kind", "decode"},
               {"batch", batch},
               {"context", ctx},
               {"ms_per_step", 1000.0 * median(*t)}});
    }
    return true;
  };
  if (!run_cases(model, "", costs.ours_step_bytes)) return 1;
  // The same with bf16 weight matrices (--dtype bfloat16), and fp32 ones.
  opts.keep_quantized = false;
  double bf16_step_bytes = 0, fp32_step_bytes = 0;
  for (DType dt : {DType::kBF16, DType::kF32}) {
    if ((dt == DType::kBF16 && no_bf16) || (dt == DType::kF32 && !with_fp32)) continue;
    opts.weight_dtype = dt;
    auto other = load_model(model_path, opts);
    if (!other.ok()) {
      std::fprintf(stderr, "error: %s\n", other.status().to_string().c_str());
      return 1;
    }
    const double bytes = step_bytes(**other);
    (dt == DType::kBF16 ? bf16_step_bytes : fp32_step_bytes) = bytes;
    if (!run_cases(**other, dt == DType::kBF16 ? "bf16 weights: " : "fp32 weights: ", bytes)) {
      return 1;
    }
  }

  const json ours_cpu = ours_account.finish();
  std::printf("other processes took %.0f%% of the machine meanwhile\n",
              100.0 * ours_cpu.value("other_cpu_share", 0.0));
  json out = {
      {"benchmark", "cpu_model_bench"},
      {"cpu_accounting", {{"ours", ours_cpu}}},
      {"machine", machine_facts()},
      {"threads", {{"pool", pool_threads}, {"blas", blas_threads}}},
      {"blas_core", openblas_get_corename()},
      {"model",
       {{"path", model_path},
        {"id", cfg.model_id},
        {"source_dtype", cfg.source_dtype},
        {"parameters", static_cast<double>(cfg.num_parameters())},
        {"linear_parameters", costs.linear_params},
        {"lm_head_parameters", costs.lm_head_params},
        {"tied_embeddings", cfg.tie_word_embeddings},
        {"ours_default_bytes_per_decode_step", costs.ours_step_bytes},
        {"ours_default_weight_bytes", static_cast<double>(model.weights.nbytes())},
        {"ours_bf16_weights_bytes_per_decode_step", bf16_step_bytes},
        {"ours_fp32_weights_bytes_per_decode_step", fp32_step_bytes},
        {"llama_cpp_gguf_bytes_per_decode_step", costs.gguf_step_bytes},
        {"gguf_tensor_bytes", costs.gguf_total_bytes},
        {"gguf_tensor_types", costs.gguf_types},
        {"kv_bytes_per_token_ours_fp32", costs.kv_bytes_per_token_fp32},
        {"kv_bytes_per_token_llama_cpp_f16", costs.kv_bytes_per_token_f16}}},
      {"floors_measured",
       {{"read_bandwidth_bytes_per_s", fl.read_bw},
        {"copy_bandwidth_bytes_per_s", fl.copy_bw},
        {"sgemm_flops_1024", fl.flops}}},
      {"floor_rules",
       "decode: max(bytes/read bandwidth, FLOPs/sgemm rate) per step, bytes = weights read per "
       "step (each engine's own format) + KV of every sequence at the mid context; prefill: "
       "FLOPs (linear layers, causal attention, one LM-head row) / sgemm rate (an fp32 bound; "
       "not a bound for llama.cpp's quantized integer kernels)"},
      {"results", results}};

  if (!llama_bench.empty()) {
    std::printf("running llama-bench (%d threads) ...\n", threads);
    std::fflush(stdout);
    const CpuAccount llama_account;
    json base = run_llama_bench(llama_bench, model_path, threads, ctx);
    out["cpu_accounting"]["llama_bench"] = llama_account.finish();
    std::printf("other processes took %.0f%% of the machine meanwhile\n",
                100.0 * out["cpu_accounting"]["llama_bench"].value("other_cpu_share", 0.0));
    json ratios;
    if (base.contains("tests")) {
      std::printf("%-38s %10s %16s %11s %9s\n", "case (llama.cpp, GGUF)", "tok/s", "stddev",
                  "floor tok/s", "of floor");
      for (auto& t : base["tests"]) {
        const double ts = t["tokens_per_s"].get<double>();
        json floor;
        if (t["n_prompt"].get<int>() > 0) {
          const int n = t["n_prompt"].get<int>();
          const double flops = costs.prefill_flops(cfg, n, t["n_depth"].get<int>());
          floor = {{"flops", flops},
                   {"bound", "compute (fp32 sgemm rate: for scale only)"},
                   {"tokens_per_s", n * fl.flops / flops}};
        } else {
          const int mid = t["n_depth"].get<int>() + t["n_gen"].get<int>() / 2;
          floor = decode_floor(costs, cfg, fl, 1, mid, costs.gguf_step_bytes,
                               costs.kv_bytes_per_token_f16);
          floor["basis"] = "llama.cpp's bytes: GGUF tensors as stored + f16 KV";
        }
        t["floor"] = floor;
        t["fraction_of_floor"] = ts / floor["tokens_per_s"].get<double>();
        std::printf("%-38s %10.1f %16.1f %11.1f %8.1f%%\n", t["test"].get<std::string>().c_str(),
                    ts, t["stddev_tokens_per_s"].get<double>(), floor["tokens_per_s"].get<double>(),
                    100.0 * t["fraction_of_floor"].get<double>());
      }
      auto ratio = [&](const std::string& key, const std::string& our_case,
                       const std::string& their_test) {
        const json* th = find_test(base, their_test);
        for (const auto& r : results) {
          if (r["case"] == our_case && th) {
            ratios[key] = {
                {"ours", our_case},
                {"llama_cpp", their_test},
                {"ratio", r["tokens_per_s"].get<double>() / (*th)["tokens_per_s"].get<double>()}};
            std::printf("ratio %-38s %6.3f\n", key.c_str(), ratios[key]["ratio"].get<double>());
          }
        }
      };
      const std::string dc = "decode batch 1 ctx " + std::to_string(ctx);
      ratio("prefill_128_ours_over_llama_cpp", "prefill 128", "pp128");
      ratio("prefill_512_ours_over_llama_cpp", "prefill 512", "pp512");
      ratio("decode_b1_ours_over_llama_cpp", dc, "tg64 @ d" + std::to_string(ctx));
      ratio("decode_b1_ours_bf16_weights_over_llama_cpp", "bf16 weights: " + dc,
            "tg64 @ d" + std::to_string(ctx));
    } else {
      std::printf("llama-bench: %s\n", base.dump().c_str());
    }
    out["baseline_llama_cpp"] = base;
    out["ratios"] = ratios;
  }
  out["machine"]["loadavg_start"] = load_start;
  out["machine"]["loadavg_end"] = loadavg();
  std::ofstream f(out_path);
  f << out.dump(2) << "\n";
  if (!f) {
    std::fprintf(stderr, "error: cannot write %s\n", out_path.c_str());
    return 1;
  }
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}
