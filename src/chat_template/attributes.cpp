#include "chat_template/attributes.h"

#include "chat_template/methods.h"
#include "chat_template/text.h"

namespace cartserve::jinja {

namespace {

TemplateValue missing_attr(const TemplateValue& obj, std::string_view name) {
  return TemplateValue::undefined(
      fmt::format("'{}' has no attribute '{}'", object_type_repr(obj), name));
}

TemplateValue missing_item(const TemplateValue& obj, const TemplateValue& key) {
  if (key.is_string()) return missing_attr(obj, key.as_string());
  return TemplateValue::undefined(
      fmt::format("{} has no element {}", object_type_repr(obj), to_repr(key)));
}

}  // namespace

Result<TemplateValue> get_python_attr(const TemplateValue& obj, std::string_view name) {
  if (obj.is_undefined()) return undefined_error(obj);
  if (!name.empty() && name[0] == '_') {
    return TemplateValue::undefined(
        fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, type_name(obj)));
  }
  if (obj.is_object()) {
    if (auto v = obj.as_object()->attribute(name)) return *v;
    return missing_attr(obj, name);
  }
  if (auto m = bound_method(obj, name)) return *m;
  return missing_attr(obj, name);
}

Result<TemplateValue> get_attr(const TemplateValue& obj, std::string_view name) {
  if (obj.is_undefined()) return undefined_error(obj);
  if (!name.empty() && name[0] == '_') return get_python_attr(obj, name);
  if (obj.is_object()) return get_python_attr(obj, name);
  if (auto m = bound_method(obj, name)) return *m;
  if (obj.is_dict()) {
    if (const TemplateValue* v = obj.find(name)) return *v;
  }
  return missing_attr(obj, name);
}

Result<TemplateValue> get_item(const TemplateValue& obj, const TemplateValue& key) {
  if (obj.is_undefined()) return undefined_error(obj);
  if (obj.is_dict()) {
    if (const TemplateValue* v = obj.find(key)) return *v;
  } else if ((obj.is_sequence() || obj.is_string()) && (key.is_int() || key.is_bool())) {
    int64_t i = key.as_int();
    if (obj.is_string()) {
      std::u32string cps = decode_utf8(obj.as_string());
      const auto n = static_cast<int64_t>(cps.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) {
        std::string out;
        append_utf8(out, cps[static_cast<size_t>(i)]);
        return TemplateValue::string_like(obj, std::move(out));
      }
    } else {
      const auto n = static_cast<int64_t>(obj.items().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.items()[static_cast<size_t>(i)];
    }
    return missing_item(obj, key);
  }
  // Not found as an item: a string key falls back to attributes.
  if (key.is_string()) {
    CS_ASSIGN_OR_RETURN(TemplateValue v, get_python_attr(obj, key.as_string()));
    return v;
  }
  return missing_item(obj, key);
}

}  // namespace cartserve::jinja
