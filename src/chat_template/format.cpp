#include "chat_template/format.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "chat_template/attributes.h"
#include "chat_template/text.h"

namespace cartserve::jinja {

namespace {

Status value_error(const std::string& msg) {
  return Status(ErrorCode::kInvalidArgument, msg);
}

constexpr int64_t kMaxWidth = 100000;  // keeps '{:999999999}' from allocating gigabytes

struct Spec {
  char32_t fill = ' ';
  bool has_fill = false;
  char align = 0;  // < > = ^ or 0
  char sign = 0;   // + - ' ' or 0
  bool alt = false;
  bool zero = false;
  int64_t width = -1;
  char grouping = 0;  // , _ or 0
  int64_t precision = -1;
  char type = 0;
};

Result<Spec> parse_spec(std::string_view text) {
  const std::u32string cps = decode_utf8(text);
  const size_t n = cps.size();
  Spec s;
  size_t i = 0;
  auto is_align = [](char32_t c) { return c == '<' || c == '>' || c == '=' || c == '^'; };
  if (n >= 2 && is_align(cps[1])) {
    s.fill = cps[0];
    s.has_fill = true;
    s.align = static_cast<char>(cps[1]);
    i = 2;
  } else if (n >= 1 && is_align(cps[0])) {
    s.align = static_cast<char>(cps[0]);
    i = 1;
  }
  if (i < n && (cps[i] == '+' || cps[i] == '-' || cps[i] == ' '))
    s.sign = static_cast<char>(cps[i++]);
  if (i < n && cps[i] == 'z') return value_error("the 'z' format option is not supported");
  if (i < n && cps[i] == '#') s.alt = true, ++i;
  if (i < n && cps[i] == '0') s.zero = true, ++i;
  auto digits = [&](int64_t* out) {
    bool any = false;
    int64_t v = 0;
    while (i < n && cps[i] >= '0' && cps[i] <= '9') {
      v = std::min<int64_t>(v * 10 + (cps[i] - '0'), kMaxWidth + 1);
      ++i;
      any = true;
    }
    if (any) *out = v;
    return any;
  };
  digits(&s.width);
  if (i < n && (cps[i] == ',' || cps[i] == '_')) s.grouping = static_cast<char>(cps[i++]);
  if (i < n && cps[i] == '.') {
    ++i;
    if (!digits(&s.precision)) return value_error("Format specifier missing precision");
  }
  if (i < n) s.type = static_cast<char>(cps[i] < 0x80 ? cps[i] : '?'), ++i;
  if (i < n) return value_error("Invalid format specifier");
  if (s.width > kMaxWidth || s.precision > kMaxWidth)
    return value_error("format width or precision is too large");
  return s;
}

// Pads `body` (sign and prefix already in front, `head` bytes long) to the width.
std::string pad(const std::string& body, size_t head, const Spec& s, char default_align) {
  const auto len = static_cast<int64_t>(utf8_length(body));
  if (s.width <= len) return body;
  const char align = s.align ? s.align : default_align;
  const auto fill_count = static_cast<size_t>(s.width - len);
  std::string fill_unit;
  append_utf8(fill_unit, s.fill);
  auto fill = [&](size_t k) {
    std::string out;
    for (size_t j = 0; j < k; ++j)
      out += fill_unit;
    return out;
  };
  switch (align) {
    case '<':
      return body + fill(fill_count);
    case '^':
      return fill(fill_count / 2) + body + fill(fill_count - fill_count / 2);
    case '=':
      return body.substr(0, head) + fill(fill_count) + body.substr(head);
    default:
      return fill(fill_count) + body;
  }
}

// Inserts `sep` every `every` digits from the right of a digit run.
std::string group(const std::string& digits, char sep, size_t every) {
  std::string out;
  const size_t n = digits.size();
  for (size_t i = 0; i < n; ++i) {
    if (i > 0 && (n - i) % every == 0) out.push_back(sep);
    out.push_back(digits[i]);
  }
  return out;
}

// Zero padding ('=' with fill '0') extends the digits, grouped like them.
std::string numeric_body(const std::string& sign_prefix, std::string digits,
                         const std::string& tail, const Spec& s, size_t every) {
  const bool zero_pad = s.align == '=' && s.fill == '0' && s.width > 0;
  std::string grouped = s.grouping ? group(digits, s.grouping, every) : digits;
  while (zero_pad &&
         static_cast<int64_t>(sign_prefix.size() + grouped.size() + utf8_length(tail)) < s.width) {
    digits.insert(digits.begin(), '0');
    grouped = s.grouping ? group(digits, s.grouping, every) : digits;
  }
  return sign_prefix + grouped + tail;
}

std::string sign_of(bool negative, char sign) {
  if (negative) return "-";
  if (sign == '+') return "+";
  if (sign == ' ') return " ";
  return "";
}

Result<std::string> format_string(const std::string& v, Spec s) {
  if (s.type != 0 && s.type != 's') {
    return value_error(fmt::format("Unknown format code '{}' for object of type 'str'", s.type));
  }
  if (s.sign) return value_error("Sign not allowed in string format specifier");
  if (s.alt) return value_error("Alternate form (#) not allowed in string format specifier");
  if (s.align == '=') return value_error("'=' alignment not allowed in string format specifier");
  if (s.grouping) return value_error(fmt::format("Cannot specify '{}' with 's'.", s.grouping));
  std::string body = v;
  if (s.precision >= 0) {
    std::u32string cps = decode_utf8(v);
    if (static_cast<int64_t>(cps.size()) > s.precision)
      cps.resize(static_cast<size_t>(s.precision));
    body = encode_utf8(cps);
  }
  return pad(body, 0, s, '<');
}

Result<std::string> format_float(double v, Spec s);

Result<std::string> format_int(int64_t v, Spec s) {
  const char t = s.type;
  if (t == 'e' || t == 'E' || t == 'f' || t == 'F' || t == 'g' || t == 'G' || t == '%') {
    return format_float(static_cast<double>(v), s);
  }
  if (s.precision >= 0) return value_error("Precision not allowed in integer format specifier");
  const bool negative = v < 0;
  const uint64_t mag = negative ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  if (t == 'c') {
    if (negative || mag > 0x10FFFF) return value_error("%c arg not in range(0x110000)");
    std::string ch;
    append_utf8(ch, static_cast<char32_t>(mag));
    return pad(ch, 0, s, '<');
  }
  int base = 10;
  const char* prefix = "";
  switch (t) {
    case 'b':
      base = 2, prefix = "0b";
      break;
    case 'o':
      base = 8, prefix = "0o";
      break;
    case 'x':
      base = 16, prefix = "0x";
      break;
    case 'X':
      base = 16, prefix = "0X";
      break;
    default:
      break;
  }
  if (t != 0 && t != 'd' && t != 'n' && base == 10) {
    return value_error(fmt::format("Unknown format code '{}' for object of type 'int'", t));
  }
  if (s.grouping == ',' && base != 10)
    return value_error(fmt::format("Cannot specify ',' with '{}'.", t));
  if (s.grouping && t == 'n')
    return value_error(fmt::format("Cannot specify '{}' with 'n'.", s.grouping));
  std::string digits;
  uint64_t m = mag;
  do {
    const int d = static_cast<int>(m % static_cast<uint64_t>(base));
    digits.insert(digits.begin(),
                  static_cast<char>(d < 10 ? '0' + d : (t == 'X' ? 'A' : 'a') + d - 10));
    m /= static_cast<uint64_t>(base);
  } while (m > 0);
  const std::string head = sign_of(negative, s.sign) + std::string(s.alt ? prefix : "");
  const std::string body = numeric_body(head, digits, "", s, base == 10 ? 3 : 4);
  return pad(body, head.size(), s, '>');
}

std::string printf_double(const char* conv, int precision, bool alt, double v) {
  char fmtbuf[16];
  std::snprintf(fmtbuf, sizeof fmtbuf, "%%%s.%d%s", alt ? "#" : "", precision, conv);
  std::string out(static_cast<size_t>(precision) + 400, '\0');
  const int n = std::snprintf(out.data(), out.size(), fmtbuf, v);
  out.resize(static_cast<size_t>(std::max(n, 0)));
  return out;
}

Result<std::string> format_float(double v, Spec s) {
  const char t = s.type;
  if (t != 0 && t != 'e' && t != 'E' && t != 'f' && t != 'F' && t != 'g' && t != 'G' && t != 'n' &&
      t != '%') {
    return value_error(fmt::format("Unknown format code '{}' for object of type 'float'", t));
  }
  if (s.grouping && t == 'n')
    return value_error(fmt::format("Cannot specify '{}' with 'n'.", s.grouping));
  const bool negative = std::signbit(v);
  const double a = std::fabs(v);
  std::string text;
  if (std::isnan(v) || std::isinf(v)) {
    text = std::isnan(v) ? "nan" : "inf";
    if (t == 'E' || t == 'F' || t == 'G') text = ascii_upper(text);
    if (t == '%') text += "%";
  } else if (t == 0) {
    if (s.precision < 0) {
      text = py_float_repr(a);
    } else {
      text = printf_double("g", static_cast<int>(std::max<int64_t>(s.precision, 1)), s.alt, a);
      if (text.find_first_of(".e") == std::string::npos) text += ".0";
    }
  } else {
    const int p = static_cast<int>(s.precision < 0 ? 6 : s.precision);
    switch (t) {
      case 'e':
      case 'E':
        text = printf_double(t == 'e' ? "e" : "E", p, s.alt, a);
        break;
      case 'f':
      case 'F':
        text = printf_double("f", p, s.alt, a);
        break;
      case '%':
        text = printf_double("f", p, s.alt, a * 100.0) + "%";
        break;
      default:  // g G n
        text = printf_double(t == 'G' ? "G" : "g", std::max(p, 1), s.alt, a);
        break;
    }
  }
  // Split into integer digits and the rest, for grouping and zero padding.
  size_t int_end = 0;
  while (int_end < text.size() && text[int_end] >= '0' && text[int_end] <= '9')
    ++int_end;
  const std::string head = sign_of(negative && !std::isnan(v), s.sign);
  const std::string body = numeric_body(head, text.substr(0, int_end), text.substr(int_end), s, 3);
  return pad(body, head.size(), s, '>');
}

std::string ascii_repr(const TemplateValue& v) {
  std::string out;
  for (char32_t c : decode_utf8(to_repr(v))) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      append_hex_escape(out, c);
    }
  }
  return out;
}

class Formatter {
 public:
  Formatter(const TemplateCallArgs& args, bool escape) : args_(args), escape_(escape) {}

  Result<std::string> run(std::string_view f, int depth) {
    if (depth > 2) return value_error("Max string recursion exceeded");
    std::string out;
    size_t i = 0;
    while (i < f.size()) {
      const char c = f[i];
      if (c == '}') {
        if (i + 1 < f.size() && f[i + 1] == '}') {
          out.push_back('}');
          i += 2;
          continue;
        }
        return value_error("Single '}' encountered in format string");
      }
      if (c != '{') {
        out.push_back(c);
        ++i;
        continue;
      }
      if (i + 1 < f.size() && f[i + 1] == '{') {
        out.push_back('{');
        i += 2;
        continue;
      }
      // The field runs to the matching '}' (specs may nest one level of fields).
      size_t j = i + 1;
      int level = 1;
      while (j < f.size()) {
        if (f[j] == '{') ++level;
        if (f[j] == '}' && --level == 0) break;
        ++j;
      }
      if (j >= f.size()) return value_error("expected '}' before end of string");
      CS_ASSIGN_OR_RETURN(std::string field, replace_field(f.substr(i + 1, j - i - 1), depth));
      out += field;
      i = j + 1;
    }
    return out;
  }

 private:
  Result<std::string> replace_field(std::string_view field, int depth) {
    // field_name up to '!' or ':' outside [ ].
    size_t k = 0;
    while (k < field.size() && field[k] != '!' && field[k] != ':') {
      if (field[k] == '[') {
        while (k < field.size() && field[k] != ']')
          ++k;
      }
      if (k < field.size()) ++k;
    }
    const std::string_view name = field.substr(0, k);
    char conversion = 0;
    std::string spec;
    if (k < field.size() && field[k] == '!') {
      if (k + 1 >= field.size())
        return value_error("end of string while looking for conversion specifier");
      conversion = field[k + 1];
      k += 2;
      if (k < field.size() && field[k] != ':')
        return value_error("expected ':' after conversion specifier");
    }
    if (k < field.size() && field[k] == ':') {
      CS_ASSIGN_OR_RETURN(spec, run(field.substr(k + 1), depth + 1));
    }
    CS_ASSIGN_OR_RETURN(TemplateValue value, resolve(name));
    if (conversion == 'r') {
      value = TemplateValue::string(to_repr(value));
    } else if (conversion == 's') {
      value = TemplateValue::string(to_str(value));
    } else if (conversion == 'a') {
      value = TemplateValue::string(ascii_repr(value));
    } else if (conversion != 0) {
      return value_error(fmt::format("Unknown conversion specifier {}", conversion));
    }
    CS_ASSIGN_OR_RETURN(std::string text, py_format_value(value, spec));
    if (escape_ && !value.is_markup()) text = html_escape(text);
    return text;
  }

  Result<TemplateValue> resolve(std::string_view name) {
    size_t k = 0;
    while (k < name.size() && name[k] != '.' && name[k] != '[')
      ++k;
    const std::string_view first = name.substr(0, k);
    TemplateValue obj;
    const bool numeric = !first.empty() && std::all_of(first.begin(), first.end(),
                                                       [](char c) { return c >= '0' && c <= '9'; });
    if (first.empty() || numeric) {
      size_t index;
      if (first.empty()) {
        if (manual_) {
          return value_error(
              "cannot switch from manual field specification to automatic field numbering");
        }
        automatic_ = true;
        index = next_++;
      } else {
        if (automatic_) {
          return value_error(
              "cannot switch from automatic field numbering to manual field specification");
        }
        manual_ = true;
        index = static_cast<size_t>(std::stoull(std::string(first).substr(0, 18)));
      }
      if (index >= args_.positional.size()) {
        return value_error(
            fmt::format("Replacement index {} out of range for positional args tuple", index));
      }
      obj = args_.positional[index];
    } else {
      bool found = false;
      for (const auto& [key, v] : args_.keyword) {
        if (key == first) {
          obj = v;
          found = true;
        }
      }
      if (!found) return value_error(fmt::format("'{}'", first));
    }
    // .attr and [key] parts, with jinja2's sandboxed attribute rules.
    while (k < name.size()) {
      if (name[k] == '.') {
        size_t e = k + 1;
        while (e < name.size() && name[e] != '.' && name[e] != '[')
          ++e;
        if (e == k + 1) return value_error("Empty attribute in format string");
        CS_ASSIGN_OR_RETURN(obj, get_attr(obj, name.substr(k + 1, e - k - 1)));
        k = e;
      } else if (name[k] == '[') {
        const size_t e = name.find(']', k);
        if (e == std::string_view::npos) return value_error("Missing ']' in format string");
        const std::string key(name.substr(k + 1, e - k - 1));
        if (key.empty()) return value_error("Empty attribute in format string");
        const bool digits =
            std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
        CS_ASSIGN_OR_RETURN(
            obj, get_item(obj, digits ? TemplateValue::integer(std::stoll(key.substr(0, 18)))
                                      : TemplateValue::string(key)));
        k = e + 1;
        if (k < name.size() && name[k] != '.' && name[k] != '[') {
          return value_error("Only '.' or '[' may follow ']' in format field specifier");
        }
      } else {
        return value_error("Invalid format field name");
      }
    }
    return obj;
  }

  const TemplateCallArgs& args_;
  bool escape_;
  size_t next_ = 0;
  bool automatic_ = false;
  bool manual_ = false;
};

// One %-conversion: flags, width, precision and the conversion character.
struct Conversion {
  bool minus = false, plus = false, space = false, alt = false, zero = false;
  int64_t width = -1;
  int64_t precision = -1;
  char type = 0;
};

std::string pad_printf(const std::string& sign_prefix, const std::string& digits,
                       const Conversion& c) {
  std::string body = sign_prefix + digits;
  const auto len = static_cast<int64_t>(utf8_length(body));
  if (c.width <= len) return body;
  const auto n = static_cast<size_t>(c.width - len);
  if (c.minus) return body + std::string(n, ' ');
  if (c.zero) return sign_prefix + std::string(n, '0') + digits;
  return std::string(n, ' ') + body;
}

Result<std::string> convert_int(const TemplateValue& v, const Conversion& c) {
  int64_t i = 0;
  if (v.is_bool() || v.is_int()) {
    i = v.as_int();
  } else if (v.is_float() && (c.type == 'd' || c.type == 'i' || c.type == 'u')) {
    const double d = v.as_double();
    if (!std::isfinite(d) || std::fabs(d) >= 9.2e18)
      return value_error("cannot convert float to a 64-bit integer");
    i = static_cast<int64_t>(d);
  } else {
    if (v.is_undefined()) return undefined_error(v);
    const bool decimal = c.type == 'd' || c.type == 'i' || c.type == 'u';
    return value_error(fmt::format("%{} format: {} is required, not {}", c.type,
                                   decimal ? "a real number" : "an integer", type_name(v)));
  }
  const bool negative = i < 0;
  uint64_t m = negative ? 0 - static_cast<uint64_t>(i) : static_cast<uint64_t>(i);
  const int base = (c.type == 'x' || c.type == 'X') ? 16 : (c.type == 'o' ? 8 : 10);
  std::string digits;
  do {
    const int d = static_cast<int>(m % static_cast<uint64_t>(base));
    digits.insert(digits.begin(),
                  static_cast<char>(d < 10 ? '0' + d : (c.type == 'X' ? 'A' : 'a') + d - 10));
    m /= static_cast<uint64_t>(base);
  } while (m > 0);
  if (c.precision > static_cast<int64_t>(digits.size())) {
    digits.insert(0, static_cast<size_t>(std::min<int64_t>(c.precision, kMaxWidth)) - digits.size(),
                  '0');
  }
  std::string head = negative ? "-" : (c.plus ? "+" : (c.space ? " " : ""));
  if (c.alt && base != 10) head += c.type == 'o' ? "0o" : (c.type == 'X' ? "0X" : "0x");
  return pad_printf(head, digits, c);
}

Result<std::string> convert_float(const TemplateValue& v, const Conversion& c) {
  if (!v.is_number()) {
    if (v.is_undefined()) return undefined_error(v);
    return value_error(fmt::format("must be real number, not {}", type_name(v)));
  }
  const double d = v.as_double();
  const bool negative = std::signbit(d) && !std::isnan(d);
  std::string digits;
  if (std::isnan(d) || std::isinf(d)) {
    digits = std::isnan(d) ? "nan" : "inf";
    if (c.type == 'E' || c.type == 'F' || c.type == 'G') digits = ascii_upper(digits);
  } else {
    const int p = static_cast<int>(std::min<int64_t>(c.precision < 0 ? 6 : c.precision, 500));
    const char conv[2] = {c.type, 0};
    digits = printf_double(conv, (c.type == 'g' || c.type == 'G') ? std::max(p, 1) : p, c.alt,
                           std::fabs(d));
  }
  const std::string head = negative ? "-" : (c.plus ? "+" : (c.space ? " " : ""));
  Conversion cc = c;
  if (std::isnan(d) || std::isinf(d)) cc.zero = false;
  return pad_printf(head, digits, cc);
}

Result<std::string> convert_text(const std::string& text, const Conversion& c) {
  std::u32string cps = decode_utf8(text);
  if (c.precision >= 0 && static_cast<int64_t>(cps.size()) > c.precision) {
    cps.resize(static_cast<size_t>(c.precision));
  }
  Conversion cc = c;
  cc.zero = false;
  return pad_printf("", encode_utf8(cps), cc);
}

}  // namespace

Result<TemplateValue> py_percent_format(const TemplateValue& format, const TemplateValue& args) {
  const std::string& f = format.as_string();
  const bool markup = format.is_markup();
  // A tuple spreads into arguments; mapping-like values (anything with
  // __getitem__ that is not a tuple or str) may also serve %(key)s.
  std::vector<TemplateValue> list;
  if (args.is_tuple()) {
    list = args.items();
  } else {
    list.push_back(args);
  }
  const bool mapping = args.is_dict() || args.is_list() || args.is_undefined();
  size_t next = 0;
  bool used_key = false;
  std::string out;
  size_t i = 0;
  while (i < f.size()) {
    if (f[i] != '%') {
      out.push_back(f[i++]);
      continue;
    }
    ++i;
    if (i >= f.size()) return value_error("incomplete format");
    std::optional<TemplateValue> keyed;
    if (f[i] == '(') {
      const size_t close = f.find(')', i);
      if (close == std::string::npos) return value_error("incomplete format key");
      if (!mapping) return value_error("format requires a mapping");
      const std::string key = f.substr(i + 1, close - i - 1);
      if (!args.is_dict()) {
        return value_error(
            fmt::format("{} indices must be integers or slices, not str", type_name(args)));
      }
      const TemplateValue* found = args.find(key);
      if (found == nullptr) return value_error(fmt::format("'{}'", key));
      keyed = *found;
      used_key = true;
      i = close + 1;
    }
    Conversion c;
    for (; i < f.size(); ++i) {
      const char ch = f[i];
      if (ch == '-') {
        c.minus = true;
      } else if (ch == '+') {
        c.plus = true;
      } else if (ch == ' ') {
        c.space = true;
      } else if (ch == '#') {
        c.alt = true;
      } else if (ch == '0') {
        c.zero = true;
      } else {
        break;
      }
    }
    auto number = [&](int64_t* out_v) -> Status {
      if (i < f.size() && f[i] == '*')
        return value_error("'*' width or precision in %-format is not supported");
      int64_t v = 0;
      bool any = false;
      while (i < f.size() && f[i] >= '0' && f[i] <= '9') {
        v = std::min<int64_t>(v * 10 + (f[i] - '0'), kMaxWidth + 1);
        ++i;
        any = true;
      }
      if (any) *out_v = v;
      if (v > kMaxWidth) return value_error("format width or precision is too large");
      return {};
    };
    CS_RETURN_IF_ERROR(number(&c.width));
    if (i < f.size() && f[i] == '.') {
      ++i;
      c.precision = 0;
      CS_RETURN_IF_ERROR(number(&c.precision));
    }
    while (i < f.size() && (f[i] == 'h' || f[i] == 'l' || f[i] == 'L'))
      ++i;
    if (i >= f.size()) return value_error("incomplete format");
    c.type = f[i++];
    if (c.type == '%') {
      out.push_back('%');
      continue;
    }
    TemplateValue arg;
    if (keyed) {
      arg = *keyed;
    } else {
      if (next >= list.size()) return value_error("not enough arguments for format string");
      arg = list[next++];
    }
    std::string piece;
    switch (c.type) {
      case 's':
      case 'r':
      case 'a': {
        std::string text =
            c.type == 's' ? to_str(arg) : (c.type == 'r' ? to_repr(arg) : ascii_repr(arg));
        // Markup % args escapes each plain argument.
        if (markup && !(c.type == 's' && arg.is_markup())) text = html_escape(text);
        CS_ASSIGN_OR_RETURN(piece, convert_text(text, c));
        break;
      }
      case 'd':
      case 'i':
      case 'u':
      case 'x':
      case 'X':
      case 'o': {
        CS_ASSIGN_OR_RETURN(piece, convert_int(arg, c));
        break;
      }
      case 'e':
      case 'E':
      case 'f':
      case 'F':
      case 'g':
      case 'G': {
        CS_ASSIGN_OR_RETURN(piece, convert_float(arg, c));
        break;
      }
      case 'c': {
        std::string ch;
        if (arg.is_int() || arg.is_bool()) {
          if (arg.as_int() < 0 || arg.as_int() > 0x10FFFF)
            return value_error("%c arg not in range(0x110000)");
          append_utf8(ch, static_cast<char32_t>(arg.as_int()));
        } else if (arg.is_string() && utf8_length(arg.as_string()) == 1) {
          ch = arg.as_string();
        } else {
          return value_error("%c requires an int or a unicode character");
        }
        CS_ASSIGN_OR_RETURN(piece, convert_text(ch, c));
        break;
      }
      default:
        return value_error(
            fmt::format("unsupported format character '{}' at index {}", c.type, i - 1));
    }
    out += piece;
  }
  if (!used_key && next < list.size() && !mapping) {
    return value_error("not all arguments converted during string formatting");
  }
  return TemplateValue::string_like(format, std::move(out));
}

Result<std::string> py_format_value(const TemplateValue& value, std::string_view spec_text) {
  if (spec_text.empty()) return to_str(value);
  CS_ASSIGN_OR_RETURN(Spec s, parse_spec(spec_text));
  if (s.zero) {  // '0' before the width: zero fill, sign-aware for numbers
    if (!s.has_fill) s.fill = '0';
    if (!s.align) s.align = value.is_string() ? '<' : '=';
  }
  if (value.is_string()) return format_string(value.as_string(), s);
  if (value.is_bool() || value.is_int()) return format_int(value.as_int(), s);
  if (value.is_float()) return format_float(value.as_double(), s);
  return value_error(
      fmt::format("unsupported format string passed to {}.__format__", type_name(value)));
}

Result<std::string> py_str_format(std::string_view format, const TemplateCallArgs& args,
                                  bool escape_fields) {
  Formatter f(args, escape_fields);
  return f.run(format, 0);
}

}  // namespace cartserve::jinja
