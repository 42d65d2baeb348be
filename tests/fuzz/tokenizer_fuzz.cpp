// Tokenizers on arbitrary bytes (invalid UTF-8 included): encode with and
// without special tokens, decode of the ids and of arbitrary ids, and the
// streaming detokenizer. Properties: ids in range; the streaming
// detokenizer's output is valid UTF-8 and equals decode() of the same ids.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

using namespace cartserve;

namespace {

std::vector<std::unique_ptr<Tokenizer>> g_tokenizers;

void add(Result<Tokenizer> t, const std::string& what) {
  if (!t.ok()) {
    fprintf(stderr, "tokenizer_fuzz: %s: %s\n", what.c_str(), t.status().to_string().c_str());
    std::abort();
  }
  g_tokenizers.push_back(std::make_unique<Tokenizer>(std::move(t).value()));
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1f) : n == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t k = 1; k < n; ++k) {
      const auto d = static_cast<uint8_t>(s[i + k]);
      if ((d >> 6) != 2) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  // Always: the committed tiny byte-level BPE and SentencePiece-style BPE
  // (tests/fixtures). When present (scripts/setup.sh fetches them): SmolLM2's,
  // Llama 3's and Llama 2's (SentencePiece) real vocabularies.
  const std::string dir = fuzz::source_dir() + "/tests/fixtures/model/tiny-llama/";
  auto json = read_file(dir + "tokenizer.json");
  if (!json.ok()) std::abort();
  HfTokenizerConfig cfg;
  cfg.bos_token = "<|bos|>";
  cfg.eos_token = "<|eos|>";
  add(Tokenizer::from_hf_json(*json, cfg), "tiny-llama");
  // SentencePiece-style: byte fallback + Metaspace (tiny-mistral).
  auto spm = read_file(fuzz::source_dir() + "/tests/fixtures/model/tiny-mistral/tokenizer.json");
  if (!spm.ok()) std::abort();
  add(Tokenizer::from_hf_json(*spm), "tiny-mistral");
  std::string cache;
  if (const char* c = std::getenv("CARTSERVE_CACHE")) {
    cache = c;
  } else if (const char* h = std::getenv("HOME")) {
    cache = std::string(h) + "/.cache/cartserve";
  }
  for (const char* f :
       {"/models/SmolLM2-135M-Instruct.Q4_1.gguf", "/ref/vocab/ggml-vocab-llama-bpe.gguf",
        "/ref/vocab/ggml-vocab-llama-spm.gguf"}) {
    const std::string path = cache + f;
    if (!std::filesystem::exists(path)) continue;
    auto g = GgufFile::open(path);
    if (!g.ok()) continue;
    auto data = read_gguf_tokenizer_data(*g);
    if (data.ok()) add(Tokenizer::from_gguf(*data), path);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Tokenizer& tok = *g_tokenizers[data[0] % g_tokenizers.size()];
  const bool special = data[0] & 0x80;
  const std::string_view text = fuzz::as_text(data + 1, size - 1);
  const std::vector<int32_t> ids = tok.encode(text, special);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
  }
  const std::string decoded = tok.decode(ids, false);
  if (!valid_utf8(decoded)) __builtin_trap();
  // The streaming detokenizer emits exactly what decode() gives, in pieces
  // that are each valid UTF-8.
  StreamingDetokenizer stream(tok, /*skip_special=*/false, /*at_text_start=*/true);
  std::string pieces;
  for (int32_t id : ids) {
    const std::string p = stream.push(id);
    if (!valid_utf8(p)) __builtin_trap();
    pieces += p;
  }
  pieces += stream.flush();
  if (pieces != decoded) __builtin_trap();
  // Arbitrary ids (the bytes as little-endian 16-bit values), in range or not
  // for small vocabularies: decode must not over-read.
  std::vector<int32_t> raw;
  for (size_t i = 1; i + 1 < size; i += 2) {
    uint16_t v;
    std::memcpy(&v, data + i, 2);
    raw.push_back(static_cast<int32_t>(v % static_cast<uint32_t>(tok.vocab_size())));
  }
  const std::string d2 = tok.decode(raw, data[0] & 0x40);
  if (!valid_utf8(d2)) __builtin_trap();
  return 0;
}
