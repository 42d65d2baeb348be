// The HTTP layer (cpp-httplib behind a pimpl): OpenAI routes, health,
// version, Prometheus metrics, API-key enforcement, SSE streaming with
// client-disconnect cancellation, and a small route API for admin endpoints.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "core/metrics.h"
#include "core/status.h"
#include "server/openai_service.h"

namespace cartserve {

struct HttpServerConfig {
  std::string host = "0.0.0.0";
  int port = 8000;      // 0: pick a free port
  std::string api_key;  // empty: no authentication
  // Empty: admin routes need what other /v1 routes need. Set: the mutating
  // admin routes need this key, which also opens every other /v1 route.
  std::string admin_api_key;
  size_t max_request_bytes = 64u << 20;  // larger bodies get 413
  // Completion requests in the server at once, queued and running; one more
  // gets 503 with Retry-After. 0: no cap.
  int max_concurrent_requests = 0;
  // A completion request still running this long after it arrived is
  // cancelled: 503 while it waits for the engine, else it ends with
  // finish_reason "abort". 0: no limit.
  std::chrono::milliseconds request_timeout{0};
  int num_threads = 0;  // 0: enough for max_concurrent_requests (at least 32)
};

struct HttpRequest {
  std::string method;
  std::string path;
  std::string body;
  std::vector<std::string> matches;  // regex groups of the route pattern
};

struct HttpResponse {
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

class HttpServer {
 public:
  HttpServer(OpenAiService& service, MetricsRegistry& metrics, HttpServerConfig config);
  ~HttpServer();

  // Extra JSON routes (admin API); `pattern` is a regex over the
  // (percent-decoded) path. Routes under /v1 need the API key like the
  // OpenAI ones; `admin` routes need the admin key when there is one.
  void add_route(const std::string& method, const std::string& pattern, HttpHandler handler,
                 bool admin = false);

  // Binds and serves on a background thread; returns once listening.
  Status start();
  int port() const;
  // Blocks until the server has stopped (one thread may wait).
  void wait();
  // Stops listening and serving; safe from any thread, idempotent.
  void stop();
  // Graceful stop: no new connections, new requests get 503, requests in
  // flight may finish within `grace`, then they are cancelled (finish_reason
  // "abort"). wait() returns once every response has ended.
  void drain(std::chrono::milliseconds grace);
  // Completion requests being served now.
  int in_flight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cartserve
