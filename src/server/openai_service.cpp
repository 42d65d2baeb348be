#include "server/openai_service.h"

#include <chrono>
#include <cmath>
#include <ctime>
#include <random>

#include "core/logging.h"

namespace cartserve {

using api::ApiError;
using api::bad_request;
using nlohmann::json;

namespace {

int64_t unix_now() {
  return static_cast<int64_t>(std::time(nullptr));
}

std::string random_hex(size_t n) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  static const char* kHex = "0123456789abcdef";
  std::string s(n, '0');
  for (auto& c : s)
    c = kHex[rng() & 15];
  return s;
}

api::TokenLogprobs make_token_logprob(const Tokenizer& tok, int32_t token, float logprob,
                                      const std::vector<TokenLogprob>& top) {
  api::TokenLogprobs t;
  const std::string& bytes = tok.token_bytes(token);
  t.token = bytes;
  t.bytes.assign(bytes.begin(), bytes.end());
  t.logprob = logprob;
  for (const auto& e : top) {
    const std::string& b = tok.token_bytes(e.token);
    t.top.push_back({b, std::vector<uint8_t>(b.begin(), b.end()), e.logprob});
  }
  return t;
}

// One choice of a job: an engine stream and what it produced so far.
struct ChoiceState {
  std::shared_ptr<RequestStream> stream;
  api::Choice choice;  // accumulated (non-streaming) or pending delta (streaming)
  bool finished = false;
  bool sent_first = false;  // streaming: the first chunk (role / echo) went out
  int32_t prompt_tokens = 0;
  int32_t output_tokens = 0;
  std::string echo_text;  // prompt text when echo
  std::vector<int32_t> prompt_ids;
  bool echo_pending = false;
  int64_t text_offset = 0;  // completions logprobs text_offset
  std::optional<ApiError> error;
};

class Job final : public CompletionJob {
 public:
  Job(const Model& model, bool chat, bool stream, bool include_usage, std::string id,
      std::string model_name, bool logprobs, bool discard_generation,
      std::vector<std::string> cartridges)
      : cartridges_(std::move(cartridges)),
        model_(model),
        chat_(chat),
        stream_(stream),
        include_usage_(include_usage),
        id_(std::move(id)),
        model_name_(std::move(model_name)),
        created_(unix_now()),
        logprobs_(logprobs),
        discard_generation_(discard_generation) {}

  std::vector<ChoiceState> choices;
  int64_t unique_prompt_tokens = 0;

  bool stream() const override { return stream_; }

  std::optional<ApiError> early_error(std::chrono::milliseconds timeout) override {
    for (auto& c : choices) {
      if (!c.stream) continue;  // answered without the engine
      c.stream->wait_admitted(timeout);
      if (!c.stream->finished()) continue;
      // Finished already (an error, or a short answer on an idle engine):
      // its outputs are absorbed here, streaming ones kept for the next poll.
      for (auto& o : c.stream->next(std::chrono::milliseconds(0)))
        absorb(c, std::move(o), stream_ ? &early_chunks_ : nullptr);
      if (c.error) return c.error;
    }
    return std::nullopt;
  }

  bool admitted() override {
    for (auto& c : choices) {
      if (c.stream && !c.stream->wait_admitted(std::chrono::milliseconds(0))) return false;
    }
    return true;
  }

  bool poll(std::vector<json>& chunks, std::chrono::milliseconds timeout) override {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (auto& ch : early_chunks_)
      chunks.push_back(std::move(ch));
    early_chunks_.clear();
    bool all_done = true;
    for (auto& c : choices) {
      if (!c.stream && stream_ && !c.sent_first) {  // answered without the engine
        chunks.push_back(api::completion_chunk(id_, created_, model_name_, c.choice));
        c.sent_first = true;
      }
      if (c.finished) continue;
      const auto now = std::chrono::steady_clock::now();
      const auto wait = now < deadline
                            ? std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now)
                            : std::chrono::milliseconds(0);
      for (auto& o : c.stream->next(wait))
        absorb(c, std::move(o), stream_ ? &chunks : nullptr);
      all_done = all_done && c.finished;
    }
    return all_done;
  }

  json final_json() override {
    api::Usage usage;
    usage.prompt_tokens = unique_prompt_tokens;
    for (const auto& c : choices)
      usage.completion_tokens += discard_generation_ ? 0 : c.output_tokens;
    if (stream_) {
      return include_usage_ ? api::usage_chunk(id_, created_, model_name_, usage, chat_) : json();
    }
    std::vector<api::Choice> out;
    for (const auto& c : choices)
      out.push_back(c.choice);
    return chat_ ? api::chat_response(id_, created_, model_name_, out, usage)
                 : api::completion_response(id_, created_, model_name_, out, usage);
  }

  void cancel() override {
    for (auto& c : choices) {
      if (c.stream) c.stream->cancel();
    }
  }

 private:
  // Folds one engine output into the choice; emits a chunk when streaming.
  void absorb(ChoiceState& c, EngineOutput&& o, std::vector<json>* chunks) {
    if (o.finished && !o.error.ok()) c.error = engine_error(o.error);
    c.prompt_tokens = o.num_prompt_tokens ? o.num_prompt_tokens : c.prompt_tokens;
    c.output_tokens = o.num_output_tokens ? o.num_output_tokens : c.output_tokens;
    api::Choice delta;
    delta.index = c.choice.index;
    delta.has_logprobs = logprobs_;
    if (c.echo_pending) {
      delta.text = c.echo_text;
      if (logprobs_) append_prompt_logprobs(c, o, delta);
      if (logprobs_ && o.prompt_logprobs.empty() && !c.prompt_ids.empty() && !o.finished) {
        // Prompt logprobs arrive with the first token; keep echo pending until then.
        delta.text.clear();
      } else {
        c.echo_pending = false;
      }
    }
    if (!discard_generation_) {
      delta.text += o.text;
      if (logprobs_) {
        for (size_t i = 0; i < o.logprobs.size(); ++i) {
          const auto& s = o.logprobs[i];
          auto t = make_token_logprob(model_.tokenizer, s.token, s.logprob, s.top_logprobs);
          t.text_offset = c.text_offset;
          c.text_offset += static_cast<int64_t>(t.token.size());
          delta.logprobs.push_back(std::move(t));
        }
      }
    }
    if (o.finished) {
      c.finished = true;
      delta.finish_reason = discard_generation_ ? std::string("length")
                            : o.finish_reason == FinishReason::kNone
                                ? std::string("stop")
                                : std::string(finish_reason_name(o.finish_reason));
    }
    if (chunks) {
      if (c.error) return;  // the HTTP layer reports it
      const bool first = !c.sent_first;
      if (!delta.text.empty() || delta.finish_reason || first || !delta.logprobs.empty()) {
        chunks->push_back(chat_ ? api::chat_chunk(id_, created_, model_name_, delta, first)
                                : api::completion_chunk(id_, created_, model_name_, delta));
        c.sent_first = true;
      }
    } else {
      c.choice.text += delta.text;
      c.choice.has_logprobs = logprobs_;
      for (auto& t : delta.logprobs)
        c.choice.logprobs.push_back(std::move(t));
      if (delta.finish_reason) c.choice.finish_reason = delta.finish_reason;
    }
  }

  void append_prompt_logprobs(ChoiceState& c, const EngineOutput& o, api::Choice& delta) {
    if (o.prompt_logprobs.empty() && !o.finished) return;
    // The first prompt token has no logprob (OpenAI: null).
    for (size_t i = 0; i < c.prompt_ids.size(); ++i) {
      api::TokenLogprobs t;
      if (i == 0) {
        t = make_token_logprob(model_.tokenizer, c.prompt_ids[0], NAN, {});
      } else if (i - 1 < o.prompt_logprobs.size()) {
        const auto& p = o.prompt_logprobs[i - 1];
        t = make_token_logprob(model_.tokenizer, p.token, p.logprob, p.top);
      } else {
        continue;
      }
      t.text_offset = c.text_offset;
      c.text_offset += static_cast<int64_t>(t.token.size());
      delta.logprobs.push_back(std::move(t));
    }
  }

  // An engine error as the client sees it.
  ApiError engine_error(const Status& st) const {
    ApiError e;
    const ErrorCode code = st.code();
    if (!cartridges_.empty() && (code == ErrorCode::kCorrupt || code == ErrorCode::kIo)) {
      // A cartridge (re)load failed: its file changed, is truncated or gone.
      // The details (server paths, hashes) stay in the server's log.
      LOG_WARN("a request's cartridge could not be loaded: {}", st.to_string());
      std::string names;
      for (const auto& id : cartridges_)
        names += (names.empty() ? "'" : ", '") + id + "'";
      e.http_status = 409;
      e.type = "conflict_error";
      e.code = "cartridge_unavailable";
      e.param = "kv_transfer_params.cartridge_id";
      e.message = fmt::format(
          "cartridge {} cannot be loaded: its file no longer matches what was registered "
          "(changed, truncated or removed on the server); an administrator must register it "
          "again",
          names);
      return e;
    }
    if (code == ErrorCode::kUnavailable) {
      e.http_status = 503;
      e.type = "service_unavailable_error";
    } else if (code == ErrorCode::kInternal) {
      e.http_status = 500;
      e.type = "server_error";
    } else {
      e.http_status = 400;
      e.type = "invalid_request_error";
    }
    e.message = st.message();
    return e;
  }

  std::vector<std::string> cartridges_;  // the ids the request named
  const Model& model_;
  bool chat_, stream_, include_usage_;
  std::vector<json> early_chunks_;  // streamed by early_error(), sent by the next poll()
  std::string id_, model_name_;
  int64_t created_;
  bool logprobs_;
  bool discard_generation_;  // echo with max_tokens=0 and logprobs: one token computed, dropped
};

}  // namespace

OpenAiService::OpenAiService(const Model& model, Engine& engine, ServiceConfig config,
                             CartridgeResolver cartridges)
    : model_(model),
      engine_(engine),
      config_(std::move(config)),
      cartridges_(std::move(cartridges)),
      prompts_(model) {
  for (int32_t id = 0; id < model.tokenizer.vocab_size(); ++id)
    max_token_bytes_ = std::max(max_token_bytes_, model.tokenizer.token_bytes(id).size());
}

json OpenAiService::models_json() const {
  json data = json::array();
  for (const auto& name : config_.served_model_names) {
    data.push_back({{"id", name},
                    {"object", "model"},
                    {"created", unix_now()},
                    {"owned_by", "cartserve"},
                    {"root", model_.path},
                    {"max_model_len", config_.max_model_len}});
  }
  return {{"object", "list"}, {"data", data}};
}

std::optional<ApiError> OpenAiService::check_model(const std::string& name) const {
  if (name.empty()) return std::nullopt;
  for (const auto& n : config_.served_model_names) {
    if (n == name) return std::nullopt;
  }
  // As the OpenAI API and vLLM: 404.
  ApiError e = bad_request("The model `" + name + "` does not exist.", "model");
  e.http_status = 404;
  e.type = "NotFoundError";
  e.code = "model_not_found";
  return e;
}

std::optional<ApiError> OpenAiService::check_text_size(size_t bytes, int32_t virtual_tokens,
                                                       const char* field) const {
  // Each token stands for at most max_token_bytes_ bytes of the normalized
  // text, and Unicode normalization (NFKC at worst) shrinks text at most 4x.
  const uint64_t per_token = 4 * static_cast<uint64_t>(max_token_bytes_);
  const uint64_t at_least = (bytes + per_token - 1) / per_token;
  if (at_least + static_cast<uint64_t>(std::max(virtual_tokens, 0)) <
      static_cast<uint64_t>(config_.max_model_len)) {
    return std::nullopt;
  }
  return bad_request(
      fmt::format("This model's maximum context length is {} tokens. However, your {} is {} bytes "
                  "of text, at least {} tokens{}. Please reduce it.",
                  config_.max_model_len, field, bytes, at_least,
                  virtual_tokens > 0 ? fmt::format(" after a cartridge of {}", virtual_tokens)
                                     : std::string()),
      field);
}

std::optional<ApiError> OpenAiService::check_token_ids(const std::vector<int32_t>& ids,
                                                       const std::string& where) const {
  const int32_t vocab = model_.config.vocab_size;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return bad_request(fmt::format("{}[{}] = {} is outside the vocabulary: token ids are in "
                                     "[0, {})",
                                     where, i, ids[i], vocab),
                         "prompt");
    }
  }
  return std::nullopt;
}

std::variant<SamplingParams, ApiError> OpenAiService::sampling_params(const api::SamplingFields& f,
                                                                      int32_t prompt_len) const {
  SamplingParams p;
  p.temperature = static_cast<float>(f.temperature);
  p.top_p = static_cast<float>(f.top_p);
  p.top_k = static_cast<int32_t>(f.top_k);
  p.min_p = static_cast<float>(f.min_p);
  p.presence_penalty = static_cast<float>(f.presence_penalty);
  p.frequency_penalty = static_cast<float>(f.frequency_penalty);
  p.repetition_penalty = static_cast<float>(f.repetition_penalty);
  if (f.seed) p.seed = static_cast<uint64_t>(*f.seed);
  p.stop = f.stop;
  p.stop_token_ids = f.stop_token_ids;
  p.ignore_eos = f.ignore_eos;
  p.skip_special_tokens = f.skip_special_tokens;
  p.include_stop_str_in_output = f.include_stop_str_in_output;
  p.min_tokens = static_cast<int32_t>(f.min_tokens);
  const int64_t room = config_.max_model_len - static_cast<int64_t>(prompt_len);
  const int64_t want = f.max_tokens ? *f.max_tokens : room;
  if (prompt_len >= config_.max_model_len || want > room) {
    return bad_request(fmt::format("This model's maximum context length is {} tokens. However, you "
                                   "requested {} tokens ({} in the prompt, {} for the completion). "
                                   "Please reduce the prompt or max_tokens.",
                                   config_.max_model_len, prompt_len + want, prompt_len, want),
                       "max_tokens");
  }
  p.max_tokens = static_cast<int32_t>(want);
  if (p.min_tokens > p.max_tokens) {
    return bad_request("'min_tokens' must not exceed 'max_tokens'", "min_tokens");
  }
  for (int32_t id : p.stop_token_ids) {
    if (id < 0 || id >= model_.config.vocab_size) {
      return bad_request(fmt::format("stop_token_ids holds {}, outside the vocabulary: token ids "
                                     "are in [0, {})",
                                     id, model_.config.vocab_size),
                         "stop_token_ids");
    }
  }
  return p;
}

std::variant<CartridgePlacement, ApiError> OpenAiService::placement(
    const api::CartridgeSelection& selection) const {
  if (cartridges_) return cartridges_(selection);
  if (selection.present()) {
    return bad_request("this server has no cartridges configured (--kv-transfer-config)",
                       "kv_transfer_params");
  }
  return CartridgePlacement{};
}

std::shared_ptr<RequestStream> OpenAiService::submit(const char* kind, int64_t index,
                                                     const std::vector<int32_t>& ids,
                                                     SamplingParams sampling,
                                                     const CartridgePlacement& place) {
  GenerateRequest g;
  g.id = fmt::format("{}-{}-{}", kind, next_id_++, index);
  g.prompt_token_ids = ids;
  g.sampling = std::move(sampling);
  g.num_virtual_tokens = place.num_virtual_tokens;
  g.cartridge_ids = place.cartridge_ids;
  g.prefix_salt = place.prefix_salt;
  return engine_.submit(std::move(g));
}

std::variant<std::unique_ptr<CompletionJob>, ApiError> OpenAiService::start_completion(
    const api::CompletionRequest& r) {
  if (auto e = check_model(r.model)) return *e;
  auto placed = placement(r.cartridges);
  if (auto* e = std::get_if<ApiError>(&placed)) return *e;
  const CartridgePlacement place = std::get<CartridgePlacement>(placed);
  const bool logprobs = r.logprobs.has_value();
  const bool zero_tokens = r.sampling.max_tokens && *r.sampling.max_tokens == 0;
  auto job = std::make_unique<Job>(model_, /*chat=*/false, r.stream, r.include_usage,
                                   "cmpl-" + random_hex(24),
                                   r.model.empty() ? config_.served_model_names.front() : r.model,
                                   logprobs, zero_tokens, place.named_ids);
  // Sizes first: no prompt is tokenized when one of them cannot fit.
  for (size_t i = 0; i < r.prompts.size(); ++i) {
    if (const auto* s = std::get_if<std::string>(&r.prompts[i])) {
      if (auto e = check_text_size(s->size(), place.num_virtual_tokens, "prompt")) return *e;
    } else {
      const auto& ids = std::get<std::vector<int32_t>>(r.prompts[i]);
      if (auto e = check_token_ids(
              ids, r.prompts.size() > 1 ? fmt::format("prompt[{}]", i) : std::string("prompt"))) {
        return *e;
      }
    }
  }
  std::vector<SamplingParams> checked;  // per prompt, once all prompts passed
  std::vector<std::vector<int32_t>> prompt_ids;
  std::vector<std::string> texts;
  for (const auto& prompt : r.prompts) {
    std::vector<int32_t> ids;
    std::string text;
    if (const auto* s = std::get_if<std::string>(&prompt)) {
      text = *s;
      ids = prompts_.completion(*s, /*after_cartridge=*/place.active);
    } else {
      ids = std::get<std::vector<int32_t>>(prompt);
      text = model_.tokenizer.decode(ids);
    }
    if (ids.empty()) return bad_request("the prompt is empty after tokenization", "prompt");
    const int32_t ctx_len = static_cast<int32_t>(ids.size()) + place.num_virtual_tokens;
    api::SamplingFields fields = r.sampling;
    if (zero_tokens) fields.max_tokens = 1;  // computed for prompt logprobs, then dropped
    auto sp = sampling_params(fields, ctx_len);
    if (auto* e = std::get_if<ApiError>(&sp)) return *e;
    checked.push_back(std::get<SamplingParams>(sp));
    prompt_ids.push_back(std::move(ids));
    texts.push_back(std::move(text));
  }
  if (place.commit) {
    if (auto e = place.commit()) return *e;
  }
  int64_t index = 0;
  for (size_t pi = 0; pi < prompt_ids.size(); ++pi) {
    const std::vector<int32_t>& ids = prompt_ids[pi];
    const std::string& text = texts[pi];
    job->unique_prompt_tokens += static_cast<int64_t>(ids.size());
    for (int64_t j = 0; j < r.sampling.n; ++j, ++index) {
      SamplingParams p = checked[pi];
      p.logprobs = logprobs;
      p.top_logprobs = logprobs ? static_cast<int32_t>(*r.logprobs) : 0;
      if (r.echo && logprobs) p.prompt_logprobs = static_cast<int32_t>(*r.logprobs);
      if (p.seed && j > 0) *p.seed += static_cast<uint64_t>(j);
      ChoiceState c;
      c.choice.index = index;
      c.prompt_tokens = static_cast<int32_t>(ids.size());
      c.prompt_ids = ids;
      if (r.echo) {
        c.echo_text = text;
        c.echo_pending = true;
      }
      if (zero_tokens && !logprobs) {
        // Nothing to compute: the answer is the (echoed) prompt.
        c.choice.text = r.echo ? text : "";
        c.choice.finish_reason = "length";
        c.finished = true;
        job->choices.push_back(std::move(c));
        continue;
      }
      c.stream = submit("cmpl", index, ids, std::move(p), place);
      job->choices.push_back(std::move(c));
    }
  }
  return std::unique_ptr<CompletionJob>(std::move(job));
}

std::variant<std::unique_ptr<CompletionJob>, ApiError> OpenAiService::start_chat(
    const api::ChatCompletionRequest& r) {
  if (auto e = check_model(r.model)) return *e;
  auto placed = placement(r.cartridges);
  if (auto* e = std::get_if<ApiError>(&placed)) return *e;
  const CartridgePlacement place = std::get<CartridgePlacement>(placed);
  auto chat_text = prompts_.chat_text(r.messages, r.add_generation_prompt,
                                      place.strip_system_prefix, r.template_kwargs);
  if (!chat_text.ok()) {
    return bad_request(chat_text.status().message(), "messages");
  }
  if (auto e = check_text_size(chat_text->size(), place.num_virtual_tokens, "conversation")) {
    e->param = "messages";
    return *e;
  }
  const std::vector<int32_t> ids = model_.tokenizer.encode(*chat_text);
  if (ids.empty()) return bad_request("the conversation is empty after tokenization", "messages");
  const int32_t ctx_len = static_cast<int32_t>(ids.size()) + place.num_virtual_tokens;
  auto sp = sampling_params(r.sampling, ctx_len);
  if (auto* e = std::get_if<ApiError>(&sp)) return *e;
  if (std::get<SamplingParams>(sp).max_tokens == 0) {
    return bad_request("'max_tokens' must be at least 1 for chat completions", "max_tokens");
  }
  if (place.commit) {
    if (auto e = place.commit()) return *e;
  }
  auto job = std::make_unique<Job>(model_, /*chat=*/true, r.stream, r.include_usage,
                                   "chatcmpl-" + random_hex(24),
                                   r.model.empty() ? config_.served_model_names.front() : r.model,
                                   r.logprobs, false, place.named_ids);
  job->unique_prompt_tokens = static_cast<int64_t>(ids.size());
  for (int64_t j = 0; j < r.sampling.n; ++j) {
    SamplingParams p = std::get<SamplingParams>(sp);
    p.logprobs = r.logprobs;
    p.top_logprobs = static_cast<int32_t>(r.top_logprobs);
    if (p.seed && j > 0) *p.seed += static_cast<uint64_t>(j);
    ChoiceState c;
    c.choice.index = j;
    c.prompt_tokens = static_cast<int32_t>(ids.size());
    c.stream = submit("chatcmpl", j, ids, std::move(p), place);
    job->choices.push_back(std::move(c));
  }
  return std::unique_ptr<CompletionJob>(std::move(job));
}

}  // namespace cartserve
