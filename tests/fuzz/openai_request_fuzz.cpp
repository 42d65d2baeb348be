// The OpenAI request mapping on arbitrary bodies: /v1/chat/completions and
// /v1/completions bodies parsed into requests (every field checked), then
// what the server does next with an accepted one: the chat messages rendered
// through a real chat template and tokenized (alone and after a cartridge),
// completion prompts tokenized. The first byte picks the endpoint.
#include <cstddef>
#include <cstdint>
#include <filesystem>

#include "chat_template/prompt_builder.h"
#include "core/mapped_file.h"
#include "fuzz_util.h"
#include "model/model.h"
#include "server/openai_protocol.h"

using namespace cartserve;

namespace {

Model* g_model = nullptr;
PromptBuilder* g_prompts = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::quiet_logs();
  const std::string dir = fuzz::source_dir() + "/tests/fixtures/model/tiny-llama/";
  auto json = read_file(dir + "tokenizer.json");
  if (!json.ok()) std::abort();
  HfTokenizerConfig cfg;
  cfg.bos_token = "<|bos|>";
  cfg.eos_token = "<|eos|>";
  auto tok = Tokenizer::from_hf_json(*json, cfg);
  if (!tok.ok()) std::abort();
  g_model = new Model();
  g_model->tokenizer = std::move(tok).value();
  g_model->config.vocab_size = g_model->tokenizer.vocab_size();
  g_model->bos_text = "<|bos|>";
  g_model->eos_text = "<|eos|>";
  // Llama 3.1's template (tools, system prompt handling, raise_exception) when
  // scripts/setup.sh fetched it; else the fixture's own.
  std::string cache;
  if (const char* c = std::getenv("CARTSERVE_CACHE")) {
    cache = c;
  } else if (const char* h = std::getenv("HOME")) {
    cache = std::string(h) + "/.cache/cartserve";
  }
  const std::string llama = cache + "/ref/templates/meta-llama-Llama-3.1-8B-Instruct.jinja";
  auto tmpl = read_file(std::filesystem::exists(llama) ? llama : dir + "chat_template.jinja");
  if (!tmpl.ok()) std::abort();
  g_model->chat_template = *tmpl;
  g_prompts = new PromptBuilder(*g_model);
  if (!g_prompts->has_chat_template()) std::abort();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string body(fuzz::as_text(data + 1, size - 1));
  if (data[0] & 1) {
    auto r = api::parse_completion_request(body);
    if (auto* e = std::get_if<api::ApiError>(&r)) {
      if (e->message.empty() || e->http_status < 400) __builtin_trap();
      (void)api::error_json(*e).dump();
      return 0;
    }
    const auto& req = std::get<api::CompletionRequest>(r);
    if (req.prompts.empty()) __builtin_trap();
    for (const auto& p : req.prompts) {
      if (const auto* text = std::get_if<std::string>(&p)) {
        (void)g_prompts->completion(*text, req.cartridges.present());
      }
    }
    return 0;
  }
  auto r = api::parse_chat_request(body);
  if (auto* e = std::get_if<api::ApiError>(&r)) {
    if (e->message.empty() || e->http_status < 400) __builtin_trap();
    (void)api::error_json(*e).dump();
    return 0;
  }
  const auto& req = std::get<api::ChatCompletionRequest>(r);
  for (bool after_cartridge : {false, true}) {
    auto ids = g_prompts->chat(req.messages, req.add_generation_prompt, after_cartridge);
    if (ids.ok()) {
      for (int32_t id : *ids) {
        if (id < 0 || id >= g_model->config.vocab_size) __builtin_trap();
      }
    }
  }
  return 0;
}
