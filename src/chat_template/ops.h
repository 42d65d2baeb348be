// Python operators on template values: arithmetic, comparison, membership,
// iteration, len() and slicing, with Python's results and TypeErrors.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat_template/value.h"
#include "core/status.h"

namespace cartserve::jinja {

// A Python iterator (what select/map/items/... return in jinja2): truthy,
// iterable once, no len(), not indexable. Items are computed eagerly.
class TemplateIterator : public TemplateObject {
 public:
  TemplateIterator(std::string type_name, std::vector<TemplateValue> items)
      : type_name_(std::move(type_name)), items_(std::move(items)) {}
  std::string type_name() const override { return type_name_; }
  std::string repr() const override { return "<" + type_name_ + " object>"; }
  std::optional<std::vector<TemplateValue>> iterate_items() override;

 private:
  std::string type_name_;
  std::vector<TemplateValue> items_;
  bool consumed_ = false;
};

TemplateValue make_iterator(std::string type_name, std::vector<TemplateValue> items);

// Largest string or list an operator may build (guards 'x' * 10**12).
inline constexpr size_t kMaxBuiltSize = size_t{16} << 20;

// op: + - * / // % **
Result<TemplateValue> binary_op(std::string_view op, const TemplateValue& a,
                                const TemplateValue& b);
Result<TemplateValue> negate(const TemplateValue& v);
Result<TemplateValue> unary_plus(const TemplateValue& v);
// op: == != < <= > >= in notin ("a in b" tests membership of a in b).
Result<bool> compare_op(std::string_view op, const TemplateValue& a, const TemplateValue& b);
Result<bool> contains(const TemplateValue& container, const TemplateValue& item);

// Items a for loop visits: list/tuple items, dict keys, string code points;
// Undefined iterates as empty.
Result<std::vector<TemplateValue>> iterate(const TemplateValue& v);
Result<int64_t> py_len(const TemplateValue& v);

// Python slice semantics on str, list and tuple.
Result<TemplateValue> slice(const TemplateValue& v, const TemplateValue& start,
                            const TemplateValue& stop, const TemplateValue& step);

}  // namespace cartserve::jinja
