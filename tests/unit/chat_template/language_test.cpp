// One Jinja feature per case against the environment apply_chat_template
// uses (tools/make_chat_template_fixtures.py, language.json): identical
// output, or an error in the same phase (parse vs render).
#include <gtest/gtest.h>

#include "chat_template/chat_template.h"
#include "fixture_json.h"
#include "test_util.h"

namespace cartserve {
namespace {

using testing::OrderedJson;

const OrderedJson& fixture() {
  static const OrderedJson j =
      testing::load_json(testing::fixture_path("chat_template/language.json"));
  return j;
}

TEST(ChatTemplateLanguage, MatchesJinja2) {
  const auto& cases = fixture()["cases"];
  ASSERT_GE(cases.size(), 150u);
  for (const auto& c : cases) {
    const std::string name = c["name"].get<std::string>();
    SCOPED_TRACE(name + ": " + c["template"].get<std::string>());
    TemplateVariables vars;
    for (const auto& [k, v] : c["context"].items())
      vars.emplace_back(k, testing::to_template_value(v));
    auto tmpl = ChatTemplate::parse(c["template"].get<std::string>());
    const std::string phase = c.value("error_phase", "");
    if (phase == "parse") {
      EXPECT_FALSE(tmpl.ok()) << "jinja2 rejects this template: " << c["error"];
      if (!tmpl.ok()) {
        EXPECT_EQ(tmpl.status().code(), ErrorCode::kInvalidArgument);
      }
      continue;
    }
    ASSERT_TRUE(tmpl.ok()) << tmpl.status().to_string();
    auto out = tmpl->render_variables(vars);
    if (phase == "render") {
      EXPECT_FALSE(out.ok()) << "jinja2 fails with " << c["error_type"] << ": " << c["error"]
                             << "; we rendered: " << (out.ok() ? *out : "");
      if (!out.ok() && c["error_type"] == "TemplateError") {
        EXPECT_NE(out.status().message().find(c["error"].get<std::string>()), std::string::npos)
            << out.status().message();
      }
      continue;
    }
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    EXPECT_EQ(*out, c["expected"].get<std::string>());
  }
}

}  // namespace
}  // namespace cartserve
