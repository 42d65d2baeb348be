// chat_template_kwargs (as vLLM): parsed from a chat request into template
// variables and passed through PromptBuilder, e.g. Qwen3's enable_thinking.
#include <gtest/gtest.h>

#include "chat_template/prompt_builder.h"
#include "core/mapped_file.h"
#include "model/model.h"
#include "server/openai_protocol.h"
#include "test_util.h"

namespace cartserve::api {
namespace {

template <typename T>
const ApiError& err_of(const std::variant<T, ApiError>& v) {
  EXPECT_TRUE(std::holds_alternative<ApiError>(v));
  return std::get<ApiError>(v);
}

const TemplateValue* find(const TemplateVariables& vars, const std::string& name) {
  for (const auto& [k, v] : vars) {
    if (k == name) return &v;
  }
  return nullptr;
}

TEST(ChatTemplateKwargs, Parsed) {
  auto r = parse_chat_request(
      R"({"messages":[{"role":"user","content":"hi"}],)"
      R"("chat_template_kwargs":{"enable_thinking":false,"opts":{"a":[1,2.5,"x",null]}}})");
  ASSERT_TRUE(std::holds_alternative<ChatCompletionRequest>(r)) << err_of(r).message;
  const TemplateVariables& vars = std::get<ChatCompletionRequest>(r).template_kwargs;
  ASSERT_EQ(vars.size(), 2u);
  ASSERT_NE(find(vars, "enable_thinking"), nullptr);
  EXPECT_TRUE(find(vars, "enable_thinking")->is_bool());
  EXPECT_FALSE(find(vars, "enable_thinking")->as_bool());
  ASSERT_NE(find(vars, "opts"), nullptr);
  EXPECT_TRUE(find(vars, "opts")->is_dict());

  auto none = parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}]})");
  ASSERT_TRUE(std::holds_alternative<ChatCompletionRequest>(none));
  EXPECT_TRUE(std::get<ChatCompletionRequest>(none).template_kwargs.empty());
}

TEST(ChatTemplateKwargs, BadValuesNameTheField) {
  const std::string head =
      R"({"messages":[{"role":"user","content":"hi"}],"chat_template_kwargs":)";
  EXPECT_EQ(err_of(parse_chat_request(head + "[1]}")).param, "chat_template_kwargs");
  EXPECT_EQ(err_of(parse_chat_request(head + R"({"messages":[]}})")).param, "chat_template_kwargs");
  EXPECT_EQ(err_of(parse_chat_request(head + R"({"add_generation_prompt":false}})")).param,
            "chat_template_kwargs");
  std::string deep = "1";
  for (int i = 0; i < 40; ++i)
    deep = "[" + deep + "]";
  const auto deep_result = parse_chat_request(head + R"({"x":)" + deep + "}}");
  const ApiError& e = err_of(deep_result);
  EXPECT_EQ(e.param, "chat_template_kwargs");
  EXPECT_NE(e.message.find("nests too deeply"), std::string::npos) << e.message;
}

// The tiny Qwen3 checkpoint with the real Qwen3 template: enable_thinking
// reaches the template, in a plain chat and after a cartridge.
TEST(ChatTemplateKwargs, EnableThinkingReachesTheQwen3Template) {
  LoadOptions opts;
  opts.progress = false;
  auto m = load_model(testing::fixture_path("model/tiny-qwen3"), opts);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  auto source = read_file(testing::ref_path("templates/Qwen-Qwen3-0.6B.jinja"));
  ASSERT_TRUE(source.ok()) << source.status().to_string() << " (run scripts/setup.sh)";
  (*m)->chat_template = *source;
  const PromptBuilder prompts(**m);
  const std::vector<ChatMessage> msgs = {{"user", "Capital of France?"}};
  const std::string gen = "<|im_start|>assistant\n";
  const std::string empty_think = "<think>\n\n</think>\n\n";

  auto on = prompts.chat_text(msgs, true, false);
  ASSERT_TRUE(on.ok()) << on.status().to_string();
  EXPECT_EQ(*on, "<|im_start|>user\nCapital of France?<|im_end|>\n" + gen);

  const TemplateVariables off = {{"enable_thinking", TemplateValue::boolean(false)}};
  auto no_think = prompts.chat_text(msgs, true, false, off);
  ASSERT_TRUE(no_think.ok()) << no_think.status().to_string();
  EXPECT_EQ(*no_think, *on + empty_think);

  // After a cartridge: the system turn is the cartridge's; the rest follows.
  auto after = prompts.chat_text(msgs, true, true, off);
  ASSERT_TRUE(after.ok()) << after.status().to_string();
  EXPECT_EQ(*after, "<|im_start|>user\nCapital of France?<|im_end|>\n" + gen + empty_think);
}

}  // namespace
}  // namespace cartserve::api
