// `cartserve serve MODEL ...`: the OpenAI-compatible server (vLLM-like flags).
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <cblas.h>

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include "core/logging.h"
#include "core/metrics.h"
#include "core/progress.h"
#include "server/cli.h"
#include "server/http_server.h"
#include "server/openai_service.h"
#include "server/serve_options.h"
#include "server/serving_stack.h"

namespace cartserve::cli {

namespace {

// SIGINT/SIGTERM write a byte to this pipe (async-signal-safe); a watcher
// thread reads it and stops the server. Works whichever thread the kernel
// picks for the signal (BLAS threads exist before main).
int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &b, 1);
}

int fail(const std::string& msg) {
  std::fprintf(stderr, "error: %s\n", msg.c_str());
  return 1;
}

int run_serve(const ServeOptions& o) {
  set_log_level(o.log_level);
  if (auto st = o.validate(); !st.ok()) return fail(st.message());
  if (o.threads > 0) {
    setenv("CARTSERVE_THREADS", std::to_string(o.threads).c_str(), 1);
    openblas_set_num_threads(o.threads);
  }

  if (pipe(g_signal_pipe) != 0) return fail("cannot create the signal pipe");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  auto loaded = load_model_for(o);
  if (!loaded.ok()) return fail(loaded.status().message());
  const Model& model = **loaded;
  MetricsRegistry metrics;
  auto built = build_serving_stack(model, o, &metrics);
  if (!built.ok()) return fail(built.status().message());
  ServingStack& stack = **built;

  ServiceConfig sc;
  sc.served_model_names = stack.served_model_names;
  sc.max_model_len = stack.engine_config.scheduler.max_model_len;
  OpenAiService service(model, *stack.engine, sc,
                        stack.cartridges ? stack.cartridges->resolver() : CartridgeResolver());
  auto plan = o.plan(model.config);
  if (!plan.ok()) return fail(plan.status().message());
  HttpServerConfig hc;
  hc.host = o.host;
  hc.port = o.port;
  hc.api_key = o.api_key;
  hc.admin_api_key = o.admin_api_key;
  hc.max_request_bytes = plan->max_request_bytes;
  hc.max_concurrent_requests = o.max_concurrent_requests;
  hc.request_timeout = std::chrono::milliseconds(static_cast<int64_t>(o.request_timeout * 1000));
  HttpServer http(service, metrics, hc);
  if (stack.cartridges) stack.cartridges->add_admin_routes(http);
  if (auto st = http.start(); !st.ok()) return fail(st.message());
  const KvSpec& kv = stack.kv();
  std::fprintf(stderr,
               "cartserve: serving '%s' on http://%s:%d (device %s, max_model_len %d, KV cache "
               "%d blocks x %d = %lld tokens, %s %s)%s%s\n",
               sc.served_model_names.front().c_str(), o.host.c_str(), http.port(),
               stack.backend->name().c_str(), sc.max_model_len, kv.num_blocks - 1, kv.block_size,
               static_cast<long long>(kv.num_tokens()), format_bytes(kv.total_bytes()).c_str(),
               dtype_name(kv.dtype), o.api_key.empty() ? "" : ", API key required",
               o.admin_api_key.empty() ? "" : ", admin key required for cartridge changes");
  std::fprintf(stderr, "cartserve: limits: request bodies up to %s, %s, %s\n",
               format_bytes(hc.max_request_bytes).c_str(),
               hc.max_concurrent_requests > 0
                   ? (std::to_string(hc.max_concurrent_requests) + " requests at once").c_str()
                   : "no cap on requests at once",
               o.request_timeout > 0
                   ? ("timeout " + std::to_string(o.request_timeout) + " s").c_str()
                   : "no request timeout");
  std::fflush(stderr);

  // SIGTERM/SIGINT drain: no new connections or requests, requests in flight
  // get --shutdown-timeout seconds, then they are cancelled; exit 0.
  std::thread signal_thread([&] {
    unsigned char sig = 0;
    while (read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig != 0) {
      std::fprintf(stderr, "cartserve: signal %d, draining: %d requests in flight get up to %g s\n",
                   sig, http.in_flight(), o.shutdown_timeout);
      std::fflush(stderr);
    }
    http.drain(std::chrono::milliseconds(static_cast<int64_t>(o.shutdown_timeout * 1000)));
  });
  http.wait();
  const unsigned char zero = 0;  // wakes the watcher if the server stopped on its own
  [[maybe_unused]] ssize_t n = write(g_signal_pipe[1], &zero, 1);
  signal_thread.join();
  stack.engine->stop();
  std::fprintf(stderr, "cartserve: stopped\n");
  return 0;
}

}  // namespace

void register_serve(CLI::App& app) {
  auto opts = std::make_shared<ServeOptions>();
  auto* sub = app.add_subcommand("serve", "Serve a model over the OpenAI-compatible HTTP API");
  opts->add_to(*sub);
  sub->callback([opts] { set_exit_code(run_serve(*opts)); });
}

}  // namespace cartserve::cli
