#include "chat_template/value.h"

#include <cmath>

#include "chat_template/text.h"

namespace cartserve {

std::string TemplateObject::repr() const {
  return fmt::format("<{} object>", type_name());
}

std::optional<TemplateValue> TemplateObject::attribute(std::string_view) const {
  return std::nullopt;
}

std::optional<std::vector<TemplateValue>> TemplateObject::iterate_items() {
  return std::nullopt;
}

Result<TemplateValue> TemplateObject::call(const TemplateCallArgs&) const {
  return make_error(ErrorCode::kInvalidArgument, "'{}' object is not callable", type_name());
}

TemplateValue TemplateValue::none() {
  TemplateValue v;
  v.kind_ = Kind::kNone;
  return v;
}

TemplateValue TemplateValue::boolean(bool b) {
  TemplateValue v;
  v.kind_ = Kind::kBool;
  v.data_ = b;
  return v;
}

TemplateValue TemplateValue::integer(int64_t i) {
  TemplateValue v;
  v.kind_ = Kind::kInt;
  v.data_ = i;
  return v;
}

TemplateValue TemplateValue::number(double d) {
  TemplateValue v;
  v.kind_ = Kind::kFloat;
  v.data_ = d;
  return v;
}

TemplateValue TemplateValue::string(std::string s) {
  TemplateValue v;
  v.kind_ = Kind::kString;
  v.data_ = std::move(s);
  return v;
}

TemplateValue TemplateValue::markup(std::string s) {
  TemplateValue v = string(std::move(s));
  v.markup_ = true;
  return v;
}

TemplateValue TemplateValue::string_like(const TemplateValue& like, std::string s) {
  return like.is_markup() ? markup(std::move(s)) : string(std::move(s));
}

TemplateValue TemplateValue::list(Items items) {
  TemplateValue v;
  v.kind_ = Kind::kList;
  v.data_ = std::make_shared<const Items>(std::move(items));
  return v;
}

TemplateValue TemplateValue::tuple(Items items) {
  TemplateValue v;
  v.kind_ = Kind::kTuple;
  v.data_ = std::make_shared<const Items>(std::move(items));
  return v;
}

TemplateValue TemplateValue::dict(std::vector<std::pair<std::string, TemplateValue>> entries) {
  DictItems items;
  items.reserve(entries.size());
  for (auto& [k, val] : entries)
    items.emplace_back(string(std::move(k)), std::move(val));
  return dict_from_items(std::move(items));
}

TemplateValue TemplateValue::dict_from_items(DictItems entries) {
  TemplateValue v;
  v.kind_ = Kind::kDict;
  v.data_ = std::make_shared<const DictItems>(std::move(entries));
  return v;
}

TemplateValue TemplateValue::undefined(std::string hint) {
  TemplateValue v;
  v.data_ = std::move(hint);
  return v;
}

TemplateValue TemplateValue::object(std::shared_ptr<TemplateObject> obj) {
  TemplateValue v;
  v.kind_ = Kind::kObject;
  v.data_ = std::move(obj);
  return v;
}

int64_t TemplateValue::as_int() const {
  if (kind_ == Kind::kBool) return as_bool() ? 1 : 0;
  return std::get<int64_t>(data_);
}

double TemplateValue::as_double() const {
  if (kind_ == Kind::kFloat) return std::get<double>(data_);
  return static_cast<double>(as_int());
}

const TemplateValue* TemplateValue::find(const TemplateValue& key) const {
  for (const auto& [k, v] : dict_items()) {
    if (jinja::py_equal(k, key)) return &v;
  }
  return nullptr;
}

const TemplateValue* TemplateValue::find(std::string_view key) const {
  for (const auto& [k, v] : dict_items()) {
    if (k.is_string() && k.as_string() == key) return &v;
  }
  return nullptr;
}

bool TemplateValue::same_as(const TemplateValue& other) const {
  switch (kind_) {
    case Kind::kList:
    case Kind::kTuple:
    case Kind::kDict:
    case Kind::kObject:
      return kind_ == other.kind_ && data_ == other.data_;
    case Kind::kUndefined:
      return other.is_undefined();
    default:
      return kind_ == other.kind_ && jinja::py_equal(*this, other);
  }
}

namespace jinja {

bool truthy(const TemplateValue& v) {
  using K = TemplateValue::Kind;
  switch (v.kind()) {
    case K::kUndefined:
    case K::kNone:
      return false;
    case K::kBool:
      return v.as_bool();
    case K::kInt:
      return v.as_int() != 0;
    case K::kFloat:
      return v.as_double() != 0.0;
    case K::kString:
      return !v.as_string().empty();
    case K::kList:
    case K::kTuple:
      return !v.items().empty();
    case K::kDict:
      return !v.dict_items().empty();
    case K::kObject:
      return true;
  }
  return false;
}

namespace {

// Containers nested deeper than this compare unequal and print as "[...]":
// no stack overflow on pathological data (Python raises RecursionError).
constexpr int kMaxDepth = 500;

bool equal_at(const TemplateValue& a, const TemplateValue& b, int depth) {
  using K = TemplateValue::Kind;
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind() || depth > kMaxDepth) return false;
  switch (a.kind()) {
    case K::kUndefined:
    case K::kNone:
      return true;
    case K::kString:
      return a.as_string() == b.as_string();
    case K::kList:
    case K::kTuple: {
      const auto& x = a.items();
      const auto& y = b.items();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i) {
        if (!equal_at(x[i], y[i], depth + 1)) return false;
      }
      return true;
    }
    case K::kDict: {
      if (a.dict_items().size() != b.dict_items().size()) return false;
      for (const auto& [k, v] : a.dict_items()) {
        const TemplateValue* other = b.find(k);
        if (other == nullptr || !equal_at(v, *other, depth + 1)) return false;
      }
      return true;
    }
    case K::kObject:
      return a.as_object() == b.as_object();
    default:
      return false;
  }
}

std::string str_at(const TemplateValue& v, bool repr, int depth);

std::string join_repr(const TemplateValue::Items& items, int depth) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    out += str_at(items[i], true, depth);
  }
  return out;
}

std::string str_at(const TemplateValue& v, bool repr, int depth) {
  using K = TemplateValue::Kind;
  if (depth > kMaxDepth && (v.is_sequence() || v.is_dict())) return "[...]";
  switch (v.kind()) {
    case K::kUndefined:
      return repr ? "Undefined" : "";
    case K::kNone:
      return "None";
    case K::kBool:
      return v.as_bool() ? "True" : "False";
    case K::kInt:
      return std::to_string(v.as_int());
    case K::kFloat:
      return py_float_repr(v.as_double());
    case K::kString:
      if (!repr) return v.as_string();
      if (v.is_markup()) return fmt::format("Markup({})", py_str_repr(v.as_string()));
      return py_str_repr(v.as_string());
    case K::kList:
      return fmt::format("[{}]", join_repr(v.items(), depth + 1));
    case K::kTuple:
      return fmt::format("({}{}", join_repr(v.items(), depth + 1),
                         v.items().size() == 1 ? ",)" : ")");
    case K::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, val] : v.dict_items()) {
        if (!first) out += ", ";
        first = false;
        out += str_at(k, true, depth + 1);
        out += ": ";
        out += str_at(val, true, depth + 1);
      }
      return out + "}";
    }
    case K::kObject:
      return v.as_object()->repr();
  }
  return "";
}

}  // namespace

bool py_equal(const TemplateValue& a, const TemplateValue& b) {
  return equal_at(a, b, 0);
}

std::string to_str(const TemplateValue& v) {
  return str_at(v, false, 0);
}

std::string to_repr(const TemplateValue& v) {
  return str_at(v, true, 0);
}

std::string type_name(const TemplateValue& v) {
  using K = TemplateValue::Kind;
  switch (v.kind()) {
    case K::kUndefined:
      return "Undefined";
    case K::kNone:
      return "NoneType";
    case K::kBool:
      return "bool";
    case K::kInt:
      return "int";
    case K::kFloat:
      return "float";
    case K::kString:
      return v.is_markup() ? "Markup" : "str";
    case K::kList:
      return "list";
    case K::kTuple:
      return "tuple";
    case K::kDict:
      return "dict";
    case K::kObject:
      return v.as_object()->type_name();
  }
  return "object";
}

std::string object_type_repr(const TemplateValue& v) {
  if (v.is_none()) return "None";
  return type_name(v) + " object";
}

namespace {

Result<int> compare_at(const TemplateValue& a, const TemplateValue& b, int depth) {
  if (a.is_undefined()) return undefined_error(a);
  if (b.is_undefined()) return undefined_error(b);
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      const double x = a.as_double(), y = b.as_double();
      return x < y ? -1 : (x > y ? 1 : 0);
    }
    const int64_t x = a.as_int(), y = b.as_int();
    return x < y ? -1 : (x > y ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) {
    const int c = a.as_string().compare(b.as_string());
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if ((a.is_list() && b.is_list()) || (a.is_tuple() && b.is_tuple())) {
    const auto& x = a.items();
    const auto& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (py_equal(x[i], y[i])) continue;
      if (depth > kMaxDepth) {
        return Status(ErrorCode::kInvalidArgument,
                      "maximum recursion depth exceeded in comparison");
      }
      return compare_at(x[i], y[i], depth + 1);
    }
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  return make_error(ErrorCode::kInvalidArgument,
                    "ordering comparison not supported between instances of '{}' and '{}'",
                    type_name(a), type_name(b));
}

}  // namespace

Result<int> py_compare(const TemplateValue& a, const TemplateValue& b) {
  return compare_at(a, b, 0);
}

bool is_hashable(const TemplateValue& v) {
  if (v.is_list() || v.is_dict()) return false;
  if (v.is_tuple()) {
    for (const auto& x : v.items()) {
      if (!is_hashable(x)) return false;
    }
  }
  return true;
}

Status undefined_error(const TemplateValue& v) {
  const std::string& hint = v.undefined_hint();
  return Status(ErrorCode::kInvalidArgument, hint.empty() ? "value is undefined" : hint);
}

}  // namespace jinja
}  // namespace cartserve
