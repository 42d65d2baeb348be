// Chat templates: a small interpreter for the Jinja2 subset that model chat
// templates use (SmolLM2, Llama 3.x, Qwen2.5, Mistral ...). Output must equal
// Python jinja2 as transformers' apply_chat_template runs it.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace cartserve {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", "tool"
  std::string content;
};

struct ChatTemplateOptions {
  bool add_generation_prompt = true;
  std::string bos_token;  // exposed to the template as bos_token
  std::string eos_token;  // exposed as eos_token
  // Value of strftime_now(...) / date_string; fixed in tests. Empty: today's date.
  std::string date_string;
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

  ChatTemplate();
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cartserve
