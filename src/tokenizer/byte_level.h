// GPT-2's reversible byte <-> character mapping ("byte-level" BPE): every
// byte becomes one printable code point (0x21..0x7E, 0xA1..0xAC and 0xAE..0xFF
// map to themselves; the other 68 bytes to U+0100.. in order), so a vocabulary
// of strings can hold arbitrary bytes. ' ' is 'Ġ' (U+0120), '\n' is 'Ċ'.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace cartserve::byte_level {

// Code point that stands for byte b.
char32_t byte_to_char(uint8_t b);

// The byte-level form of raw bytes (each byte -> its character, UTF-8 encoded).
std::string encode(std::string_view bytes);

// Inverse of encode() as HF's ByteLevel decoder does it per token: when every
// character of `text` is a mapped one, the bytes they stand for; otherwise
// (an added token such as "<|im_start|>" with a space, or non-byte characters)
// the token's own UTF-8 text.
std::string decode_token(std::string_view text);

}  // namespace cartserve::byte_level
