// The engine's Prometheus metrics (vLLM's names with the cartserve: prefix):
// token counters, latency histograms and the scheduler gauges.
#pragma once

#include <cstdint>

#include "core/metrics.h"
#include "engine/request.h"

namespace cartserve {

struct EngineStats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  int32_t num_waiting_for_kv = 0;
  double kv_usage = 0.0;       // fraction of KV blocks in use
  int32_t kv_free_blocks = 0;  // free or evictable (cached, unreferenced) blocks
  int64_t prefix_queries = 0;
  int64_t prefix_hits = 0;
  int64_t num_preemptions = 0;
  int64_t num_steps = 0;
};

class EngineMetrics {
 public:
  explicit EngineMetrics(MetricsRegistry& registry);

  void prompt_tokens(int64_t n) { prompt_tokens_->inc(static_cast<double>(n)); }
  // One output token; `first`: seconds since arrival (TTFT), else since the previous token.
  void output_token(bool first, double seconds);
  void finished(FinishReason reason, double e2e_seconds);
  void gauges(const EngineStats& s);

 private:
  MetricsRegistry& registry_;
  Counter* prompt_tokens_;
  Counter* generation_tokens_;
  Histogram* ttft_;
  Histogram* itl_;
  Histogram* e2e_;
  Gauge* running_;
  Gauge* waiting_;
  Gauge* waiting_for_kv_;
  Gauge* kv_usage_;
  Gauge* kv_free_blocks_;
  Gauge* prefix_queries_;
  Gauge* prefix_hits_;
  Gauge* prefix_hit_rate_;
  Gauge* preemptions_;
};

}  // namespace cartserve
