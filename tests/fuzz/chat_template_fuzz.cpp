// The chat-template engine on hostile templates: the input is the template
// source, parsed and rendered over a fixed context (messages, tools and the
// scalar/list/dict variables of the language fixtures). Deep nesting, huge
// loops, recursion and output growth must end in an error value, quickly.
#include <cstddef>
#include <cstdint>
#include <ctime>

#include "chat_template/chat_template.h"
#include "fuzz_util.h"

using namespace cartserve;

namespace {

TemplateVariables make_context() {
  using V = TemplateValue;
  std::vector<ChatMessage> msgs = {
      {"system", "You are helpful.", {}},
      {"user", "Hello <b>&</b> \xc3\xa9t\xc3\xa9", {}},
      {"assistant", "", {{"tool_calls", V::list({V::dict({{"name", V::string("f")}})})}}},
      {"tool", "{\"x\": 1}", {{"tool_call_id", V::string("c1")}}},
  };
  TemplateVariables vars;
  vars.emplace_back("messages", ChatTemplate::messages_value(msgs));
  vars.emplace_back("tools",
                    V::list({V::dict({{"type", V::string("function")},
                                      {"function", V::dict({{"name", V::string("f")}})}})}));
  vars.emplace_back("add_generation_prompt", V::boolean(true));
  vars.emplace_back("bos_token", V::string("<s>"));
  vars.emplace_back("eos_token", V::string("</s>"));
  vars.emplace_back("s", V::string("Hello World"));
  vars.emplace_back("n", V::integer(5));
  vars.emplace_back("f", V::number(2.5));
  vars.emplace_back("l", V::list({V::integer(3), V::integer(1), V::integer(2), V::integer(1)}));
  vars.emplace_back("d", V::dict({{"b", V::integer(1)}, {"a", V::integer(2)}}));
  vars.emplace_back("e", V::string(""));
  vars.emplace_back("t", V::list({V::integer(1), V::string("a")}));
  vars.emplace_back("b", V::boolean(true));
  return vars;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const TemplateVariables vars = make_context();
  auto t = ChatTemplate::parse(fuzz::as_text(data, size));
  if (!t.ok()) return 0;
  std::tm now{};
  now.tm_year = 124;
  now.tm_mday = 1;
  auto out = t->render_variables(vars, now);
  if (!out.ok() && out.status().message().empty()) __builtin_trap();
  return 0;
}
