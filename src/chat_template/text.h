// Python str semantics on UTF-8 text, for the chat template interpreter.
// Jinja2 runs on Python strings: lengths, indices and slices count code
// points, strip()/split() use Unicode whitespace, floats print as repr().
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cartserve::jinja {

// Lossless decoding: a byte that is not part of valid UTF-8 becomes the lone
// surrogate U+DC00+byte (Python's surrogateescape), which encode_utf8 turns
// back into that byte.
std::u32string decode_utf8(std::string_view s);
std::string encode_utf8(std::u32string_view s);
void append_utf8(std::string& out, char32_t cp);
// Python's escape of a code point in a repr: \xhh, \uhhhh or \Uhhhhhhhh.
void append_hex_escape(std::string& out, char32_t c);
size_t utf8_length(std::string_view s);  // code points

// Python str.isspace() for one code point.
bool py_isspace(char32_t cp);

// str.strip/lstrip/rstrip; `chars` nullopt strips whitespace.
std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                     bool right);
// str.split / str.rsplit; `sep` nullopt splits on whitespace runs. maxsplit < 0: no limit.
// An empty `sep` is the caller's error to report (Python raises ValueError).
std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep,
                                  int64_t maxsplit);
std::vector<std::string> py_rsplit(std::string_view s, const std::optional<std::string>& sep,
                                   int64_t maxsplit);
// str.splitlines(keepends=False): \n \r \r\n \v \f \x1c-\x1e \x85 U+2028 U+2029.
std::vector<std::string> py_splitlines(std::string_view s);

// Case mapping: Unicode simple mappings (glibc's C.UTF-8 tables, Unicode 14
// as Python 3.11), plus the full mappings Python applies to ß, ŉ, the Latin
// ligatures ﬀ-ﬆ and İ, the DŽ/LJ/NJ/DZ titlecase forms and final sigma.
// Other multi-character SpecialCasing entries (some Greek and Armenian) map
// one to one here.
std::string py_upper(std::string_view s);       // str.upper()
std::string py_lower(std::string_view s);       // str.lower()
std::string py_capitalize(std::string_view s);  // str.capitalize()
std::string py_title(std::string_view s);       // str.title()
std::string jinja_title(std::string_view s);    // jinja2's `title` filter (splits on [-\s({[<]+)
bool py_islower(std::string_view s);            // str.islower()
bool py_isupper(std::string_view s);            // str.isupper()
bool py_isalpha_cp(char32_t c);                 // str.isalpha() for one code point

// ASCII-only case mapping, for text that is ASCII by construction.
std::string ascii_upper(std::string_view s);
std::string ascii_lower(std::string_view s);

// str.replace(old, new, count); count < 0 replaces all.
std::string py_replace(std::string_view s, std::string_view old_s, std::string_view new_s,
                       int64_t count);
// str.find / str.rfind / str.count on code point indices; -1 when absent.
int64_t py_find(std::string_view s, std::string_view sub, bool from_right);
int64_t py_count(std::string_view s, std::string_view sub);
std::string py_center(std::string_view s, int64_t width);

// repr() of a str and of a float; the JSON spelling of a float (NaN, Infinity).
std::string py_str_repr(std::string_view s);
std::string py_float_repr(double v);
std::string json_float(double v);

// HTML escaping as markupsafe.escape: & < > " '.
std::string html_escape(std::string_view s);

}  // namespace cartserve::jinja
