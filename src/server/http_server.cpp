#include "server/http_server.h"

#include <httplib.h>

#include <atomic>
#include <thread>

#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core/logging.h"
#include "core/sha256.h"
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

// Compares the digests of both keys in constant time: the time taken says
// nothing about the key, its length included.
bool key_matches(const std::string& presented, const std::string& key) {
  const Sha256::Digest a = Sha256::hash(presented.data(), presented.size());
  const Sha256::Digest b = Sha256::hash(key.data(), key.size());
  volatile unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i)
    diff = diff | static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string bearer_token(const httplib::Request& req) {
  const std::string auth = req.get_header_value("Authorization");
  const std::string prefix = "Bearer ";
  if (auth.size() <= prefix.size() || auth.compare(0, prefix.size(), prefix) != 0) return "";
  return auth.substr(prefix.size());
}

api::ApiError unavailable(std::string message, std::string code) {
  api::ApiError e;
  e.http_status = 503;
  e.type = "service_unavailable_error";
  e.code = std::move(code);
  e.message = std::move(message);
  return e;
}

using Clock = std::chrono::steady_clock;

// cpp-httplib (0.11, as Debian builds it) listens with a backlog of 5: at
// 64 clients connecting at once the kernel's accept queue overflows and some
// connections are reset (the soak saw it). listen() again on a listening
// socket only resizes its queue; the library keeps its socket private, so
// it is found among our descriptors by its port.
void widen_listen_backlog(int port) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return;
  while (const dirent* e = readdir(dir)) {
    const int fd = std::atoi(e->d_name);
    if (fd <= 2) continue;
    int listening = 0;
    socklen_t len = sizeof(listening);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) continue;
    sockaddr_storage addr{};
    socklen_t alen = sizeof(addr);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) continue;
    int bound = -1;
    if (addr.ss_family == AF_INET) bound = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    if (addr.ss_family == AF_INET6)
      bound = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    if (bound == port && ::listen(fd, SOMAXCONN) != 0) {
      LOG_WARN("cannot widen the listen backlog of port {}", port);
    }
  }
  closedir(dir);
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
  Counter* refused_full = nullptr;
  Counter* timed_out = nullptr;
  // Completion requests being served; each holds a slot (an InFlight) until
  // its response has ended.
  std::atomic<int> in_flight{0};
  std::atomic<bool> draining{false};
  std::atomic<int64_t> drain_deadline{0};  // Clock ticks; valid while draining

  struct InFlight {
    explicit InFlight(std::atomic<int>& n) : count(n) {}
    ~InFlight() { count.fetch_sub(1); }
    std::atomic<int>& count;
  };
  using Slot = std::shared_ptr<InFlight>;

  Impl(OpenAiService& s, MetricsRegistry& m, HttpServerConfig c)
      : service(s), metrics(m), config(std::move(c)) {}

  bool authorized(const httplib::Request& req) const {
    if (config.api_key.empty()) return true;
    const std::string key = bearer_token(req);
    return key_matches(key, config.api_key) ||
           (!config.admin_api_key.empty() && key_matches(key, config.admin_api_key));
  }

  // A slot for a completion request, or an answer (503) when there is none.
  Slot enter(httplib::Response& res) {
    if (draining.load()) {
      res.set_header("Retry-After", "5");
      send_error(res, unavailable("the server is shutting down", "shutting_down"));
      return nullptr;
    }
    const int cap = config.max_concurrent_requests;
    const int n = in_flight.fetch_add(1) + 1;
    Slot slot = std::make_shared<InFlight>(in_flight);
    if (cap > 0 && n > cap) {
      refused_full->inc();
      res.set_header("Retry-After", "1");
      send_error(res, unavailable(fmt::format("the server is full: {} requests are queued or "
                                              "running (--max-concurrent-requests); retry later",
                                              cap),
                                  "server_full"));
      return nullptr;
    }
    return slot;
  }

  // Whether a request that arrived with `deadline` must stop now.
  bool due(Clock::time_point deadline) const {
    const auto now = Clock::now();
    if (now >= deadline) return true;
    return draining.load() && now.time_since_epoch().count() >= drain_deadline.load();
  }
  Clock::time_point deadline_from_now() const {
    return config.request_timeout.count() > 0 ? Clock::now() + config.request_timeout
                                              : Clock::time_point::max();
  }

  // Runs a job: SSE when streaming, else one JSON body (with whitespace
  // keep-alives while waiting, so a vanished client is noticed and cancelled).
  // `slot` is held until the response has ended.
  void serve_job(std::unique_ptr<CompletionJob> job, httplib::Response& res, Slot slot,
                 Clock::time_point deadline) {
    // Errors up to the scheduler's admission answer with their own status
    // code; after it the response is committed to 200. A deadline (timeout
    // or shutdown) passing before the admission is a 503.
    const auto admit_wait_end = Clock::now() + std::chrono::seconds(60);
    for (;;) {
      if (auto err = job->early_error(std::chrono::milliseconds(100))) {
        job->cancel();
        send_error(res, *err);
        return;
      }
      if (job->admitted() || Clock::now() >= admit_wait_end) break;
      if (due(deadline)) {
        job->cancel();
        res.set_header("Retry-After", "1");
        if (draining.load()) {
          send_error(res, unavailable("the server is shutting down", "shutting_down"));
        } else {
          timed_out->inc();
          send_error(res,
                     unavailable(fmt::format("the request did not start within the request "
                                             "timeout of {} s (--request-timeout); retry later",
                                             config.request_timeout.count() / 1000.0),
                                 "request_timeout"));
        }
        return;
      }
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
        [this, shared, stream, slot, deadline](size_t /*offset*/, httplib::DataSink& sink) {
          auto last_write = std::chrono::steady_clock::now();
          bool cut = false;
          for (;;) {
            if (!cut && due(deadline)) {
              // Out of time (timeout or shutdown): the engine aborts it at its
              // next step and the response ends with finish_reason "abort".
              cut = true;
              if (!draining.load()) timed_out->inc();
              shared->cancel();
            }
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
    refused_full = &metrics.counter("cartserve:requests_refused_full_total",
                                    "Requests refused with 503: --max-concurrent-requests reached");
    timed_out =
        &metrics.counter("cartserve:requests_timed_out_total", "Requests cut by --request-timeout");
    server.set_payload_max_length(config.max_request_bytes);
    // One thread per request in flight (a request holds its thread while it
    // runs), so that the cap above, not a hidden queue, decides who waits.
    int threads = config.num_threads;
    if (threads <= 0) threads = std::max(32, config.max_concurrent_requests + 16);
    server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      http_requests->inc();
      // RFC 9112 6.3: a request with neither Content-Length nor chunked
      // Transfer-Encoding has no body. Without this, cpp-httplib reads until
      // the client closes and answers 400 (`curl -X POST .../pin`). The
      // request object is the server's own, not const; the handler runs
      // before the body is read.
      if (!req.has_header("Content-Length") && !req.has_header("Transfer-Encoding")) {
        const_cast<httplib::Request&>(req).headers.emplace("Content-Length", "0");
      }
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
    server.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;  // a handler already answered
      api::ApiError e;
      e.http_status = res.status;
      e.type = res.status == 404 ? "not_found_error" : "invalid_request_error";
      if (res.status == 404) {
        e.message = "no route for " + req.method + " " + req.path;
      } else if (res.status == 413) {
        e.message = fmt::format(
            "the request body is larger than this server accepts ({} bytes, "
            "--max-request-bytes)",
            config.max_request_bytes);
      } else {
        e.message = "request failed with HTTP status " + std::to_string(res.status);
      }
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
      const auto deadline = deadline_from_now();
      Slot slot = enter(res);
      if (!slot) return;
      auto parsed = api::parse_completion_request(req.body);
      if (auto* e = std::get_if<api::ApiError>(&parsed)) return send_error(res, *e);
      auto job = service.start_completion(std::get<api::CompletionRequest>(parsed));
      if (auto* e = std::get_if<api::ApiError>(&job)) return send_error(res, *e);
      serve_job(std::move(std::get<std::unique_ptr<CompletionJob>>(job)), res, std::move(slot),
                deadline);
    });
    server.Post("/v1/chat/completions",
                [this](const httplib::Request& req, httplib::Response& res) {
                  const auto deadline = deadline_from_now();
                  Slot slot = enter(res);
                  if (!slot) return;
                  auto parsed = api::parse_chat_request(req.body);
                  if (auto* e = std::get_if<api::ApiError>(&parsed)) return send_error(res, *e);
                  auto job = service.start_chat(std::get<api::ChatCompletionRequest>(parsed));
                  if (auto* e = std::get_if<api::ApiError>(&job)) return send_error(res, *e);
                  serve_job(std::move(std::get<std::unique_ptr<CompletionJob>>(job)), res,
                            std::move(slot), deadline);
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
                           HttpHandler handler, bool admin) {
  auto fn = [handler, admin, im = impl_.get()](const httplib::Request& req,
                                               httplib::Response& res) {
    if (admin && !im->config.admin_api_key.empty() &&
        !key_matches(bearer_token(req), im->config.admin_api_key)) {
      api::ApiError e;
      const bool anonymous = bearer_token(req).empty();
      e.http_status = anonymous ? 401 : 403;
      e.type = anonymous ? "authentication_error" : "permission_error";
      e.message =
          "this route changes the server's cartridges: it needs the admin API key "
          "(Authorization: Bearer <admin key>)";
      return send_error(res, e);
    }
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
  widen_listen_backlog(port);
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

void HttpServer::drain(std::chrono::milliseconds grace) {
  impl_->drain_deadline = (Clock::now() + grace).time_since_epoch().count();
  impl_->draining = true;
  stop();  // closes the listening socket; workers finish the requests they hold
}

int HttpServer::in_flight() const {
  return impl_->in_flight.load();
}

}  // namespace cartserve
