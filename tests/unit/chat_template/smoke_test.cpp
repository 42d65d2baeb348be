#include <gtest/gtest.h>

#include "tokenizer/chat_template.h"

namespace cartserve {
TEST(ChatTemplateSmoke, Renders) {
  auto t = ChatTemplate::parse("{% for m in messages %}{{ m.role }}:{{ m.content }}\n{% endfor %}");
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  auto out = t->render({{"user", "hi", {}}}, {});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(*out, "user:hi\n");
}
}  // namespace cartserve
