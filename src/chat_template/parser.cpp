#include "chat_template/parser.h"

#include <set>

#include "chat_template/filters.h"
#include "chat_template/lexer.h"

namespace cartserve::jinja {

namespace {

// Tags jinja2 knows that this interpreter does not run (template
// inheritance, includes and imports have no meaning for a single chat
// template string; call blocks and autoescape are not used by chat templates).
const std::set<std::string, std::less<>> kUnsupportedTags = {
    "block", "extends", "include", "import", "from", "autoescape", "call"};

std::string describe(const Token& t) {
  switch (t.type) {
    case TokenType::kName:
    case TokenType::kOperator:
      return t.value;
    default:
      return token_type_name(t.type);
  }
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Result<Body> parse() {
    Body body;
    CS_RETURN_IF_ERROR(subparse({}, body));
    if (cur().type != TokenType::kEof) return fail("unexpected " + describe(cur()));
    return body;
  }

 private:
  // ---- token stream -------------------------------------------------------
  const Token& cur() const { return tokens_[pos_]; }
  const Token& look() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
  void advance() {
    if (pos_ + 1 < tokens_.size()) ++pos_;
  }
  bool is_name(const Token& t, std::string_view v) const {
    return t.type == TokenType::kName && t.value == v;
  }
  bool is_op(const Token& t, std::string_view v) const {
    return t.type == TokenType::kOperator && t.value == v;
  }
  bool skip_name(std::string_view v) {
    if (!is_name(cur(), v)) return false;
    advance();
    return true;
  }
  bool skip_op(std::string_view v) {
    if (!is_op(cur(), v)) return false;
    advance();
    return true;
  }

  Status fail(const std::string& msg, int line = 0) const {
    return make_error(ErrorCode::kInvalidArgument, "line {}: {}", line ? line : cur().line, msg);
  }
  Status expect_op(std::string_view v) {
    if (skip_op(v)) return {};
    return fail("expected '" + std::string(v) + "', got '" + describe(cur()) + "'");
  }
  Status expect_type(TokenType t) {
    if (cur().type == t) {
      advance();
      return {};
    }
    return fail(std::string("expected ") + token_type_name(t) + ", got '" + describe(cur()) + "'");
  }
  Result<std::string> expect_name() {
    if (cur().type != TokenType::kName) {
      return fail("expected name, got '" + describe(cur()) + "'");
    }
    std::string v = cur().value;
    advance();
    return v;
  }

  // Nesting guard: deeply nested input fails cleanly instead of exhausting
  // the stack (the interpreter recurses as deep as the tree).
  struct Nest {
    explicit Nest(Parser* p) : p_(p) { ++p_->depth_; }
    ~Nest() { --p_->depth_; }
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;
    Parser* p_;
  };
  static constexpr int kMaxNesting = 100;
  Status check_depth() const {
    if (depth_ <= kMaxNesting) return {};
    return fail("template nested too deeply (more than " + std::to_string(kMaxNesting) +
                " levels)");
  }

  static ExprPtr make(ExprKind kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }

  // ---- statements ---------------------------------------------------------
  // Parses until a block whose first name is in `end_tags` (left unconsumed,
  // positioned on that name) or the end of the template.
  Status subparse(const std::vector<std::string_view>& end_tags, Body& body) {
    while (cur().type != TokenType::kEof) {
      const Token& t = cur();
      if (t.type == TokenType::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kText;
        s->line = t.line;
        s->text = t.value;
        body.push_back(std::move(s));
        advance();
      } else if (t.type == TokenType::kVariableBegin) {
        advance();
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kOutput;
        s->line = cur().line;
        CS_ASSIGN_OR_RETURN(s->expr, parse_tuple(true, {}, false));
        CS_RETURN_IF_ERROR(expect_type(TokenType::kVariableEnd));
        body.push_back(std::move(s));
      } else if (t.type == TokenType::kBlockBegin) {
        advance();
        for (std::string_view end : end_tags) {
          if (is_name(cur(), end)) return {};
        }
        CS_RETURN_IF_ERROR(parse_statement(end_tags, body));
        CS_RETURN_IF_ERROR(expect_type(TokenType::kBlockEnd));
      } else {
        return fail("unexpected " + describe(t));
      }
    }
    if (!end_tags.empty()) {
      std::string want;
      for (std::string_view e : end_tags)
        want += (want.empty() ? "'" : " or '") + std::string(e) + "'";
      return fail(
          "unexpected end of template; looking for " + want +
          (tag_stack_.empty() ? "" : ", the innermost open block is '" + tag_stack_.back() + "'"));
    }
    return {};
  }

  // Body of a block statement: `%}` ... up to one of `end_tags`; leaves the
  // stream on the end tag name.
  Status parse_body(const std::vector<std::string_view>& end_tags, Body& body) {
    skip_op(":");
    CS_RETURN_IF_ERROR(expect_type(TokenType::kBlockEnd));
    return subparse(end_tags, body);
  }

  // Consumes the end tag name (the stream is on it after parse_body).
  void drop_end_tag() { advance(); }

  Status parse_statement(const std::vector<std::string_view>& outer_end_tags, Body& body) {
    Nest nest(this);
    CS_RETURN_IF_ERROR(check_depth());
    if (cur().type != TokenType::kName) return fail("tag name expected");
    const std::string tag = cur().value;
    const int line = cur().line;
    tag_stack_.push_back(tag);
    Status st;
    if (tag == "for") {
      st = parse_for(body);
    } else if (tag == "if") {
      st = parse_if(body);
    } else if (tag == "set") {
      st = parse_set(body);
    } else if (tag == "macro") {
      st = parse_macro(body);
    } else if (tag == "filter") {
      st = parse_filter_block(body);
    } else if (tag == "with") {
      st = parse_with(body);
    } else if (tag == "print") {
      st = parse_print(body);
    } else if (tag == "generation") {
      st = parse_generation(body);
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) {
        st = fail("'" + tag + "' outside of a loop", line);
      } else {
        advance();
        auto s = std::make_unique<Stmt>();
        s->kind = tag == "break" ? StmtKind::kBreak : StmtKind::kContinue;
        s->line = line;
        body.push_back(std::move(s));
      }
    } else if (kUnsupportedTags.count(tag)) {
      st = fail("the '{% " + tag + " %}' tag is not supported in chat templates", line);
    } else {
      std::string msg = "Encountered unknown tag '" + tag + "'.";
      for (std::string_view e : outer_end_tags) {
        if (e == tag) msg += " Jinja was looking for another closing tag (nesting mistake?).";
      }
      tag_stack_.pop_back();
      return fail(msg, line);
    }
    tag_stack_.pop_back();
    return st;
  }

  Status parse_for(Body& body) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kFor;
    s->line = cur().line;
    advance();
    CS_ASSIGN_OR_RETURN(s->target, parse_assign_target(true, {"in"}, false));
    if (!skip_name("in")) return fail("expected 'in', got '" + describe(cur()) + "'");
    CS_ASSIGN_OR_RETURN(s->expr, parse_tuple(false, {"recursive"}, false));
    if (skip_name("if")) {
      CS_ASSIGN_OR_RETURN(s->cond, parse_expression(true));
    }
    if (is_name(cur(), "recursive")) return fail("recursive for loops are not supported");
    ++loop_depth_;
    Status st = parse_body({"endfor", "else"}, s->body);
    --loop_depth_;
    CS_RETURN_IF_ERROR(st);
    const bool has_else = is_name(cur(), "else");
    drop_end_tag();
    if (has_else) {
      CS_RETURN_IF_ERROR(parse_body({"endfor"}, s->else_body));
      drop_end_tag();
    }
    body.push_back(std::move(s));
    return {};
  }

  Status parse_if(Body& body) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kIf;
    s->line = cur().line;
    advance();
    while (true) {
      CS_ASSIGN_OR_RETURN(ExprPtr test, parse_tuple(false, {}, false));
      Body branch;
      CS_RETURN_IF_ERROR(parse_body({"elif", "else", "endif"}, branch));
      s->branches.emplace_back(std::move(test), std::move(branch));
      const std::string end = cur().value;
      drop_end_tag();
      if (end == "elif") continue;
      if (end == "else") {
        CS_RETURN_IF_ERROR(parse_body({"endif"}, s->else_body));
        drop_end_tag();
      }
      break;
    }
    body.push_back(std::move(s));
    return {};
  }

  Status parse_set(Body& body) {
    auto s = std::make_unique<Stmt>();
    s->line = cur().line;
    advance();
    CS_ASSIGN_OR_RETURN(s->target, parse_assign_target(true, {}, true));
    if (skip_op("=")) {
      s->kind = StmtKind::kSet;
      CS_ASSIGN_OR_RETURN(s->expr, parse_tuple(true, {}, false));
    } else {
      s->kind = StmtKind::kSetBlock;
      if (is_op(cur(), "|")) {
        CS_ASSIGN_OR_RETURN(s->expr, parse_filter(nullptr, false));
      }
      CS_RETURN_IF_ERROR(parse_body({"endset"}, s->body));
      drop_end_tag();
    }
    body.push_back(std::move(s));
    return {};
  }

  Status parse_macro(Body& body) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kMacro;
    s->line = cur().line;
    advance();
    CS_ASSIGN_OR_RETURN(s->name, expect_name());
    CS_RETURN_IF_ERROR(expect_op("("));
    while (!is_op(cur(), ")")) {
      if (!s->params.empty()) CS_RETURN_IF_ERROR(expect_op(","));
      CS_ASSIGN_OR_RETURN(std::string param, expect_name());
      if (skip_op("=")) {
        CS_ASSIGN_OR_RETURN(ExprPtr def, parse_expression(true));
        s->defaults.push_back(std::move(def));
      } else if (!s->defaults.empty()) {
        return fail("non-default argument follows default argument");
      }
      s->params.push_back(std::move(param));
    }
    CS_RETURN_IF_ERROR(expect_op(")"));
    const int saved_depth = loop_depth_;
    loop_depth_ = 0;  // break/continue do not cross a macro boundary
    Status st = parse_body({"endmacro"}, s->body);
    loop_depth_ = saved_depth;
    CS_RETURN_IF_ERROR(st);
    drop_end_tag();
    body.push_back(std::move(s));
    return {};
  }

  Status parse_filter_block(Body& body) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kFilterBlock;
    s->line = cur().line;
    advance();
    CS_ASSIGN_OR_RETURN(s->expr, parse_filter(nullptr, true));
    CS_RETURN_IF_ERROR(parse_body({"endfilter"}, s->body));
    drop_end_tag();
    body.push_back(std::move(s));
    return {};
  }

  Status parse_with(Body& body) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kWith;
    s->line = cur().line;
    advance();
    while (cur().type != TokenType::kBlockEnd) {
      if (!s->targets.empty()) CS_RETURN_IF_ERROR(expect_op(","));
      CS_ASSIGN_OR_RETURN(ExprPtr target, parse_assign_target(true, {}, false));
      CS_RETURN_IF_ERROR(expect_op("="));
      CS_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
      s->targets.push_back(std::move(target));
      s->values.push_back(std::move(value));
    }
    CS_RETURN_IF_ERROR(parse_body({"endwith"}, s->body));
    drop_end_tag();
    body.push_back(std::move(s));
    return {};
  }

  Status parse_print(Body& body) {
    const int line = cur().line;
    advance();
    bool first = true;
    while (cur().type != TokenType::kBlockEnd) {
      if (!first) CS_RETURN_IF_ERROR(expect_op(","));
      first = false;
      auto s = std::make_unique<Stmt>();
      s->kind = StmtKind::kOutput;
      s->line = line;
      CS_ASSIGN_OR_RETURN(s->expr, parse_expression(true));
      body.push_back(std::move(s));
    }
    return {};
  }

  Status parse_generation(Body& body) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kScope;
    s->line = cur().line;
    advance();
    CS_RETURN_IF_ERROR(parse_body({"endgeneration"}, s->body));
    drop_end_tag();
    body.push_back(std::move(s));
    return {};
  }

  // ---- assignment targets ---------------------------------------------------
  Result<ExprPtr> parse_assign_target(bool with_tuple,
                                      const std::vector<std::string_view>& end_names,
                                      bool with_namespace) {
    const int line = cur().line;
    ExprPtr target;
    if (with_tuple) {
      CS_ASSIGN_OR_RETURN(target, parse_tuple_of_primaries(end_names, with_namespace));
    } else {
      CS_ASSIGN_OR_RETURN(target, parse_primary(with_namespace));
    }
    auto assignable = [](const Expr& e) {
      return e.kind == ExprKind::kName || e.kind == ExprKind::kNsRef;
    };
    bool ok = assignable(*target);
    if (target->kind == ExprKind::kTuple) {
      ok = true;
      for (const auto& c : target->children)
        ok = ok && c->kind == ExprKind::kName;
    }
    if (target->kind == ExprKind::kName &&
        (target->name == "true" || target->name == "false" || target->name == "none")) {
      ok = false;
    }
    if (!ok) return fail("can't assign to this expression", line);
    return target;
  }

  // parse_tuple(simplified=True): names/literals separated by commas.
  Result<ExprPtr> parse_tuple_of_primaries(const std::vector<std::string_view>& end_names,
                                           bool with_namespace) {
    const int line = cur().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) CS_RETURN_IF_ERROR(expect_op(","));
      if (is_tuple_end(end_names)) break;
      CS_ASSIGN_OR_RETURN(ExprPtr item, parse_primary(with_namespace));
      items.push_back(std::move(item));
      if (is_op(cur(), ",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (items.empty()) return fail("Expected an expression, got '" + describe(cur()) + "'");
      return std::move(items[0]);
    }
    auto t = make(ExprKind::kTuple, line);
    t->children = std::move(items);
    return t;
  }

  // ---- expressions ----------------------------------------------------------
  bool is_tuple_end(const std::vector<std::string_view>& end_names) const {
    const Token& t = cur();
    if (t.type == TokenType::kVariableEnd || t.type == TokenType::kBlockEnd || is_op(t, ")")) {
      return true;
    }
    for (std::string_view n : end_names) {
      if (is_name(t, n)) return true;
    }
    return false;
  }

  Result<ExprPtr> parse_tuple(bool with_condexpr, const std::vector<std::string_view>& end_names,
                              bool explicit_parens) {
    const int line = cur().line;
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) CS_RETURN_IF_ERROR(expect_op(","));
      if (is_tuple_end(end_names)) break;
      CS_ASSIGN_OR_RETURN(ExprPtr item, parse_expression(with_condexpr));
      items.push_back(std::move(item));
      if (is_op(cur(), ",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) return fail("Expected an expression, got '" + describe(cur()) + "'");
    }
    auto t = make(ExprKind::kTuple, line);
    t->children = std::move(items);
    return t;
  }

  Result<ExprPtr> parse_expression(bool with_condexpr) {
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  Result<ExprPtr> parse_condexpr() {
    int line = cur().line;
    CS_ASSIGN_OR_RETURN(ExprPtr expr1, parse_or());
    while (skip_name("if")) {
      CS_ASSIGN_OR_RETURN(ExprPtr expr2, parse_or());
      ExprPtr expr3;
      if (skip_name("else")) {
        CS_ASSIGN_OR_RETURN(expr3, parse_condexpr());
      }
      auto e = make(ExprKind::kCondExpr, line);
      e->children.push_back(std::move(expr1));
      e->children.push_back(std::move(expr2));
      e->children.push_back(std::move(expr3));
      expr1 = std::move(e);
      line = cur().line;
    }
    return expr1;
  }

  Result<ExprPtr> parse_or() {
    CS_ASSIGN_OR_RETURN(ExprPtr left, parse_and());
    while (is_name(cur(), "or")) {
      const int line = cur().line;
      advance();
      CS_ASSIGN_OR_RETURN(ExprPtr right, parse_and());
      left = binary(ExprKind::kOr, line, std::move(left), std::move(right));
    }
    return left;
  }

  Result<ExprPtr> parse_and() {
    CS_ASSIGN_OR_RETURN(ExprPtr left, parse_not());
    while (is_name(cur(), "and")) {
      const int line = cur().line;
      advance();
      CS_ASSIGN_OR_RETURN(ExprPtr right, parse_not());
      left = binary(ExprKind::kAnd, line, std::move(left), std::move(right));
    }
    return left;
  }

  Result<ExprPtr> parse_not() {
    Nest nest(this);
    CS_RETURN_IF_ERROR(check_depth());
    if (is_name(cur(), "not")) {
      const int line = cur().line;
      advance();
      CS_ASSIGN_OR_RETURN(ExprPtr operand, parse_not());
      auto e = make(ExprKind::kNot, line);
      e->children.push_back(std::move(operand));
      return e;
    }
    return parse_compare();
  }

  Result<ExprPtr> parse_compare() {
    const int line = cur().line;
    CS_ASSIGN_OR_RETURN(ExprPtr expr, parse_math1());
    auto e = make(ExprKind::kCompare, line);
    while (true) {
      const Token& t = cur();
      std::string op;
      if (t.type == TokenType::kOperator &&
          (t.value == "==" || t.value == "!=" || t.value == "<" || t.value == "<=" ||
           t.value == ">" || t.value == ">=")) {
        op = t.value;
        advance();
      } else if (is_name(t, "in")) {
        op = "in";
        advance();
      } else if (is_name(t, "not") && is_name(look(), "in")) {
        op = "notin";
        advance();
        advance();
      } else {
        break;
      }
      CS_ASSIGN_OR_RETURN(ExprPtr rhs, parse_math1());
      e->ops.push_back(op);
      e->children.push_back(std::move(rhs));
    }
    if (e->ops.empty()) return expr;
    e->children.insert(e->children.begin(), std::move(expr));
    return e;
  }

  static ExprPtr binary(ExprKind kind, int line, ExprPtr l, ExprPtr r, std::string op = "") {
    auto e = make(kind, line);
    e->op = std::move(op);
    e->children.push_back(std::move(l));
    e->children.push_back(std::move(r));
    return e;
  }

  Result<ExprPtr> parse_math1() {
    CS_ASSIGN_OR_RETURN(ExprPtr left, parse_concat());
    while (is_op(cur(), "+") || is_op(cur(), "-")) {
      const std::string op = cur().value;
      const int line = cur().line;
      advance();
      CS_ASSIGN_OR_RETURN(ExprPtr right, parse_concat());
      left = binary(ExprKind::kBinary, line, std::move(left), std::move(right), op);
    }
    return left;
  }

  Result<ExprPtr> parse_concat() {
    const int line = cur().line;
    CS_ASSIGN_OR_RETURN(ExprPtr first, parse_math2());
    if (!is_op(cur(), "~")) return first;
    auto e = make(ExprKind::kConcat, line);
    e->children.push_back(std::move(first));
    while (skip_op("~")) {
      CS_ASSIGN_OR_RETURN(ExprPtr next, parse_math2());
      e->children.push_back(std::move(next));
    }
    return e;
  }

  Result<ExprPtr> parse_math2() {
    CS_ASSIGN_OR_RETURN(ExprPtr left, parse_pow());
    while (is_op(cur(), "*") || is_op(cur(), "/") || is_op(cur(), "//") || is_op(cur(), "%")) {
      const std::string op = cur().value;
      const int line = cur().line;
      advance();
      CS_ASSIGN_OR_RETURN(ExprPtr right, parse_pow());
      left = binary(ExprKind::kBinary, line, std::move(left), std::move(right), op);
    }
    return left;
  }

  Result<ExprPtr> parse_pow() {
    CS_ASSIGN_OR_RETURN(ExprPtr left, parse_unary(true));
    while (is_op(cur(), "**")) {
      const int line = cur().line;
      advance();
      CS_ASSIGN_OR_RETURN(ExprPtr right, parse_unary(true));
      left = binary(ExprKind::kBinary, line, std::move(left), std::move(right), "**");
    }
    return left;
  }

  Result<ExprPtr> parse_unary(bool with_filter) {
    Nest nest(this);
    CS_RETURN_IF_ERROR(check_depth());
    const int line = cur().line;
    ExprPtr node;
    if (is_op(cur(), "-") || is_op(cur(), "+")) {
      const bool neg = cur().value == "-";
      advance();
      CS_ASSIGN_OR_RETURN(ExprPtr operand, parse_unary(false));
      node = make(neg ? ExprKind::kNeg : ExprKind::kPos, line);
      node->children.push_back(std::move(operand));
    } else {
      CS_ASSIGN_OR_RETURN(node, parse_primary(false));
    }
    CS_ASSIGN_OR_RETURN(node, parse_postfix(std::move(node)));
    if (with_filter) {
      CS_ASSIGN_OR_RETURN(node, parse_filter_expr(std::move(node)));
    }
    return node;
  }

  Result<ExprPtr> parse_primary(bool with_namespace) {
    const Token& t = cur();
    const int line = t.line;
    if (t.type == TokenType::kName) {
      const std::string v = t.value;
      advance();
      if (v == "true" || v == "True" || v == "false" || v == "False") {
        auto e = make(ExprKind::kConst, line);
        e->value = TemplateValue::boolean(v == "true" || v == "True");
        return e;
      }
      if (v == "none" || v == "None") {
        auto e = make(ExprKind::kConst, line);
        e->value = TemplateValue::none();
        return e;
      }
      if (with_namespace && is_op(cur(), ".")) {
        advance();
        auto e = make(ExprKind::kNsRef, line);
        e->name = v;
        CS_ASSIGN_OR_RETURN(e->attr, expect_name());
        return e;
      }
      auto e = make(ExprKind::kName, line);
      e->name = v;
      return e;
    }
    if (t.type == TokenType::kString) {
      std::string s;
      while (cur().type == TokenType::kString) {  // adjacent literals concatenate
        s += cur().value;
        advance();
      }
      auto e = make(ExprKind::kConst, line);
      e->value = TemplateValue::string(std::move(s));
      return e;
    }
    if (t.type == TokenType::kInteger || t.type == TokenType::kFloat) {
      auto e = make(ExprKind::kConst, line);
      e->value = t.type == TokenType::kInteger ? TemplateValue::integer(t.int_value)
                                               : TemplateValue::number(t.float_value);
      advance();
      return e;
    }
    if (is_op(t, "(")) {
      advance();
      CS_ASSIGN_OR_RETURN(ExprPtr inner, parse_tuple(true, {}, true));
      CS_RETURN_IF_ERROR(expect_op(")"));
      return inner;
    }
    if (is_op(t, "[")) return parse_list();
    if (is_op(t, "{")) return parse_dict();
    return fail("unexpected '" + describe(t) + "'");
  }

  Result<ExprPtr> parse_list() {
    auto e = make(ExprKind::kList, cur().line);
    advance();
    while (!is_op(cur(), "]")) {
      if (!e->children.empty()) CS_RETURN_IF_ERROR(expect_op(","));
      if (is_op(cur(), "]")) break;
      CS_ASSIGN_OR_RETURN(ExprPtr item, parse_expression(true));
      e->children.push_back(std::move(item));
    }
    CS_RETURN_IF_ERROR(expect_op("]"));
    return e;
  }

  Result<ExprPtr> parse_dict() {
    auto e = make(ExprKind::kDict, cur().line);
    advance();
    while (!is_op(cur(), "}")) {
      if (!e->children.empty()) CS_RETURN_IF_ERROR(expect_op(","));
      if (is_op(cur(), "}")) break;
      CS_ASSIGN_OR_RETURN(ExprPtr key, parse_expression(true));
      CS_RETURN_IF_ERROR(expect_op(":"));
      CS_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
      e->children.push_back(std::move(key));
      e->children.push_back(std::move(value));
    }
    CS_RETURN_IF_ERROR(expect_op("}"));
    return e;
  }

  Result<ExprPtr> parse_postfix(ExprPtr node) {
    while (true) {
      if (is_op(cur(), ".") || is_op(cur(), "[")) {
        CS_ASSIGN_OR_RETURN(node, parse_subscript(std::move(node)));
      } else if (is_op(cur(), "(")) {
        CS_ASSIGN_OR_RETURN(node, parse_call(std::move(node)));
      } else {
        return node;
      }
    }
  }

  Result<ExprPtr> parse_filter_expr(ExprPtr node) {
    while (true) {
      if (is_op(cur(), "|")) {
        CS_ASSIGN_OR_RETURN(node, parse_filter(std::move(node), false));
      } else if (is_name(cur(), "is")) {
        CS_ASSIGN_OR_RETURN(node, parse_test(std::move(node)));
      } else if (is_op(cur(), "(")) {
        CS_ASSIGN_OR_RETURN(node, parse_call(std::move(node)));
      } else {
        return node;
      }
    }
  }

  Result<ExprPtr> parse_subscript(ExprPtr node) {
    const Token tok = cur();
    advance();
    if (tok.value == ".") {
      const Token attr = cur();
      advance();
      if (attr.type == TokenType::kName) {
        auto e = make(ExprKind::kGetattr, tok.line);
        e->name = attr.value;
        e->children.push_back(std::move(node));
        return e;
      }
      if (attr.type != TokenType::kInteger) return fail("expected name or number", attr.line);
      auto key = make(ExprKind::kConst, attr.line);
      key->value = TemplateValue::integer(attr.int_value);
      auto e = make(ExprKind::kGetitem, tok.line);
      e->children.push_back(std::move(node));
      e->children.push_back(std::move(key));
      return e;
    }
    std::vector<ExprPtr> args;
    while (!is_op(cur(), "]")) {
      if (!args.empty()) CS_RETURN_IF_ERROR(expect_op(","));
      CS_ASSIGN_OR_RETURN(ExprPtr arg, parse_subscribed());
      args.push_back(std::move(arg));
    }
    CS_RETURN_IF_ERROR(expect_op("]"));
    auto e = make(ExprKind::kGetitem, tok.line);
    e->children.push_back(std::move(node));
    if (args.size() == 1) {
      e->children.push_back(std::move(args[0]));
    } else {
      auto t = make(ExprKind::kTuple, tok.line);
      t->children = std::move(args);
      e->children.push_back(std::move(t));
    }
    return e;
  }

  Result<ExprPtr> parse_subscribed() {
    const int line = cur().line;
    std::vector<ExprPtr> parts;
    if (is_op(cur(), ":")) {
      advance();
      parts.push_back(nullptr);
    } else {
      CS_ASSIGN_OR_RETURN(ExprPtr node, parse_expression(true));
      if (!is_op(cur(), ":")) return node;
      advance();
      parts.push_back(std::move(node));
    }
    auto at_end = [&] { return is_op(cur(), "]") || is_op(cur(), ","); };
    if (is_op(cur(), ":")) {
      parts.push_back(nullptr);
    } else if (!at_end()) {
      CS_ASSIGN_OR_RETURN(ExprPtr stop, parse_expression(true));
      parts.push_back(std::move(stop));
    } else {
      parts.push_back(nullptr);
    }
    if (skip_op(":")) {
      if (!at_end()) {
        CS_ASSIGN_OR_RETURN(ExprPtr step, parse_expression(true));
        parts.push_back(std::move(step));
      } else {
        parts.push_back(nullptr);
      }
    } else {
      parts.push_back(nullptr);
    }
    auto e = make(ExprKind::kSlice, line);
    e->children = std::move(parts);
    return e;
  }

  // (args..., key=value..., *args / **kwargs unsupported)
  Status parse_call_args(Expr& e) {
    const int line = cur().line;
    CS_RETURN_IF_ERROR(expect_op("("));
    bool require_comma = false;
    while (!is_op(cur(), ")")) {
      if (require_comma) {
        CS_RETURN_IF_ERROR(expect_op(","));
        if (is_op(cur(), ")")) break;  // trailing comma
      }
      if (is_op(cur(), "*") || is_op(cur(), "**")) {
        return fail("*args / **kwargs in calls are not supported");
      }
      if (cur().type == TokenType::kName && is_op(look(), "=")) {
        std::string key = cur().value;
        advance();
        advance();
        CS_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
        e.kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        if (!e.kwargs.empty()) return fail("invalid syntax for function call expression", line);
        CS_ASSIGN_OR_RETURN(ExprPtr value, parse_expression(true));
        e.args.push_back(std::move(value));
      }
      require_comma = true;
    }
    return expect_op(")");
  }

  Result<ExprPtr> parse_call(ExprPtr node) {
    auto e = make(ExprKind::kCall, cur().line);
    e->children.push_back(std::move(node));
    CS_RETURN_IF_ERROR(parse_call_args(*e));
    return e;
  }

  Result<std::string> parse_dotted_name() {
    CS_ASSIGN_OR_RETURN(std::string name, expect_name());
    while (skip_op(".")) {
      CS_ASSIGN_OR_RETURN(std::string part, expect_name());
      name += "." + part;
    }
    return name;
  }

  // One or more `| name(args)`; with start_inline the first `|` is absent
  // ({% filter upper %}).
  Result<ExprPtr> parse_filter(ExprPtr node, bool start_inline) {
    while (is_op(cur(), "|") || start_inline) {
      if (!start_inline) advance();
      start_inline = false;
      const int line = cur().line;
      CS_ASSIGN_OR_RETURN(std::string name, parse_dotted_name());
      auto e = make(ExprKind::kFilter, line);
      e->name = std::move(name);
      e->children.push_back(std::move(node));
      if (is_op(cur(), "(")) CS_RETURN_IF_ERROR(parse_call_args(*e));
      node = std::move(e);
    }
    return node;
  }

  Result<ExprPtr> parse_test(ExprPtr node) {
    const int line = cur().line;
    advance();  // is
    const bool negated = skip_name("not");
    CS_ASSIGN_OR_RETURN(std::string name, parse_dotted_name());
    auto e = make(ExprKind::kTest, line);
    e->name = std::move(name);
    e->children.push_back(std::move(node));
    const Token& t = cur();
    if (is_op(t, "(")) {
      CS_RETURN_IF_ERROR(parse_call_args(*e));
    } else if ((t.type == TokenType::kName || t.type == TokenType::kString ||
                t.type == TokenType::kInteger || t.type == TokenType::kFloat || is_op(t, "[") ||
                is_op(t, "{")) &&
               !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and")) {
      if (is_name(t, "is")) return fail("You cannot chain multiple tests with is");
      CS_ASSIGN_OR_RETURN(ExprPtr arg, parse_primary(false));
      CS_ASSIGN_OR_RETURN(arg, parse_postfix(std::move(arg)));
      e->args.push_back(std::move(arg));
    }
    if (!negated) return e;
    auto n = make(ExprKind::kNot, line);
    n->children.push_back(std::move(e));
    return n;
  }

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;  // recursion depth, see Nest
  std::vector<std::string> tag_stack_;
};

// NOTE: jinja2 checks filter and test names when it compiles the template,
// except inside {% if %} branches and inline if-expressions ("soft" frames),
// where an unknown name only fails if that code runs. Loop, macro, with and
// filter bodies open non-soft frames again. validate() mirrors this, so we
// accept exactly the templates jinja2 accepts; a deferred name fails in
// apply_filter / apply_test when evaluated.
Status validate_expr(const Expr* e, bool soft);

Status check_name(const Expr& e, bool soft) {
  if (soft) return {};
  const bool is_filter = e.kind == ExprKind::kFilter;
  const Support support = is_filter ? filter_support(e.name) : test_support(e.name);
  const char* what = is_filter ? "filter" : "test";
  switch (support) {
    case Support::kUnknown:
      return make_error(ErrorCode::kInvalidArgument, "line {}: No {} named '{}'.", e.line, what,
                        e.name);
    case Support::kUnsupported:
      return make_error(ErrorCode::kInvalidArgument,
                        "line {}: the '{}' {} is not supported in chat templates", e.line, e.name,
                        what);
    case Support::kSupported:
      break;
  }
  return {};
}

Status validate_expr(const Expr* e, bool soft) {
  if (e == nullptr) return {};
  if (e->kind == ExprKind::kCondExpr) soft = true;
  if (e->kind == ExprKind::kFilter || e->kind == ExprKind::kTest)
    CS_RETURN_IF_ERROR(check_name(*e, soft));
  for (const auto& c : e->children)
    CS_RETURN_IF_ERROR(validate_expr(c.get(), soft));
  for (const auto& c : e->args)
    CS_RETURN_IF_ERROR(validate_expr(c.get(), soft));
  for (const auto& [k, c] : e->kwargs)
    CS_RETURN_IF_ERROR(validate_expr(c.get(), soft));
  return {};
}

Status validate(const Body& body, bool soft) {
  for (const auto& s : body) {
    switch (s->kind) {
      case StmtKind::kIf:
        for (const auto& [test, branch] : s->branches) {
          CS_RETURN_IF_ERROR(validate_expr(test.get(), true));
          CS_RETURN_IF_ERROR(validate(branch, true));
        }
        CS_RETURN_IF_ERROR(validate(s->else_body, true));
        break;
      case StmtKind::kFor:
        CS_RETURN_IF_ERROR(validate_expr(s->expr.get(), soft));
        CS_RETURN_IF_ERROR(validate_expr(s->cond.get(), false));
        CS_RETURN_IF_ERROR(validate(s->body, false));
        CS_RETURN_IF_ERROR(validate(s->else_body, false));
        break;
      case StmtKind::kWith:
        for (const auto& v : s->values)
          CS_RETURN_IF_ERROR(validate_expr(v.get(), soft));
        CS_RETURN_IF_ERROR(validate(s->body, false));
        break;
      case StmtKind::kOutput:
      case StmtKind::kSet:
        CS_RETURN_IF_ERROR(validate_expr(s->expr.get(), soft));
        break;
      default:  // set-block, macro, filter block, generation: inner frames
        CS_RETURN_IF_ERROR(validate_expr(s->expr.get(), false));
        for (const auto& d : s->defaults)
          CS_RETURN_IF_ERROR(validate_expr(d.get(), false));
        CS_RETURN_IF_ERROR(validate(s->body, false));
        break;
    }
  }
  return {};
}

}  // namespace

Result<Body> parse_template(std::string_view source) {
  CS_ASSIGN_OR_RETURN(std::vector<Token> tokens, tokenize(source));
  CS_ASSIGN_OR_RETURN(Body body, Parser(std::move(tokens)).parse());
  CS_RETURN_IF_ERROR(validate(body, false));
  return body;
}

}  // namespace cartserve::jinja
