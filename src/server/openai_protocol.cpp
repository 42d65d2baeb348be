#include "server/openai_protocol.h"

#include <cmath>
#include <limits>

namespace cartserve::api {

using nlohmann::json;

ApiError bad_request(std::string message, std::string param) {
  ApiError e;
  e.http_status = 400;
  e.message = std::move(message);
  e.param = std::move(param);
  e.type = "invalid_request_error";
  return e;
}

json error_json(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(e.http_status) : json(e.code)}};
  return json{{"error", err}};
}

namespace {

// Typed field access over a JSON object; the first error wins and is kept.
class Fields {
 public:
  explicit Fields(const json& obj) : obj_(obj) {}

  bool failed() const { return error_.has_value(); }
  const ApiError& error() const { return *error_; }
  void fail(std::string message, std::string param) {
    if (!error_) error_ = bad_request(std::move(message), std::move(param));
  }

  const json* get(const char* key) const {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  void boolean(const char* key, bool& out) {
    if (const json* v = get(key)) {
      if (!v->is_boolean()) return fail(fmt::format("'{}' must be a boolean", key), key);
      out = v->get<bool>();
    }
  }

  void string(const char* key, std::string& out) {
    if (const json* v = get(key)) {
      if (!v->is_string()) return fail(fmt::format("'{}' must be a string", key), key);
      out = v->get<std::string>();
    }
  }

  void number(const char* key, double& out, double lo, double hi) {
    if (const json* v = get(key)) {
      if (!v->is_number()) return fail(fmt::format("'{}' must be a number", key), key);
      const double d = v->get<double>();
      if (!std::isfinite(d) || d < lo || d > hi) {
        return fail(fmt::format("'{}' must be in [{}, {}], got {}", key, lo, hi, d), key);
      }
      out = d;
    }
  }

  void integer(const char* key, std::optional<int64_t>& out, int64_t lo, int64_t hi) {
    if (const json* v = get(key)) {
      if (!v->is_number_integer()) return fail(fmt::format("'{}' must be an integer", key), key);
      // Above INT64_MAX the value is unsigned; reading it signed would wrap.
      const bool huge =
          v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi < 0 ? 0 : hi);
      if (huge || v->get<int64_t>() < lo || v->get<int64_t>() > hi) {
        return fail(fmt::format("'{}' must be in [{}, {}], got {}", key, lo, hi, v->dump()), key);
      }
      out = v->get<int64_t>();
    }
  }

  void integer(const char* key, int64_t& out, int64_t lo, int64_t hi) {
    std::optional<int64_t> v;
    integer(key, v, lo, hi);
    if (v) out = *v;
  }

 private:
  const json& obj_;
  std::optional<ApiError> error_;
};

constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();

// An integer JSON value in [0, INT32_MAX] (huge unsigned values included in the check).
bool is_token_id_value(const json& e) {
  if (e.is_number_unsigned()) return e.get<uint64_t>() <= static_cast<uint64_t>(kMaxInt);
  const int64_t v = e.get<int64_t>();
  return v >= 0 && v <= kMaxInt;
}

void parse_sampling(Fields& f, SamplingFields& s) {
  f.integer("max_tokens", s.max_tokens, 0, kMaxInt);
  f.number("temperature", s.temperature, 0.0, 100.0);
  f.number("top_p", s.top_p, 0.0, 1.0);
  if (const json* v = f.get("top_p"); v && v->is_number() && v->get<double>() <= 0.0) {
    f.fail("'top_p' must be in (0, 1]", "top_p");
  }
  f.integer("top_k", s.top_k, -1, kMaxInt);
  f.number("min_p", s.min_p, 0.0, 1.0);
  f.number("presence_penalty", s.presence_penalty, -2.0, 2.0);
  f.number("frequency_penalty", s.frequency_penalty, -2.0, 2.0);
  f.number("repetition_penalty", s.repetition_penalty, 1e-6, 100.0);
  f.integer("seed", s.seed, std::numeric_limits<int64_t>::min(),
            std::numeric_limits<int64_t>::max());
  f.integer("n", s.n, 1, 128);
  f.integer("min_tokens", s.min_tokens, 0, kMaxInt);
  f.boolean("ignore_eos", s.ignore_eos);
  f.boolean("skip_special_tokens", s.skip_special_tokens);
  f.boolean("include_stop_str_in_output", s.include_stop_str_in_output);
  if (const json* v = f.get("stop")) {
    if (v->is_string()) {
      if (!v->get<std::string>().empty()) s.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (const auto& e : *v) {
        if (!e.is_string()) return f.fail("'stop' must be a string or a list of strings", "stop");
        if (!e.get<std::string>().empty()) s.stop.push_back(e.get<std::string>());
      }
    } else {
      return f.fail("'stop' must be a string or a list of strings", "stop");
    }
  }
  if (const json* v = f.get("stop_token_ids")) {
    if (!v->is_array())
      return f.fail("'stop_token_ids' must be a list of integers", "stop_token_ids");
    for (const auto& e : *v) {
      if (!e.is_number_integer())
        return f.fail("'stop_token_ids' must be a list of integers", "stop_token_ids");
      if (!is_token_id_value(e)) {
        return f.fail(fmt::format("'stop_token_ids' holds {}, which is not a token id "
                                  "(ids are non-negative 32-bit integers)",
                                  e.dump()),
                      "stop_token_ids");
      }
      s.stop_token_ids.push_back(e.get<int32_t>());
    }
  }
  if (const json* v = f.get("best_of");
      v && !(v->is_number_integer() && v->get<int64_t>() == s.n)) {
    f.fail("'best_of' other than n is not supported", "best_of");
  }
  if (const json* v = f.get("logit_bias"); v && !(v->is_object() && v->empty())) {
    f.fail("'logit_bias' is not supported", "logit_bias");
  }
}

void parse_stream(Fields& f, bool& stream, bool& include_usage) {
  f.boolean("stream", stream);
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object()) return f.fail("'stream_options' must be an object", "stream_options");
    if (auto it = so->find("include_usage"); it != so->end() && !it->is_null()) {
      if (!it->is_boolean()) {
        return f.fail("'stream_options.include_usage' must be a boolean",
                      "stream_options.include_usage");
      }
      include_usage = it->get<bool>();
    }
  }
}

// kv_transfer_params may sit at the top level or inside extra_body (as the
// seed's curl example sends it); "cartridges": [{"id": ...}] as Tokasaurus.
void parse_cartridges(const json& body, Fields& f, CartridgeSelection& sel) {
  auto read_params = [&](const json& p, const std::string& where) {
    if (!p.is_object()) return f.fail("'" + where + "' must be an object", where);
    for (const auto& [k, v] : p.items()) {
      if (k == "cartridge_id" && !v.is_null() && !v.is_string()) {
        // A list composes cartridges in order; anything else is a type error
        // (not an id: 5 is not cartridge "5", [] is not "no cartridge").
        const std::string what =
            "'" + where + ".cartridge_id' must be a string or a non-empty list of strings";
        if (!v.is_array() || v.empty()) return f.fail(what, where + ".cartridge_id");
        for (const auto& e : v) {
          if (!e.is_string() || e.get<std::string>().empty()) {
            return f.fail(what, where + ".cartridge_id");
          }
          sel.cartridge_ids.push_back(e.get<std::string>());
        }
      } else if (v.is_string()) {
        sel.kv_transfer_params[k] = v.get<std::string>();
      } else if (v.is_number() || v.is_boolean()) {
        sel.kv_transfer_params[k] = v.dump();
      }
    }
  };
  if (const json* p = f.get("kv_transfer_params")) read_params(*p, "kv_transfer_params");
  if (const json* eb = f.get("extra_body")) {
    if (!eb->is_object()) return f.fail("'extra_body' must be an object", "extra_body");
    if (auto it = eb->find("kv_transfer_params"); it != eb->end() && !it->is_null()) {
      read_params(*it, "extra_body.kv_transfer_params");
    }
  }
  if (const json* c = f.get("cartridges")) {
    if (!c->is_array()) return f.fail("'cartridges' must be a list of {\"id\": ...}", "cartridges");
    for (const auto& e : *c) {
      std::string id;
      if (e.is_object() && e.contains("id") && e["id"].is_string()) {
        id = e["id"].get<std::string>();
      } else if (e.is_string()) {
        id = e.get<std::string>();
      }
      if (id.empty()) return f.fail("'cartridges' entries must be {\"id\": \"...\"}", "cartridges");
      sel.cartridge_ids.push_back(id);
    }
  }
  (void)body;
}

std::optional<json> parse_object(const std::string& body, ApiError& err) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    err = bad_request("request body is not valid JSON");
    return std::nullopt;
  }
  if (!j.is_object()) {
    err = bad_request("request body must be a JSON object");
    return std::nullopt;
  }
  return j;
}

// Token ids: integers that fit int32 (the vocabulary range is checked where it
// is known, with a message naming it); an ApiError naming the offending entry.
std::optional<ApiError> token_list(const json& v, const std::string& where,
                                   std::vector<int32_t>& out) {
  if (!v.is_array()) {
    return bad_request("'prompt' must be a string, a list of strings, or token ids", "prompt");
  }
  for (size_t i = 0; i < v.size(); ++i) {
    const json& e = v[i];
    if (!e.is_number_integer()) {
      return bad_request(fmt::format("{}[{}] is {}, not a token id (an integer)", where, i,
                                     e.dump(-1, ' ', false, json::error_handler_t::replace)),
                         "prompt");
    }
    if (!is_token_id_value(e)) {
      return bad_request(fmt::format("{}[{}] = {} is not a token id: ids are non-negative and "
                                     "below the vocabulary size",
                                     where, i, e.dump()),
                         "prompt");
    }
    out.push_back(e.get<int32_t>());
  }
  return std::nullopt;
}

}  // namespace

std::variant<CompletionRequest, ApiError> parse_completion_request(const std::string& body) {
  ApiError err;
  auto j = parse_object(body, err);
  if (!j) return err;
  CompletionRequest r;
  Fields f(*j);
  f.string("model", r.model);
  const json* prompt = f.get("prompt");
  if (!prompt) return bad_request("'prompt' is required", "prompt");
  if (prompt->is_string()) {
    r.prompts.emplace_back(prompt->get<std::string>());
  } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_string()) {
    for (const auto& e : *prompt) {
      if (!e.is_string()) return bad_request("'prompt' list must hold only strings", "prompt");
      r.prompts.emplace_back(e.get<std::string>());
    }
  } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_array()) {
    for (size_t i = 0; i < prompt->size(); ++i) {
      std::vector<int32_t> ids;
      if (auto e = token_list((*prompt)[i], fmt::format("prompt[{}]", i), ids)) return *e;
      r.prompts.emplace_back(std::move(ids));
    }
  } else if (prompt->is_array()) {
    std::vector<int32_t> ids;
    if (auto e = token_list(*prompt, "prompt", ids)) return *e;
    r.prompts.emplace_back(std::move(ids));
  } else {
    return bad_request("'prompt' must be a string, a list of strings, or token ids", "prompt");
  }
  for (const auto& p : r.prompts) {
    const bool empty = std::holds_alternative<std::string>(p) ? std::get<std::string>(p).empty()
                                                              : std::get<1>(p).empty();
    if (empty) return bad_request("'prompt' must not be empty", "prompt");
  }
  parse_sampling(f, r.sampling);
  if (!r.sampling.max_tokens) r.sampling.max_tokens = 16;  // the OpenAI default
  parse_stream(f, r.stream, r.include_usage);
  f.integer("logprobs", r.logprobs, 0, 20);
  f.boolean("echo", r.echo);
  if (const json* s = f.get("suffix"); s && !(s->is_string() && s->get<std::string>().empty())) {
    f.fail("'suffix' is not supported", "suffix");
  }
  parse_cartridges(*j, f, r.cartridges);
  if (f.failed()) return f.error();
  return r;
}

namespace {

// A chat_template_kwargs value as a template value; nullopt past kMaxKwargsDepth.
constexpr int kMaxKwargsDepth = 32;
std::optional<TemplateValue> template_value(const json& j, int depth) {
  if (depth > kMaxKwargsDepth) return std::nullopt;
  switch (j.type()) {
    case json::value_t::null:
      return TemplateValue::none();
    case json::value_t::boolean:
      return TemplateValue::boolean(j.get<bool>());
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        return TemplateValue::number(j.get<double>());
      return TemplateValue::integer(j.get<int64_t>());
    case json::value_t::number_float:
      return TemplateValue::number(j.get<double>());
    case json::value_t::string:
      return TemplateValue::string(j.get<std::string>());
    case json::value_t::array: {
      TemplateValue::Items items;
      for (const json& e : j) {
        auto v = template_value(e, depth + 1);
        if (!v) return std::nullopt;
        items.push_back(std::move(*v));
      }
      return TemplateValue::list(std::move(items));
    }
    case json::value_t::object: {
      std::vector<std::pair<std::string, TemplateValue>> entries;
      for (auto it = j.begin(); it != j.end(); ++it) {
        auto v = template_value(*it, depth + 1);
        if (!v) return std::nullopt;
        entries.emplace_back(it.key(), std::move(*v));
      }
      return TemplateValue::dict(std::move(entries));
    }
    default:
      return std::nullopt;
  }
}

// chat_template_kwargs: an object of template variables. Names the request
// sets in their own fields (messages, add_generation_prompt, tools) are refused.
void parse_template_kwargs(Fields& f, TemplateVariables& out) {
  const json* k = f.get("chat_template_kwargs");
  if (k == nullptr) return;
  if (!k->is_object())
    return f.fail("'chat_template_kwargs' must be an object", "chat_template_kwargs");
  for (auto it = k->begin(); it != k->end(); ++it) {
    const std::string& name = it.key();
    if (name == "messages" || name == "add_generation_prompt" || name == "tools") {
      return f.fail(
          fmt::format("chat_template_kwargs.{} is not allowed (use the request field)", name),
          "chat_template_kwargs");
    }
    auto v = template_value(*it, 0);
    if (!v) {
      return f.fail(fmt::format("chat_template_kwargs.{} nests too deeply", name),
                    "chat_template_kwargs");
    }
    out.emplace_back(name, std::move(*v));
  }
}

}  // namespace

std::variant<ChatCompletionRequest, ApiError> parse_chat_request(const std::string& body) {
  ApiError err;
  auto j = parse_object(body, err);
  if (!j) return err;
  ChatCompletionRequest r;
  Fields f(*j);
  f.string("model", r.model);
  const json* msgs = f.get("messages");
  if (!msgs || !msgs->is_array()) return bad_request("'messages' must be a list", "messages");
  if (msgs->empty()) return bad_request("'messages' must not be empty", "messages");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string where = fmt::format("messages[{}]", i);
    if (!m.is_object()) return bad_request(where + " must be an object", where);
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return bad_request(where + ".role must be a string", where + ".role");
    }
    const std::string r_name = role->get<std::string>();
    if (r_name != "system" && r_name != "user" && r_name != "assistant" && r_name != "tool" &&
        r_name != "developer") {
      return bad_request(
          where + ".role '" + r_name + "' is not one of system, user, assistant, tool",
          where + ".role");
    }
    ChatMessage cm;
    cm.role = r_name == "developer" ? "system" : r_name;
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      // Only an assistant turn with tool calls may omit it, and tools are not supported.
      return bad_request(where + ".content is required (a string or a list of text parts)",
                         where + ".content");
    } else if (content->is_string()) {
      cm.content = content->get<std::string>();
    } else if (content->is_array()) {
      // Content parts: only text parts are supported.
      for (const auto& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string()) {
          return bad_request(where + ".content: only text parts are supported", where + ".content");
        }
        cm.content += part["text"].get<std::string>();
      }
    } else {
      return bad_request(where + ".content must be a string or a list of text parts",
                         where + ".content");
    }
    r.messages.push_back(std::move(cm));
  }
  parse_sampling(f, r.sampling);
  std::optional<int64_t> mct;
  f.integer("max_completion_tokens", mct, 0, kMaxInt);
  if (mct) r.sampling.max_tokens = mct;
  parse_stream(f, r.stream, r.include_usage);
  f.boolean("logprobs", r.logprobs);
  f.integer("top_logprobs", r.top_logprobs, 0, 20);
  if (r.top_logprobs > 0 && !r.logprobs) {
    f.fail("'top_logprobs' requires 'logprobs': true", "top_logprobs");
  }
  f.boolean("add_generation_prompt", r.add_generation_prompt);
  parse_template_kwargs(f, r.template_kwargs);
  if (const json* t = f.get("tools"); t && !(t->is_array() && t->empty())) {
    f.fail("'tools' are not supported", "tools");
  }
  if (const json* rf = f.get("response_format");
      rf && !(rf->is_object() && rf->value("type", "") == "text")) {
    f.fail("'response_format' other than text is not supported", "response_format");
  }
  parse_cartridges(*j, f, r.cartridges);
  if (f.failed()) return f.error();
  return r;
}

namespace {

json logprob_bytes(const std::vector<uint8_t>& b) {
  json arr = json::array();
  for (uint8_t x : b)
    arr.push_back(x);
  return arr;
}

// Completions API: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}.
json completion_logprobs(const Choice& c) {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  for (const auto& t : c.logprobs) {
    tokens.push_back(t.token);
    lps.push_back(std::isfinite(t.logprob) ? json(t.logprob) : json(nullptr));
    json top = json::object();
    for (const auto& e : t.top)
      top[e.token] = e.logprob;
    tops.push_back(top);
    offs.push_back(t.text_offset);
  }
  return {
      {"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
}

// Chat API: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
json chat_logprobs(const Choice& c) {
  json content = json::array();
  for (const auto& t : c.logprobs) {
    json top = json::array();
    for (const auto& e : t.top) {
      top.push_back(
          {{"token", e.token}, {"logprob", e.logprob}, {"bytes", logprob_bytes(e.bytes)}});
    }
    content.push_back({{"token", t.token},
                       {"logprob", t.logprob},
                       {"bytes", logprob_bytes(t.bytes)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}};
}

json finish(const Choice& c) {
  return c.finish_reason ? json(*c.finish_reason) : json(nullptr);
}

}  // namespace

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json completion_response(const std::string& id, int64_t created, const std::string& model,
                         const std::vector<Choice>& choices, const Usage& usage) {
  json cs = json::array();
  for (const auto& c : choices) {
    cs.push_back({{"index", c.index},
                  {"text", c.text},
                  {"logprobs", c.has_logprobs ? completion_logprobs(c) : json(nullptr)},
                  {"finish_reason", finish(c)}});
  }
  return {{"id", id},      {"object", "text_completion"}, {"created", created}, {"model", model},
          {"choices", cs}, {"usage", usage_json(usage)}};
}

json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                      const Choice& c) {
  json choice = {{"index", c.index},
                 {"text", c.text},
                 {"logprobs", c.has_logprobs ? completion_logprobs(c) : json(nullptr)},
                 {"finish_reason", finish(c)}};
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})}};
}

json chat_response(const std::string& id, int64_t created, const std::string& model,
                   const std::vector<Choice>& choices, const Usage& usage) {
  json cs = json::array();
  for (const auto& c : choices) {
    cs.push_back({{"index", c.index},
                  {"message", {{"role", "assistant"}, {"content", c.text}}},
                  {"logprobs", c.has_logprobs ? chat_logprobs(c) : json(nullptr)},
                  {"finish_reason", finish(c)}});
  }
  return {{"id", id},      {"object", "chat.completion"}, {"created", created}, {"model", model},
          {"choices", cs}, {"usage", usage_json(usage)}};
}

json chat_chunk(const std::string& id, int64_t created, const std::string& model, const Choice& c,
                bool first) {
  json delta = json::object();
  if (first) delta["role"] = "assistant";
  if (!c.text.empty() || first) delta["content"] = c.text;
  json choice = {{"index", c.index},
                 {"delta", delta},
                 {"logprobs", c.has_logprobs ? chat_logprobs(c) : json(nullptr)},
                 {"finish_reason", finish(c)}};
  return {{"id", id},
          {"object", "chat.completion.chunk"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})}};
}

json usage_chunk(const std::string& id, int64_t created, const std::string& model,
                 const Usage& usage, bool chat) {
  return {{"id", id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array()},
          {"usage", usage_json(usage)}};
}

}  // namespace cartserve::api
