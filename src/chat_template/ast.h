// Syntax tree of a parsed chat template. One tagged struct per node family
// keeps the interpreter a plain switch; the comment on each kind says which
// fields it uses.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat_template/value.h"

namespace cartserve::jinja {

enum class ExprKind {
  kConst,     // value
  kName,      // name
  kList,      // children: items
  kTuple,     // children: items
  kDict,      // children: key0, value0, key1, value1, ...
  kGetattr,   // children[0].name
  kGetitem,   // children[0][children[1]]
  kSlice,     // children: start, stop, step (nullptr when omitted); only as a subscript
  kCall,      // children[0](args..., kwargs...)
  kFilter,    // children[0] | name(args..., kwargs...); children[0] is nullptr in
              // {% filter %} / {% set x | f %} chains, where the body is the operand
  kTest,      // children[0] is [not] name(args..., kwargs...)
  kNot,       // not children[0]
  kNeg,       // -children[0]
  kPos,       // +children[0]
  kBinary,    // children[0] op children[1], op in + - * / // % **
  kAnd,       // children[0] and children[1]
  kOr,        // children[0] or children[1]
  kConcat,    // children joined with ~
  kCompare,   // children[0] ops[0] children[1] ops[1] children[2] ... (chained)
  kCondExpr,  // children: [then, test, else (nullptr: Undefined)]
  kNsRef,     // name.attr as an assignment target ({% set ns.attr = ... %})
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind = ExprKind::kConst;
  int line = 0;
  TemplateValue value;           // kConst
  std::string name;              // kName, kGetattr attr, kFilter/kTest name, kNsRef var
  std::string attr;              // kNsRef attribute
  std::string op;                // kBinary operator
  std::vector<std::string> ops;  // kCompare: "==", "!=", "<", "<=", ">", ">=", "in", "notin"
  std::vector<ExprPtr> children;
  std::vector<ExprPtr> args;  // kCall / kFilter / kTest positional arguments
  std::vector<std::pair<std::string, ExprPtr>> kwargs;  // kCall / kFilter / kTest
};

enum class StmtKind {
  kText,         // text
  kOutput,       // {{ expr }}
  kIf,           // branches (test, body); else_body
  kFor,          // for target in expr [if cond]: body [else: else_body]
  kSet,          // set target = expr
  kSetBlock,     // set target [| filter] %} body {% endset
  kMacro,        // macro name(params, defaults): body
  kFilterBlock,  // filter expr (a kFilter chain): body
  kWith,         // with targets = values: body
  kScope,        // body run in place ({% generation %} of transformers)
  kBreak,
  kContinue,
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  StmtKind kind = StmtKind::kText;
  int line = 0;
  std::string text;                                // kText
  ExprPtr expr;                                    // kOutput, kFor iterable, kSet value, filters
  ExprPtr target;                                  // kFor, kSet, kSetBlock
  ExprPtr cond;                                    // kFor loop filter
  std::vector<std::pair<ExprPtr, Body>> branches;  // kIf: if / elif tests and bodies
  Body body;
  Body else_body;
  std::string name;                 // kMacro
  std::vector<std::string> params;  // kMacro
  std::vector<ExprPtr> defaults;    // kMacro: defaults of the last params
  std::vector<ExprPtr> targets;     // kWith
  std::vector<ExprPtr> values;      // kWith
};

}  // namespace cartserve::jinja
