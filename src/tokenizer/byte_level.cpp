#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace cartserve::byte_level {
namespace {

struct Tables {
  std::array<char32_t, 256> to_char{};  // [byte] -> code point
  std::array<int16_t, 324> to_byte{};   // [code point < 324] -> byte or -1
  Tables() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_char[b] = printable ? static_cast<char32_t>(b) : next++;
      to_byte[to_char[b]] = static_cast<int16_t>(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

char32_t byte_to_char(uint8_t b) {
  return tables().to_char[b];
}

std::string encode(std::string_view bytes) {
  const Tables& t = tables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes)
    utf8::append(out, t.to_char[static_cast<uint8_t>(c)]);
  return out;
}

std::string decode_token(std::string_view text) {
  const Tables& t = tables();
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const utf8::Decoded d = utf8::decode(text, i);
    if (d.len <= 0 || d.cp >= t.to_byte.size() || t.to_byte[d.cp] < 0) return std::string(text);
    out.push_back(static_cast<char>(t.to_byte[d.cp]));
    i += static_cast<size_t>(d.len);
  }
  return out;
}

}  // namespace cartserve::byte_level
