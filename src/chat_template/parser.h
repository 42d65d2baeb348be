// Chat template parser: tokens -> syntax tree, following jinja2's grammar
// and operator precedence. Tags, filters and tests outside the supported
// subset are rejected here, naming the construct and its line.
#pragma once

#include <string_view>

#include "chat_template/ast.h"
#include "core/status.h"

namespace cartserve::jinja {

// kInvalidArgument "line N: ..." on a syntax error or an unsupported construct.
Result<Body> parse_template(std::string_view source);

}  // namespace cartserve::jinja
