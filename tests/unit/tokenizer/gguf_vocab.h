// Test-only: reads the tokenizer.ggml.* metadata of a GGUF file into
// GgufTokenizerData. Deliberately tiny (header + key/values, sequential reads,
// no tensors); the real reader is src/formats/gguf.*.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace cartserve::testing {

class GgufVocabReader {
 public:
  // Returns false (with error()) if the file cannot be read.
  bool read(const std::string& path, GgufTokenizerData* out) {
    in_.open(path, std::ios::binary);
    if (!in_) return fail("cannot open " + path);
    if (str_n(4) != "GGUF") return fail("not a GGUF file: " + path);
    const uint32_t version = pod<uint32_t>();
    if (version < 2) return fail("GGUF version < 2");
    pod<uint64_t>();  // tensor count
    const uint64_t n_kv = pod<uint64_t>();
    for (uint64_t i = 0; i < n_kv && in_; ++i) {
      const std::string key = str();
      const uint32_t type = pod<uint32_t>();
      if (key == "tokenizer.ggml.model") {
        out->model = str();
      } else if (key == "tokenizer.ggml.pre") {
        out->pre = str();
      } else if (key == "tokenizer.ggml.tokens" || key == "tokenizer.ggml.merges") {
        const uint32_t et = pod<uint32_t>();
        const uint64_t n = pod<uint64_t>();
        if (et != kString) return fail(key + " is not a string array");
        auto& v = key == "tokenizer.ggml.tokens" ? out->tokens : out->merges;
        v.reserve(n);
        for (uint64_t k = 0; k < n && in_; ++k)
          v.push_back(str());
      } else if (key == "tokenizer.ggml.token_type") {
        const uint32_t et = pod<uint32_t>();
        const uint64_t n = pod<uint64_t>();
        if (et != kI32) return fail("token_type is not an i32 array");
        out->token_types.resize(n);
        for (uint64_t k = 0; k < n && in_; ++k)
          out->token_types[k] = pod<int32_t>();
      } else if (key == "tokenizer.ggml.bos_token_id") {
        out->bos_id = static_cast<int32_t>(integer(type));
      } else if (key == "tokenizer.ggml.eos_token_id") {
        out->eos_id = static_cast<int32_t>(integer(type));
      } else if (key == "tokenizer.ggml.eot_token_id") {
        out->eot_id = static_cast<int32_t>(integer(type));
      } else if (key == "tokenizer.ggml.eom_token_id") {
        out->eom_id = static_cast<int32_t>(integer(type));
      } else if (key == "tokenizer.ggml.unknown_token_id") {
        out->unk_id = static_cast<int32_t>(integer(type));
      } else if (key == "tokenizer.ggml.padding_token_id") {
        out->pad_id = static_cast<int32_t>(integer(type));
      } else if (key == "tokenizer.ggml.add_bos_token" && type == kBool) {
        out->add_bos = pod<uint8_t>() != 0;
      } else if (key == "tokenizer.ggml.add_eos_token" && type == kBool) {
        out->add_eos = pod<uint8_t>() != 0;
      } else {
        skip(type);
      }
    }
    if (!in_) return fail("truncated GGUF metadata in " + path);
    return true;
  }
  const std::string& error() const { return error_; }

 private:
  static constexpr uint32_t kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6,
                            kBool = 7, kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12;

  bool fail(const std::string& e) {
    error_ = e;
    return false;
  }
  template <typename T>
  T pod() {
    T v{};
    in_.read(reinterpret_cast<char*>(&v), sizeof(T));
    return v;
  }
  std::string str_n(uint64_t n) {
    if (n > (1u << 30)) {
      in_.setstate(std::ios::failbit);
      return {};
    }
    std::string s(n, '\0');
    in_.read(s.data(), static_cast<std::streamsize>(n));
    return s;
  }
  std::string str() { return str_n(pod<uint64_t>()); }
  int64_t integer(uint32_t type) {
    switch (type) {
      case kU8:
        return pod<uint8_t>();
      case kI8:
        return pod<int8_t>();
      case kU16:
        return pod<uint16_t>();
      case kI16:
        return pod<int16_t>();
      case kU32:
        return pod<uint32_t>();
      case kI32:
        return pod<int32_t>();
      case kU64:
        return static_cast<int64_t>(pod<uint64_t>());
      case kI64:
        return pod<int64_t>();
      default:
        skip(type);
        return -1;
    }
  }
  void skip(uint32_t type) {
    static constexpr uint64_t kSize[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == kString) {
      str();
    } else if (type == kArray) {
      const uint32_t et = pod<uint32_t>();
      const uint64_t n = pod<uint64_t>();
      for (uint64_t k = 0; k < n && in_; ++k)
        skip(et);
    } else if (type < 13) {
      in_.seekg(static_cast<std::streamoff>(kSize[type]), std::ios::cur);
    } else {
      in_.setstate(std::ios::failbit);
    }
  }

  std::ifstream in_;
  std::string error_;
};

}  // namespace cartserve::testing
