// The HTTP layer (cpp-httplib behind a pimpl): OpenAI routes, health,
// version, Prometheus metrics, API-key enforcement, SSE streaming with
// client-disconnect cancellation, and a small route API for admin endpoints.
#pragma once

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
  int num_threads = 32;
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

  // Extra JSON routes (admin API); `pattern` is a regex over the path.
  // Routes under /v1 need the API key like the OpenAI ones.
  void add_route(const std::string& method, const std::string& pattern, HttpHandler handler);

  // Binds and serves on a background thread; returns once listening.
  Status start();
  int port() const;
  // Blocks until the server has stopped (one thread may wait).
  void wait();
  // Stops listening and serving; safe from any thread, idempotent.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cartserve
