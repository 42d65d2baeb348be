// Attribute and item access as jinja2's ImmutableSandboxedEnvironment does
// it: `obj.name` tries Python attributes (str/dict/list methods) before
// dict keys, `obj[key]` tries keys/indices before attributes; a miss gives an
// Undefined (an error only once used), mutating methods are unsafe.
#pragma once

#include <string_view>

#include "chat_template/value.h"
#include "core/status.h"

namespace cartserve::jinja {

// Errors only when `obj` itself is Undefined.
Result<TemplateValue> get_attr(const TemplateValue& obj, std::string_view name);
Result<TemplateValue> get_item(const TemplateValue& obj, const TemplateValue& key);

// Python attributes only (the `attr` filter): methods, namespace/loop attributes.
Result<TemplateValue> get_python_attr(const TemplateValue& obj, std::string_view name);

}  // namespace cartserve::jinja
