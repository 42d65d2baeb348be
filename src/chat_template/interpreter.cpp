#include "chat_template/interpreter.h"

#include <chrono>
#include <memory>

#include "chat_template/attributes.h"
#include "chat_template/filters.h"
#include "chat_template/functions.h"
#include "chat_template/ops.h"

namespace cartserve::jinja {

namespace {

// NOTE: jinja2 scoping. The template body, each for-loop iteration, macro
// calls, {% with %}, {% filter %} and call-blocks ({% generation %}) get a
// scope; {% if %} does not. `set` writes the innermost scope; reads walk
// outwards. So a `set` inside a loop is gone in the next iteration and after
// the loop, which is why templates use namespace() to carry state.
// Scopes live in the interpreter's arena until the render ends, so macros
// and loops may point at them freely (a macro can outlive the loop
// iteration that defined it).
class Scope {
 public:
  explicit Scope(const Scope* parent) : parent_(parent) {}

  const TemplateValue* find(std::string_view name) const {
    for (const Scope* s = this; s != nullptr; s = s->parent_) {
      for (const auto& [k, v] : s->vars_) {
        if (k == name) return &v;
      }
    }
    return nullptr;
  }

  void set(const std::string& name, TemplateValue v) {
    for (auto& [k, old] : vars_) {
      if (k == name) {
        old = std::move(v);
        return;
      }
    }
    vars_.emplace_back(name, std::move(v));
  }

 private:
  const Scope* parent_;
  std::vector<std::pair<std::string, TemplateValue>> vars_;
};

using ScopePtr = Scope*;

constexpr int kMaxCallDepth = 100;     // macro recursion
constexpr int64_t kMaxRange = 100000;  // jinja2 sandbox MAX_RANGE

// namespace(): the one mutable object templates have.
class Namespace : public TemplateObject {
 public:
  std::string type_name() const override { return "Namespace"; }
  std::string repr() const override {
    TemplateValue::DictItems items;
    for (const auto& [k, v] : attrs_)
      items.emplace_back(TemplateValue::string(k), v);
    return "<Namespace " + to_str(TemplateValue::dict_from_items(std::move(items))) + ">";
  }
  std::optional<TemplateValue> attribute(std::string_view name) const override {
    for (const auto& [k, v] : attrs_) {
      if (k == name) return v;
    }
    return std::nullopt;
  }
  Status set(const std::string& name, TemplateValue v) {
    if (!name.empty() && name[0] == '_') {
      return make_error(
          ErrorCode::kInvalidArgument,
          "Chat templates cannot store underscore-prefixed attributes on a namespace, "
          "but got '{}'.",
          name);
    }
    for (auto& [k, old] : attrs_) {
      if (k == name) {
        old = std::move(v);
        return {};
      }
    }
    attrs_.emplace_back(name, std::move(v));
    return {};
  }

 private:
  std::vector<std::pair<std::string, TemplateValue>> attrs_;
};

// The `loop` variable of a for loop.
class LoopContext : public TemplateObject {
 public:
  explicit LoopContext(std::shared_ptr<const std::vector<TemplateValue>> items)
      : items_(std::move(items)) {}
  void set_index(size_t i) { index0_ = i; }

  std::string type_name() const override { return "LoopContext"; }
  std::string repr() const override {
    return "<LoopContext " + std::to_string(index0_ + 1) + "/" + std::to_string(items_->size()) +
           ">";
  }
  std::optional<TemplateValue> attribute(std::string_view name) const override {
    const auto n = static_cast<int64_t>(items_->size());
    const auto i = static_cast<int64_t>(index0_);
    if (name == "index") return TemplateValue::integer(i + 1);
    if (name == "index0") return TemplateValue::integer(i);
    if (name == "revindex") return TemplateValue::integer(n - i);
    if (name == "revindex0") return TemplateValue::integer(n - i - 1);
    if (name == "first") return TemplateValue::boolean(i == 0);
    if (name == "last") return TemplateValue::boolean(i == n - 1);
    if (name == "length") return TemplateValue::integer(n);
    if (name == "depth") return TemplateValue::integer(1);
    if (name == "depth0") return TemplateValue::integer(0);
    if (name == "previtem") {
      if (i == 0) return TemplateValue::undefined("there is no previous item");
      return (*items_)[index0_ - 1];
    }
    if (name == "nextitem") {
      if (i + 1 >= n) return TemplateValue::undefined("there is no next item");
      return (*items_)[index0_ + 1];
    }
    if (name == "cycle") {
      const size_t index0 = index0_;
      return make_function(
          "loop.cycle", [index0](const TemplateCallArgs& a) -> Result<TemplateValue> {
            if (!a.keyword.empty()) {
              return Status(ErrorCode::kInvalidArgument, "loop.cycle() takes no keyword arguments");
            }
            if (a.positional.empty())
              return Status(ErrorCode::kInvalidArgument, "no items for cycling given");
            return a.positional[index0 % a.positional.size()];
          });
    }
    if (name == "changed") {
      auto self = last_changed_;
      return make_function("loop.changed",
                           [self](const TemplateCallArgs& a) -> Result<TemplateValue> {
                             TemplateValue now = TemplateValue::tuple(a.positional);
                             if (self->has_value() && py_equal(**self, now))
                               return TemplateValue::boolean(false);
                             *self = now;
                             return TemplateValue::boolean(true);
                           });
    }
    return std::nullopt;
  }

 private:
  std::shared_ptr<const std::vector<TemplateValue>> items_;  // the (filtered) items of the loop
  size_t index0_ = 0;
  std::shared_ptr<std::optional<TemplateValue>> last_changed_ =
      std::make_shared<std::optional<TemplateValue>>();
};

class Interpreter;

// {% macro %}: a callable that renders its body in a fresh scope whose
// parent is the scope the macro was defined in.
class Macro : public TemplateObject {
 public:
  Macro(Interpreter* interp, const Stmt* def, ScopePtr closure, bool uses_varargs, bool uses_kwargs)
      : interp_(interp),
        def_(def),
        closure_(std::move(closure)),
        uses_varargs_(uses_varargs),
        uses_kwargs_(uses_kwargs) {}
  std::string type_name() const override { return "Macro"; }
  std::string repr() const override { return "<Macro '" + def_->name + "'>"; }
  bool is_callable() const override { return true; }
  std::optional<TemplateValue> attribute(std::string_view name) const override {
    if (name == "name") return TemplateValue::string(def_->name);
    return std::nullopt;
  }
  Result<TemplateValue> call(const TemplateCallArgs& args) const override;

 private:
  Interpreter* interp_;
  const Stmt* def_;
  ScopePtr closure_;
  bool uses_varargs_;
  bool uses_kwargs_;
};

bool references_name(const Expr* e, std::string_view name);

bool references_name(const Body& body, std::string_view name) {
  for (const auto& s : body) {
    if (references_name(s->expr.get(), name) || references_name(s->target.get(), name) ||
        references_name(s->cond.get(), name) || references_name(s->body, name) ||
        references_name(s->else_body, name)) {
      return true;
    }
    for (const auto& [test, b] : s->branches) {
      if (references_name(test.get(), name) || references_name(b, name)) return true;
    }
    for (const auto& v : s->values) {
      if (references_name(v.get(), name)) return true;
    }
    for (const auto& d : s->defaults) {
      if (references_name(d.get(), name)) return true;
    }
  }
  return false;
}

bool references_name(const Expr* e, std::string_view name) {
  if (e == nullptr) return false;
  if (e->kind == ExprKind::kName && e->name == name) return true;
  for (const auto& c : e->children) {
    if (references_name(c.get(), name)) return true;
  }
  for (const auto& c : e->args) {
    if (references_name(c.get(), name)) return true;
  }
  for (const auto& [k, c] : e->kwargs) {
    if (references_name(c.get(), name)) return true;
  }
  return false;
}

// A literal jinja2 can evaluate at compile time: constants and list, tuple
// and dict displays of them.
bool is_literal(const Expr& e) {
  if (e.kind == ExprKind::kConst) return true;
  if (e.kind != ExprKind::kList && e.kind != ExprKind::kTuple && e.kind != ExprKind::kDict) {
    return false;
  }
  for (const auto& c : e.children) {
    if (!is_literal(*c)) return false;
  }
  return true;
}

enum class Flow { kNormal, kBreak, kContinue };

class Interpreter {
 public:
  explicit Interpreter(const RenderSettings& settings) : settings_(settings) {}

  Result<std::string> run(const Body& body, const Variables& variables) {
    Scope* globals = new_scope(nullptr);
    install_globals(*globals);
    Scope* top = new_scope(globals);
    for (const auto& [k, v] : variables)
      top->set(k, v);
    std::string out;
    Status st = exec_body(body, top, out);
    if (!st.ok()) {
      const std::string where = "line " + std::to_string(error_line_) + ": ";
      return Status(ErrorCode::kInvalidArgument,
                    where + (raised_ ? "raise_exception: " : "") + st.message());
    }
    return out;
  }

  Result<TemplateValue> call_macro(const Stmt& def, const ScopePtr& closure, bool uses_varargs,
                                   bool uses_kwargs, const TemplateCallArgs& args) {
    if (call_depth_ >= kMaxCallDepth) {
      return Status(ErrorCode::kInvalidArgument, "maximum macro recursion depth exceeded");
    }
    Scope* scope = new_scope(closure);
    const size_t n = def.params.size();
    if (args.positional.size() > n && !uses_varargs) {
      return make_error(ErrorCode::kInvalidArgument,
                        "macro '{}' takes not more than {} argument(s)", def.name, n);
    }
    std::vector<bool> bound(n, false);
    for (size_t i = 0; i < n && i < args.positional.size(); ++i) {
      scope->set(def.params[i], args.positional[i]);
      bound[i] = true;
    }
    TemplateValue::DictItems extra_kwargs;
    for (const auto& [k, v] : args.keyword) {
      size_t i = 0;
      while (i < n && def.params[i] != k)
        ++i;
      if (i == n) {
        if (!uses_kwargs) {
          return make_error(ErrorCode::kInvalidArgument,
                            "macro '{}' takes no keyword argument '{}'", def.name, k);
        }
        extra_kwargs.emplace_back(TemplateValue::string(k), v);
        continue;
      }
      if (bound[i]) {
        return make_error(ErrorCode::kInvalidArgument,
                          "macro '{}' got multiple values for argument '{}'", def.name, k);
      }
      scope->set(k, v);
      bound[i] = true;
    }
    const size_t first_default = n - def.defaults.size();
    for (size_t i = 0; i < n; ++i) {
      if (bound[i]) continue;
      if (i >= first_default) {
        CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*def.defaults[i - first_default], scope));
        scope->set(def.params[i], std::move(v));
      } else {
        scope->set(def.params[i],
                   TemplateValue::undefined("parameter '" + def.params[i] + "' was not provided"));
      }
    }
    if (uses_varargs) {
      TemplateValue::Items rest;
      for (size_t i = n; i < args.positional.size(); ++i)
        rest.push_back(args.positional[i]);
      scope->set("varargs", TemplateValue::tuple(std::move(rest)));
    }
    if (uses_kwargs) scope->set("kwargs", TemplateValue::dict_from_items(std::move(extra_kwargs)));
    std::string out;
    ++call_depth_;
    const Flow saved_flow = flow_;
    flow_ = Flow::kNormal;
    Status st = exec_body(def.body, scope, out);
    flow_ = saved_flow;
    --call_depth_;
    CS_RETURN_IF_ERROR(st);
    return TemplateValue::string(std::move(out));
  }

 private:
  Scope* new_scope(const Scope* parent) {
    scopes_.push_back(std::make_unique<Scope>(parent));
    return scopes_.back().get();
  }

  // ---- globals --------------------------------------------------------------
  void install_globals(Scope& g) {
    g.set("raise_exception",
          make_function(
              "raise_exception", [this](const TemplateCallArgs& a) -> Result<TemplateValue> {
                CS_ASSIGN_OR_RETURN(auto b, bind_args("raise_exception", a, {"message"}, 1));
                raised_ = true;
                return Status(ErrorCode::kInvalidArgument, to_str(*b[0]));
              }));
    g.set("strftime_now",
          make_function("strftime_now", [this](const TemplateCallArgs& a) -> Result<TemplateValue> {
            CS_ASSIGN_OR_RETURN(auto b, bind_args("strftime_now", a, {"format"}, 1));
            CS_ASSIGN_OR_RETURN(std::string fmt, arg_str("strftime_now", "format", *b[0]));
            return TemplateValue::string(strftime_now(fmt));
          }));
    g.set("namespace",
          make_function("namespace", [](const TemplateCallArgs& a) -> Result<TemplateValue> {
            auto ns = std::make_shared<Namespace>();
            CS_ASSIGN_OR_RETURN(auto items, dict_call_items("namespace", a));
            for (auto& [k, v] : items) {
              if (!k.is_string()) {
                return Status(ErrorCode::kInvalidArgument, "namespace() keys must be strings");
              }
              CS_RETURN_IF_ERROR(ns->set(k.as_string(), v));
            }
            return TemplateValue::object(ns);
          }));
    g.set("dict", make_function("dict", [](const TemplateCallArgs& a) -> Result<TemplateValue> {
            CS_ASSIGN_OR_RETURN(auto items, dict_call_items("dict", a));
            return TemplateValue::dict_from_items(std::move(items));
          }));
    g.set("range", make_function("range", [](const TemplateCallArgs& a) -> Result<TemplateValue> {
            if (!a.keyword.empty()) {
              return Status(ErrorCode::kInvalidArgument, "range() takes no keyword arguments");
            }
            if (a.positional.empty() || a.positional.size() > 3) {
              return Status(ErrorCode::kInvalidArgument, "range expected 1 to 3 arguments");
            }
            int64_t v[3] = {0, 0, 1};
            for (size_t i = 0; i < a.positional.size(); ++i) {
              CS_ASSIGN_OR_RETURN(v[i], arg_int("range", "argument", a.positional[i]));
            }
            int64_t start = 0, stop = v[0], step = 1;
            if (a.positional.size() >= 2) start = v[0], stop = v[1];
            if (a.positional.size() == 3) step = v[2];
            if (step == 0)
              return Status(ErrorCode::kInvalidArgument, "range() arg 3 must not be zero");
            TemplateValue::Items out;
            for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
              if (static_cast<int64_t>(out.size()) >= kMaxRange) {
                return Status(
                    ErrorCode::kInvalidArgument,
                    "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
              }
              out.push_back(TemplateValue::integer(i));
            }
            return TemplateValue::list(std::move(out));
          }));
    for (const char* name : {"lipsum", "cycler", "joiner"}) {
      g.set(name, make_function(name, [name](const TemplateCallArgs&) -> Result<TemplateValue> {
              return make_error(ErrorCode::kInvalidArgument,
                                "{}() is not supported in chat templates", name);
            }));
    }
  }

  // dict(mapping_or_pairs?, **kwargs) as Python's dict() builds it.
  static Result<TemplateValue::DictItems> dict_call_items(std::string_view fn,
                                                          const TemplateCallArgs& a) {
    TemplateValue::DictItems items;
    auto put = [&](TemplateValue k, TemplateValue v) {
      for (auto& [ek, ev] : items) {
        if (py_equal(ek, k)) {
          ev = std::move(v);
          return;
        }
      }
      items.emplace_back(std::move(k), std::move(v));
    };
    if (a.positional.size() > 1) {
      return make_error(ErrorCode::kInvalidArgument, "{} expected at most 1 argument, got {}", fn,
                        a.positional.size());
    }
    if (a.positional.size() == 1) {
      const TemplateValue& src = a.positional[0];
      if (src.is_dict()) {
        for (const auto& [k, v] : src.dict_items())
          put(k, v);
      } else {
        CS_ASSIGN_OR_RETURN(auto pairs, iterate(src));
        for (const auto& p : pairs) {
          CS_ASSIGN_OR_RETURN(auto kv, iterate(p));
          if (kv.size() != 2) {
            return make_error(ErrorCode::kInvalidArgument,
                              "{}(): sequence elements must have length 2", fn);
          }
          if (!is_hashable(kv[0])) {
            return make_error(ErrorCode::kInvalidArgument, "unhashable type: '{}'",
                              type_name(kv[0]));
          }
          put(kv[0], kv[1]);
        }
      }
    }
    for (const auto& [k, v] : a.keyword)
      put(TemplateValue::string(k), v);
    return items;
  }

  std::string strftime_now(const std::string& fmt) const {
    std::tm tm{};
    if (settings_.now) {
      tm = *settings_.now;
    } else {
      const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      localtime_r(&t, &tm);
    }
    if (fmt.empty()) return "";
    std::string buf(256 + fmt.size() * 8, '\0');
    const size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
    buf.resize(n);
    return buf;
  }

  // ---- statements -----------------------------------------------------------
  Status fail_at(int line, Status st) {
    if (!st.ok() && error_line_ == 0) error_line_ = line;
    return st;
  }

  Status exec_body(const Body& body, const ScopePtr& scope, std::string& out) {
    for (const auto& s : body) {
      CS_RETURN_IF_ERROR(fail_at(s->line, exec(*s, scope, out)));
      if (flow_ != Flow::kNormal) return {};
    }
    return {};
  }

  Status exec(const Stmt& s, const ScopePtr& scope, std::string& out) {
    switch (s.kind) {
      case StmtKind::kText:
        out += s.text;
        return {};
      case StmtKind::kOutput: {
        CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*s.expr, scope));
        out += to_str(v);
        return {};
      }
      case StmtKind::kIf:
        for (const auto& [test, body] : s.branches) {
          CS_ASSIGN_OR_RETURN(TemplateValue t, eval(*test, scope));
          if (truthy(t)) return exec_body(body, scope, out);
        }
        return exec_body(s.else_body, scope, out);
      case StmtKind::kFor:
        return exec_for(s, scope, out);
      case StmtKind::kSet: {
        CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*s.expr, scope));
        return assign(*s.target, std::move(v), *scope);
      }
      case StmtKind::kSetBlock: {
        std::string text;
        CS_RETURN_IF_ERROR(exec_body(s.body, scope, text));
        TemplateValue v = TemplateValue::string(std::move(text));
        if (s.expr) {
          CS_ASSIGN_OR_RETURN(v, eval_filter_chain(*s.expr, scope, v));
        }
        return assign(*s.target, std::move(v), *scope);
      }
      case StmtKind::kMacro: {
        auto m = std::make_shared<Macro>(this, &s, scope, references_name(s.body, "varargs"),
                                         references_name(s.body, "kwargs"));
        scope->set(s.name, TemplateValue::object(m));
        return {};
      }
      case StmtKind::kFilterBlock: {
        std::string text;
        CS_RETURN_IF_ERROR(exec_body(s.body, new_scope(scope), text));
        CS_ASSIGN_OR_RETURN(
            TemplateValue v,
            eval_filter_chain(*s.expr, scope, TemplateValue::string(std::move(text))));
        out += to_str(v);
        return {};
      }
      case StmtKind::kWith: {
        Scope* inner = new_scope(scope);
        for (size_t i = 0; i < s.targets.size(); ++i) {
          CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*s.values[i], scope));
          CS_RETURN_IF_ERROR(assign(*s.targets[i], std::move(v), *inner));
        }
        return exec_body(s.body, inner, out);
      }
      case StmtKind::kScope:
        return exec_body(s.body, new_scope(scope), out);
      case StmtKind::kBreak:
        flow_ = Flow::kBreak;
        return {};
      case StmtKind::kContinue:
        flow_ = Flow::kContinue;
        return {};
    }
    return {};
  }

  Status exec_for(const Stmt& s, const ScopePtr& scope, std::string& out) {
    CS_ASSIGN_OR_RETURN(TemplateValue iterable, eval(*s.expr, scope));
    CS_ASSIGN_OR_RETURN(std::vector<TemplateValue> all, iterate(iterable));
    std::vector<TemplateValue> items;
    if (s.cond) {
      for (auto& item : all) {
        Scope* probe = new_scope(scope);
        CS_RETURN_IF_ERROR(assign(*s.target, item, *probe));
        CS_ASSIGN_OR_RETURN(TemplateValue keep, eval(*s.cond, probe));
        if (truthy(keep)) items.push_back(std::move(item));
      }
    } else {
      items = std::move(all);
    }
    if (items.empty()) return exec_body(s.else_body, new_scope(scope), out);
    auto shared_items = std::make_shared<const std::vector<TemplateValue>>(std::move(items));
    const std::vector<TemplateValue>& loop_items = *shared_items;
    auto loop = std::make_shared<LoopContext>(shared_items);
    const TemplateValue loop_value = TemplateValue::object(loop);
    for (size_t i = 0; i < loop_items.size(); ++i) {
      loop->set_index(i);
      Scope* iter_scope = new_scope(scope);
      CS_RETURN_IF_ERROR(assign(*s.target, loop_items[i], *iter_scope));
      iter_scope->set("loop", loop_value);
      CS_RETURN_IF_ERROR(exec_body(s.body, iter_scope, out));
      if (flow_ == Flow::kBreak) {
        flow_ = Flow::kNormal;
        break;
      }
      flow_ = Flow::kNormal;
    }
    return {};
  }

  Status assign(const Expr& target, TemplateValue value, Scope& scope) {
    switch (target.kind) {
      case ExprKind::kName:
        scope.set(target.name, std::move(value));
        return {};
      case ExprKind::kTuple: {
        CS_ASSIGN_OR_RETURN(std::vector<TemplateValue> parts, iterate(value));
        const size_t want = target.children.size();
        if (parts.size() > want) {
          return make_error(ErrorCode::kInvalidArgument, "too many values to unpack (expected {})",
                            want);
        }
        if (parts.size() < want) {
          return make_error(ErrorCode::kInvalidArgument,
                            "not enough values to unpack (expected {}, got {})", want,
                            parts.size());
        }
        for (size_t i = 0; i < want; ++i)
          CS_RETURN_IF_ERROR(assign(*target.children[i], parts[i], scope));
        return {};
      }
      case ExprKind::kNsRef: {
        const TemplateValue* ns = scope.find(target.name);
        Namespace* obj = nullptr;
        if (ns != nullptr && ns->is_object()) obj = dynamic_cast<Namespace*>(ns->as_object().get());
        if (obj == nullptr) {
          return Status(ErrorCode::kInvalidArgument,
                        "cannot assign attribute on non-namespace object");
        }
        return obj->set(target.attr, std::move(value));
      }
      default:
        return Status(ErrorCode::kInvalidArgument, "cannot assign to this expression");
    }
  }

  // ---- expressions ----------------------------------------------------------
  Result<TemplateValue> eval(const Expr& e, const ScopePtr& scope) {
    auto r = eval_impl(e, scope);
    if (!r.ok() && error_line_ == 0) error_line_ = e.line;
    return r;
  }

  Result<TemplateCallArgs> eval_args(const Expr& e, const ScopePtr& scope) {
    TemplateCallArgs args;
    for (const auto& a : e.args) {
      CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*a, scope));
      args.positional.push_back(std::move(v));
    }
    for (const auto& [k, a] : e.kwargs) {
      CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*a, scope));
      args.keyword.emplace_back(k, std::move(v));
    }
    return args;
  }

  // A kFilter chain whose innermost operand is absent takes `body` instead.
  Result<TemplateValue> eval_filter_chain(const Expr& e, const ScopePtr& scope,
                                          const TemplateValue& body) {
    TemplateValue operand = body;
    const Expr* inner = e.children[0].get();
    if (inner != nullptr && inner->kind == ExprKind::kFilter) {
      CS_ASSIGN_OR_RETURN(operand, eval_filter_chain(*inner, scope, body));
    } else if (inner != nullptr) {
      CS_ASSIGN_OR_RETURN(operand, eval(*inner, scope));
    }
    CS_ASSIGN_OR_RETURN(TemplateCallArgs args, eval_args(e, scope));
    auto r = apply_filter(e.name, operand, args);
    if (!r.ok() && error_line_ == 0) error_line_ = e.line;
    return r;
  }

  Result<TemplateValue> eval_impl(const Expr& e, const ScopePtr& scope) {
    switch (e.kind) {
      case ExprKind::kConst:
        return e.value;
      case ExprKind::kName: {
        if (const TemplateValue* v = scope->find(e.name)) return *v;
        return TemplateValue::undefined("'" + e.name + "' is undefined");
      }
      case ExprKind::kList:
      case ExprKind::kTuple: {
        TemplateValue::Items items;
        for (const auto& c : e.children) {
          CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*c, scope));
          items.push_back(std::move(v));
        }
        return e.kind == ExprKind::kList ? TemplateValue::list(std::move(items))
                                         : TemplateValue::tuple(std::move(items));
      }
      case ExprKind::kDict: {
        TemplateValue::DictItems items;
        for (size_t i = 0; i + 1 < e.children.size(); i += 2) {
          CS_ASSIGN_OR_RETURN(TemplateValue k, eval(*e.children[i], scope));
          CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*e.children[i + 1], scope));
          if (!is_hashable(k)) {
            return make_error(ErrorCode::kInvalidArgument, "unhashable type: '{}'", type_name(k));
          }
          bool replaced = false;
          for (auto& [ek, ev] : items) {
            if (py_equal(ek, k)) {
              ev = v;
              replaced = true;
            }
          }
          if (!replaced) items.emplace_back(std::move(k), std::move(v));
        }
        return TemplateValue::dict_from_items(std::move(items));
      }
      case ExprKind::kGetattr: {
        CS_ASSIGN_OR_RETURN(TemplateValue obj, eval(*e.children[0], scope));
        return get_attr(obj, e.name);
      }
      case ExprKind::kGetitem: {
        CS_ASSIGN_OR_RETURN(TemplateValue obj, eval(*e.children[0], scope));
        const Expr& key = *e.children[1];
        if (key.kind == ExprKind::kSlice) {
          TemplateValue parts[3] = {TemplateValue::none(), TemplateValue::none(),
                                    TemplateValue::none()};
          for (size_t i = 0; i < 3; ++i) {
            if (key.children[i]) {
              CS_ASSIGN_OR_RETURN(parts[i], eval(*key.children[i], scope));
            }
          }
          if (obj.is_undefined()) return undefined_error(obj);
          if (!obj.is_string() && !obj.is_sequence()) {
            // Slices bypass the sandbox's getitem, so Python's TypeError
            // surfaces; except on a literal, which jinja2's optimizer folds
            // through that getitem at compile time: an Undefined then.
            if (is_literal(*e.children[0])) {
              return TemplateValue::undefined(
                  fmt::format("{} has no element slice", object_type_repr(obj)));
            }
            if (obj.is_dict())
              return Status(ErrorCode::kInvalidArgument, "unhashable type: 'slice'");
            return make_error(ErrorCode::kInvalidArgument, "'{}' object is not subscriptable",
                              type_name(obj));
          }
          return slice(obj, parts[0], parts[1], parts[2]);
        }
        CS_ASSIGN_OR_RETURN(TemplateValue k, eval(key, scope));
        return get_item(obj, k);
      }
      case ExprKind::kSlice:
        return Status(ErrorCode::kInvalidArgument, "a slice is only valid inside [ ]");
      case ExprKind::kCall: {
        CS_ASSIGN_OR_RETURN(TemplateValue callee, eval(*e.children[0], scope));
        CS_ASSIGN_OR_RETURN(TemplateCallArgs args, eval_args(e, scope));
        if (callee.is_undefined()) return undefined_error(callee);
        if (!callee.is_object() || !callee.as_object()->is_callable()) {
          return make_error(ErrorCode::kInvalidArgument, "'{}' object is not callable",
                            type_name(callee));
        }
        return callee.as_object()->call(args);
      }
      case ExprKind::kFilter:
        return eval_filter_chain(e, scope, TemplateValue());
      case ExprKind::kTest: {
        CS_ASSIGN_OR_RETURN(TemplateValue operand, eval(*e.children[0], scope));
        CS_ASSIGN_OR_RETURN(TemplateCallArgs args, eval_args(e, scope));
        CS_ASSIGN_OR_RETURN(bool r, apply_test(e.name, operand, args));
        return TemplateValue::boolean(r);
      }
      case ExprKind::kNot: {
        CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*e.children[0], scope));
        return TemplateValue::boolean(!truthy(v));
      }
      case ExprKind::kNeg: {
        CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*e.children[0], scope));
        return negate(v);
      }
      case ExprKind::kPos: {
        CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*e.children[0], scope));
        return unary_plus(v);
      }
      case ExprKind::kBinary: {
        CS_ASSIGN_OR_RETURN(TemplateValue a, eval(*e.children[0], scope));
        CS_ASSIGN_OR_RETURN(TemplateValue b, eval(*e.children[1], scope));
        return binary_op(e.op, a, b);
      }
      case ExprKind::kAnd:
      case ExprKind::kOr: {
        CS_ASSIGN_OR_RETURN(TemplateValue a, eval(*e.children[0], scope));
        if (truthy(a) == (e.kind == ExprKind::kOr)) return a;
        return eval(*e.children[1], scope);
      }
      case ExprKind::kConcat: {
        std::string out;
        for (const auto& c : e.children) {
          CS_ASSIGN_OR_RETURN(TemplateValue v, eval(*c, scope));
          out += to_str(v);
        }
        return TemplateValue::string(std::move(out));
      }
      case ExprKind::kCompare: {
        CS_ASSIGN_OR_RETURN(TemplateValue left, eval(*e.children[0], scope));
        for (size_t i = 0; i < e.ops.size(); ++i) {
          CS_ASSIGN_OR_RETURN(TemplateValue right, eval(*e.children[i + 1], scope));
          CS_ASSIGN_OR_RETURN(bool ok, compare_op(e.ops[i], left, right));
          if (!ok) return TemplateValue::boolean(false);
          left = std::move(right);
        }
        return TemplateValue::boolean(true);
      }
      case ExprKind::kCondExpr: {
        CS_ASSIGN_OR_RETURN(TemplateValue test, eval(*e.children[1], scope));
        if (truthy(test)) return eval(*e.children[0], scope);
        if (e.children[2]) return eval(*e.children[2], scope);
        return TemplateValue::undefined(
            "the inline if-expression evaluated to false and no else section was defined.");
      }
      case ExprKind::kNsRef:
        return Status(ErrorCode::kInvalidArgument, "a namespace reference is only valid in 'set'");
    }
    return Status(ErrorCode::kInternal, "unknown expression kind");
  }

  const RenderSettings& settings_;
  std::vector<std::unique_ptr<Scope>> scopes_;
  Flow flow_ = Flow::kNormal;
  int call_depth_ = 0;
  int error_line_ = 0;
  bool raised_ = false;
};

Result<TemplateValue> Macro::call(const TemplateCallArgs& args) const {
  return interp_->call_macro(*def_, closure_, uses_varargs_, uses_kwargs_, args);
}

}  // namespace

Result<std::string> render_template(const Body& body, const Variables& variables,
                                    const RenderSettings& settings) {
  Interpreter interp(settings);
  return interp.run(body, variables);
}

}  // namespace cartserve::jinja
