// Tokenizer throughput: load time, then encode / decode speed on ~100 KB of
// English (the Debian license texts in /usr/share/common-licenses, or a file
// given with --text), for each GGUF vocabulary given (default: the SmolLM2
// test model and the three reference vocabularies). "cold" is the first
// encode (empty BPE cache), "warm" the best of the following runs. One JSON
// object on stdout.
//   tokenizer_bench [VOCAB.gguf ...] [--text FILE] [--bytes N] [--runs N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "tokenizer/tokenizer.h"

namespace cs = cartserve;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string license_text(size_t want) {
  std::vector<std::filesystem::path> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/usr/share/common-licenses", ec)) {
    if (e.is_regular_file()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::string text;
  while (text.size() < want && !files.empty()) {
    for (const auto& f : files) {
      auto t = cs::read_file(f.string());
      if (t.ok()) text += *t;
      if (text.size() >= want) break;
    }
  }
  text.resize(std::min(text.size(), want));
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string home = std::getenv("HOME") ? std::getenv("HOME") : "";
  const std::string cache = home + "/.cache/cartserve/";
  std::vector<std::string> vocabs;
  std::string text_file;
  size_t bytes = 100 * 1024;
  int runs = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--text" && i + 1 < argc) {
      text_file = argv[++i];
    } else if (a == "--bytes" && i + 1 < argc) {
      bytes = static_cast<size_t>(std::max(1LL, std::atoll(argv[++i])));
    } else if (a == "--runs" && i + 1 < argc) {
      runs = std::max(2, std::atoi(argv[++i]));
    } else if (a == "-h" || a == "--help") {
      std::printf("usage: tokenizer_bench [VOCAB.gguf ...] [--text FILE] [--bytes N] [--runs N]\n");
      return 0;
    } else {
      vocabs.push_back(a);
    }
  }
  if (vocabs.empty()) {
    vocabs = {cache + "models/SmolLM2-135M-Instruct.Q4_1.gguf",
              cache + "ref/vocab/ggml-vocab-llama-bpe.gguf",
              cache + "ref/vocab/ggml-vocab-qwen2.gguf", cache + "ref/vocab/ggml-vocab-gpt-2.gguf"};
  }
  std::string text;
  if (text_file.empty()) {
    text = license_text(bytes);
  } else {
    auto t = cs::read_file(text_file);
    if (!t.ok()) {
      std::fprintf(stderr, "tokenizer_bench: %s\n", t.status().to_string().c_str());
      return 1;
    }
    text = std::move(t).value();
  }

  nlohmann::json out = {{"text_bytes", text.size()},
                        {"text", text_file.empty() ? "/usr/share/common-licenses" : text_file},
                        {"runs", runs},
                        {"results", nlohmann::json::array()}};
  for (const std::string& path : vocabs) {
    auto t0 = std::chrono::steady_clock::now();
    auto file = cs::GgufFile::open(path);
    if (!file.ok()) {
      std::fprintf(stderr, "tokenizer_bench: %s\n", file.status().to_string().c_str());
      return 1;
    }
    auto data = cs::read_gguf_tokenizer_data(*file);
    if (!data.ok()) {
      std::fprintf(stderr, "tokenizer_bench: %s\n", data.status().to_string().c_str());
      return 1;
    }
    auto tok = cs::Tokenizer::from_gguf(*data);
    if (!tok.ok()) {
      std::fprintf(stderr, "tokenizer_bench: %s\n", tok.status().to_string().c_str());
      return 1;
    }
    const double load_s = seconds_since(t0);

    t0 = std::chrono::steady_clock::now();
    std::vector<int32_t> ids = tok->encode(text);
    const double cold_s = seconds_since(t0);
    double warm_s = 1e30, decode_s = 1e30;
    for (int r = 1; r < runs; ++r) {
      t0 = std::chrono::steady_clock::now();
      ids = tok->encode(text);
      warm_s = std::min(warm_s, seconds_since(t0));
      t0 = std::chrono::steady_clock::now();
      const std::string back = tok->decode(ids);
      decode_s = std::min(decode_s, seconds_since(t0));
      if (back != text)
        std::fprintf(stderr, "tokenizer_bench: round trip differs for %s\n", path.c_str());
    }
    const double n = static_cast<double>(ids.size());
    out["results"].push_back({{"vocab", std::filesystem::path(path).filename().string()},
                              {"pre", data->pre},
                              {"load_s", load_s},
                              {"tokens", ids.size()},
                              {"encode_cold_tokens_per_s", n / cold_s},
                              {"encode_warm_tokens_per_s", n / warm_s},
                              {"encode_warm_mb_per_s", text.size() / warm_s / 1e6},
                              {"decode_tokens_per_s", n / decode_s}});
  }
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}
