// Chat template interpreter: runs a parsed template over template variables
// with jinja2's runtime semantics (scopes, loops, macros, Undefined) and the
// globals transformers installs (raise_exception, strftime_now, namespace,
// dict) plus jinja2's range().
#pragma once

#include <ctime>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "chat_template/ast.h"
#include "chat_template/value.h"
#include "core/status.h"

namespace cartserve::jinja {

using Variables = std::vector<std::pair<std::string, TemplateValue>>;

struct RenderSettings {
  // Local time strftime_now() formats; nullopt: the current local time.
  std::optional<std::tm> now;
};

// Errors are kInvalidArgument: "line N: <message>", or, for
// raise_exception(msg) in the template, "line N: raise_exception: <msg>".
Result<std::string> render_template(const Body& body, const Variables& variables,
                                    const RenderSettings& settings);

}  // namespace cartserve::jinja
