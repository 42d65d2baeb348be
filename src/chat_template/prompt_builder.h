// How a request's text becomes prompt token ids, in one place: the model's
// chat template, the BOS rule, and the cartridge rules. The server, the CLI,
// the cartridge builder, the benchmarks and the tests all build prompts here.
//
// NOTE: the rules.
//  - A completion prompt starts with BOS when the tokenizer adds one by
//    default, unless a cartridge precedes it (the cartridge holds BOS).
//  - A cartridge's own prompt is the system turn rendered alone (no generation
//    prompt), so it starts with BOS where the template emits one, as the
//    Cartridges code initialises cartridges; `raw` takes the text as a
//    completion prompt would.
//  - A chat request after a cartridge is the rendering of [system,
//    messages...] minus the rendering of [system] alone: the template's BOS
//    and default system header are not repeated after the cartridge.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "chat_template/chat_template.h"
#include "core/status.h"
#include "model/model.h"

namespace cartserve {

class PromptBuilder {
 public:
  // Parses the model's chat template once; a template error is reported by
  // every chat call (completions still work).
  explicit PromptBuilder(const Model& model);

  // A completion prompt.
  std::vector<int32_t> completion(std::string_view text, bool after_cartridge,
                                  bool parse_special = true) const;
  // Chat messages, rendered and tokenized. kInvalidArgument for a model
  // without a usable template or a template error (message prefixed "chat
  // template: "). `kwargs`: further template variables (a request's
  // chat_template_kwargs, e.g. enable_thinking for Qwen3).
  Result<std::vector<int32_t>> chat(const std::vector<ChatMessage>& messages,
                                    bool add_generation_prompt, bool after_cartridge,
                                    const TemplateVariables& kwargs = {}) const;
  // The same, as text.
  Result<std::string> chat_text(const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt, bool after_cartridge,
                                const TemplateVariables& kwargs = {}) const;
  // The token ids a cartridge built from `document` holds.
  Result<std::vector<int32_t>> cartridge(std::string_view document, bool raw) const;

  bool has_chat_template() const { return template_.has_value(); }

 private:
  ChatTemplateOptions options(bool add_generation_prompt, const TemplateVariables& kwargs) const;
  Status template_status() const;

  const Model& model_;
  std::optional<ChatTemplate> template_;
  std::string template_error_;
};

}  // namespace cartserve
