#include "chat_template/ops.h"

#include <cmath>

#include "chat_template/format.h"
#include "chat_template/text.h"

namespace cartserve::jinja {

namespace {

Status type_error(std::string_view op, const TemplateValue& a, const TemplateValue& b) {
  return make_error(ErrorCode::kInvalidArgument,
                    "unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a),
                    type_name(b));
}

Status overflow() {
  return Status(ErrorCode::kInvalidArgument,
                "integer overflow (values beyond 64 bits are not supported)");
}

Status zero_division(std::string_view what) {
  return Status(ErrorCode::kInvalidArgument, std::string(what));
}

// Python's float divmod (Objects/floatobject.c float_divmod).
void float_divmod(double vx, double wx, double* floordiv, double* mod) {
  double m = std::fmod(vx, wx);
  double div = (vx - m) / wx;
  if (m != 0.0) {
    if ((wx < 0) != (m < 0)) {
      m += wx;
      div -= 1.0;
    }
  } else {
    m = std::copysign(0.0, wx);
  }
  double fd;
  if (div != 0.0) {
    fd = std::floor(div);
    if (div - fd > 0.5) fd += 1.0;
  } else {
    fd = std::copysign(0.0, vx / wx);
  }
  *floordiv = fd;
  *mod = m;
}

Result<TemplateValue> repeat(const TemplateValue& seq, int64_t n) {
  if (n < 0) n = 0;
  if (seq.is_string()) {
    const std::string& s = seq.as_string();
    if (!s.empty() && static_cast<uint64_t>(n) > kMaxBuiltSize / s.size()) {
      return Status(ErrorCode::kInvalidArgument, "string repetition result is too large");
    }
    std::string out;
    out.reserve(s.size() * static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      out += s;
    return TemplateValue::string_like(seq, std::move(out));
  }
  const auto& items = seq.items();
  if (!items.empty() && static_cast<uint64_t>(n) > kMaxBuiltSize / items.size()) {
    return Status(ErrorCode::kInvalidArgument, "list repetition result is too large");
  }
  TemplateValue::Items out;
  for (int64_t i = 0; i < n; ++i)
    out.insert(out.end(), items.begin(), items.end());
  return seq.is_tuple() ? TemplateValue::tuple(std::move(out))
                        : TemplateValue::list(std::move(out));
}

Result<TemplateValue> int_pow(int64_t base, int64_t exp) {
  int64_t result = 1;
  int64_t b = base;
  while (exp > 0) {
    if (exp & 1) {
      if (__builtin_mul_overflow(result, b, &result)) return overflow();
    }
    exp >>= 1;
    if (exp > 0 && __builtin_mul_overflow(b, b, &b)) return overflow();
  }
  return TemplateValue::integer(result);
}

Result<TemplateValue> numeric_op(std::string_view op, const TemplateValue& a,
                                 const TemplateValue& b) {
  const bool floats = a.is_float() || b.is_float();
  if (!floats) {
    const int64_t x = a.as_int(), y = b.as_int();
    int64_t r = 0;
    if (op == "+") {
      if (__builtin_add_overflow(x, y, &r)) return overflow();
      return TemplateValue::integer(r);
    }
    if (op == "-") {
      if (__builtin_sub_overflow(x, y, &r)) return overflow();
      return TemplateValue::integer(r);
    }
    if (op == "*") {
      if (__builtin_mul_overflow(x, y, &r)) return overflow();
      return TemplateValue::integer(r);
    }
    if (op == "/") {
      if (y == 0) return zero_division("division by zero");
      return TemplateValue::number(static_cast<double>(x) / static_cast<double>(y));
    }
    if (op == "//" || op == "%") {
      if (y == 0) return zero_division("integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) return overflow();
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        m += y;
        q -= 1;
      }
      return TemplateValue::integer(op == "//" ? q : m);
    }
    if (op == "**") {
      if (y >= 0) return int_pow(x, y);
      if (x == 0) return zero_division("0.0 cannot be raised to a negative power");
      return TemplateValue::number(std::pow(static_cast<double>(x), static_cast<double>(y)));
    }
  }
  const double x = a.as_double(), y = b.as_double();
  if (op == "+") return TemplateValue::number(x + y);
  if (op == "-") return TemplateValue::number(x - y);
  if (op == "*") return TemplateValue::number(x * y);
  if (op == "/") {
    if (y == 0.0) return zero_division("float division by zero");
    return TemplateValue::number(x / y);
  }
  if (op == "//" || op == "%") {
    if (y == 0.0) return zero_division("float floor division or modulo by zero");
    double fd, m;
    float_divmod(x, y, &fd, &m);
    return TemplateValue::number(op == "//" ? fd : m);
  }
  if (op == "**") {
    if (x == 0.0 && y < 0) return zero_division("0.0 cannot be raised to a negative power");
    if (x < 0 && y != std::floor(y)) {
      return Status(ErrorCode::kInvalidArgument, "complex results of ** are not supported");
    }
    return TemplateValue::number(std::pow(x, y));
  }
  return type_error(op, a, b);
}

}  // namespace

std::optional<std::vector<TemplateValue>> TemplateIterator::iterate_items() {
  if (consumed_) return std::vector<TemplateValue>();
  consumed_ = true;
  return std::move(items_);
}

TemplateValue make_iterator(std::string type_name, std::vector<TemplateValue> items) {
  return TemplateValue::object(
      std::make_shared<TemplateIterator>(std::move(type_name), std::move(items)));
}

Result<TemplateValue> binary_op(std::string_view op, const TemplateValue& a,
                                const TemplateValue& b) {
  if (a.is_undefined()) return undefined_error(a);
  // str % args: printf-style formatting (an Undefined argument prints as "").
  if (op == "%" && a.is_string()) return py_percent_format(a, b);
  if (b.is_undefined()) return undefined_error(b);
  if (a.is_number() && b.is_number()) return numeric_op(op, a, b);
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      if (!a.is_markup() && !b.is_markup())
        return TemplateValue::string(a.as_string() + b.as_string());
      // Markup + str escapes the str (str + Markup too: Markup.__radd__).
      const std::string left = a.is_markup() ? a.as_string() : html_escape(a.as_string());
      const std::string right = b.is_markup() ? b.as_string() : html_escape(b.as_string());
      return TemplateValue::markup(left + right);
    }
    if ((a.is_list() && b.is_list()) || (a.is_tuple() && b.is_tuple())) {
      TemplateValue::Items out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return a.is_list() ? TemplateValue::list(std::move(out))
                         : TemplateValue::tuple(std::move(out));
    }
    if (a.is_string() || a.is_list() || a.is_tuple()) {
      return make_error(ErrorCode::kInvalidArgument, "can only concatenate {} (not \"{}\") to {}",
                        type_name(a), type_name(b), type_name(a));
    }
  }
  if (op == "*") {
    const bool a_seq = a.is_string() || a.is_sequence();
    const bool b_seq = b.is_string() || b.is_sequence();
    if (a_seq && (b.is_int() || b.is_bool())) return repeat(a, b.as_int());
    if (b_seq && (a.is_int() || a.is_bool())) return repeat(b, a.as_int());
  }
  return type_error(op, a, b);
}

Result<TemplateValue> negate(const TemplateValue& v) {
  if (v.is_undefined()) return undefined_error(v);
  if (v.is_float()) return TemplateValue::number(-v.as_double());
  if (v.is_int() || v.is_bool()) {
    if (v.as_int() == INT64_MIN) return overflow();
    return TemplateValue::integer(-v.as_int());
  }
  return make_error(ErrorCode::kInvalidArgument, "bad operand type for unary -: '{}'",
                    type_name(v));
}

Result<TemplateValue> unary_plus(const TemplateValue& v) {
  if (v.is_undefined()) return undefined_error(v);
  if (v.is_float()) return v;
  if (v.is_int() || v.is_bool()) return TemplateValue::integer(v.as_int());
  return make_error(ErrorCode::kInvalidArgument, "bad operand type for unary +: '{}'",
                    type_name(v));
}

Result<bool> contains(const TemplateValue& container, const TemplateValue& item) {
  if (container.is_string()) {
    if (!item.is_string()) {
      if (item.is_undefined()) return undefined_error(item);
      return make_error(ErrorCode::kInvalidArgument,
                        "'in <string>' requires string as left operand, not {}", type_name(item));
    }
    return container.as_string().find(item.as_string()) != std::string::npos;
  }
  if (container.is_sequence()) {
    for (const auto& x : container.items()) {
      if (py_equal(x, item)) return true;
    }
    return false;
  }
  if (container.is_dict()) {
    if (!is_hashable(item)) {
      return make_error(ErrorCode::kInvalidArgument, "unhashable type: '{}'", type_name(item));
    }
    return container.find(item) != nullptr;
  }
  if (container.is_undefined()) return false;
  if (container.is_object()) {
    if (auto items = container.as_object()->iterate_items()) {
      for (const auto& x : *items) {
        if (py_equal(x, item)) return true;
      }
      return false;
    }
  }
  return make_error(ErrorCode::kInvalidArgument, "argument of type '{}' is not iterable",
                    type_name(container));
}

Result<bool> compare_op(std::string_view op, const TemplateValue& a, const TemplateValue& b) {
  if (op == "==") return py_equal(a, b);
  if (op == "!=") return !py_equal(a, b);
  if (op == "in") return contains(b, a);
  if (op == "notin") {
    CS_ASSIGN_OR_RETURN(bool in, contains(b, a));
    return !in;
  }
  auto c = py_compare(a, b);
  if (!c.ok()) {
    if (a.is_undefined() || b.is_undefined()) return c.status();
    return make_error(ErrorCode::kInvalidArgument,
                      "'{}' not supported between instances of '{}' and '{}'", op, type_name(a),
                      type_name(b));
  }
  if (op == "<") return *c < 0;
  if (op == "<=") return *c <= 0;
  if (op == ">") return *c > 0;
  if (op == ">=") return *c >= 0;
  return make_error(ErrorCode::kInvalidArgument, "unknown comparison operator '{}'", op);
}

Result<std::vector<TemplateValue>> iterate(const TemplateValue& v) {
  std::vector<TemplateValue> out;
  switch (v.kind()) {
    case TemplateValue::Kind::kUndefined:
      return out;
    case TemplateValue::Kind::kList:
    case TemplateValue::Kind::kTuple:
      return v.items();
    case TemplateValue::Kind::kDict:
      for (const auto& [k, val] : v.dict_items())
        out.push_back(k);
      return out;
    case TemplateValue::Kind::kString: {
      std::string buf;
      for (char32_t cp : decode_utf8(v.as_string())) {
        buf.clear();
        append_utf8(buf, cp);
        out.push_back(TemplateValue::string(buf));
      }
      return out;
    }
    case TemplateValue::Kind::kObject:
      if (auto items = v.as_object()->iterate_items()) return std::move(*items);
      [[fallthrough]];
    default:
      return make_error(ErrorCode::kInvalidArgument, "'{}' object is not iterable", type_name(v));
  }
}

Result<int64_t> py_len(const TemplateValue& v) {
  switch (v.kind()) {
    case TemplateValue::Kind::kUndefined:
      return 0;
    case TemplateValue::Kind::kString:
      return static_cast<int64_t>(utf8_length(v.as_string()));
    case TemplateValue::Kind::kList:
    case TemplateValue::Kind::kTuple:
      return static_cast<int64_t>(v.items().size());
    case TemplateValue::Kind::kDict:
      return static_cast<int64_t>(v.dict_items().size());
    default:
      return make_error(ErrorCode::kInvalidArgument, "object of type '{}' has no len()",
                        type_name(v));
  }
}

Result<TemplateValue> slice(const TemplateValue& v, const TemplateValue& start_v,
                            const TemplateValue& stop_v, const TemplateValue& step_v) {
  auto bound = [](const TemplateValue& x) -> Result<std::optional<int64_t>> {
    if (x.is_none()) return std::optional<int64_t>();
    if (x.is_int() || x.is_bool()) return std::optional<int64_t>(x.as_int());
    if (x.is_undefined()) return undefined_error(x);
    return Status(ErrorCode::kInvalidArgument,
                  "slice indices must be integers or None or have an __index__ method");
  };
  CS_ASSIGN_OR_RETURN(auto start_o, bound(start_v));
  CS_ASSIGN_OR_RETURN(auto stop_o, bound(stop_v));
  CS_ASSIGN_OR_RETURN(auto step_o, bound(step_v));
  const int64_t step = step_o.value_or(1);
  if (step == 0) return Status(ErrorCode::kInvalidArgument, "slice step cannot be zero");

  std::u32string cps;
  int64_t len = 0;
  if (v.is_string()) {
    cps = decode_utf8(v.as_string());
    len = static_cast<int64_t>(cps.size());
  } else if (v.is_sequence()) {
    len = static_cast<int64_t>(v.items().size());
  } else {
    if (v.is_undefined()) return undefined_error(v);
    return make_error(ErrorCode::kInvalidArgument, "'{}' object is not subscriptable",
                      type_name(v));
  }
  // PySlice_AdjustIndices
  auto adjust = [&](std::optional<int64_t> x, int64_t dflt) {
    if (!x) return dflt;
    int64_t i = *x;
    if (i < 0) {
      i += len;
      if (i < 0) i = step < 0 ? -1 : 0;
    } else if (i >= len) {
      i = step < 0 ? len - 1 : len;
    }
    return i;
  };
  const int64_t start = adjust(start_o, step < 0 ? len - 1 : 0);
  const int64_t stop = adjust(stop_o, step < 0 ? -1 : len);
  std::vector<int64_t> idx;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
    idx.push_back(i);

  if (v.is_string()) {
    std::string out;
    for (int64_t i : idx)
      append_utf8(out, cps[static_cast<size_t>(i)]);
    return TemplateValue::string_like(v, std::move(out));
  }
  TemplateValue::Items out;
  for (int64_t i : idx)
    out.push_back(v.items()[static_cast<size_t>(i)]);
  return v.is_tuple() ? TemplateValue::tuple(std::move(out)) : TemplateValue::list(std::move(out));
}

}  // namespace cartserve::jinja
