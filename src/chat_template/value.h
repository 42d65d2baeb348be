// Values seen by chat templates: the Python objects jinja2 works on (None,
// bool, int, float, str, list, tuple, dict) plus jinja2's Undefined and the
// few runtime objects templates touch (namespace(), loop, functions).
// Callers build message fields and extra template variables (tools, custom
// kwargs) from the JSON-like constructors; the rest is interpreter-internal.
// Lists and dicts are immutable once built (jinja2's sandbox forbids
// mutation) and shared by reference, so copies are cheap.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "core/status.h"

namespace cartserve {

class TemplateValue;

// Arguments of a call: f(a, b, key=c).
struct TemplateCallArgs {
  std::vector<TemplateValue> positional;
  std::vector<std::pair<std::string, TemplateValue>> keyword;
};

// A runtime object without a JSON form (namespace, loop context, function).
class TemplateObject {
 public:
  virtual ~TemplateObject() = default;
  // Python-ish type name used in error messages ("Namespace", "LoopContext").
  virtual std::string type_name() const = 0;
  // str() of the object.
  virtual std::string repr() const;
  // Attribute lookup; nullopt when the object has no such attribute.
  virtual std::optional<TemplateValue> attribute(std::string_view name) const;
  virtual bool is_callable() const { return false; }
  virtual Result<TemplateValue> call(const TemplateCallArgs& args) const;
  // Items when iterated (a for loop, list(x)); nullopt: not iterable.
  // Iterators are used up by this (Python generators iterate once).
  virtual std::optional<std::vector<TemplateValue>> iterate_items();
};

class TemplateValue {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kTuple,
    kDict,
    kObject
  };
  using Items = std::vector<TemplateValue>;
  using DictItems = std::vector<std::pair<TemplateValue, TemplateValue>>;

  TemplateValue() = default;  // Undefined

  static TemplateValue none();
  static TemplateValue boolean(bool v);
  static TemplateValue integer(int64_t v);
  static TemplateValue number(double v);
  static TemplateValue string(std::string v);
  static TemplateValue list(Items items);
  static TemplateValue dict(std::vector<std::pair<std::string, TemplateValue>> entries);

  // Interpreter-side constructors.
  // `hint` is the message of the error raised when the value is used (e.g.
  // "'x' is undefined"); printing an Undefined gives "".
  static TemplateValue undefined(std::string hint);
  static TemplateValue tuple(Items items);
  // Keys may be any hashable value; insertion order is kept, duplicates are
  // the caller's to avoid.
  static TemplateValue dict_from_items(DictItems entries);
  static TemplateValue object(std::shared_ptr<TemplateObject> obj);
  // markupsafe.Markup: a str already safe for HTML (|safe, |escape). Adding a
  // plain str to it HTML-escapes the plain one; otherwise it acts as a str.
  static TemplateValue markup(std::string v);
  // A str with the Markup flag of `like` (str operations that keep it).
  static TemplateValue string_like(const TemplateValue& like, std::string v);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  // bool, int or float (Python's numbers.Number; bool is an int).
  bool is_number() const { return is_bool() || is_int() || is_float(); }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_markup() const { return kind_ == Kind::kString && markup_; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kTuple; }
  bool is_sequence() const { return is_list() || is_tuple(); }
  bool is_dict() const { return kind_ == Kind::kDict; }
  bool is_object() const { return kind_ == Kind::kObject; }

  // Accessors; each requires the matching kind.
  bool as_bool() const { return std::get<bool>(data_); }
  int64_t as_int() const;    // bool or int
  double as_double() const;  // bool, int or float
  const std::string& as_string() const { return std::get<std::string>(data_); }
  const Items& items() const { return *std::get<std::shared_ptr<const Items>>(data_); }
  const DictItems& dict_items() const { return *std::get<std::shared_ptr<const DictItems>>(data_); }
  const std::shared_ptr<TemplateObject>& as_object() const {
    return std::get<std::shared_ptr<TemplateObject>>(data_);
  }
  const std::string& undefined_hint() const { return std::get<std::string>(data_); }

  // Dict lookup with Python key equality (1 == 1.0 == True); nullptr if absent.
  const TemplateValue* find(const TemplateValue& key) const;
  const TemplateValue* find(std::string_view key) const;

  // Same object (Python `is`): identity for containers and objects, value for scalars.
  bool same_as(const TemplateValue& other) const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool markup_ = false;
  std::variant<std::string, bool, int64_t, double, std::shared_ptr<const Items>,
               std::shared_ptr<const DictItems>, std::shared_ptr<TemplateObject>>
      data_;
};

namespace jinja {

// Python semantics over TemplateValue.
bool truthy(const TemplateValue& v);
bool py_equal(const TemplateValue& a, const TemplateValue& b);
// str(v): what {{ v }} prints. Undefined prints as "".
std::string to_str(const TemplateValue& v);
// repr(v), used inside containers: ['a', 1, None].
std::string to_repr(const TemplateValue& v);
// Python type name: 'str', 'int', 'NoneType', 'list', 'dict', 'Undefined'...
std::string type_name(const TemplateValue& v);
// What jinja2 calls object_type_repr: "dict object", "None", "str object".
std::string object_type_repr(const TemplateValue& v);
// Three-way comparison for < <= > >=: numbers, strings, lists/tuples of
// comparable items; anything else is a TypeError.
Result<int> py_compare(const TemplateValue& a, const TemplateValue& b);

// Usable as a dict key / set member: not a list or dict, nor a tuple holding one.
bool is_hashable(const TemplateValue& v);

// The error an Undefined raises when used.
Status undefined_error(const TemplateValue& v);

}  // namespace jinja
}  // namespace cartserve
