// The few Unicode character properties the tokenizer tests outside regexes,
// defined as HF `tokenizers` (Rust) defines them.
#pragma once

namespace cartserve::unicode {

// Rust char::is_numeric: general category Nd, Nl or No (Digits pre-tokenizer).
bool is_numeric(char32_t cp);
// Rust char::is_whitespace / regex \s: the White_Space property.
bool is_white_space(char32_t cp);
// Rust regex \w (added tokens' single_word): alphabetic, marks, Nd, Pc and the
// join controls. Alphabetic is approximated by categories L* and Nl (Rust also
// counts the few Other_Alphabetic marks, which M* covers here).
bool is_word_char(char32_t cp);

}  // namespace cartserve::unicode
