// Callables inside chat templates (builtin globals, bound str/dict methods,
// macros) and Python-style binding of call arguments to parameters.
#pragma once

#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat_template/value.h"
#include "core/status.h"

namespace cartserve::jinja {

using NativeFunction = std::function<Result<TemplateValue>(const TemplateCallArgs&)>;

class TemplateFunction : public TemplateObject {
 public:
  TemplateFunction(std::string name, NativeFunction fn)
      : name_(std::move(name)), fn_(std::move(fn)) {}
  std::string type_name() const override { return "function"; }
  std::string repr() const override { return "<function " + name_ + ">"; }
  bool is_callable() const override { return true; }
  Result<TemplateValue> call(const TemplateCallArgs& args) const override { return fn_(args); }

 private:
  std::string name_;
  NativeFunction fn_;
};

TemplateValue make_function(std::string name, NativeFunction fn);

// Binds `args` to `params` like a Python signature: positional first, then
// keywords by name. The first `required` params must be given. Unknown
// keywords, duplicates and surplus positionals are TypeErrors naming `fn`.
Result<std::vector<std::optional<TemplateValue>>> bind_args(
    std::string_view fn, const TemplateCallArgs& args,
    std::initializer_list<std::string_view> params, size_t required);

// Argument converters with Python's error wording ("... must be int").
Result<int64_t> arg_int(std::string_view fn, std::string_view param, const TemplateValue& v);
Result<std::string> arg_str(std::string_view fn, std::string_view param, const TemplateValue& v);

}  // namespace cartserve::jinja
