// Findings of the chat-template fuzzer (tests/fuzz/chat_template_fuzz.cpp) as
// regression tests: each input renders to an error value, quickly.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "chat_template/chat_template.h"
#include "core/mapped_file.h"
#include "test_util.h"

namespace cartserve {
namespace {

// Renders `source` with a little context within `limit` (not crashing, not
// running away); with `must_fail`, to an error value.
void expect_bounded(const std::string& source, std::chrono::milliseconds limit, bool must_fail) {
  const auto t0 = std::chrono::steady_clock::now();
  auto t = ChatTemplate::parse(source);
  if (t.ok()) {
    TemplateVariables vars;
    vars.emplace_back("bos_token", TemplateValue::string("<s>"));
    auto out = t->render_variables(vars);
    if (must_fail) {
      EXPECT_FALSE(out.ok()) << "rendered " << out->size() << " bytes";
    }
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, limit);
}

// Nested joins over a string's characters: each level multiplies the size by
// the separator's (a 501-byte fuzzer input built 4 MB through a value per
// character: over the 1 s limit under ASan). Joined characters are now
// appended directly, and a result past kMaxBuiltSize is an error.
TEST(HostileTemplate, NestedJoinsOfCharactersAreBounded) {
  auto fuzzed = read_file(std::string(CARTSERVE_SOURCE_DIR) +
                          "/tests/fuzz/regressions/chat_template/join_growth_timeout");
  ASSERT_TRUE(fuzzed.ok()) << fuzzed.status().to_string();
  expect_bounded(*fuzzed, std::chrono::milliseconds(1000), /*must_fail=*/false);
  const std::string sep(300, '-');
  expect_bounded("{{ ('" + std::string(2000, 'x') + "' | join('" + sep + "')) | join('" + sep +
                     "') | join('" + sep + "') }}",
                 std::chrono::milliseconds(1000), /*must_fail=*/true);
}

TEST(HostileTemplate, LargeButBoundedJoinStillWorks) {
  auto t = ChatTemplate::parse("{{ ('abc' * 1000) | join(',') }}");
  ASSERT_TRUE(t.ok());
  auto out = t->render_variables({});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->size(), 3000u + 2999u);
}

}  // namespace
}  // namespace cartserve
