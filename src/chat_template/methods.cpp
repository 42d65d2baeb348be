#include "chat_template/methods.h"

#include <algorithm>
#include <set>

#include "chat_template/format.h"
#include "chat_template/functions.h"
#include "chat_template/ops.h"
#include "chat_template/text.h"

namespace cartserve::jinja {

namespace {

using Args = TemplateCallArgs;

const std::set<std::string, std::less<>> kListMutators = {"append", "extend",  "insert", "pop",
                                                          "remove", "reverse", "sort",   "clear"};
const std::set<std::string, std::less<>> kDictMutators = {"clear", "pop", "popitem", "setdefault",
                                                          "update"};
// Real str attributes this interpreter does not implement: using one is an
// error that names it, never a silently different result.
const std::set<std::string, std::less<>> kUnsupportedStrMethods = {
    "format_map",   "casefold",  "encode",      "expandtabs", "isdecimal",
    "isidentifier", "isnumeric", "isprintable", "istitle",    "ljust",
    "rjust",        "maketrans", "partition",   "rpartition", "removeprefix",
    "removesuffix", "rindex",    "swapcase",    "translate",  "zfill"};

TemplateValue unsafe(const TemplateValue& obj, std::string_view name) {
  return TemplateValue::undefined("access to attribute '" + std::string(name) + "' of '" +
                                  type_name(obj) + "' object is unsafe.");
}

TemplateValue str_list(const std::vector<std::string>& parts, bool markup) {
  TemplateValue::Items items;
  for (const auto& p : parts) {
    items.push_back(markup ? TemplateValue::markup(p) : TemplateValue::string(p));
  }
  return TemplateValue::list(std::move(items));
}

// None or a str, as the optional `chars` / `sep` parameters take.
Result<std::optional<std::string>> opt_str(std::string_view fn, std::string_view param,
                                           const std::optional<TemplateValue>& v) {
  if (!v || v->is_none()) return std::optional<std::string>();
  CS_ASSIGN_OR_RETURN(std::string s, arg_str(fn, param, *v));
  return std::optional<std::string>(std::move(s));
}

// A str or a tuple of str (startswith / endswith).
Result<std::vector<std::string>> affixes(std::string_view fn, const TemplateValue& v) {
  std::vector<std::string> out;
  if (v.is_tuple()) {
    for (const auto& item : v.items()) {
      CS_ASSIGN_OR_RETURN(std::string s, arg_str(fn, "prefix", item));
      out.push_back(std::move(s));
    }
    return out;
  }
  if (!v.is_string()) {
    return make_error(ErrorCode::kInvalidArgument,
                      "{} first arg must be str or a tuple of str, not {}", fn, type_name(v));
  }
  out.push_back(v.as_string());
  return out;
}

template <typename Pred>
bool all_chars(const std::string& s, Pred pred) {
  if (s.empty()) return false;
  std::u32string cps = decode_utf8(s);
  return std::all_of(cps.begin(), cps.end(), pred);
}

// Markup's str methods return Markup and escape their str arguments
// (markupsafe's escaping wrappers); `esc` applies that to one argument.
std::string esc(bool markup, const std::string& arg) {
  return markup ? html_escape(arg) : arg;
}

std::optional<TemplateValue> str_method(const TemplateValue& self, std::string_view name) {
  const std::string& s = self.as_string();
  const bool markup = self.is_markup();
  const std::string n(name);
  auto fn = [&](NativeFunction f) { return make_function("str." + n, std::move(f)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const bool left = name != "rstrip", right = name != "lstrip";
    return fn([self, n, left, right](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args(n, a, {"chars"}, 0));
      CS_ASSIGN_OR_RETURN(auto chars, opt_str(n, "chars", b[0]));
      if (chars) *chars = esc(self.is_markup(), *chars);
      return TemplateValue::string_like(self, py_strip(self.as_string(), chars, left, right));
    });
  }
  if (name == "split" || name == "rsplit") {
    const bool right = name == "rsplit";
    return fn([s, n, right, markup](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args(n, a, {"sep", "maxsplit"}, 0));
      CS_ASSIGN_OR_RETURN(auto sep, opt_str(n, "sep", b[0]));
      int64_t maxsplit = -1;
      if (b[1]) {
        CS_ASSIGN_OR_RETURN(maxsplit, arg_int(n, "maxsplit", *b[1]));
      }
      if (sep && sep->empty()) return Status(ErrorCode::kInvalidArgument, "empty separator");
      return str_list(right ? py_rsplit(s, sep, maxsplit) : py_split(s, sep, maxsplit), markup);
    });
  }
  if (name == "splitlines") {
    return fn([s, markup](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args("splitlines", a, {"keepends"}, 0));
      if (b[0] && truthy(*b[0])) {
        return Status(ErrorCode::kInvalidArgument,
                      "str.splitlines(keepends=True) is not supported");
      }
      return str_list(py_splitlines(s), markup);
    });
  }
  if (name == "startswith" || name == "endswith") {
    const bool start = name == "startswith";
    return fn([s, n, start](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args(n, a, {"prefix"}, 1));
      CS_ASSIGN_OR_RETURN(auto list, affixes(n, *b[0]));
      for (const auto& p : list) {
        const bool hit =
            start ? s.compare(0, p.size(), p) == 0 && s.size() >= p.size()
                  : s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
        if (hit) return TemplateValue::boolean(true);
      }
      return TemplateValue::boolean(false);
    });
  }
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
    return fn([self, n](const Args& a) -> Result<TemplateValue> {
      CS_RETURN_IF_ERROR(bind_args(n, a, {}, 0).status());
      const std::string& s = self.as_string();
      if (n == "upper") return TemplateValue::string_like(self, py_upper(s));
      if (n == "lower") return TemplateValue::string_like(self, py_lower(s));
      if (n == "title") return TemplateValue::string_like(self, py_title(s));
      return TemplateValue::string_like(self, py_capitalize(s));
    });
  }
  if (name == "replace") {
    return fn([self](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args("replace", a, {"old", "new", "count"}, 2));
      CS_ASSIGN_OR_RETURN(std::string old_s, arg_str("replace", "old", *b[0]));
      CS_ASSIGN_OR_RETURN(std::string new_s, arg_str("replace", "new", *b[1]));
      int64_t count = -1;
      if (b[2]) {
        CS_ASSIGN_OR_RETURN(count, arg_int("replace", "count", *b[2]));
      }
      const bool m = self.is_markup();
      return TemplateValue::string_like(
          self, py_replace(self.as_string(), esc(m, old_s), esc(m, new_s), count));
    });
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "count") {
    return fn([s, n](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args(n, a, {"sub"}, 1));
      CS_ASSIGN_OR_RETURN(std::string sub, arg_str(n, "sub", *b[0]));
      if (n == "count") return TemplateValue::integer(py_count(s, sub));
      const int64_t at = py_find(s, sub, n == "rfind");
      if (at < 0 && n == "index") return Status(ErrorCode::kInvalidArgument, "substring not found");
      return TemplateValue::integer(at);
    });
  }
  if (name == "join") {
    return fn([s, markup](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args("join", a, {"iterable"}, 1));
      CS_ASSIGN_OR_RETURN(auto items, iterate(*b[0]));
      std::string out;
      for (size_t i = 0; i < items.size(); ++i) {
        if (!items[i].is_string()) {
          return make_error(ErrorCode::kInvalidArgument,
                            "sequence item {}: expected str instance, {} found", i,
                            type_name(items[i]));
        }
        if (i) out += s;
        // Markup.join escapes plain items.
        out += items[i].is_markup() ? items[i].as_string() : esc(markup, items[i].as_string());
      }
      return markup ? TemplateValue::markup(std::move(out)) : TemplateValue::string(std::move(out));
    });
  }
  if (name == "format") {
    return fn([self](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(std::string out, py_str_format(self.as_string(), a, self.is_markup()));
      return TemplateValue::string_like(self, std::move(out));
    });
  }
  if (name == "center") {
    return fn([self](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args("center", a, {"width"}, 1));
      CS_ASSIGN_OR_RETURN(int64_t width, arg_int("center", "width", *b[0]));
      return TemplateValue::string_like(self, py_center(self.as_string(), width));
    });
  }
  if (name == "isspace" || name == "isdigit" || name == "isalpha" || name == "isalnum" ||
      name == "islower" || name == "isupper") {
    return fn([s, n](const Args& a) -> Result<TemplateValue> {
      CS_RETURN_IF_ERROR(bind_args(n, a, {}, 0).status());
      // isdigit: ASCII digits only (Python also counts other Unicode digits).
      auto digit = [](char32_t c) { return c >= '0' && c <= '9'; };
      if (n == "isspace") return TemplateValue::boolean(all_chars(s, py_isspace));
      if (n == "isdigit") return TemplateValue::boolean(all_chars(s, digit));
      if (n == "isalpha") return TemplateValue::boolean(all_chars(s, py_isalpha_cp));
      if (n == "isalnum") {
        return TemplateValue::boolean(
            all_chars(s, [&](char32_t c) { return digit(c) || py_isalpha_cp(c); }));
      }
      return TemplateValue::boolean(n == "islower" ? py_islower(s) : py_isupper(s));
    });
  }
  if (kUnsupportedStrMethods.count(name)) {
    return fn([n](const Args&) -> Result<TemplateValue> {
      return make_error(ErrorCode::kInvalidArgument, "str.{}() is not supported in chat templates",
                        n);
    });
  }
  return std::nullopt;
}

std::optional<TemplateValue> dict_method(const TemplateValue& d, std::string_view name) {
  const std::string n(name);
  auto fn = [&](NativeFunction f) { return make_function("dict." + n, std::move(f)); };
  if (kDictMutators.count(name)) return unsafe(d, name);
  if (name == "get") {
    return fn([d](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args("get", a, {"key", "default"}, 1));
      const TemplateValue* v = d.find(*b[0]);
      if (v) return *v;
      return b[1] ? *b[1] : TemplateValue::none();
    });
  }
  if (name == "items" || name == "keys" || name == "values") {
    return fn([d, n](const Args& a) -> Result<TemplateValue> {
      CS_RETURN_IF_ERROR(bind_args(n, a, {}, 0).status());
      TemplateValue::Items out;
      for (const auto& [k, v] : d.dict_items()) {
        if (n == "items") {
          out.push_back(TemplateValue::tuple({k, v}));
        } else {
          out.push_back(n == "keys" ? k : v);
        }
      }
      return TemplateValue::list(std::move(out));
    });
  }
  if (name == "copy") {
    return fn([d](const Args& a) -> Result<TemplateValue> {
      CS_RETURN_IF_ERROR(bind_args("copy", a, {}, 0).status());
      return d;
    });
  }
  return std::nullopt;
}

std::optional<TemplateValue> seq_method(const TemplateValue& l, std::string_view name) {
  const std::string n(name);
  if (l.is_list() && kListMutators.count(name)) return unsafe(l, name);
  auto fn = [&](NativeFunction f) { return make_function(type_name(l) + "." + n, std::move(f)); };
  if (name == "index" || name == "count") {
    return fn([l, n](const Args& a) -> Result<TemplateValue> {
      CS_ASSIGN_OR_RETURN(auto b, bind_args(n, a, {"value"}, 1));
      int64_t count = 0;
      for (size_t i = 0; i < l.items().size(); ++i) {
        if (!py_equal(l.items()[i], *b[0])) continue;
        if (n == "index") return TemplateValue::integer(static_cast<int64_t>(i));
        ++count;
      }
      if (n == "index") {
        return make_error(ErrorCode::kInvalidArgument, "{} is not in list", to_repr(*b[0]));
      }
      return TemplateValue::integer(count);
    });
  }
  if (name == "copy" && l.is_list()) {
    return fn([l](const Args& a) -> Result<TemplateValue> {
      CS_RETURN_IF_ERROR(bind_args("copy", a, {}, 0).status());
      return l;
    });
  }
  return std::nullopt;
}

// int / float attributes (x.real, x.imag, ...).
std::optional<TemplateValue> number_attribute(const TemplateValue& v, std::string_view name) {
  if (name == "real") return v.is_float() ? v : TemplateValue::integer(v.as_int());
  if (name == "imag") return v.is_float() ? TemplateValue::number(0.0) : TemplateValue::integer(0);
  if (!v.is_float() && name == "numerator") return TemplateValue::integer(v.as_int());
  if (!v.is_float() && name == "denominator") return TemplateValue::integer(1);
  return std::nullopt;
}

}  // namespace

std::optional<TemplateValue> bound_method(const TemplateValue& obj, std::string_view name) {
  if (obj.is_number()) return number_attribute(obj, name);
  if (obj.is_string()) return str_method(obj, name);
  if (obj.is_dict()) return dict_method(obj, name);
  if (obj.is_sequence()) return seq_method(obj, name);
  return std::nullopt;
}

}  // namespace cartserve::jinja
