#include "engine/stop_checker.h"

#include <gtest/gtest.h>

namespace cartserve {
namespace {

std::string feed(StopStringMatcher& m, const std::vector<std::string>& pieces,
                 bool* stopped = nullptr) {
  std::string out;
  for (const auto& p : pieces) {
    const auto st = m.push(p);
    out += st.text;
    if (st.stopped) {
      if (stopped) *stopped = true;
      return out;
    }
  }
  if (stopped) *stopped = false;
  return out + m.flush();
}

TEST(StopStrings, MatchAcrossTokenBoundariesIsCut) {
  StopStringMatcher m({"o w"}, false);
  bool stopped = false;
  EXPECT_EQ(feed(m, {"Hel", "lo", " wo", "rld"}, &stopped), "Hell");
  EXPECT_TRUE(stopped);
  EXPECT_TRUE(m.push("more").text.empty());  // nothing after a stop
}

TEST(StopStrings, IncludeStopStringInOutput) {
  StopStringMatcher m({"END"}, true);
  bool stopped = false;
  EXPECT_EQ(feed(m, {"abc E", "N", "D tail"}, &stopped), "abc END");
  EXPECT_TRUE(stopped);
}

TEST(StopStrings, HoldsBackOnlyWhatCouldStillMatch) {
  StopStringMatcher m({"STOP"}, false);
  auto s = m.push("abc S");
  EXPECT_EQ(s.text, "abc ");  // "S" may start "STOP"
  s = m.push("T");
  EXPECT_EQ(s.text, "");  // "ST"
  s = m.push("AR");
  EXPECT_EQ(s.text, "STAR");  // cannot become "STOP" any more
  s = m.push("S");
  EXPECT_EQ(s.text, "");
  EXPECT_EQ(m.flush(), "S");  // end of generation: release what was held
  EXPECT_FALSE(m.stopped());
}

TEST(StopStrings, EarliestOfSeveralAndMultibyte) {
  StopStringMatcher m({"world", "lo w", "é!"}, false);
  bool stopped = false;
  EXPECT_EQ(feed(m, {"hel", "lo world"}, &stopped), "hel");
  EXPECT_TRUE(stopped);
  StopStringMatcher u({"é!"}, false);
  // "é" is two bytes; the pieces are whole characters as the detokenizer emits them.
  EXPECT_EQ(feed(u, {"caf", "é", "!", "x"}, &stopped), "caf");
  EXPECT_TRUE(stopped);
  StopStringMatcher none({}, false);
  EXPECT_EQ(none.push("anything").text, "anything");
}

TEST(StopStrings, StopStringInsideOnePiece) {
  StopStringMatcher m({"\n\n"}, false);
  bool stopped = false;
  EXPECT_EQ(feed(m, {"line one\n\nline two"}, &stopped), "line one");
  EXPECT_TRUE(stopped);
}

Request req_with(std::vector<int32_t> out, int32_t max_tokens) {
  Request r;
  r.prompt_token_ids = {1, 2, 3};
  r.output_token_ids = std::move(out);
  r.sampling.max_tokens = max_tokens;
  r.eos_token_ids = {0};
  return r;
}

TEST(TokenStop, EosStopIdsMaxTokensMinTokensContext) {
  EXPECT_EQ(check_token_stop(req_with({5, 0}, 10), 100).reason, FinishReason::kStop);
  auto r = req_with({5, 0}, 10);
  r.sampling.ignore_eos = true;
  EXPECT_EQ(check_token_stop(r, 100).reason, FinishReason::kNone);
  r.sampling.stop_token_ids = {0};  // explicit stop ids stop even with ignore_eos (vLLM)
  const TokenStop s = check_token_stop(r, 100);
  EXPECT_EQ(s.reason, FinishReason::kStop);
  EXPECT_EQ(s.stop_token, 0);
  EXPECT_EQ(check_token_stop(req_with({5, 6}, 2), 100).reason, FinishReason::kLength);
  EXPECT_EQ(check_token_stop(req_with({5, 6}, 3), 100).reason, FinishReason::kNone);
  EXPECT_EQ(check_token_stop(req_with({5, 6}, 30), 5).reason, FinishReason::kLength);
  auto m = req_with({0}, 10);
  m.sampling.min_tokens = 2;
  EXPECT_EQ(check_token_stop(m, 100).reason, FinishReason::kNone);
  EXPECT_EQ(check_token_stop(req_with({}, 10), 100).reason, FinishReason::kNone);
}

}  // namespace
}  // namespace cartserve
