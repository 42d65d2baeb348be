// Chat template lexer: template text -> tokens, with jinja2's whitespace
// rules as transformers configures them (trim_blocks, lstrip_blocks, "-" and
// "+" modifiers, newline normalisation, one trailing newline dropped).
// Comments vanish here; {% raw %} bodies become plain data.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace cartserve::jinja {

enum class TokenType {
  kData,           // literal template text
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kName,           // identifiers and keywords
  kString,         // value: unescaped contents
  kInteger,        // int_value
  kFloat,          // float_value
  kOperator,       // value: "+", "//", "==", "(", ...
  kEof,
};

struct Token {
  TokenType type = TokenType::kEof;
  std::string value;
  int line = 1;
  int64_t int_value = 0;
  double float_value = 0.0;
};

const char* token_type_name(TokenType t);

// Errors (unterminated comment, unexpected character, unbalanced brackets,
// bad escape) are kInvalidArgument "line N: ...".
Result<std::vector<Token>> tokenize(std::string_view source);

}  // namespace cartserve::jinja
