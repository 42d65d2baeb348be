// UTF-8 helpers for the tokenizer: validation, lossy repair and the
// incomplete-tail test the streaming detokenizer needs.
//
// NOTE: "invalid" follows Unicode's well-formed byte sequences (Table 3-7):
// no overlongs, no surrogates, nothing above U+10FFFF. Lossy repair replaces
// each maximal invalid subpart by one U+FFFD, which is what Rust's
// String::from_utf8_lossy (and so HF `tokenizers`) does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace cartserve::utf8 {

// One step of decoding at s[pos]. len > 0: a valid code point of len bytes.
// len < 0: -len bytes form a maximal invalid subpart. truncated: the bytes
// from pos to the end are a valid but unfinished sequence (len = -(rest)).
struct Decoded {
  char32_t cp = 0;
  int len = 0;
  bool truncated = false;
};
Decoded decode(std::string_view s, size_t pos);

bool is_valid(std::string_view s);

// Copy of s where every maximal invalid subpart becomes U+FFFD.
std::string repair(std::string_view s);

// Number of trailing bytes of s that begin a valid sequence not yet complete
// (0..3). Everything before them can be emitted safely.
size_t incomplete_tail(std::string_view s);

void append(std::string& out, char32_t cp);

// Byte length of the (valid) code point starting with lead byte b.
inline size_t seq_len(uint8_t b) {
  return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

}  // namespace cartserve::utf8
