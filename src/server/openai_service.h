// The OpenAI endpoints' logic between the parsed requests (api::*) and the
// engine: chat templates and tokenization (they stay at this edge), context
// checks, n / multi-prompt fan-out, echo, logprobs, and the assembly of
// responses or stream chunks. Independent of the HTTP library.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat_template/prompt_builder.h"
#include "engine/engine.h"
#include "model/model.h"
#include "server/openai_protocol.h"

namespace cartserve {

struct ServiceConfig {
  std::vector<std::string> served_model_names;  // first is reported by /v1/models
  int32_t max_model_len = 2048;
};

// What the cartridge layer decides for a request before it reaches the
// engine (issue 5): how its prompt is built and which KV goes in front.
struct CartridgePlacement {
  bool active = false;
  int32_t num_virtual_tokens = 0;          // virtual mode: positions before the prompt
  std::vector<std::string> cartridge_ids;  // resolved, request order
  std::string prefix_salt;
  bool strip_system_prefix = false;  // chat: render without BOS / default system turn
  // The ids the request named (composites: their parts), for messages.
  std::vector<std::string> named_ids;
  // Called once the request passed every check, before it is submitted:
  // side effects of the placement (a composite enters the catalog, request
  // counters). Null: nothing to do.
  std::function<std::optional<api::ApiError>()> commit;
};

// Resolves a request's cartridge selection (explicit ids, kv_transfer_params,
// router, default cartridge); an ApiError when unknown/invalid. Absent: none.
using CartridgeResolver =
    std::function<std::variant<CartridgePlacement, api::ApiError>(const api::CartridgeSelection&)>;

// One accepted request: its engine streams and the response being built.
class CompletionJob {
 public:
  virtual ~CompletionJob() = default;
  virtual bool stream() const = 0;
  // Waits up to `timeout` for progress. Appends stream chunks (when
  // streaming) to `chunks`. Returns true once every choice has finished.
  virtual bool poll(std::vector<nlohmann::json>& chunks, std::chrono::milliseconds timeout) = 0;
  // After poll() returned true: the whole response (non-streaming), or the
  // usage chunk when include_usage (streaming; null otherwise).
  virtual nlohmann::json final_json() = 0;
  // An error raised by the engine before it admits the request (e.g. never
  // fits, a prefix-mode prompt shorter than its cartridge); waits up to
  // `timeout` for the admission.
  virtual std::optional<api::ApiError> early_error(std::chrono::milliseconds timeout) = 0;
  // Every engine request of the job was admitted (or finished) by now.
  virtual bool admitted() = 0;
  virtual void cancel() = 0;
};

class OpenAiService {
 public:
  OpenAiService(const Model& model, Engine& engine, ServiceConfig config,
                CartridgeResolver cartridges = nullptr);

  std::variant<std::unique_ptr<CompletionJob>, api::ApiError> start_completion(
      const api::CompletionRequest& r);
  std::variant<std::unique_ptr<CompletionJob>, api::ApiError> start_chat(
      const api::ChatCompletionRequest& r);

  nlohmann::json models_json() const;
  const ServiceConfig& config() const { return config_; }

 private:
  std::optional<api::ApiError> check_model(const std::string& name) const;
  // Refuses text that cannot fit the context whatever its tokenization, before
  // it is tokenized: every token holds at most max_token_bytes_ bytes of text.
  std::optional<api::ApiError> check_text_size(size_t bytes, int32_t virtual_tokens,
                                               const char* field) const;
  // The ids are in the vocabulary; `where` names them in the message.
  std::optional<api::ApiError> check_token_ids(const std::vector<int32_t>& ids,
                                               const std::string& where) const;
  // The request's cartridge placement (none without a resolver or a selection).
  std::variant<CartridgePlacement, api::ApiError> placement(
      const api::CartridgeSelection& selection) const;
  std::variant<SamplingParams, api::ApiError> sampling_params(const api::SamplingFields& f,
                                                              int32_t prompt_len) const;
  // One engine request for choice `index`, placed after the cartridge (if any).
  std::shared_ptr<RequestStream> submit(const char* kind, int64_t index,
                                        const std::vector<int32_t>& ids, SamplingParams sampling,
                                        const CartridgePlacement& place);

  const Model& model_;
  Engine& engine_;
  ServiceConfig config_;
  CartridgeResolver cartridges_;
  PromptBuilder prompts_;
  size_t max_token_bytes_ = 1;  // longest text of one vocabulary token
  std::atomic<uint64_t> next_id_{0};
};

}  // namespace cartserve
