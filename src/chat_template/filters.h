// Filters (`x | name(args)`) and tests (`x is name args`) of jinja2, with
// transformers' `tojson` override (json.dumps, ensure_ascii=False).
#pragma once

#include <string_view>

#include "chat_template/value.h"
#include "core/status.h"

namespace cartserve::jinja {

enum class Support {
  kSupported,
  kUnsupported,  // a real jinja2 filter/test this interpreter does not implement
  kUnknown,      // jinja2 has no such filter/test either
};

Support filter_support(std::string_view name);
Support test_support(std::string_view name);

// Runtime errors (TypeError, bad arguments) are kInvalidArgument.
Result<TemplateValue> apply_filter(std::string_view name, const TemplateValue& operand,
                                   const TemplateCallArgs& args);
Result<bool> apply_test(std::string_view name, const TemplateValue& operand,
                        const TemplateCallArgs& args);

}  // namespace cartserve::jinja
