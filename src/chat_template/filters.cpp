#include "chat_template/filters.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>

#include "chat_template/attributes.h"
#include "chat_template/format.h"
#include "chat_template/functions.h"
#include "chat_template/json.h"
#include "chat_template/ops.h"
#include "chat_template/text.h"

namespace cartserve::jinja {

namespace {

using Args = TemplateCallArgs;
using Value = TemplateValue;
using FilterFn = std::function<Result<Value>(const Value&, const Args&)>;
using TestFn = std::function<Result<bool>(const Value&, const Args&)>;

// jinja2 builtins this interpreter leaves out; naming them gives a clear error.
const std::set<std::string, std::less<>> kUnsupportedFilters = {
    "batch",    "filesizeformat", "groupby", "pprint",    "random",   "slice",  "striptags",
    "truncate", "urlencode",      "urlize",  "wordcount", "wordwrap", "xmlattr"};

Status type_error(const std::string& msg) {
  return Status(ErrorCode::kInvalidArgument, msg);
}

// jinja2's make_attrgetter: "a.b.0" looks up item "a", then "b", then 0.
Result<Value> lookup_attribute(const Value& item, const Value& attribute) {
  if (!attribute.is_string()) return get_item(item, attribute);
  Value cur = item;
  for (const std::string& part : py_split(attribute.as_string(), std::string("."), -1)) {
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(),
                                                     [](char c) { return c >= '0' && c <= '9'; });
    Value key =
        digits ? Value::integer(std::strtoll(part.c_str(), nullptr, 10)) : Value::string(part);
    CS_ASSIGN_OR_RETURN(cur, get_item(cur, key));
  }
  return cur;
}

Value ignore_case(const Value& v) {
  return v.is_string() ? Value::string(py_lower(v.as_string())) : v;
}

// A key function as filters build it: optional attribute, optional lowercasing.
struct KeyFn {
  std::optional<Value> attribute;
  bool lower = false;
  Result<Value> operator()(const Value& item) const {
    Value v = item;
    if (attribute) {
      CS_ASSIGN_OR_RETURN(v, lookup_attribute(item, *attribute));
    }
    return lower ? ignore_case(v) : v;
  }
};

// sorted(items, key=key, reverse=reverse): stable, TypeError on mixed types.
Result<std::vector<Value>> sorted(std::vector<Value> items, const KeyFn& key, bool reverse) {
  std::vector<std::pair<Value, size_t>> keyed;
  for (size_t i = 0; i < items.size(); ++i) {
    CS_ASSIGN_OR_RETURN(Value k, key(items[i]));
    keyed.emplace_back(std::move(k), i);
  }
  Status failed;
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    auto c = py_compare(a.first, b.first);
    if (!c.ok()) {
      if (failed.ok()) failed = c.status();
      return false;
    }
    return reverse ? *c > 0 : *c < 0;
  });
  CS_RETURN_IF_ERROR(failed);
  std::vector<Value> out;
  for (const auto& [k, i] : keyed)
    out.push_back(items[i]);
  return out;
}

bool bool_arg(const std::optional<Value>& v, bool dflt) {
  return v ? truthy(*v) : dflt;
}

// ---- number parsing as Python's int(str, base) / float(str) --------------------
std::string strip_py(const std::string& s) {
  return py_strip(s, std::nullopt, true, true);
}

// Removes underscores that sit between two digits; nullopt if any other underscore.
std::optional<std::string> drop_underscores(const std::string& s, int base) {
  auto is_digit = [base](char c) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (base <= 10) return c >= '0' && c < '0' + base;
    return (c >= '0' && c <= '9') || (c >= 'a' && c < 'a' + base - 10);
  };
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '_') {
      out.push_back(s[i]);
      continue;
    }
    if (i == 0 || i + 1 >= s.size() || !is_digit(s[i - 1]) || !is_digit(s[i + 1]))
      return std::nullopt;
  }
  return out;
}

// int(s, base): nullopt on a ValueError; an error on overflow.
Result<std::optional<int64_t>> parse_int(const std::string& text, int base) {
  std::string s = strip_py(text);
  bool neg = false;
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    neg = s[0] == '-';
    s = s.substr(1);
  }
  auto prefix_base = [&](char p) {
    return s.size() > 2 && s[0] == '0' && std::tolower(static_cast<unsigned char>(s[1])) == p;
  };
  if (base == 0) {
    base = prefix_base('x') ? 16 : prefix_base('o') ? 8 : prefix_base('b') ? 2 : 10;
  }
  if ((base == 16 && prefix_base('x')) || (base == 8 && prefix_base('o')) ||
      (base == 2 && prefix_base('b'))) {
    s = s.substr(2);
    if (!s.empty() && s[0] == '_') s = s.substr(1);
  }
  auto cleaned = drop_underscores(s, base);
  if (!cleaned || cleaned->empty()) return std::optional<int64_t>();
  for (char c : *cleaned) {
    const int d = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                  : std::isalpha(static_cast<unsigned char>(c))
                      ? std::tolower(static_cast<unsigned char>(c)) - 'a' + 10
                      : 99;
    if (d >= base) return std::optional<int64_t>();
  }
  errno = 0;
  const unsigned long long v = std::strtoull(cleaned->c_str(), nullptr, base);
  if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX) + (neg ? 1 : 0)) {
    return type_error("integer value " + text + " is beyond 64 bits");
  }
  return std::optional<int64_t>(neg ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v));
}

std::optional<double> parse_float(const std::string& text) {
  std::string s = strip_py(text);
  std::string lower = ascii_lower(s);
  std::string body = lower;
  double sign = 1.0;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    sign = body[0] == '-' ? -1.0 : 1.0;
    body = body.substr(1);
  }
  if (body == "inf" || body == "infinity") return sign * HUGE_VAL;
  if (body == "nan") return std::nan("");
  auto cleaned = drop_underscores(s, 10);
  if (!cleaned || cleaned->empty()) return std::nullopt;
  // [sign] (digits [. digits*] | . digits) [e [sign] digits]
  const std::string& c = *cleaned;
  size_t i = (c[0] == '+' || c[0] == '-') ? 1 : 0;
  size_t int_digits = 0, frac_digits = 0;
  while (i < c.size() && std::isdigit(static_cast<unsigned char>(c[i])))
    ++i, ++int_digits;
  if (i < c.size() && c[i] == '.') {
    ++i;
    while (i < c.size() && std::isdigit(static_cast<unsigned char>(c[i])))
      ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) return std::nullopt;
  if (i < c.size() && (c[i] == 'e' || c[i] == 'E')) {
    ++i;
    if (i < c.size() && (c[i] == '+' || c[i] == '-')) ++i;
    size_t exp_digits = 0;
    while (i < c.size() && std::isdigit(static_cast<unsigned char>(c[i])))
      ++i, ++exp_digits;
    if (exp_digits == 0) return std::nullopt;
  }
  if (i != c.size()) return std::nullopt;
  return std::strtod(c.c_str(), nullptr);
}

// Python's round(x, ndigits) for floats: correctly rounded, ties to even.
double py_round(double x, int64_t ndigits) {
  if (!std::isfinite(x)) return x;
  if (ndigits == 0) return std::nearbyint(x);
  if (ndigits > 0) {
    if (ndigits > 300) return x;
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(ndigits), x);
    return std::strtod(buf, nullptr);
  }
  if (ndigits < -308) return std::copysign(0.0, x);
  const double p = std::pow(10.0, static_cast<double>(-ndigits));
  return std::nearbyint(x / p) * p;
}

// ---- filters -------------------------------------------------------------------
Result<Value> f_tojson(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(
      auto b, bind_args("tojson", a, {"ensure_ascii", "indent", "separators", "sort_keys"}, 0));
  JsonOptions o;
  o.ensure_ascii = bool_arg(b[0], false);
  if (b[1] && !b[1]->is_none()) {
    if (b[1]->is_string()) {
      o.indent = b[1]->as_string();
    } else {
      CS_ASSIGN_OR_RETURN(int64_t n, arg_int("tojson", "indent", *b[1]));
      o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(n, 0, 1024)), ' ');
    }
  }
  if (b[2] && !b[2]->is_none()) {
    if (!b[2]->is_sequence() || b[2]->items().size() != 2) {
      return type_error("tojson(): separators must be a (item_separator, key_separator) pair");
    }
    CS_ASSIGN_OR_RETURN(std::string item_sep, arg_str("tojson", "separators", b[2]->items()[0]));
    CS_ASSIGN_OR_RETURN(o.key_separator, arg_str("tojson", "separators", b[2]->items()[1]));
    o.item_separator = item_sep;
  }
  o.sort_keys = bool_arg(b[3], false);
  CS_ASSIGN_OR_RETURN(std::string s, to_json(v, o));
  return Value::string(std::move(s));
}

Result<Value> f_default(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("default", a, {"default_value", "boolean"}, 0));
  if (v.is_undefined() || (bool_arg(b[1], false) && !truthy(v))) {
    return b[0] ? *b[0] : Value::string("");
  }
  return v;
}

Result<Value> f_length(const Value& v, const Args& a) {
  CS_RETURN_IF_ERROR(bind_args("length", a, {}, 0).status());
  CS_ASSIGN_OR_RETURN(int64_t n, py_len(v));
  return Value::integer(n);
}

// soft_str(v).<op>(): a Markup operand stays Markup (Markup wraps str methods).
Result<Value> f_string_op(const Value& v, const Args& a, std::string_view name,
                          std::string (*op)(std::string_view)) {
  CS_RETURN_IF_ERROR(bind_args(name, a, {}, 0).status());
  return Value::string_like(v, op(to_str(v)));
}

// jinja2's title filter joins regex pieces into a plain str.
// value|format(*args) is `value % args`; value|format(**kw) is `value % kw`.
Result<Value> f_format(const Value& v, const Args& a) {
  if (!a.positional.empty() && !a.keyword.empty()) {
    return type_error("can't handle positional and keyword arguments at the same time");
  }
  Value args;
  if (!a.keyword.empty()) {
    std::vector<std::pair<std::string, Value>> kw(a.keyword.begin(), a.keyword.end());
    args = Value::dict(std::move(kw));
  } else {
    args = Value::tuple(a.positional);
  }
  const Value text = v.is_string() ? v : Value::string(to_str(v));
  return py_percent_format(text, args);
}

Result<Value> f_title(const Value& v, const Args& a) {
  CS_RETURN_IF_ERROR(bind_args("title", a, {}, 0).status());
  return Value::string(jinja_title(to_str(v)));
}

// markupsafe.escape: Markup passes through, anything else is str()-ed and escaped.
Result<Value> f_escape(const Value& v, const Args& a) {
  CS_RETURN_IF_ERROR(bind_args("escape", a, {}, 0).status());
  if (v.is_markup()) return v;
  return Value::markup(html_escape(to_str(v)));
}

Result<Value> f_trim(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("trim", a, {"chars"}, 0));
  std::optional<std::string> chars;
  if (b[0] && !b[0]->is_none()) {
    CS_ASSIGN_OR_RETURN(chars, arg_str("trim", "chars", *b[0]));
  }
  if (v.is_markup() && chars) *chars = html_escape(*chars);  // Markup escapes method args
  return Value::string_like(v, py_strip(to_str(v), chars, true, true));
}

Result<Value> f_join(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("join", a, {"d", "attribute"}, 0));
  const std::string sep = b[0] ? to_str(*b[0]) : "";
  // Joining a string's characters multiplies its size by the separator's:
  // nested joins grow exponentially (a fuzzer's template). Refused before the
  // characters are split when the result would pass kMaxBuiltSize.
  const auto too_large = [] {
    return Status(ErrorCode::kInvalidArgument, "join result is too large");
  };
  if (v.is_string() && !sep.empty()) {
    const size_t n = v.as_string().size();  // characters <= bytes: an upper bound
    if (n > kMaxBuiltSize || (n > 0 && n - 1 > (kMaxBuiltSize - n) / sep.size())) {
      return too_large();
    }
  }
  const bool by_attribute = b[1] && !b[1]->is_none();
  std::string out;
  if (v.is_string() && !by_attribute) {
    // The characters as iterate() gives them, without a value per character.
    bool first = true;
    for (char32_t cp : decode_utf8(v.as_string())) {
      if (!first) out += sep;
      first = false;
      append_utf8(out, cp);
    }
    return Value::string(std::move(out));
  }
  CS_ASSIGN_OR_RETURN(auto items, iterate(v));
  for (size_t i = 0; i < items.size(); ++i) {
    Value item = items[i];
    if (by_attribute) {
      CS_ASSIGN_OR_RETURN(item, lookup_attribute(item, *b[1]));
    }
    if (i) out += sep;
    out += to_str(item);
    if (out.size() > kMaxBuiltSize) return too_large();
  }
  return Value::string(std::move(out));
}

Result<Value> f_first(const Value& v, const Args& a) {
  CS_RETURN_IF_ERROR(bind_args("first", a, {}, 0).status());
  CS_ASSIGN_OR_RETURN(auto items, iterate(v));
  if (items.empty()) return Value::undefined("No first item, sequence was empty.");
  return items.front();
}

Result<Value> f_last(const Value& v, const Args& a) {
  CS_RETURN_IF_ERROR(bind_args("last", a, {}, 0).status());
  if (v.is_object()) return type_error(fmt::format("'{}' object is not reversible", type_name(v)));
  CS_ASSIGN_OR_RETURN(auto items, iterate(v));
  if (items.empty()) return Value::undefined("No last item, sequence was empty.");
  return items.back();
}

Result<Value> f_list(const Value& v, const Args& a) {
  CS_RETURN_IF_ERROR(bind_args("list", a, {}, 0).status());
  CS_ASSIGN_OR_RETURN(auto items, iterate(v));
  return Value::list(std::move(items));
}

Result<Value> f_items(const Value& v, const Args& a) {
  CS_RETURN_IF_ERROR(bind_args("items", a, {}, 0).status());
  if (v.is_undefined()) return make_iterator("generator", {});
  if (!v.is_dict()) return type_error("Can only get item pairs from a mapping.");
  std::vector<Value> out;
  for (const auto& [k, val] : v.dict_items())
    out.push_back(Value::tuple({k, val}));
  return make_iterator("generator", std::move(out));
}

Result<Value> f_dictsort(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("dictsort", a, {"case_sensitive", "by", "reverse"}, 0));
  if (!v.is_dict()) return type_error("dictsort(): value must be a mapping");
  int pos = 0;
  if (b[1]) {
    CS_ASSIGN_OR_RETURN(std::string by, arg_str("dictsort", "by", *b[1]));
    if (by == "value") {
      pos = 1;
    } else if (by != "key") {
      return type_error("You can only sort by either \"key\" or \"value\"");
    }
  }
  std::vector<Value> pairs;
  for (const auto& [k, val] : v.dict_items())
    pairs.push_back(Value::tuple({k, val}));
  KeyFn key{Value::integer(pos), !bool_arg(b[0], false)};
  CS_ASSIGN_OR_RETURN(auto out, sorted(std::move(pairs), key, bool_arg(b[2], false)));
  return Value::list(std::move(out));
}

Result<Value> f_sort(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("sort", a, {"reverse", "case_sensitive", "attribute"}, 0));
  CS_ASSIGN_OR_RETURN(auto items, iterate(v));
  KeyFn key;
  if (b[2] && !b[2]->is_none()) key.attribute = *b[2];
  key.lower = !bool_arg(b[1], false);
  CS_ASSIGN_OR_RETURN(auto out, sorted(std::move(items), key, bool_arg(b[0], false)));
  return Value::list(std::move(out));
}

Result<Value> f_unique(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("unique", a, {"case_sensitive", "attribute"}, 0));
  CS_ASSIGN_OR_RETURN(auto items, iterate(v));
  KeyFn key;
  if (b[1] && !b[1]->is_none()) key.attribute = *b[1];
  key.lower = !bool_arg(b[0], false);
  std::vector<Value> seen, out;
  for (const auto& item : items) {
    CS_ASSIGN_OR_RETURN(Value k, key(item));
    if (!is_hashable(k)) return type_error(fmt::format("unhashable type: '{}'", type_name(k)));
    if (std::any_of(seen.begin(), seen.end(), [&](const Value& s) { return py_equal(s, k); }))
      continue;
    seen.push_back(k);
    out.push_back(item);
  }
  return make_iterator("generator", std::move(out));
}

Result<Value> f_min_max(const Value& v, const Args& a, bool want_max) {
  const char* name = want_max ? "max" : "min";
  CS_ASSIGN_OR_RETURN(auto b, bind_args(name, a, {"case_sensitive", "attribute"}, 0));
  CS_ASSIGN_OR_RETURN(auto items, iterate(v));
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  KeyFn key;
  if (b[1] && !b[1]->is_none()) key.attribute = *b[1];
  key.lower = !bool_arg(b[0], false);
  size_t best = 0;
  CS_ASSIGN_OR_RETURN(Value best_key, key(items[0]));
  for (size_t i = 1; i < items.size(); ++i) {
    CS_ASSIGN_OR_RETURN(Value k, key(items[i]));
    CS_ASSIGN_OR_RETURN(int c, py_compare(k, best_key));
    if (want_max ? c > 0 : c < 0) {
      best = i;
      best_key = k;
    }
  }
  return items[best];
}

Result<Value> f_sum(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("sum", a, {"attribute", "start"}, 0));
  CS_ASSIGN_OR_RETURN(auto items, iterate(v));
  Value total = b[1] ? *b[1] : Value::integer(0);
  if (total.is_string()) return type_error("sum() can't sum strings [use ''.join(seq) instead]");
  for (const auto& item : items) {
    Value x = item;
    if (b[0] && !b[0]->is_none()) {
      CS_ASSIGN_OR_RETURN(x, lookup_attribute(item, *b[0]));
    }
    CS_ASSIGN_OR_RETURN(total, binary_op("+", total, x));
  }
  return total;
}

Result<Value> f_reverse(const Value& v, const Args& a) {
  CS_RETURN_IF_ERROR(bind_args("reverse", a, {}, 0).status());
  if (v.is_string()) {
    std::u32string cps = decode_utf8(v.as_string());
    std::reverse(cps.begin(), cps.end());
    return Value::string_like(v, encode_utf8(cps));
  }
  const bool reversible = v.is_sequence() || v.is_dict();
  CS_ASSIGN_OR_RETURN(auto items, iterate(v));
  std::reverse(items.begin(), items.end());
  if (reversible) {
    return make_iterator(
        v.is_dict() ? "dict_reversekeyiterator" : type_name(v) + "_reverseiterator",
        std::move(items));
  }
  return Value::list(std::move(items));
}

Result<Value> f_replace(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("replace", a, {"old", "new", "count"}, 2));
  int64_t count = -1;
  if (b[2] && !b[2]->is_none()) {
    CS_ASSIGN_OR_RETURN(count, arg_int("replace", "count", *b[2]));
  }
  return Value::string(py_replace(to_str(v), to_str(*b[0]), to_str(*b[1]), count));
}

Result<Value> f_int(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("int", a, {"default", "base"}, 0));
  const Value dflt = b[0] ? *b[0] : Value::integer(0);
  int64_t base = 10;
  if (b[1]) {
    CS_ASSIGN_OR_RETURN(base, arg_int("int", "base", *b[1]));
  }
  if (v.is_undefined()) return undefined_error(v);
  if (v.is_bool() || v.is_int()) return Value::integer(v.as_int());
  if (v.is_float()) {
    const double d = v.as_double();
    if (!std::isfinite(d)) return dflt;
    if (std::fabs(d) >= 9.2e18) return type_error("integer value is beyond 64 bits");
    return Value::integer(static_cast<int64_t>(d));
  }
  if (v.is_string()) {
    if (base != 0 && (base < 2 || base > 36)) return dflt;
    CS_ASSIGN_OR_RETURN(auto i, parse_int(v.as_string(), static_cast<int>(base)));
    if (i) return Value::integer(*i);
    auto d = parse_float(v.as_string());
    if (!d || !std::isfinite(*d)) return dflt;
    if (std::fabs(*d) >= 9.2e18) return type_error("integer value is beyond 64 bits");
    return Value::integer(static_cast<int64_t>(*d));
  }
  return dflt;
}

Result<Value> f_float(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("float", a, {"default"}, 0));
  const Value dflt = b[0] ? *b[0] : Value::number(0.0);
  if (v.is_undefined()) return undefined_error(v);
  if (v.is_number()) return Value::number(v.as_double());
  if (v.is_string()) {
    auto d = parse_float(v.as_string());
    return d ? Value::number(*d) : dflt;
  }
  return dflt;
}

Result<Value> f_round(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("round", a, {"precision", "method"}, 0));
  int64_t precision = 0;
  if (b[0]) {
    CS_ASSIGN_OR_RETURN(precision, arg_int("round", "precision", *b[0]));
  }
  std::string method = "common";
  if (b[1]) {
    CS_ASSIGN_OR_RETURN(method, arg_str("round", "method", *b[1]));
  }
  if (method != "common" && method != "ceil" && method != "floor") {
    return type_error("method must be common, ceil or floor");
  }
  if (v.is_undefined()) return undefined_error(v);
  if (!v.is_number())
    return type_error("type " + type_name(v) + " doesn't define __round__ method");
  if (method == "common") {
    if (!v.is_float()) {
      if (precision >= 0) return Value::integer(v.as_int());
      const double r = py_round(v.as_double(), precision);
      return Value::integer(static_cast<int64_t>(r));
    }
    return Value::number(py_round(v.as_double(), precision));
  }
  const double scale = std::pow(10.0, static_cast<double>(precision));
  const double x = v.as_double() * scale;
  return Value::number((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

Result<Value> f_abs(const Value& v, const Args& a) {
  CS_RETURN_IF_ERROR(bind_args("abs", a, {}, 0).status());
  if (v.is_float()) return Value::number(std::fabs(v.as_double()));
  if (v.is_int() || v.is_bool()) {
    if (v.as_int() == INT64_MIN) return type_error("integer overflow");
    return Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
  }
  if (v.is_undefined()) return undefined_error(v);
  return type_error("bad operand type for abs(): '" + type_name(v) + "'");
}

Result<Value> f_attr(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("attr", a, {"name"}, 1));
  return get_python_attr(v, to_str(*b[0]));
}

Result<Value> f_center(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("center", a, {"width"}, 0));
  int64_t width = 80;
  if (b[0]) {
    CS_ASSIGN_OR_RETURN(width, arg_int("center", "width", *b[0]));
  }
  return Value::string_like(v, py_center(to_str(v), width));
}

Result<Value> f_indent(const Value& v, const Args& a) {
  CS_ASSIGN_OR_RETURN(auto b, bind_args("indent", a, {"width", "first", "blank"}, 0));
  std::string indention = "    ";
  if (b[0]) {
    if (b[0]->is_string()) {
      indention = b[0]->as_string();
    } else {
      CS_ASSIGN_OR_RETURN(int64_t w, arg_int("indent", "width", *b[0]));
      indention = std::string(static_cast<size_t>(std::clamp<int64_t>(w, 0, 1024)), ' ');
    }
  }
  if (!v.is_string()) {
    if (v.is_undefined()) return undefined_error(v);
    return type_error("indent(): value must be a string, not '" + type_name(v) + "'");
  }
  // jinja2 appends "\n" before splitlines(), so a trailing newline is dropped.
  std::vector<std::string> lines = py_splitlines(v.as_string() + "\n");
  std::string out;
  if (bool_arg(b[2], false)) {
    for (size_t i = 0; i < lines.size(); ++i)
      out += (i ? "\n" + indention : "") + lines[i];
  } else {
    out = lines.empty() ? "" : lines[0];
    for (size_t i = 1; i < lines.size(); ++i) {
      out += "\n";
      if (!lines[i].empty()) out += indention;
      out += lines[i];
    }
  }
  if (bool_arg(b[1], false)) out = indention + out;
  return Value::string_like(v, std::move(out));
}

Result<Value> f_map(const Value& v, const Args& a) {
  std::function<Result<Value>(const Value&)> fn;
  if (a.positional.empty()) {
    std::optional<Value> attribute, dflt;
    for (const auto& [k, val] : a.keyword) {
      if (k == "attribute") {
        attribute = val;
      } else if (k == "default") {
        dflt = val;
      } else {
        return type_error("Unexpected keyword argument '" + k + "'");
      }
    }
    if (!attribute) return type_error("map requires a filter argument");
    fn = [attribute, dflt](const Value& item) -> Result<Value> {
      CS_ASSIGN_OR_RETURN(Value r, lookup_attribute(item, *attribute));
      if (dflt && !dflt->is_none() && r.is_undefined()) return *dflt;
      return r;
    };
  } else {
    CS_ASSIGN_OR_RETURN(std::string name, arg_str("map", "filter", a.positional[0]));
    if (filter_support(name) != Support::kSupported) {
      return type_error("No filter named '" + name + "'.");
    }
    Args rest;
    rest.positional.assign(a.positional.begin() + 1, a.positional.end());
    rest.keyword = a.keyword;
    fn = [name, rest](const Value& item) { return apply_filter(name, item, rest); };
  }
  std::vector<Value> out;
  if (truthy(v)) {
    CS_ASSIGN_OR_RETURN(auto items, iterate(v));
    for (const auto& item : items) {
      CS_ASSIGN_OR_RETURN(Value r, fn(item));
      out.push_back(std::move(r));
    }
  }
  return make_iterator("generator", std::move(out));
}

// select / reject / selectattr / rejectattr
Result<Value> select_or_reject(const Value& v, const Args& a, bool keep_matching,
                               bool lookup_attr) {
  const char* name = lookup_attr ? (keep_matching ? "selectattr" : "rejectattr")
                                 : (keep_matching ? "select" : "reject");
  size_t off = 0;
  std::optional<Value> attribute;
  if (lookup_attr) {
    if (a.positional.empty()) return type_error("Missing parameter for attribute name");
    attribute = a.positional[0];
    off = 1;
  }
  std::optional<std::string> test;
  Args test_args;
  if (a.positional.size() > off) {
    CS_ASSIGN_OR_RETURN(std::string t, arg_str(name, "test", a.positional[off]));
    if (test_support(t) != Support::kSupported) return type_error("No test named '" + t + "'.");
    test = t;
    test_args.positional.assign(a.positional.begin() + static_cast<long>(off) + 1,
                                a.positional.end());
  }
  test_args.keyword = a.keyword;
  std::vector<Value> out;
  if (truthy(v)) {
    CS_ASSIGN_OR_RETURN(auto items, iterate(v));
    for (const auto& item : items) {
      Value x = item;
      if (attribute) {
        CS_ASSIGN_OR_RETURN(x, lookup_attribute(item, *attribute));
      }
      bool hit = truthy(x);
      if (test) {
        CS_ASSIGN_OR_RETURN(hit, apply_test(*test, x, test_args));
      }
      if (hit == keep_matching) out.push_back(item);
    }
  }
  return make_iterator("generator", std::move(out));
}

const std::map<std::string, FilterFn, std::less<>>& filters() {
  static const auto* table = new std::map<std::string, FilterFn, std::less<>>{
      {"abs", f_abs},
      {"attr", f_attr},
      {"capitalize", [](const Value& v,
                        const Args& a) { return f_string_op(v, a, "capitalize", py_capitalize); }},
      {"center", f_center},
      {"count", f_length},
      {"d", f_default},
      {"default", f_default},
      {"dictsort", f_dictsort},
      {"e", f_escape},
      {"escape", f_escape},

      {"first", f_first},
      {"float", f_float},
      {"format", f_format},
      {"forceescape",
       [](const Value& v, const Args& a) -> Result<Value> {
         CS_RETURN_IF_ERROR(bind_args("forceescape", a, {}, 0).status());
         return Value::markup(html_escape(to_str(v)));
       }},

      {"indent", f_indent},
      {"int", f_int},
      {"items", f_items},
      {"join", f_join},
      {"last", f_last},
      {"length", f_length},
      {"list", f_list},
      {"lower", [](const Value& v, const Args& a) { return f_string_op(v, a, "lower", py_lower); }},
      {"map", f_map},
      {"max", [](const Value& v, const Args& a) { return f_min_max(v, a, true); }},
      {"min", [](const Value& v, const Args& a) { return f_min_max(v, a, false); }},
      {"reject",
       [](const Value& v, const Args& a) { return select_or_reject(v, a, false, false); }},
      {"rejectattr",
       [](const Value& v, const Args& a) { return select_or_reject(v, a, false, true); }},
      {"replace", f_replace},
      {"reverse", f_reverse},
      {"round", f_round},
      {"safe",
       [](const Value& v, const Args& a) -> Result<Value> {
         CS_RETURN_IF_ERROR(bind_args("safe", a, {}, 0).status());
         return Value::markup(to_str(v));
       }},
      {"select", [](const Value& v, const Args& a) { return select_or_reject(v, a, true, false); }},
      {"selectattr",
       [](const Value& v, const Args& a) { return select_or_reject(v, a, true, true); }},
      {"sort", f_sort},
      {"string",
       [](const Value& v, const Args& a) -> Result<Value> {
         CS_RETURN_IF_ERROR(bind_args("string", a, {}, 0).status());
         return Value::string_like(v, to_str(v));
       }},
      {"sum", f_sum},
      {"title", f_title},

      {"tojson", f_tojson},
      {"trim", f_trim},
      {"unique", f_unique},
      {"upper", [](const Value& v, const Args& a) { return f_string_op(v, a, "upper", py_upper); }},
  };
  return *table;
}

// ---- tests ---------------------------------------------------------------------
Result<bool> modulo_is(const Value& v, const Value& divisor, int64_t want) {
  CS_ASSIGN_OR_RETURN(Value r, binary_op("%", v, divisor));
  return py_equal(r, Value::integer(want));
}

TestFn compare_test(const char* op) {
  return [op](const Value& v, const Args& a) -> Result<bool> {
    CS_ASSIGN_OR_RETURN(auto b, bind_args(op, a, {"other"}, 1));
    return compare_op(op, v, *b[0]);
  };
}

TestFn simple_test(bool (*pred)(const Value&)) {
  return [pred](const Value& v, const Args& a) -> Result<bool> {
    CS_RETURN_IF_ERROR(bind_args("test", a, {}, 0).status());
    return pred(v);
  };
}

// Undefined defines __call__ (it raises), so callable() is true for it.
bool callable_value(const Value& v) {
  return v.is_undefined() || (v.is_object() && v.as_object()->is_callable());
}

bool str_case_test(const Value& v, bool lower) {
  const std::string text = to_str(v);
  return lower ? py_islower(text) : py_isupper(text);
}

const std::map<std::string, TestFn, std::less<>>& tests() {
  static const auto* table = new std::map<std::string, TestFn, std::less<>>{
      {"odd",
       [](const Value& v, const Args& a) -> Result<bool> {
         CS_RETURN_IF_ERROR(bind_args("odd", a, {}, 0).status());
         return modulo_is(v, Value::integer(2), 1);
       }},
      {"even",
       [](const Value& v, const Args& a) -> Result<bool> {
         CS_RETURN_IF_ERROR(bind_args("even", a, {}, 0).status());
         return modulo_is(v, Value::integer(2), 0);
       }},
      {"divisibleby",
       [](const Value& v, const Args& a) -> Result<bool> {
         CS_ASSIGN_OR_RETURN(auto b, bind_args("divisibleby", a, {"num"}, 1));
         return modulo_is(v, *b[0], 0);
       }},
      {"defined", simple_test([](const Value& v) { return !v.is_undefined(); })},
      {"undefined", simple_test([](const Value& v) { return v.is_undefined(); })},
      {"filter", simple_test([](const Value& v) {
         return v.is_string() && filter_support(v.as_string()) == Support::kSupported;
       })},
      {"test", simple_test([](const Value& v) {
         return v.is_string() && test_support(v.as_string()) == Support::kSupported;
       })},
      {"none", simple_test([](const Value& v) { return v.is_none(); })},
      {"boolean", simple_test([](const Value& v) { return v.is_bool(); })},
      {"false", simple_test([](const Value& v) { return v.is_bool() && !v.as_bool(); })},
      {"true", simple_test([](const Value& v) { return v.is_bool() && v.as_bool(); })},
      {"integer", simple_test([](const Value& v) { return v.is_int(); })},
      {"float", simple_test([](const Value& v) { return v.is_float(); })},
      {"lower", simple_test([](const Value& v) { return str_case_test(v, true); })},
      {"upper", simple_test([](const Value& v) { return str_case_test(v, false); })},
      {"string", simple_test([](const Value& v) { return v.is_string(); })},
      {"escaped", simple_test([](const Value& v) { return v.is_markup(); })},
      {"mapping", simple_test([](const Value& v) { return v.is_dict(); })},
      {"number", simple_test([](const Value& v) { return v.is_number(); })},
      // Undefined has __len__ and __getitem__, so jinja2 calls it a sequence.
      {"sequence", simple_test([](const Value& v) {
         return v.is_undefined() || v.is_string() || v.is_sequence() || v.is_dict();
       })},
      {"iterable", simple_test([](const Value& v) {
         return v.is_undefined() || v.is_string() || v.is_sequence() || v.is_dict() ||
                (v.is_object() &&
                 dynamic_cast<const TemplateIterator*>(v.as_object().get()) != nullptr);
       })},
      {"callable", simple_test(callable_value)},
      {"sameas",
       [](const Value& v, const Args& a) -> Result<bool> {
         CS_ASSIGN_OR_RETURN(auto b, bind_args("sameas", a, {"other"}, 1));
         return v.same_as(*b[0]);
       }},
      {"in",
       [](const Value& v, const Args& a) -> Result<bool> {
         CS_ASSIGN_OR_RETURN(auto b, bind_args("in", a, {"seq"}, 1));
         return contains(*b[0], v);
       }},
      {"==", compare_test("==")},
      {"eq", compare_test("==")},
      {"equalto", compare_test("==")},
      {"!=", compare_test("!=")},
      {"ne", compare_test("!=")},
      {">", compare_test(">")},
      {"gt", compare_test(">")},
      {"greaterthan", compare_test(">")},
      {">=", compare_test(">=")},
      {"ge", compare_test(">=")},
      {"<", compare_test("<")},
      {"lt", compare_test("<")},
      {"lessthan", compare_test("<")},
      {"<=", compare_test("<=")},
      {"le", compare_test("<=")},
  };
  return *table;
}

}  // namespace

Support filter_support(std::string_view name) {
  if (filters().count(name)) return Support::kSupported;
  if (kUnsupportedFilters.count(name)) return Support::kUnsupported;
  return Support::kUnknown;
}

Support test_support(std::string_view name) {
  return tests().count(name) ? Support::kSupported : Support::kUnknown;
}

Result<TemplateValue> apply_filter(std::string_view name, const TemplateValue& operand,
                                   const TemplateCallArgs& args) {
  auto it = filters().find(name);
  if (it == filters().end()) {
    if (kUnsupportedFilters.count(name)) {
      return make_error(ErrorCode::kInvalidArgument,
                        "the '{}' filter is not supported in chat templates", name);
    }
    return make_error(ErrorCode::kInvalidArgument, "No filter named '{}' found.", name);
  }
  return it->second(operand, args);
}

Result<bool> apply_test(std::string_view name, const TemplateValue& operand,
                        const TemplateCallArgs& args) {
  auto it = tests().find(name);
  if (it == tests().end()) {
    return make_error(ErrorCode::kInvalidArgument, "No test named '{}' found.", name);
  }
  return it->second(operand, args);
}

}  // namespace cartserve::jinja
