// Chat templates: a small interpreter for the Jinja2 subset that model chat
// templates use (SmolLM2, Llama 3.x, Qwen2.5, Mistral ...). Output must equal
// Python jinja2 as transformers' apply_chat_template runs it
// (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols,
// transformers' tojson / raise_exception / strftime_now / namespace).
//
// The pieces, one concern per file:
//   lexer                    text -> tokens (whitespace control)
//   parser                   tokens -> syntax tree (ast.h)
//   interpreter              scopes, loops, macros, globals
//   value                    the value model (public: message fields, kwargs)
//   ops / attributes / methods / filters / json / text
//                            Python semantics of operators, attribute access,
//                            str/dict methods, filters and tests, json.dumps,
//                            str operations on UTF-8.
#pragma once

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat_template/value.h"
#include "core/status.h"

namespace cartserve {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool"
  std::string content;
  // Further message keys (tool_calls, tool_call_id, name, reasoning_content
  // ...), placed after role and content. An entry named "role" or "content"
  // replaces that key. A None value removes the key, as transformers drops
  // None-valued keys: {"content", none()} renders a message without content
  // (OpenAI content=null). An empty `content` string stays an empty string.
  std::vector<std::pair<std::string, TemplateValue>> fields;
};

using TemplateVariables = std::vector<std::pair<std::string, TemplateValue>>;

struct ChatTemplateOptions {
  bool add_generation_prompt = true;
  std::string bos_token;  // exposed to the template as bos_token
  std::string eos_token;  // exposed as eos_token
  // The `date_string` template variable (Llama 3.x). Empty: not defined, so
  // the template falls back to its own default, as apply_chat_template does
  // without the kwarg.
  std::string date_string;
  // Local time that strftime_now(format) formats; nullopt: the current time.
  // Tests fix it.
  std::optional<std::tm> now;
  // apply_chat_template(tools=...): a list of tool schemas (dicts).
  // nullopt: the template sees tools = None.
  std::optional<TemplateValue> tools;
  // Further template variables, as transformers' **kwargs (builtin_tools,
  // tools_in_user_message, enable_thinking, pad_token ...). They override the
  // variables above.
  TemplateVariables variables;
};

class ChatTemplate {
 public:
  // Parses the template once; a syntax error or an unsupported construct is
  // kInvalidArgument naming the line and the construct.
  static Result<ChatTemplate> parse(std::string_view source);

  // Renders messages. Runtime errors (raise_exception(...) in the template,
  // an unsupported filter, ...) are kInvalidArgument with the message.
  Result<std::string> render(const std::vector<ChatMessage>& messages,
                             const ChatTemplateOptions& options) const;

  // Renders with exactly `variables` as the template context (plus the
  // globals: raise_exception, strftime_now, namespace, dict, range).
  Result<std::string> render_variables(const TemplateVariables& variables,
                                       std::optional<std::tm> now = std::nullopt) const;

  // The template variable `messages` as render() builds it (transformers'
  // message normalisation: None-valued keys dropped, reasoning aliases).
  static TemplateValue messages_value(const std::vector<ChatMessage>& messages);

  ChatTemplate();
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cartserve
