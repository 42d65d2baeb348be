// Real model chat templates against transformers' apply_chat_template
// (tools/make_chat_template_fixtures.py): output must be byte-identical;
// where the template raises, we must fail with the same message.
#include <gtest/gtest.h>

#include "chat_template/chat_template.h"
#include "core/mapped_file.h"
#include "core/sha256.h"
#include "fixture_json.h"
#include "test_util.h"

namespace cartserve {
namespace {

using testing::OrderedJson;

struct LoadedTemplate {
  std::string name;
  std::string source;
  OrderedJson spec;
};

const OrderedJson& fixture() {
  static const OrderedJson j =
      testing::load_json(testing::fixture_path("chat_template/model_templates.json"));
  return j;
}

// The template text: inline in the fixture, or the reference file whose
// sha256 the fixture pins (the files are fetched by scripts/setup.sh).
std::string template_source(const OrderedJson& t) {
  if (t.contains("source")) return t["source"].get<std::string>();
  const std::string path = testing::ref_path(t["ref_file"].get<std::string>());
  auto text = read_file(path);
  EXPECT_TRUE(text.ok()) << "missing reference template " << path << ": "
                         << text.status().to_string();
  if (!text.ok()) return "";
  EXPECT_EQ(sha256_hex(*text), t["sha256"].get<std::string>()) << path << " changed";
  return *text;
}

ChatTemplateOptions case_options(const OrderedJson& t, const OrderedJson& c) {
  ChatTemplateOptions o;
  o.add_generation_prompt = c["add_generation_prompt"].get<bool>();
  for (const auto& [k, v] : t["special_tokens"].items()) {
    if (k == "bos_token") {
      o.bos_token = v.get<std::string>();
    } else if (k == "eos_token") {
      o.eos_token = v.get<std::string>();
    } else {
      o.variables.emplace_back(k, testing::to_template_value(v));
    }
  }
  if (c.contains("tools")) o.tools = testing::to_template_value(c["tools"]);
  if (c.contains("kwargs")) {
    for (const auto& [k, v] : c["kwargs"].items()) {
      if (k == "date_string") {
        o.date_string = v.get<std::string>();  // exercises the dedicated option
      } else {
        o.variables.emplace_back(k, testing::to_template_value(v));
      }
    }
  }
  o.now = testing::to_tm(fixture()["meta"]["strftime_now_time"]);
  return o;
}

class ModelTemplateTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelTemplateTest, MatchesTransformers) {
  const OrderedJson* spec = nullptr;
  for (const auto& t : fixture()["templates"]) {
    if (t["name"] == GetParam()) spec = &t;
  }
  ASSERT_NE(spec, nullptr);
  const std::string source = template_source(*spec);
  ASSERT_FALSE(source.empty());
  auto tmpl = ChatTemplate::parse(source);
  ASSERT_TRUE(tmpl.ok()) << tmpl.status().to_string();

  int checked = 0;
  for (const auto& c : (*spec)["cases"]) {
    SCOPED_TRACE(GetParam() + "/" + c["name"].get<std::string>());
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"])
      messages.push_back(testing::to_chat_message(m));
    auto out = tmpl->render(messages, case_options(*spec, c));
    if (c.contains("expected")) {
      ASSERT_TRUE(out.ok()) << out.status().to_string();
      EXPECT_EQ(*out, c["expected"].get<std::string>());
    } else {
      ASSERT_FALSE(out.ok()) << "expected an error, rendered: " << *out;
      EXPECT_EQ(out.status().code(), ErrorCode::kInvalidArgument);
      // raise_exception(...) raises TemplateError; jinja2's own errors (an
      // undefined attribute used, as Qwen3's template does on a tool-call turn
      // without content) carry their message alone.
      const bool raised = c.value("error_type", "TemplateError") == "TemplateError";
      EXPECT_NE(out.status().message().find((raised ? "raise_exception: " : "") +
                                            c["error"].get<std::string>()),
                std::string::npos)
          << out.status().message();
    }
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelTemplateTest,
                         ::testing::Values("smollm2", "llama31", "llama32", "llama33", "qwen25",
                                           "mistral_nemo", "qwen3", "mistral_small_32",
                                           "tiny_mistral_inst", "messages_dump"));

TEST(ModelTemplateFixture, CoversEveryTemplate) {
  EXPECT_EQ(fixture()["templates"].size(), 10u);
}

// The SmolLM2 template in the fixture is the one inside the test model.
TEST(ModelTemplateFixture, SmolLM2TemplateComesFromTheTestModel) {
  auto model = MappedFile::open(testing::test_model_path());
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const std::string_view bytes(reinterpret_cast<const char*>(model->data()), model->size());
  std::string source;
  for (const auto& t : fixture()["templates"]) {
    if (t["name"] == "smollm2") source = t["source"].get<std::string>();
  }
  ASSERT_FALSE(source.empty());
  EXPECT_NE(bytes.find(source), std::string_view::npos);
}

}  // namespace
}  // namespace cartserve
