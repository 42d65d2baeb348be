#include "chat_template/prompt_builder.h"

namespace cartserve {

namespace {

// Stands in for the cartridge's system turn when rendering what follows it.
constexpr const char* kSystemSentinel =
    "\x01"
    "cartserve-cartridge"
    "\x01";

}  // namespace

PromptBuilder::PromptBuilder(const Model& model) : model_(model) {
  if (model.chat_template.empty()) {
    template_error_ = "the model has no chat template";
    return;
  }
  auto t = ChatTemplate::parse(model.chat_template);
  if (t.ok()) {
    template_ = std::move(t).value();
  } else {
    template_error_ = t.status().message();
  }
}

ChatTemplateOptions PromptBuilder::options(bool add_generation_prompt,
                                           const TemplateVariables& kwargs) const {
  ChatTemplateOptions o;
  o.add_generation_prompt = add_generation_prompt;
  o.bos_token = model_.bos_text;
  o.eos_token = model_.eos_text;
  o.variables = kwargs;
  return o;
}

Status PromptBuilder::template_status() const {
  if (template_) return {};
  return make_error(ErrorCode::kInvalidArgument, "chat template: {}", template_error_);
}

std::vector<int32_t> PromptBuilder::completion(std::string_view text, bool after_cartridge,
                                               bool parse_special) const {
  std::vector<int32_t> ids;
  const Tokenizer& tok = model_.tokenizer;
  if (!after_cartridge && tok.add_bos_by_default() && tok.bos_id()) ids.push_back(*tok.bos_id());
  const auto body = tok.encode(text, parse_special);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

Result<std::string> PromptBuilder::chat_text(const std::vector<ChatMessage>& messages,
                                             bool add_generation_prompt, bool after_cartridge,
                                             const TemplateVariables& kwargs) const {
  CS_RETURN_IF_ERROR(template_status());
  const ChatTemplateOptions opts = options(add_generation_prompt, kwargs);
  const auto wrap = [](Result<std::string> r) -> Result<std::string> {
    if (r.ok()) return r;
    return make_error(ErrorCode::kInvalidArgument, "chat template: {}", r.status().message());
  };
  if (!after_cartridge) return wrap(template_->render(messages, opts));
  std::vector<ChatMessage> with_system = {{"system", kSystemSentinel}};
  with_system.insert(with_system.end(), messages.begin(), messages.end());
  CS_ASSIGN_OR_RETURN(std::string full, wrap(template_->render(with_system, opts)));
  CS_ASSIGN_OR_RETURN(std::string prefix, wrap(template_->render({{"system", kSystemSentinel}},
                                                                 options(false, kwargs))));
  if (full.compare(0, prefix.size(), prefix) != 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "the model's chat template cannot continue after a cartridge's system turn");
  }
  return full.substr(prefix.size());
}

Result<std::vector<int32_t>> PromptBuilder::chat(const std::vector<ChatMessage>& messages,
                                                 bool add_generation_prompt, bool after_cartridge,
                                                 const TemplateVariables& kwargs) const {
  CS_ASSIGN_OR_RETURN(std::string text,
                      chat_text(messages, add_generation_prompt, after_cartridge, kwargs));
  return model_.tokenizer.encode(text);
}

Result<std::vector<int32_t>> PromptBuilder::cartridge(std::string_view document, bool raw) const {
  if (document.empty()) return make_error(ErrorCode::kInvalidArgument, "the document is empty");
  if (raw) return completion(document, /*after_cartridge=*/false);
  if (!template_) {
    return make_error(ErrorCode::kInvalidArgument,
                      "the model has no usable chat template to wrap the document in ({}; use "
                      "--raw)",
                      template_error_);
  }
  return chat({{"system", std::string(document)}}, /*add_generation_prompt=*/false,
              /*after_cartridge=*/false);
}

}  // namespace cartserve
