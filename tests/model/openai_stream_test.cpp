// The OpenAI service streams what it returns whole, also when the engine
// finished the request before the HTTP layer's first look at it (a short
// answer on an idle engine, or a loaded machine that descheduled the HTTP
// thread). The HTTP layer calls early_error() until the job is admitted, then
// poll(): a request already finished at early_error() once streamed nothing
// (CI saw an empty stream for a 24-token answer of tiny-mistral).
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "model/model.h"
#include "server/openai_service.h"
#include "server/serving_stack.h"
#include "test_util.h"

namespace cartserve {
namespace {

using nlohmann::json;

struct Served {
  std::unique_ptr<Model> model;
  std::unique_ptr<ServingStack> stack;
  std::unique_ptr<OpenAiService> service;
};

Served serve_tiny_mistral() {
  Served s;
  LoadOptions lo;
  lo.progress = false;
  lo.summary = false;
  auto m = load_model(testing::fixture_path("model/tiny-mistral"), lo);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  if (!m.ok()) return s;
  s.model = std::move(m).value();
  ServeOptions o;
  o.model = s.model->path;
  o.device = "cpu";
  o.max_num_seqs = 4;
  o.max_model_len = 512;
  o.kv_cache_tokens = 64 * 16;
  o.served_model_name = {"tiny-mistral"};
  auto st = build_serving_stack(*s.model, o);
  EXPECT_TRUE(st.ok()) << st.status().to_string();
  if (!st.ok()) return s;
  s.stack = std::move(st).value();
  ServiceConfig sc;
  sc.served_model_names = s.stack->served_model_names;
  sc.max_model_len = 512;
  s.service = std::make_unique<OpenAiService>(*s.model, *s.stack->engine, sc);
  return s;
}

api::ChatCompletionRequest request(bool stream) {
  api::ChatCompletionRequest r;
  r.model = "tiny-mistral";  // ServeOptions::served_model_name below
  ChatMessage m;
  m.role = "user";
  m.content = "caf\u00e9 \U0001F600 hi";
  r.messages.push_back(m);
  r.sampling.max_tokens = 24;
  r.sampling.temperature = 0.0;
  r.sampling.ignore_eos = true;
  r.stream = stream;
  return r;
}

// The job's text and finish reason, driven as the HTTP layer drives it.
// `settle_first`: wait until the engine has finished the request before the
// first early_error() (the race, made certain).
std::pair<std::string, std::string> run(Served& s, bool stream, bool settle_first) {
  auto started = s.service->start_chat(request(stream));
  if (!std::holds_alternative<std::unique_ptr<CompletionJob>>(started)) {
    ADD_FAILURE() << std::get<api::ApiError>(started).message;
    return {};
  }
  auto job = std::move(std::get<std::unique_ptr<CompletionJob>>(started));
  if (settle_first) {
    const int64_t steps_before = s.stack->engine->stats().num_steps;
    for (int i = 0; i < 6000; ++i) {  // up to 60 s
      const EngineStats st = s.stack->engine->stats();
      if (st.num_steps >= steps_before + 24 && st.num_running == 0 && st.num_waiting == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  std::string text, finish;
  auto fold = [&](const json& chunk) {
    for (const auto& c : chunk.at("choices")) {
      const json& part = stream ? c.at("delta") : c.at("message");
      if (part.contains("content") && part["content"].is_string())
        text += part["content"].get<std::string>();
      if (c.at("finish_reason").is_string()) finish = c["finish_reason"].get<std::string>();
    }
  };
  EXPECT_FALSE(job->early_error(std::chrono::milliseconds(100)).has_value());
  std::vector<json> chunks;
  for (int i = 0; i < 600 && !job->poll(chunks, std::chrono::milliseconds(100)); ++i) {
  }
  for (const auto& c : chunks)
    fold(c);
  if (!stream) fold(job->final_json());
  EXPECT_EQ(stream, !chunks.empty());
  return {text, finish};
}

TEST(OpenAiStream, StreamsWhatItReturnsWholeEvenWhenFinishedBeforeTheFirstPoll) {
  Served s = serve_tiny_mistral();
  ASSERT_TRUE(s.service);
  const auto whole = run(s, /*stream=*/false, /*settle_first=*/false);
  ASSERT_FALSE(whole.first.empty());
  EXPECT_EQ(whole.second, "length");
  for (const bool settle : {false, true}) {
    const auto streamed = run(s, /*stream=*/true, settle);
    EXPECT_EQ(streamed.first, whole.first) << "settle_first=" << settle;
    EXPECT_EQ(streamed.second, "length") << "settle_first=" << settle;
  }
}

}  // namespace
}  // namespace cartserve
