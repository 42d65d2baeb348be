#include "server/openai_protocol.h"

#include <gtest/gtest.h>

namespace cartserve::api {
namespace {

template <typename T>
const ApiError& err_of(const std::variant<T, ApiError>& v) {
  EXPECT_TRUE(std::holds_alternative<ApiError>(v));
  return std::get<ApiError>(v);
}

TEST(OpenAiProtocol, CompletionPromptForms) {
  auto a = parse_completion_request(R"({"model":"m","prompt":"hi"})");
  ASSERT_TRUE(std::holds_alternative<CompletionRequest>(a));
  EXPECT_EQ(std::get<std::string>(std::get<CompletionRequest>(a).prompts[0]), "hi");
  EXPECT_EQ(std::get<CompletionRequest>(a).sampling.max_tokens, 16);  // OpenAI default

  auto b = parse_completion_request(R"({"prompt":["a","b"]})");
  ASSERT_TRUE(std::holds_alternative<CompletionRequest>(b));
  EXPECT_EQ(std::get<CompletionRequest>(b).prompts.size(), 2u);

  auto c = parse_completion_request(R"({"prompt":[1,2,3]})");
  ASSERT_TRUE(std::holds_alternative<CompletionRequest>(c));
  EXPECT_EQ(std::get<1>(std::get<CompletionRequest>(c).prompts[0]),
            (std::vector<int32_t>{1, 2, 3}));

  auto d = parse_completion_request(R"({"prompt":[[1,2],[3]]})");
  ASSERT_TRUE(std::holds_alternative<CompletionRequest>(d));
  EXPECT_EQ(std::get<CompletionRequest>(d).prompts.size(), 2u);
}

TEST(OpenAiProtocol, BadRequestsNameTheField) {
  EXPECT_EQ(err_of(parse_completion_request("{not json")).message,
            "request body is not valid JSON");
  EXPECT_EQ(err_of(parse_completion_request("[1]")).http_status, 400);
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":""})")).param, "prompt");
  EXPECT_EQ(err_of(parse_completion_request(R"({"model":"m"})")).param, "prompt");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","temperature":-1})")).param,
            "temperature");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","temperature":"hot"})")).param,
            "temperature");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","max_tokens":-5})")).param,
            "max_tokens");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","max_tokens":1.5})")).param,
            "max_tokens");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","top_p":0})")).param, "top_p");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","stream":"yes"})")).param, "stream");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","stop":[1]})")).param, "stop");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","logprobs":50})")).param, "logprobs");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":[-1]})")).param, "prompt");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","n":0})")).param, "n");
  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"x","logit_bias":{"1":5}})")).param,
            "logit_bias");
}

TEST(OpenAiProtocol, ChatMessagesAndOptions) {
  auto r = parse_chat_request(
      R"({"model":"m","messages":[{"role":"system","content":"s"},
          {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
          "max_completion_tokens":7,"logprobs":true,"top_logprobs":3,
          "stream":true,"stream_options":{"include_usage":true},"stop":"END","seed":42})");
  ASSERT_TRUE(std::holds_alternative<ChatCompletionRequest>(r));
  const auto& c = std::get<ChatCompletionRequest>(r);
  ASSERT_EQ(c.messages.size(), 2u);
  EXPECT_EQ(c.messages[1].content, "ab");
  EXPECT_EQ(c.sampling.max_tokens, 7);
  EXPECT_TRUE(c.logprobs);
  EXPECT_EQ(c.top_logprobs, 3);
  EXPECT_TRUE(c.stream && c.include_usage);
  EXPECT_EQ(c.sampling.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(c.sampling.seed, 42);

  EXPECT_EQ(err_of(parse_chat_request(R"({"messages":[]})")).param, "messages");
  EXPECT_EQ(err_of(parse_chat_request(R"({"messages":[{"role":"wizard","content":"x"}]})")).param,
            "messages[0].role");
  EXPECT_EQ(err_of(parse_chat_request(R"({"messages":[{"role":"user","content":5}]})")).param,
            "messages[0].content");
  EXPECT_EQ(
      err_of(parse_chat_request(R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})"))
          .param,
      "top_logprobs");
}

TEST(OpenAiProtocol, CartridgeSelectionForms) {
  auto a =
      parse_completion_request(R"({"prompt":"q","kv_transfer_params":{"cartridge_id":"doc_a"}})");
  ASSERT_TRUE(std::holds_alternative<CompletionRequest>(a));
  EXPECT_EQ(std::get<CompletionRequest>(a).cartridges.kv_transfer_params.at("cartridge_id"),
            "doc_a");

  auto b = parse_completion_request(
      R"({"prompt":"q","extra_body":{"kv_transfer_params":{"cartridge_id":"doc_b"}}})");
  ASSERT_TRUE(std::holds_alternative<CompletionRequest>(b));
  EXPECT_EQ(std::get<CompletionRequest>(b).cartridges.kv_transfer_params.at("cartridge_id"),
            "doc_b");

  auto c =
      parse_completion_request(R"({"prompt":"q","kv_transfer_params":{"cartridge_id":["x","y"]}})");
  ASSERT_TRUE(std::holds_alternative<CompletionRequest>(c));
  EXPECT_EQ(std::get<CompletionRequest>(c).cartridges.cartridge_ids,
            (std::vector<std::string>{"x", "y"}));

  auto d = parse_chat_request(
      R"({"messages":[{"role":"user","content":"q"}],"cartridges":[{"id":"t1"},{"id":"t2"}]})");
  ASSERT_TRUE(std::holds_alternative<ChatCompletionRequest>(d));
  EXPECT_EQ(std::get<ChatCompletionRequest>(d).cartridges.cartridge_ids,
            (std::vector<std::string>{"t1", "t2"}));

  EXPECT_EQ(err_of(parse_completion_request(R"({"prompt":"q","cartridges":[{"name":1}]})")).param,
            "cartridges");
}

TEST(OpenAiProtocol, ResponsesHaveOpenAiShape) {
  Choice c;
  c.text = "Paris";
  c.finish_reason = "stop";
  c.has_logprobs = true;
  c.logprobs.push_back({"Paris", {'P', 'a', 'r', 'i', 's'}, -0.1f, {{"Paris", {}, -0.1f}}, 0});
  auto j = completion_response("cmpl-1", 5, "m", {c}, {3, 1});
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "Paris");
  EXPECT_EQ(j["choices"][0]["logprobs"]["tokens"][0], "Paris");
  EXPECT_EQ(j["usage"]["total_tokens"], 4);
  auto k = chat_chunk("chatcmpl-1", 5, "m", c, true);
  EXPECT_EQ(k["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(k["choices"][0]["logprobs"]["content"][0]["bytes"].size(), 5u);
  auto e = error_json(bad_request("nope", "prompt"));
  EXPECT_EQ(e["error"]["message"], "nope");
  EXPECT_EQ(e["error"]["param"], "prompt");
  EXPECT_EQ(e["error"]["code"], 400);
}

}  // namespace
}  // namespace cartserve::api
