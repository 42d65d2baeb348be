#include "chat_template/chat_template.h"

#include "chat_template/ast.h"
#include "chat_template/interpreter.h"
#include "chat_template/parser.h"

namespace cartserve {

struct ChatTemplate::Impl {
  jinja::Body body;
};

ChatTemplate::ChatTemplate() = default;
ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

Result<ChatTemplate> ChatTemplate::parse(std::string_view source) {
  auto body = jinja::parse_template(source);
  if (!body.ok()) {
    return Status(ErrorCode::kInvalidArgument,
                  "chat template syntax error: " + body.status().message());
  }
  ChatTemplate t;
  t.impl_ = std::make_unique<Impl>();
  t.impl_->body = std::move(body).value();
  return t;
}

namespace {

using Entries = std::vector<std::pair<std::string, TemplateValue>>;

void put(Entries& entries, const std::string& key, TemplateValue v) {
  for (auto& [k, old] : entries) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  entries.emplace_back(key, std::move(v));
}

// transformers' _alias_reasoning_fields: the first non-None of
// reasoning_content / thinking / reasoning is also exposed as "thinking"
// and "reasoning_content".
Entries alias_reasoning(Entries entries) {
  const TemplateValue* reasoning = nullptr;
  for (const char* name : {"reasoning_content", "thinking", "reasoning"}) {
    for (const auto& [k, v] : entries) {
      if (k == name && !v.is_none()) {
        reasoning = &v;
        break;
      }
    }
    if (reasoning) break;
  }
  if (!reasoning) return entries;
  // {"thinking": r, **message, "reasoning_content": r}: "thinking" is the
  // first key even when the message has its own (whose value wins).
  const TemplateValue r = *reasoning;
  Entries out;
  out.emplace_back("thinking", r);
  for (auto& [k, v] : entries)
    put(out, k, std::move(v));
  put(out, "reasoning_content", r);
  return out;
}

}  // namespace

TemplateValue ChatTemplate::messages_value(const std::vector<ChatMessage>& messages) {
  TemplateValue::Items list;
  for (const auto& m : messages) {
    Entries entries;
    entries.emplace_back("role", TemplateValue::string(m.role));
    entries.emplace_back("content", TemplateValue::string(m.content));
    for (const auto& [k, v] : m.fields)
      put(entries, k, v);
    Entries kept;
    for (auto& e : entries) {
      if (!e.second.is_none()) kept.push_back(std::move(e));
    }
    list.push_back(TemplateValue::dict(alias_reasoning(std::move(kept))));
  }
  return TemplateValue::list(std::move(list));
}

Result<std::string> ChatTemplate::render(const std::vector<ChatMessage>& messages,
                                         const ChatTemplateOptions& options) const {
  TemplateVariables vars;
  vars.emplace_back("messages", messages_value(messages));
  vars.emplace_back("tools", options.tools ? *options.tools : TemplateValue::none());
  vars.emplace_back("documents", TemplateValue::none());
  vars.emplace_back("add_generation_prompt", TemplateValue::boolean(options.add_generation_prompt));
  vars.emplace_back("bos_token", TemplateValue::string(options.bos_token));
  vars.emplace_back("eos_token", TemplateValue::string(options.eos_token));
  if (!options.date_string.empty()) {
    vars.emplace_back("date_string", TemplateValue::string(options.date_string));
  }
  for (const auto& [k, v] : options.variables)
    put(vars, k, v);
  return render_variables(vars, options.now);
}

Result<std::string> ChatTemplate::render_variables(const TemplateVariables& variables,
                                                   std::optional<std::tm> now) const {
  if (!impl_) return Status(ErrorCode::kFailedPrecondition, "chat template was not parsed");
  jinja::RenderSettings settings;
  settings.now = now;
  auto out = jinja::render_template(impl_->body, variables, settings);
  if (!out.ok()) {
    return Status(ErrorCode::kInvalidArgument, "chat template error: " + out.status().message());
  }
  return out;
}

}  // namespace cartserve
