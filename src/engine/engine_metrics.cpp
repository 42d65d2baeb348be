#include "engine/engine_metrics.h"

#include <fmt/format.h>

namespace cartserve {

EngineMetrics::EngineMetrics(MetricsRegistry& r)
    : registry_(r),
      prompt_tokens_(
          &r.counter("cartserve:prompt_tokens_total", "Prompt tokens processed (prefill)")),
      generation_tokens_(&r.counter("cartserve:generation_tokens_total", "Tokens generated")),
      ttft_(&r.histogram("cartserve:time_to_first_token_seconds", "Time to first token",
                         latency_buckets_seconds())),
      itl_(&r.histogram("cartserve:inter_token_latency_seconds", "Time between output tokens",
                        latency_buckets_seconds())),
      e2e_(&r.histogram("cartserve:e2e_request_latency_seconds",
                        "Request latency, arrival to finish", latency_buckets_seconds())),
      running_(&r.gauge("cartserve:num_requests_running", "Requests in the running batch")),
      waiting_(&r.gauge("cartserve:num_requests_waiting", "Requests waiting to be scheduled")),
      waiting_for_kv_(&r.gauge("cartserve:num_requests_waiting_for_kv",
                               "Requests waiting for their cartridge's KV to load")),
      kv_usage_(
          &r.gauge("cartserve:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1)")),
      kv_free_blocks_(&r.gauge("cartserve:kv_free_blocks",
                               "KV cache blocks free or evictable (held by no request)")),
      prefix_queries_(&r.gauge("cartserve:prefix_cache_queries",
                               "Prompt tokens looked up in the prefix cache")),
      prefix_hits_(
          &r.gauge("cartserve:prefix_cache_hits", "Prompt tokens found in the prefix cache")),
      prefix_hit_rate_(
          &r.gauge("cartserve:prefix_cache_hit_rate", "Prefix-cache hits / queries (0-1)")),
      preemptions_(&r.gauge("cartserve:num_preemptions", "Requests preempted (recomputed later)")) {
}

void EngineMetrics::output_token(bool first, double seconds) {
  generation_tokens_->inc();
  (first ? ttft_ : itl_)->observe(seconds);
}

void EngineMetrics::finished(FinishReason reason, double e2e_seconds) {
  e2e_->observe(e2e_seconds);
  registry_
      .counter("cartserve:request_success_total", "Finished requests by reason",
               fmt::format("finished_reason=\"{}\"",
                           reason == FinishReason::kNone ? "none" : finish_reason_name(reason)))
      .inc();
}

void EngineMetrics::gauges(const EngineStats& s) {
  running_->set(s.num_running);
  waiting_->set(s.num_waiting);
  waiting_for_kv_->set(s.num_waiting_for_kv);
  kv_usage_->set(s.kv_usage);
  kv_free_blocks_->set(s.kv_free_blocks);
  prefix_queries_->set(static_cast<double>(s.prefix_queries));
  prefix_hits_->set(static_cast<double>(s.prefix_hits));
  prefix_hit_rate_->set(s.prefix_queries > 0 ? static_cast<double>(s.prefix_hits) /
                                                   static_cast<double>(s.prefix_queries)
                                             : 0.0);
  preemptions_->set(static_cast<double>(s.num_preemptions));
}

}  // namespace cartserve
