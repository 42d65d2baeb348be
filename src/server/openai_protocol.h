// The OpenAI-compatible API at the HTTP edge: request bodies parsed into
// native structs (with validation that names the offending field), and
// responses / stream chunks serialised back. Nothing inward sees JSON.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat_template/chat_template.h"
#include "core/status.h"

namespace cartserve::api {

// Sampling fields shared by /v1/completions and /v1/chat/completions,
// including vLLM's extensions (top_k, min_p, repetition_penalty, ...).
struct SamplingFields {
  std::optional<int64_t> max_tokens;  // absent: completions 16, chat up to the context
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t top_k = 0;  // 0 or -1: disabled
  double min_p = 0.0;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  double repetition_penalty = 1.0;
  std::optional<int64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool skip_special_tokens = true;
  bool include_stop_str_in_output = false;
  int64_t min_tokens = 0;
  int64_t n = 1;
};

// Which cartridges a request names: kv_transfer_params.cartridge_id (string
// or list, top level or inside extra_body) and Tokasaurus' "cartridges":
// [{"id": ...}]. Resolved by the router in the engine layer.
struct CartridgeSelection {
  std::map<std::string, std::string> kv_transfer_params;  // string-valued entries
  std::vector<std::string> cartridge_ids;                 // explicit list, request order
  bool present() const { return !kv_transfer_params.empty() || !cartridge_ids.empty(); }
};

struct CompletionRequest {
  std::string model;
  // One entry per prompt; each is text or token ids.
  std::vector<std::variant<std::string, std::vector<int32_t>>> prompts;
  SamplingFields sampling;
  bool stream = false;
  bool include_usage = false;       // stream_options.include_usage
  std::optional<int64_t> logprobs;  // top-N logprobs per token (0..20)
  bool echo = false;
  CartridgeSelection cartridges;
};

struct ChatCompletionRequest {
  std::string model;
  std::vector<ChatMessage> messages;
  SamplingFields sampling;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  int64_t top_logprobs = 0;
  bool add_generation_prompt = true;
  // chat_template_kwargs (as vLLM): further template variables, e.g.
  // {"enable_thinking": false} for Qwen3.
  TemplateVariables template_kwargs;
  CartridgeSelection cartridges;
};

// An error the client caused (HTTP 4xx) or we did (5xx), in OpenAI's shape.
struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";  // or "not_found_error", "server_error", ...
  std::string param;                           // offending field, may be empty
  std::string code;                            // optional machine code
};

ApiError bad_request(std::string message, std::string param = "");
nlohmann::json error_json(const ApiError& e);

// Parse a body; any type/range error is an ApiError naming the field.
std::variant<CompletionRequest, ApiError> parse_completion_request(const std::string& body);
std::variant<ChatCompletionRequest, ApiError> parse_chat_request(const std::string& body);

// --- Responses ----------------------------------------------------------

struct TopLogprob {
  std::string token;  // text of the token
  std::vector<uint8_t> bytes;
  float logprob = 0.f;
};

struct TokenLogprobs {
  std::string token;
  std::vector<uint8_t> bytes;
  float logprob = 0.f;
  std::vector<TopLogprob> top;
  int64_t text_offset = 0;  // completions API only
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

struct Choice {
  int64_t index = 0;
  std::string text;
  std::optional<std::string> finish_reason;  // "stop", "length", "abort"...
  bool has_logprobs = false;
  std::vector<TokenLogprobs> logprobs;
};

nlohmann::json completion_response(const std::string& id, int64_t created, const std::string& model,
                                   const std::vector<Choice>& choices, const Usage& usage);
nlohmann::json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                                const Choice& choice);
nlohmann::json chat_response(const std::string& id, int64_t created, const std::string& model,
                             const std::vector<Choice>& choices, const Usage& usage);
// First chunk of a choice carries the role; `delta_text` may be empty.
nlohmann::json chat_chunk(const std::string& id, int64_t created, const std::string& model,
                          const Choice& choice, bool first);
nlohmann::json usage_chunk(const std::string& id, int64_t created, const std::string& model,
                           const Usage& usage, bool chat);
nlohmann::json usage_json(const Usage& usage);

}  // namespace cartserve::api
