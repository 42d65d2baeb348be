// Python's str.format() as jinja2's sandbox runs it ("{}-{name}".format(...)):
// auto/manual field numbering, keyword fields, .attr / [key] lookups (with
// jinja2's attribute rules), !r / !s / !a conversions and the format-spec
// mini-language for str, int and float ([[fill]align][sign][#][0][width]
// [,|_][.precision][type]).
#pragma once

#include <string>
#include <string_view>

#include "chat_template/value.h"
#include "core/status.h"

namespace cartserve::jinja {

// `escape_fields`: Markup.format, which HTML-escapes each plain field.
// Python's ValueError / KeyError / IndexError / TypeError are kInvalidArgument.
Result<std::string> py_str_format(std::string_view format, const TemplateCallArgs& args,
                                  bool escape_fields);

// printf-style `format % args` (str.__mod__ / Markup.__mod__ when `format`
// is Markup: args are escaped). A tuple gives several arguments; a dict (or
// another mapping-like value) serves %(key)s fields.
Result<TemplateValue> py_percent_format(const TemplateValue& format, const TemplateValue& args);

// format(value, spec), i.e. value.__format__(spec).
Result<std::string> py_format_value(const TemplateValue& value, std::string_view spec);

}  // namespace cartserve::jinja
