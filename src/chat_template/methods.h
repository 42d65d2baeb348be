// Methods of str, dict and list that chat templates call
// ("x".strip(), d.items(), d.get(k, default), s.split(",") ...).
#pragma once

#include <optional>
#include <string_view>

#include "chat_template/value.h"

namespace cartserve::jinja {

// The bound method `obj.name`; nullopt when the Python type has no such
// attribute. Mutating methods (list.append, dict.update ...) come back as an
// Undefined that fails with the sandbox's "unsafe" message when used.
std::optional<TemplateValue> bound_method(const TemplateValue& obj, std::string_view name);

}  // namespace cartserve::jinja
