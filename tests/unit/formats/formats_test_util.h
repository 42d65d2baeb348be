// Helpers for the formats tests: fixture JSON, whole-file bytes, and a tiny
// GGUF byte builder for hand-made (mostly malformed) files.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>

#include "test_util.h"

namespace cartserve::testing {

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline nlohmann::json load_json(const std::string& path) {
  return nlohmann::json::parse(slurp(path));
}

// Little-endian byte string builder.
class Bytes {
 public:
  Bytes& raw(std::string_view s) {
    s_.append(s);
    return *this;
  }
  template <typename T>
  Bytes& le(T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    s_.append(b, sizeof(T));
    return *this;
  }
  Bytes& u8(uint8_t v) { return le(v); }
  Bytes& u32(uint32_t v) { return le(v); }
  Bytes& u64(uint64_t v) { return le(v); }
  Bytes& f32(float v) { return le(v); }
  // GGUF string: u64 length + bytes.
  Bytes& str(std::string_view v) {
    u64(v.size());
    return raw(v);
  }
  Bytes& pad_to(size_t align, char c = '\0') {
    while (s_.size() % align)
      s_.push_back(c);
    return *this;
  }
  Bytes& zeros(size_t n) {
    s_.append(n, '\0');
    return *this;
  }
  size_t size() const { return s_.size(); }
  const std::string& str() const { return s_; }

 private:
  std::string s_;
};

// GGUF value type ids (GgufValue::Type) used by the builders.
enum : uint32_t {
  kGU8 = 0,
  kGI8 = 1,
  kGU32 = 4,
  kGI32 = 5,
  kGF32 = 6,
  kGBool = 7,
  kGString = 8,
  kGArray = 9,
  kGU64 = 10,
};

// Header of a GGUF file: magic, version, counts.
inline Bytes gguf_header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
  Bytes b;
  b.raw("GGUF").u32(version).u64(n_tensors).u64(n_kv);
  return b;
}

// One tensor info record.
inline void gguf_tensor_info(Bytes& b, std::string_view name, std::initializer_list<uint64_t> ne,
                             uint32_t type, uint64_t offset) {
  b.str(name).u32(static_cast<uint32_t>(ne.size()));
  for (uint64_t d : ne)
    b.u64(d);
  b.u32(type).u64(offset);
}

// A valid GGUF: one u32 key, one F32 tensor [ne0] at offset 0, data = 0..ne0-1.
inline std::string tiny_gguf(uint64_t ne0 = 8) {
  Bytes b = gguf_header(1, 1);
  b.str("general.architecture").u32(kGString).str("llama");
  gguf_tensor_info(b, "w", {ne0}, 0, 0);
  b.pad_to(32);
  for (uint64_t i = 0; i < ne0; ++i)
    b.f32(static_cast<float>(i));
  return b.str();
}

}  // namespace cartserve::testing
