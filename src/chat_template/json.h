// json.dumps as transformers' `tojson` filter calls it: ensure_ascii=False,
// optional indent / separators / sort_keys, Python's float and key rules.
#pragma once

#include <optional>
#include <string>

#include "chat_template/value.h"
#include "core/status.h"

namespace cartserve::jinja {

struct JsonOptions {
  std::optional<std::string> indent;          // nullopt: one line
  std::optional<std::string> item_separator;  // default ", " (one line) or "," (indented)
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;  // true: non-ASCII as \uXXXX escapes
};

// TypeError (kInvalidArgument) for values JSON cannot hold (Undefined,
// namespaces, functions) and for non-scalar dict keys.
Result<std::string> to_json(const TemplateValue& v, const JsonOptions& options);

}  // namespace cartserve::jinja
