#include "chat_template/text.h"

#include <locale.h>
#include <wctype.h>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "tokenizer/utf8.h"

namespace cartserve::jinja {

namespace {

constexpr char32_t kEscapeBase = 0xDC00;  // surrogateescape: invalid byte b -> U+DC00+b

bool is_continuation(unsigned char c) {
  return (c & 0xC0) == 0x80;
}

// Python's str.isprintable() approximated without the Unicode database: the
// control, format, separator and private-use ranges that show up in practice.
bool is_printable(char32_t c) {
  if (c < 0x20 || c == 0x7F) return false;
  if (c < 0x7F) return true;
  if (c <= 0xA0 || c == 0xAD) return false;
  if (c == 0x1680 || (c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F)) return false;
  if ((c >= 0x205F && c <= 0x206F) || c == 0x3000 || c == 0xFEFF) return false;
  if ((c >= 0xD800 && c <= 0xF8FF) || (c >= 0xFFF9 && c <= 0xFFFB)) return false;
  if (c >= 0xF0000) return false;
  return true;
}

size_t byte_to_cp_index(std::string_view s, size_t byte_pos) {
  return utf8_length(s.substr(0, byte_pos));
}

// Whitespace runs as split() without a separator sees them.
std::vector<std::string> split_whitespace(std::string_view s, int64_t maxsplit) {
  std::u32string cps = decode_utf8(s);
  std::vector<std::string> out;
  size_t i = 0, n = cps.size();
  while (i < n) {
    while (i < n && py_isspace(cps[i]))
      ++i;
    if (i == n) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      out.push_back(encode_utf8(std::u32string_view(cps).substr(i)));
      return out;
    }
    size_t start = i;
    while (i < n && !py_isspace(cps[i]))
      ++i;
    out.push_back(encode_utf8(std::u32string_view(cps).substr(start, i - start)));
  }
  return out;
}

std::vector<std::string> rsplit_whitespace(std::string_view s, int64_t maxsplit) {
  std::u32string cps = decode_utf8(s);
  std::vector<std::string> out;
  size_t i = cps.size();
  while (i > 0) {
    while (i > 0 && py_isspace(cps[i - 1]))
      --i;
    if (i == 0) break;
    if (maxsplit >= 0 && static_cast<int64_t>(out.size()) == maxsplit) {
      out.push_back(encode_utf8(std::u32string_view(cps).substr(0, i)));
      break;
    }
    size_t end = i;
    while (i > 0 && !py_isspace(cps[i - 1]))
      --i;
    out.push_back(encode_utf8(std::u32string_view(cps).substr(i, end - i)));
  }
  std::reverse(out.begin(), out.end());
  return out;
}

}  // namespace

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out.push_back(c);
      ++i;
      continue;
    }
    int len = 0;
    char32_t cp = 0;
    char32_t min_cp = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min_cp = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min_cp = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min_cp = 0x10000;
    }
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if (!is_continuation(cc)) {
        ok = false;
      } else {
        cp = (cp << 6) | (cc & 0x3F);
      }
    }
    ok = ok && cp >= min_cp && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    if (ok) {
      out.push_back(cp);
      i += len;
    } else {
      out.push_back(kEscapeBase + c);
      ++i;
    }
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp >= kEscapeBase + 0x80 && cp <= kEscapeBase + 0xFF) {
    out.push_back(static_cast<char>(cp - kEscapeBase));  // a raw byte of invalid UTF-8
  } else {
    utf8::append(out, cp);
  }
}

void append_hex_escape(std::string& out, char32_t c) {
  char buf[16];
  if (c <= 0xFF) {
    std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
  } else if (c <= 0xFFFF) {
    std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
  } else {
    std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
  }
  out += buf;
}

std::string encode_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s)
    append_utf8(out, cp);
  return out;
}

size_t utf8_length(std::string_view s) {
  bool all_ascii = std::all_of(s.begin(), s.end(), [](char c) { return (c & 0x80) == 0; });
  return all_ascii ? s.size() : decode_utf8(s).size();
}

bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

std::string py_strip(std::string_view s, const std::optional<std::string>& chars, bool left,
                     bool right) {
  std::u32string cps = decode_utf8(s);
  std::u32string set;
  if (chars) set = decode_utf8(*chars);
  auto strip_it = [&](char32_t c) {
    return chars ? set.find(c) != std::u32string::npos : py_isspace(c);
  };
  size_t b = 0, e = cps.size();
  if (left) {
    while (b < e && strip_it(cps[b]))
      ++b;
  }
  if (right) {
    while (e > b && strip_it(cps[e - 1]))
      --e;
  }
  return encode_utf8(std::u32string_view(cps).substr(b, e - b));
}

std::vector<std::string> py_split(std::string_view s, const std::optional<std::string>& sep,
                                  int64_t maxsplit) {
  if (!sep) return split_whitespace(s, maxsplit);
  std::vector<std::string> out;
  size_t pos = 0;
  while (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit) {
    size_t hit = s.find(*sep, pos);
    if (hit == std::string_view::npos || sep->empty()) break;
    out.emplace_back(s.substr(pos, hit - pos));
    pos = hit + sep->size();
  }
  out.emplace_back(s.substr(pos));
  return out;
}

std::vector<std::string> py_rsplit(std::string_view s, const std::optional<std::string>& sep,
                                   int64_t maxsplit) {
  if (!sep) return rsplit_whitespace(s, maxsplit);
  std::vector<std::string> out;
  size_t end = s.size();
  while (!sep->empty() && (maxsplit < 0 || static_cast<int64_t>(out.size()) < maxsplit)) {
    if (end < sep->size()) break;
    size_t hit = s.substr(0, end).rfind(*sep);
    if (hit == std::string_view::npos) break;
    out.emplace_back(s.substr(hit + sep->size(), end - hit - sep->size()));
    end = hit;
  }
  out.emplace_back(s.substr(0, end));
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<std::string> py_splitlines(std::string_view s) {
  std::u32string cps = decode_utf8(s);
  std::vector<std::string> out;
  size_t start = 0, i = 0;
  while (i < cps.size()) {
    char32_t c = cps[i];
    bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) ||
               c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) {
      ++i;
      continue;
    }
    out.push_back(encode_utf8(std::u32string_view(cps).substr(start, i - start)));
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
    ++i;
    start = i;
  }
  if (start < cps.size()) out.push_back(encode_utf8(std::u32string_view(cps).substr(start)));
  return out;
}

std::string ascii_upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  }
  return out;
}

std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  }
  return out;
}

namespace {

// C.UTF-8 carries glibc's Unicode case tables; created once, never freed.
locale_t unicode_locale() {
  static const locale_t loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(0));
  return loc;
}

char32_t simple_upper(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
  if (c >= 0xD800 && c <= 0xDFFF) return c;  // surrogate escapes of invalid bytes
  const locale_t loc = unicode_locale();
  return loc ? static_cast<char32_t>(towupper_l(static_cast<wint_t>(c), loc)) : c;
}

char32_t simple_lower(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  if (c >= 0xD800 && c <= 0xDFFF) return c;
  const locale_t loc = unicode_locale();
  return loc ? static_cast<char32_t>(towlower_l(static_cast<wint_t>(c), loc)) : c;
}

// Cased letters (Lu, Ll, Lt and the like): they have a case mapping or a case.
bool is_cased(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  if (c >= 0xD800 && c <= 0xDFFF) return false;
  const locale_t loc = unicode_locale();
  if (!loc) return false;
  const auto w = static_cast<wint_t>(c);
  return simple_upper(c) != c || simple_lower(c) != c || iswupper_l(w, loc) || iswlower_l(w, loc);
}

bool is_upper_cp(char32_t c) {
  const locale_t loc = unicode_locale();
  if (c < 0x80 || !loc) return c >= 'A' && c <= 'Z';
  return iswupper_l(static_cast<wint_t>(c), loc) || (simple_lower(c) != c && simple_upper(c) == c);
}

bool is_lower_cp(char32_t c) {
  const locale_t loc = unicode_locale();
  if (c < 0x80 || !loc) return c >= 'a' && c <= 'z';
  return iswlower_l(static_cast<wint_t>(c), loc) || (simple_upper(c) != c && simple_lower(c) == c);
}

// SpecialCasing.txt entries Python applies that expand to several code points.
const char32_t* full_upper(char32_t c) {
  switch (c) {
    case 0x00DF:
      return U"SS";
    case 0x0149:
      return U"\u02BCN";
    case 0x01F0:
      return U"J\u030C";
    case 0xFB00:
      return U"FF";
    case 0xFB01:
      return U"FI";
    case 0xFB02:
      return U"FL";
    case 0xFB03:
      return U"FFI";
    case 0xFB04:
      return U"FFL";
    case 0xFB05:
    case 0xFB06:
      return U"ST";
    default:
      return nullptr;
  }
}

const char32_t* full_title(char32_t c) {
  switch (c) {
    case 0x00DF:
      return U"Ss";
    case 0x0149:
      return U"\u02BCN";
    case 0x01F0:
      return U"J\u030C";
    case 0xFB00:
      return U"Ff";
    case 0xFB01:
      return U"Fi";
    case 0xFB02:
      return U"Fl";
    case 0xFB03:
      return U"Ffi";
    case 0xFB04:
      return U"Ffl";
    case 0xFB05:
    case 0xFB06:
      return U"St";
    default:
      return nullptr;
  }
}

void append_upper(std::u32string& out, char32_t c) {
  if (const char32_t* f = full_upper(c)) {
    out += f;
  } else {
    out.push_back(simple_upper(c));
  }
}

void append_title(std::u32string& out, char32_t c) {
  if (const char32_t* f = full_title(c)) {
    out += f;
    return;
  }
  // The digraphs DŽ LJ NJ DZ have a distinct titlecase form.
  if (c >= 0x01C4 && c <= 0x01CC) {
    out.push_back(0x01C5 + 3 * ((c - 0x01C4) / 3));
  } else if (c >= 0x01F1 && c <= 0x01F3) {
    out.push_back(0x01F2);
  } else {
    out.push_back(simple_upper(c));
  }
}

// Lowercases cps[i] into `out`; Σ becomes final ς after a cased letter when
// no cased letter follows (Python's Final_Sigma rule, without skipping
// case-ignorable characters).
void append_lower(std::u32string& out, const std::u32string& cps, size_t i) {
  const char32_t c = cps[i];
  if (c == 0x0130) {  // İ -> i + combining dot above
    out.push_back('i');
    out.push_back(0x0307);
    return;
  }
  if (c == 0x03A3) {
    const bool after_cased = i > 0 && is_cased(cps[i - 1]);
    const bool before_cased = i + 1 < cps.size() && is_cased(cps[i + 1]);
    out.push_back(after_cased && !before_cased ? 0x03C2 : 0x03C3);
    return;
  }
  out.push_back(simple_lower(c));
}

}  // namespace

std::string py_upper(std::string_view s) {
  std::u32string out;
  for (char32_t c : decode_utf8(s))
    append_upper(out, c);
  return encode_utf8(out);
}

std::string py_lower(std::string_view s) {
  const std::u32string cps = decode_utf8(s);
  std::u32string out;
  for (size_t i = 0; i < cps.size(); ++i)
    append_lower(out, cps, i);
  return encode_utf8(out);
}

std::string py_capitalize(std::string_view s) {
  const std::u32string cps = decode_utf8(s);
  std::u32string out;
  for (size_t i = 0; i < cps.size(); ++i) {
    if (i == 0) {
      append_title(out, cps[0]);
    } else {
      append_lower(out, cps, i);
    }
  }
  return encode_utf8(out);
}

std::string py_title(std::string_view s) {
  const std::u32string cps = decode_utf8(s);
  std::u32string out;
  bool prev_cased = false;
  for (size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    if (prev_cased) {
      append_lower(out, cps, i);
    } else {
      append_title(out, c);
    }
    prev_cased = is_cased(c);
  }
  return encode_utf8(out);
}

std::string jinja_title(std::string_view s) {
  // "".join(item[0].upper() + item[1:].lower() for each piece of the split)
  const std::u32string cps = decode_utf8(s);
  auto is_sep = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_isspace(c);
  };
  std::u32string out;
  size_t i = 0;
  while (i < cps.size()) {
    const bool sep = is_sep(cps[i]);
    size_t j = i;
    while (j < cps.size() && is_sep(cps[j]) == sep)
      ++j;
    const std::u32string piece = cps.substr(i, j - i);
    append_upper(out, piece[0]);
    for (size_t k = 1; k < piece.size(); ++k)
      append_lower(out, piece, k);
    i = j;
  }
  return encode_utf8(out);
}

bool py_islower(std::string_view s) {
  bool cased = false;
  for (char32_t c : decode_utf8(s)) {
    if (is_upper_cp(c) || (is_cased(c) && !is_lower_cp(c))) return false;
    cased = cased || is_lower_cp(c);
  }
  return cased;
}

bool py_isupper(std::string_view s) {
  bool cased = false;
  for (char32_t c : decode_utf8(s)) {
    if (is_lower_cp(c) || (is_cased(c) && !is_upper_cp(c))) return false;
    cased = cased || is_upper_cp(c);
  }
  return cased;
}

bool py_isalpha_cp(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  const locale_t loc = unicode_locale();
  return loc && !(c >= 0xD800 && c <= 0xDFFF) && iswalpha_l(static_cast<wint_t>(c), loc);
}

std::string py_replace(std::string_view s, std::string_view old_s, std::string_view new_s,
                       int64_t count) {
  std::string out;
  if (old_s.empty()) {
    // Inserts `new_s` before every code point and at the end.
    std::u32string cps = decode_utf8(s);
    int64_t done = 0;
    for (char32_t c : cps) {
      if (count < 0 || done < count) {
        out += new_s;
        ++done;
      }
      append_utf8(out, c);
    }
    if (count < 0 || done < count) out += new_s;
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t hit = s.find(old_s, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(new_s);
    pos = hit + old_s.size();
    ++done;
  }
  out.append(s.substr(pos));
  return out;
}

int64_t py_find(std::string_view s, std::string_view sub, bool from_right) {
  size_t hit = from_right ? s.rfind(sub) : s.find(sub);
  if (hit == std::string_view::npos) return -1;
  return static_cast<int64_t>(byte_to_cp_index(s, hit));
}

int64_t py_count(std::string_view s, std::string_view sub) {
  if (sub.empty()) return static_cast<int64_t>(utf8_length(s)) + 1;
  int64_t n = 0;
  size_t pos = 0;
  while ((pos = s.find(sub, pos)) != std::string_view::npos) {
    ++n;
    pos += sub.size();
  }
  return n;
}

std::string py_center(std::string_view s, int64_t width) {
  const auto len = static_cast<int64_t>(utf8_length(s));
  const int64_t marg = width - len;
  if (marg <= 0) return std::string(s);
  const int64_t left = marg / 2 + (marg & width & 1);
  return std::string(static_cast<size_t>(left), ' ') + std::string(s) +
         std::string(static_cast<size_t>(marg - left), ' ');
}

std::string py_str_repr(std::string_view s) {
  std::u32string cps = decode_utf8(s);
  const bool has_single = cps.find(U'\'') != std::u32string::npos;
  const bool has_double = cps.find(U'"') != std::u32string::npos;
  const char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  char buf[16];
  for (char32_t c : cps) {
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c >= kEscapeBase + 0x80 && c <= kEscapeBase + 0xFF) {
      std::snprintf(buf, sizeof buf, "\\udc%02x", static_cast<unsigned>(c - kEscapeBase));
      out += buf;
    } else if (is_printable(c)) {
      append_utf8(out, c);
    } else {
      append_hex_escape(out, c);
    }
  }
  out.push_back(quote);
  return out;
}

std::string py_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  // Shortest round-trip digits, then Python's layout rules for repr().
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  std::string out;
  size_t i = 0;
  if (sci[0] == '-') {
    out.push_back('-');
    i = 1;
  }
  const size_t e_pos = sci.find('e');
  std::string digits;
  for (size_t k = i; k < e_pos; ++k) {
    if (sci[k] != '.') digits.push_back(sci[k]);
  }
  const int exp10 = std::stoi(sci.substr(e_pos + 1));
  const int decpt = exp10 + 1;  // value = 0.DIGITS * 10^decpt
  const int ndigits = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {
    out += digits[0];
    if (ndigits > 1) {
      out += '.';
      out += digits.substr(1);
    }
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    out += ebuf;
  } else if (decpt <= 0) {
    out += "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
  } else if (decpt >= ndigits) {
    out += digits + std::string(static_cast<size_t>(decpt - ndigits), '0') + ".0";
  } else {
    out += digits.substr(0, static_cast<size_t>(decpt)) + "." +
           digits.substr(static_cast<size_t>(decpt));
  }
  return out;
}

std::string json_float(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v < 0 ? "-Infinity" : "Infinity";
  return py_float_repr(v);
}

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

}  // namespace cartserve::jinja
