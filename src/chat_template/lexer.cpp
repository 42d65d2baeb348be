#include "chat_template/lexer.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <optional>

#include "chat_template/text.h"

namespace cartserve::jinja {

const char* token_type_name(TokenType t) {
  switch (t) {
    case TokenType::kData:
      return "template data";
    case TokenType::kBlockBegin:
      return "begin of statement block";
    case TokenType::kBlockEnd:
      return "end of statement block";
    case TokenType::kVariableBegin:
      return "begin of print statement";
    case TokenType::kVariableEnd:
      return "end of print statement";
    case TokenType::kName:
      return "name";
    case TokenType::kString:
      return "string";
    case TokenType::kInteger:
      return "integer";
    case TokenType::kFloat:
      return "float";
    case TokenType::kOperator:
      return "operator";
    case TokenType::kEof:
      return "end of template";
  }
  return "token";
}

namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_name_char(char c) {
  return is_name_start(c) || is_digit(c);
}
int count_newlines(std::string_view s) {
  return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
}

// Length in bytes of the UTF-8 code point starting at s[i] (1 for invalid bytes).
size_t cp_len(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = c < 0x80             ? 1
             : (c & 0xE0) == 0xC0 ? 2
             : (c & 0xF0) == 0xE0 ? 3
             : (c & 0xF8) == 0xF0 ? 4
                                  : 1;
  return std::min(n, s.size() - i);
}

// Python's `\s` on one code point at s[i]; returns its byte length or 0.
size_t whitespace_at(std::string_view s, size_t i) {
  if (i >= s.size()) return 0;
  const size_t n = cp_len(s, i);
  std::u32string cp = decode_utf8(s.substr(i, n));
  return (cp.size() == 1 && py_isspace(cp[0])) ? n : 0;
}

size_t skip_whitespace(std::string_view s, size_t i) {
  while (size_t n = whitespace_at(s, i))
    i += n;
  return i;
}

// str.rstrip() with Python whitespace.
std::string_view rstrip_ws(std::string_view s) {
  std::u32string cps = decode_utf8(s);
  size_t keep = cps.size();
  while (keep > 0 && py_isspace(cps[keep - 1]))
    --keep;
  return s.substr(0, encode_utf8(std::u32string_view(cps).substr(0, keep)).size());
}

bool all_whitespace(std::string_view s) {
  if (s.empty()) return false;
  std::u32string cps = decode_utf8(s);
  return std::all_of(cps.begin(), cps.end(), py_isspace);
}

// Decodes the contents of a string literal as Python's "unicode-escape" does.
Result<std::string> unescape(std::string_view raw, int line) {
  std::string out;
  auto hex_value = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < raw.size(); ++i) {
    const char c = raw[i];
    if (c != '\\' || i + 1 >= raw.size()) {
      out.push_back(c);
      continue;
    }
    const char e = raw[++i];
    switch (e) {
      case '\n':
        break;  // line continuation
      case '\\':
        out.push_back('\\');
        break;
      case '\'':
        out.push_back('\'');
        break;
      case '"':
        out.push_back('"');
        break;
      case 'a':
        out.push_back('\a');
        break;
      case 'b':
        out.push_back('\b');
        break;
      case 'f':
        out.push_back('\f');
        break;
      case 'n':
        out.push_back('\n');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'v':
        out.push_back('\v');
        break;
      case 'x':
      case 'u':
      case 'U': {
        const size_t digits = e == 'x' ? 2 : (e == 'u' ? 4 : 8);
        uint32_t cp = 0;
        for (size_t k = 0; k < digits; ++k) {
          const int h = i + 1 + k < raw.size() ? hex_value(raw[i + 1 + k]) : -1;
          if (h < 0) {
            return make_error(ErrorCode::kInvalidArgument,
                              "line {}: truncated \\{} escape in string", line, e);
          }
          cp = cp * 16 + static_cast<uint32_t>(h);
        }
        if (cp > 0x10FFFF) {
          return make_error(ErrorCode::kInvalidArgument, "line {}: illegal Unicode character",
                            line);
        }
        append_utf8(out, cp);
        i += digits;
        break;
      }
      case 'N':
        return make_error(ErrorCode::kInvalidArgument,
                          "line {}: \\N{{...}} escapes are not supported in string literals", line);
      default:
        if (e >= '0' && e <= '7') {
          uint32_t cp = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < raw.size() && raw[i + 1] >= '0' && raw[i + 1] <= '7';
               ++k) {
            cp = cp * 8 + static_cast<uint32_t>(raw[++i] - '0');
          }
          append_utf8(out, cp);
        } else {
          out.push_back('\\');
          out.push_back(e);
        }
    }
  }
  return out;
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {}

  Result<std::vector<Token>> run() {
    while (pos_ < src_.size())
      CS_RETURN_IF_ERROR(root_step());
    push(TokenType::kEof, "");
    return std::move(tokens_);
  }

 private:
  enum class Tag { kBlock, kVariable, kComment, kRaw };

  Status fail(const std::string& msg) const {
    return make_error(ErrorCode::kInvalidArgument, "line {}: {}", line_, msg);
  }

  void push(TokenType type, std::string value) {
    Token t;
    t.type = type;
    t.value = std::move(value);
    t.line = line_;
    tokens_.push_back(std::move(t));
  }

  bool at(size_t p, std::string_view s) const {
    return std::string_view(src_).substr(p, s.size()) == s;
  }

  // `{% raw %}` / `{%- raw -%}` at p: returns the end of the match.
  std::optional<size_t> match_raw_begin(size_t p) const {
    size_t q = p + 2;
    if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ++q;
    q = skip_whitespace(src_, q);
    if (!at(q, "raw")) return std::nullopt;
    q = skip_whitespace(src_, q + 3);
    if (at(q, "-%}")) return skip_whitespace(src_, q + 3);
    if (at(q, "%}")) return q + 2;
    return std::nullopt;
  }

  // Text before a tag, after the "-" / lstrip_blocks rules.
  void emit_text(std::string_view text, char sign, bool lstrip_allowed) {
    int stripped_newlines = 0;
    if (sign == '-') {
      std::string_view kept = rstrip_ws(text);
      stripped_newlines = count_newlines(text.substr(kept.size()));
      text = kept;
    } else if (sign != '+' && lstrip_allowed) {
      const size_t nl = text.rfind('\n');
      const size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
      if ((l_pos > 0 || line_starting_) && all_whitespace(text.substr(l_pos))) {
        text = text.substr(0, l_pos);
      }
    }
    if (!text.empty()) push(TokenType::kData, std::string(text));
    line_ += count_newlines(text) + stripped_newlines;
  }

  Status root_step() {
    // Earliest tag start: {% {{ {#
    size_t p = pos_;
    Tag tag = Tag::kBlock;
    for (;; ++p) {
      p = src_.find('{', p);
      if (p == std::string::npos || p + 1 >= src_.size()) {
        p = std::string::npos;
        break;
      }
      const char c = src_[p + 1];
      if (c == '%') {
        tag = match_raw_begin(p) ? Tag::kRaw : Tag::kBlock;
        break;
      }
      if (c == '{') {
        tag = Tag::kVariable;
        break;
      }
      if (c == '#') {
        tag = Tag::kComment;
        break;
      }
    }
    if (p == std::string::npos) {  // trailing data
      std::string_view rest = std::string_view(src_).substr(pos_);
      push(TokenType::kData, std::string(rest));
      line_ += count_newlines(rest);
      pos_ = src_.size();
      return {};
    }
    const char sign =
        (p + 2 < src_.size() && (src_[p + 2] == '-' || src_[p + 2] == '+')) ? src_[p + 2] : 0;
    emit_text(std::string_view(src_).substr(pos_, p - pos_), sign, tag != Tag::kVariable);
    switch (tag) {
      case Tag::kRaw:
        return lex_raw(p);
      case Tag::kComment:
        return lex_comment(p + 2 + (sign ? 1 : 0));
      case Tag::kBlock:
      case Tag::kVariable:
        push(tag == Tag::kBlock ? TokenType::kBlockBegin : TokenType::kVariableBegin, "");
        pos_ = p + 2 + (sign ? 1 : 0);
        return lex_tag(tag);
    }
    return {};
  }

  Status lex_raw(size_t p) {
    const size_t body = *match_raw_begin(p);
    line_ += count_newlines(std::string_view(src_).substr(p, body - p));
    line_starting_ = body > 0 && src_[body - 1] == '\n';
    // Earliest {%[-+]? endraw ... %}
    for (size_t q = src_.find("{%", body); q != std::string::npos; q = src_.find("{%", q + 1)) {
      size_t r = q + 2;
      char sign = 0;
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) sign = src_[r++];
      r = skip_whitespace(src_, r);
      if (!at(r, "endraw")) continue;
      r = skip_whitespace(src_, r + 6);
      size_t end;
      if (at(r, "+%}")) {
        end = r + 3;
      } else if (at(r, "-%}")) {
        end = skip_whitespace(src_, r + 3);
      } else if (at(r, "%}")) {
        end = r + 2 + (at(r + 2, "\n") ? 1 : 0);
      } else {
        continue;
      }
      emit_text(std::string_view(src_).substr(body, q - body), sign, true);
      line_ += count_newlines(std::string_view(src_).substr(q, end - q));
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return {};
    }
    return fail("Missing end of raw directive");
  }

  Status lex_comment(size_t body) {
    for (size_t q = body; q < src_.size(); ++q) {
      size_t end = 0;
      if ((src_[q] == '+' || src_[q] == '-') && at(q + 1, "#}")) {
        end = src_[q] == '-' ? skip_whitespace(src_, q + 3) : q + 3;
      } else if (at(q, "#}")) {
        end = q + 2 + (at(q + 2, "\n") ? 1 : 0);
      } else {
        continue;
      }
      line_ += count_newlines(std::string_view(src_).substr(body, end - body));
      line_starting_ = src_[end - 1] == '\n';
      pos_ = end;
      return {};
    }
    return fail("Missing end of comment tag");
  }

  // End of the current tag at pos_, if any: returns its end.
  std::optional<size_t> match_tag_end(Tag tag) const {
    if (tag == Tag::kBlock) {
      if (at(pos_, "+%}")) return pos_ + 3;
      if (at(pos_, "-%}")) return skip_whitespace(src_, pos_ + 3);
      if (at(pos_, "%}")) return pos_ + 2 + (at(pos_ + 2, "\n") ? 1 : 0);
      return std::nullopt;
    }
    if (at(pos_, "-}}")) return skip_whitespace(src_, pos_ + 3);
    if (at(pos_, "}}")) return pos_ + 2;
    return std::nullopt;
  }

  // (\d+_)*\d+ : digits with single underscores between them; returns end or npos.
  size_t match_digits(size_t p) const {
    if (p >= src_.size() || !is_digit(src_[p])) return std::string::npos;
    while (true) {
      while (p < src_.size() && is_digit(src_[p]))
        ++p;
      if (p + 1 < src_.size() && src_[p] == '_' && is_digit(src_[p + 1])) {
        ++p;
        continue;
      }
      return p;
    }
  }

  std::optional<size_t> match_float() const {
    if (pos_ > 0 && src_[pos_ - 1] == '.') return std::nullopt;
    size_t p = match_digits(pos_);
    if (p == std::string::npos) return std::nullopt;
    auto exponent = [&](size_t q) -> size_t {
      if (q >= src_.size() || (src_[q] != 'e' && src_[q] != 'E')) return std::string::npos;
      ++q;
      if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
      return match_digits(q);
    };
    size_t frac_end = std::string::npos;
    if (p < src_.size() && src_[p] == '.') frac_end = match_digits(p + 1);
    if (frac_end != std::string::npos) {
      const size_t e = exponent(frac_end);
      return e != std::string::npos ? e : frac_end;
    }
    const size_t e = exponent(p);
    if (e != std::string::npos) return e;
    return std::nullopt;
  }

  std::optional<size_t> match_integer(int* base) const {
    auto prefixed = [&](char lower, int b) -> std::optional<size_t> {
      if (pos_ + 1 >= src_.size() || src_[pos_] != '0' || (src_[pos_ + 1] | 0x20) != lower) {
        return std::nullopt;
      }
      auto ok = [&](char c) {
        c = static_cast<char>(c | 0x20);
        if (b == 2) return c == '0' || c == '1';
        if (b == 8) return c >= '0' && c <= '7';
        return is_digit(c) || (c >= 'a' && c <= 'f');
      };
      size_t p = pos_ + 2;
      size_t end = std::string::npos;
      while (true) {
        if (p < src_.size() && src_[p] == '_' && p + 1 < src_.size() && ok(src_[p + 1])) {
          p += 2;
        } else if (p < src_.size() && ok(src_[p])) {
          ++p;
        } else {
          break;
        }
        end = p;
      }
      if (end == std::string::npos) return std::nullopt;
      *base = b;
      return end;
    };
    if (auto r = prefixed('b', 2)) return r;
    if (auto r = prefixed('o', 8)) return r;
    if (auto r = prefixed('x', 16)) return r;
    if (pos_ >= src_.size() || !is_digit(src_[pos_])) return std::nullopt;
    *base = 10;
    const char first = src_[pos_];
    size_t p = pos_ + 1;
    while (p < src_.size()) {
      const bool underscore = src_[p] == '_' && p + 1 < src_.size();
      const char d = underscore ? src_[p + 1] : src_[p];
      if (!is_digit(d) || (first == '0' && d != '0')) break;
      p += underscore ? 2 : 1;
    }
    return p;
  }

  Status lex_tag(Tag tag) {
    std::vector<char> balance;  // expected closing brackets
    while (true) {
      if (pos_ >= src_.size()) {
        return fail(tag == Tag::kBlock ? "unexpected end of template, expected '%}'"
                                       : "unexpected end of template, expected '}}'");
      }
      if (balance.empty()) {
        if (auto end = match_tag_end(tag)) {
          push(tag == Tag::kBlock ? TokenType::kBlockEnd : TokenType::kVariableEnd, "");
          line_ += count_newlines(std::string_view(src_).substr(pos_, *end - pos_));
          line_starting_ = src_[*end - 1] == '\n';
          pos_ = *end;
          return {};
        }
      }
      if (whitespace_at(src_, pos_)) {
        const size_t end = skip_whitespace(src_, pos_);
        line_ += count_newlines(std::string_view(src_).substr(pos_, end - pos_));
        pos_ = end;
        continue;
      }
      if (auto end = match_float()) {
        std::string text;
        for (size_t i = pos_; i < *end; ++i) {
          if (src_[i] != '_') text.push_back(src_[i]);
        }
        push(TokenType::kFloat, text);
        tokens_.back().float_value = std::strtod(text.c_str(), nullptr);
        pos_ = *end;
        continue;
      }
      int base = 10;
      if (auto end = match_integer(&base)) {
        std::string digits;
        for (size_t i = pos_ + (base == 10 ? 0 : 2); i < *end; ++i) {
          if (src_[i] != '_') digits.push_back(src_[i]);
        }
        errno = 0;
        const unsigned long long v = std::strtoull(digits.c_str(), nullptr, base);
        if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX)) {
          return fail("integer literal " + src_.substr(pos_, *end - pos_) + " is too large");
        }
        push(TokenType::kInteger, src_.substr(pos_, *end - pos_));
        tokens_.back().int_value = static_cast<int64_t>(v);
        pos_ = *end;
        continue;
      }
      if (is_name_start(src_[pos_])) {
        size_t end = pos_;
        while (end < src_.size() && is_name_char(src_[end]))
          ++end;
        push(TokenType::kName, src_.substr(pos_, end - pos_));
        pos_ = end;
        continue;
      }
      if (src_[pos_] == '\'' || src_[pos_] == '"') {
        const char quote = src_[pos_];
        size_t q = pos_ + 1;
        while (q < src_.size() && src_[q] != quote)
          q += src_[q] == '\\' ? 2 : 1;
        if (q < src_.size()) {
          const int start_line = line_;
          CS_ASSIGN_OR_RETURN(
              std::string value,
              unescape(std::string_view(src_).substr(pos_ + 1, q - pos_ - 1), line_));
          push(TokenType::kString, std::move(value));
          tokens_.back().line = start_line;
          line_ += count_newlines(std::string_view(src_).substr(pos_, q + 1 - pos_));
          pos_ = q + 1;
          continue;
        }
        // Unterminated: falls through to the error below.
      }
      static constexpr std::string_view kTwoChar[] = {"//", "**", "==", "!=", ">=", "<="};
      std::string op;
      for (std::string_view two : kTwoChar) {
        if (at(pos_, two)) op = std::string(two);
      }
      if (op.empty() &&
          std::string_view("+-/*%~[](){}><=.:|,;").find(src_[pos_]) != std::string_view::npos) {
        op = std::string(1, src_[pos_]);
      }
      if (op.empty()) {
        return fail("unexpected char " + py_str_repr(src_.substr(pos_, cp_len(src_, pos_))));
      }
      const char c = op[0];
      if (op.size() == 1 && (c == '{' || c == '(' || c == '[')) {
        balance.push_back(c == '{' ? '}' : (c == '(' ? ')' : ']'));
      } else if (op.size() == 1 && (c == '}' || c == ')' || c == ']')) {
        if (balance.empty()) return fail(std::string("unexpected '") + c + "'");
        if (balance.back() != c) {
          return fail(std::string("unexpected '") + c + "', expected '" + balance.back() + "'");
        }
        balance.pop_back();
      }
      push(TokenType::kOperator, op);
      pos_ += op.size();
    }
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
};

}  // namespace

Result<std::vector<Token>> tokenize(std::string_view source) {
  // Newlines become "\n"; a single trailing newline is dropped (keep_trailing_newline=False).
  std::string src;
  src.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      src.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      src.push_back(source[i]);
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();
  return Lexer(std::move(src)).run();
}

}  // namespace cartserve::jinja
