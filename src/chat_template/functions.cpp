#include "chat_template/functions.h"

namespace cartserve::jinja {

TemplateValue make_function(std::string name, NativeFunction fn) {
  return TemplateValue::object(std::make_shared<TemplateFunction>(std::move(name), std::move(fn)));
}

Result<std::vector<std::optional<TemplateValue>>> bind_args(
    std::string_view fn, const TemplateCallArgs& args,
    std::initializer_list<std::string_view> params, size_t required) {
  std::vector<std::string_view> names(params);
  std::vector<std::optional<TemplateValue>> out(names.size());
  if (args.positional.size() > names.size()) {
    return make_error(ErrorCode::kInvalidArgument, "{}() takes at most {} argument(s) ({} given)",
                      fn, names.size(), args.positional.size());
  }
  for (size_t i = 0; i < args.positional.size(); ++i)
    out[i] = args.positional[i];
  for (const auto& [key, value] : args.keyword) {
    size_t i = 0;
    while (i < names.size() && names[i] != key)
      ++i;
    if (i == names.size()) {
      return make_error(ErrorCode::kInvalidArgument, "{}() got an unexpected keyword argument '{}'",
                        fn, key);
    }
    if (out[i]) {
      return make_error(ErrorCode::kInvalidArgument, "{}() got multiple values for argument '{}'",
                        fn, key);
    }
    out[i] = value;
  }
  for (size_t i = 0; i < required; ++i) {
    if (!out[i]) {
      return make_error(ErrorCode::kInvalidArgument, "{}() missing required argument '{}'", fn,
                        names[i]);
    }
  }
  return out;
}

Result<int64_t> arg_int(std::string_view fn, std::string_view param, const TemplateValue& v) {
  if (v.is_bool() || v.is_int()) return v.as_int();
  if (v.is_undefined()) return undefined_error(v);
  return make_error(ErrorCode::kInvalidArgument, "{}(): '{}' must be an integer, not '{}'", fn,
                    param, type_name(v));
}

Result<std::string> arg_str(std::string_view fn, std::string_view param, const TemplateValue& v) {
  if (v.is_string()) return v.as_string();
  if (v.is_undefined()) return undefined_error(v);
  return make_error(ErrorCode::kInvalidArgument, "{}(): '{}' must be a string, not '{}'", fn, param,
                    type_name(v));
}

}  // namespace cartserve::jinja
