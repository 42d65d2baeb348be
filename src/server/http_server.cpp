#include "server/http_server.h"

#include <httplib.h>

#include <atomic>
#include <thread>

#include "core/logging.h"
#include "server/version.h"

namespace cartserve {

using nlohmann::json;

namespace {

// nlohmann throws on invalid UTF-8; token text may hold partial characters.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, const api::ApiError& e) {
  send_json(res, e.http_status, api::error_json(e));
}

// Constant-time comparison of the presented key.
bool key_matches(const std::string& presented, const std::string& key) {
  if (presented.size() != key.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < key.size(); ++i) {
    diff |= static_cast<unsigned char>(presented[i] ^ key[i]);
  }
  return diff == 0;
}

}  // namespace

struct HttpServer::Impl {
  OpenAiService& service;
  MetricsRegistry& metrics;
  HttpServerConfig config;
  httplib::Server server;
  std::thread thread;
  std::atomic<int> bound_port{0};
  std::atomic<bool> stopped{false};
  Counter* http_requests = nullptr;

  Impl(OpenAiService& s, MetricsRegistry& m, HttpServerConfig c)
      : service(s), metrics(m), config(std::move(c)) {}

  bool authorized(const httplib::Request& req) const {
    if (config.api_key.empty()) return true;
    const std::string auth = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    return auth.size() > prefix.size() && auth.compare(0, prefix.size(), prefix) == 0 &&
           key_matches(auth.substr(prefix.size()), config.api_key);
  }

  // Runs a job: SSE when streaming, else one JSON body (with whitespace
  // keep-alives while waiting, so a vanished client is noticed and cancelled).
  void serve_job(std::unique_ptr<CompletionJob> job, httplib::Response& res) {
    // Errors up to the scheduler's admission answer with their own status
    // code; after it the response is committed to 200.
    if (auto err = job->early_error(std::chrono::seconds(60))) {
      job->cancel();
      send_error(res, *err);
      return;
    }
    std::shared_ptr<CompletionJob> shared(std::move(job));
    const bool stream = shared->stream();
    res.status = 200;
    if (stream) {
      res.set_header("Cache-Control", "no-cache");
      res.set_header("X-Accel-Buffering", "no");
    }
    res.set_chunked_content_provider(
        stream ? "text/event-stream" : "application/json",
        [shared, stream](size_t /*offset*/, httplib::DataSink& sink) {
          auto last_write = std::chrono::steady_clock::now();
          for (;;) {
            std::vector<json> chunks;
            const bool done = shared->poll(chunks, std::chrono::milliseconds(200));
            for (const auto& c : chunks) {
              const std::string line = "data: " + dump(c) + "\n\n";
              if (!sink.write(line.data(), line.size())) {
                shared->cancel();
                return false;
              }
              last_write = std::chrono::steady_clock::now();
            }
            if (done) break;
            if (std::chrono::steady_clock::now() - last_write > std::chrono::seconds(1)) {
              // Keep-alive: an SSE comment, or leading whitespace before the JSON body.
              const std::string ka = stream ? ": keep-alive\n\n" : " ";
              if (!sink.write(ka.data(), ka.size())) {
                shared->cancel();
                return false;
              }
              last_write = std::chrono::steady_clock::now();
            }
          }
          const json fin = shared->final_json();
          std::string tail;
          if (stream) {
            if (!fin.is_null()) tail += "data: " + dump(fin) + "\n\n";
            tail += "data: [DONE]\n\n";
          } else {
            tail = dump(fin);
          }
          if (!sink.write(tail.data(), tail.size())) return false;
          sink.done();
          return true;
        },
        [shared](bool success) {
          if (!success) shared->cancel();
        });
  }

  void setup_routes() {
    http_requests = &metrics.counter("cartserve:http_requests_total", "HTTP requests received");
    server.set_payload_max_length(64u << 20);
    server.new_task_queue = [n = config.num_threads] { return new httplib::ThreadPool(n); };
    server.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      http_requests->inc();
      if (req.path.rfind("/v1/", 0) == 0 && !authorized(req)) {
        api::ApiError e;
        e.http_status = 401;
        e.type = "authentication_error";
        e.message = "Unauthorized: a valid API key is required (Authorization: Bearer <key>)";
        send_error(res, e);
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    server.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "internal error";
          try {
            if (ep) std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          LOG_ERROR("request failed: {}", what);
          api::ApiError e;
          e.http_status = 500;
          e.type = "server_error";
          e.message = what;
          send_error(res, e);
        });
    server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;  // a handler already answered
      api::ApiError e;
      e.http_status = res.status;
      e.type = res.status == 404 ? "not_found_error" : "invalid_request_error";
      e.message = res.status == 404
                      ? "no route for " + req.method + " " + req.path
                      : "request failed with HTTP status " + std::to_string(res.status);
      send_error(res, e);
    });

    server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.status = 200;
      res.set_content("", "text/plain");
    });
    server.Get("/version", [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, json{{"version", CARTSERVE_VERSION_STRING}});
    });
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.status = 200;
      res.set_content(metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
    });
    server.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, service.models_json());
    });
    server.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      auto parsed = api::parse_completion_request(req.body);
      if (auto* e = std::get_if<api::ApiError>(&parsed)) return send_error(res, *e);
      auto job = service.start_completion(std::get<api::CompletionRequest>(parsed));
      if (auto* e = std::get_if<api::ApiError>(&job)) return send_error(res, *e);
      serve_job(std::move(std::get<std::unique_ptr<CompletionJob>>(job)), res);
    });
    server.Post("/v1/chat/completions",
                [this](const httplib::Request& req, httplib::Response& res) {
                  auto parsed = api::parse_chat_request(req.body);
                  if (auto* e = std::get_if<api::ApiError>(&parsed)) return send_error(res, *e);
                  auto job = service.start_chat(std::get<api::ChatCompletionRequest>(parsed));
                  if (auto* e = std::get_if<api::ApiError>(&job)) return send_error(res, *e);
                  serve_job(std::move(std::get<std::unique_ptr<CompletionJob>>(job)), res);
                });
  }
};

HttpServer::HttpServer(OpenAiService& service, MetricsRegistry& metrics, HttpServerConfig config)
    : impl_(std::make_unique<Impl>(service, metrics, std::move(config))) {
  impl_->setup_routes();
}

HttpServer::~HttpServer() {
  stop();
}

void HttpServer::add_route(const std::string& method, const std::string& pattern,
                           HttpHandler handler) {
  auto fn = [handler](const httplib::Request& req, httplib::Response& res) {
    HttpRequest r;
    r.method = req.method;
    r.path = req.path;
    r.body = req.body;
    for (size_t i = 1; i < req.matches.size(); ++i)
      r.matches.push_back(req.matches[i].str());
    HttpResponse out = handler(r);
    res.status = out.status;
    res.set_content(out.body, out.content_type);
  };
  if (method == "GET") impl_->server.Get(pattern, fn);
  if (method == "POST") impl_->server.Post(pattern, fn);
  if (method == "DELETE") impl_->server.Delete(pattern, fn);
  if (method == "PUT") impl_->server.Put(pattern, fn);
}

Status HttpServer::start() {
  Impl& im = *impl_;
  int port = im.config.port;
  if (port == 0) {
    port = im.server.bind_to_any_port(im.config.host);
    if (port < 0) return make_error(ErrorCode::kUnavailable, "cannot bind {}", im.config.host);
  } else if (!im.server.bind_to_port(im.config.host, port)) {
    return make_error(ErrorCode::kUnavailable, "cannot bind {}:{} (in use or not permitted)",
                      im.config.host, port);
  }
  im.bound_port = port;
  im.thread = std::thread([&im] { im.server.listen_after_bind(); });
  return {};
}

int HttpServer::port() const {
  return impl_->bound_port;
}

void HttpServer::wait() {
  if (impl_->thread.joinable()) impl_->thread.join();
}

void HttpServer::stop() {
  if (impl_->stopped.exchange(true)) return;
  impl_->server.stop();
}

}  // namespace cartserve
