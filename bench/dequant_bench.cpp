// Dequantization throughput (fp32 MB/s written) per ggml type, one thread and
// the global pool, plus loading every tensor of a GGUF file (default: the
// SmolLM2 test model). Prints one JSON object on stdout.
//   dequant_bench [MODEL.gguf] [--values N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "formats/gguf.h"
#include "formats/gguf_dequant.h"

namespace cs = cartserve;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Random blocks whose fp16 scales (where a format has them) are finite.
std::vector<uint8_t> random_blocks(uint32_t type, int64_t n) {
  const auto tr = *cs::ggml_type_traits(type);
  std::mt19937 rng(42);
  std::vector<uint8_t> buf(static_cast<size_t>(n / tr.block_elems) * tr.block_bytes);
  for (auto& b : buf)
    b = static_cast<uint8_t>(rng());
  if (tr.block_elems > 1) {
    const size_t scale_at = type == static_cast<uint32_t>(cs::GgmlType::kQ6_K) ? 208 : 0;
    for (size_t off = 0; off < buf.size(); off += tr.block_bytes) {
      const uint16_t h = cs::f32_to_fp16(0.01f);
      std::memcpy(&buf[off + scale_at], &h, 2);
    }
  }
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model = std::string(std::getenv("HOME") ? std::getenv("HOME") : "") +
                      "/.cache/cartserve/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  int64_t n = int64_t{1} << 24;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--values" && i + 1 < argc) {
      n = std::max<int64_t>(256, std::atoll(argv[++i]) / 256 * 256);
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: dequant_bench [MODEL.gguf] [--values N]\n");
      return 0;
    } else {
      model = a;
    }
  }
  cs::ThreadPool& pool = cs::ThreadPool::global();
  nlohmann::ordered_json out;
  out["values_per_type"] = n;
  out["threads"] = pool.size();
  nlohmann::ordered_json per_type = nlohmann::ordered_json::object();
  std::vector<float> dst(static_cast<size_t>(n));
  for (cs::GgmlType g :
       {cs::GgmlType::kF32, cs::GgmlType::kF16, cs::GgmlType::kBF16, cs::GgmlType::kQ8_0,
        cs::GgmlType::kQ4_0, cs::GgmlType::kQ4_1, cs::GgmlType::kQ4_K, cs::GgmlType::kQ6_K}) {
    const auto type = static_cast<uint32_t>(g);
    const std::vector<uint8_t> src = random_blocks(type, n);
    double best1 = 1e9, bestp = 1e9;
    for (int rep = 0; rep < 5; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      if (!cs::dequantize(type, src.data(), dst.data(), n).ok()) return 1;
      best1 = std::min(best1, seconds_since(t0));
      t0 = std::chrono::steady_clock::now();
      if (!cs::dequantize_parallel(type, src.data(), dst.data(), n, pool).ok()) return 1;
      bestp = std::min(bestp, seconds_since(t0));
    }
    const double mb = static_cast<double>(n) * 4 / 1e6;
    per_type[cs::ggml_type_name(type)] = {{"mb_per_s_1_thread", mb / best1},
                                          {"mb_per_s_pool", mb / bestp}};
  }
  out["dequantize"] = per_type;

  auto f = cs::GgufFile::open(model);
  if (f.ok()) {
    const auto t0 = std::chrono::steady_clock::now();
    uint64_t bytes_in = 0, bytes_out = 0;
    for (const cs::GgufTensorInfo& t : f->tensors()) {
      auto x = f->load_f32(t);
      if (!x.ok()) {
        std::fprintf(stderr, "%s\n", x.status().to_string().c_str());
        return 1;
      }
      bytes_in += t.nbytes;
      bytes_out += x->nbytes();
    }
    const double s = seconds_since(t0);
    out["model"] = {{"path", model},
                    {"tensors", f->tensors().size()},
                    {"file_mb", bytes_in / 1e6},
                    {"fp32_mb", bytes_out / 1e6},
                    {"seconds", s},
                    {"fp32_mb_per_s", bytes_out / 1e6 / s}};
  } else {
    out["model"] = {{"error", f.status().to_string()}};
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
