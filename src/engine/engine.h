// The serving engine: one thread owns the batch. HTTP threads submit
// requests and read their outputs through per-request streams; the engine
// thread loops
//   schedule -> run the model -> sample -> detokenize/stop -> publish
// (nano-vllm's three-line step, plus the bookkeeping around it).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/metrics.h"
#include "core/status.h"
#include "engine/backend.h"
#include "engine/kv_connector.h"
#include "engine/request.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/stop_checker.h"
#include "kv/block_pool.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace cartserve {

struct EngineConfig {
  SchedulerConfig scheduler;
  int32_t num_kv_blocks = 0;  // including the null block
  bool enable_prefix_caching = true;
};

// What a client submits (already tokenized at the HTTP edge).
struct GenerateRequest {
  std::string id;
  std::vector<int32_t> prompt_token_ids;
  SamplingParams sampling;
  // Cartridge placement, set by the cartridge layer (0 / empty: none).
  int32_t num_virtual_tokens = 0;
  std::vector<std::string> cartridge_ids;
  std::string prefix_salt;
};

struct PromptLogprob {
  int32_t token = 0;
  float logprob = 0.f;
  std::vector<TokenLogprob> top;
};

// One publication to a stream: what is new since the previous one.
struct EngineOutput {
  std::vector<int32_t> token_ids;      // new output tokens
  std::string text;                    // new text: complete UTF-8, stop strings handled
  std::vector<SampleResult> logprobs;  // per new token, when requested
  // Prompt tokens 1..P-1 (the first has no logprob), once, when requested.
  std::vector<PromptLogprob> prompt_logprobs;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_reason;  // the stop string or stop token id that ended it
  Status error;             // set when the request was rejected or failed
  int32_t num_prompt_tokens = 0;
  int32_t num_output_tokens = 0;  // so far
  int32_t num_cached_tokens = 0;  // prompt tokens served by the prefix cache
};

// The client's end of one request. Thread-safe.
class RequestStream {
 public:
  // Waits up to `timeout` for outputs; returns all pending ones (may be empty).
  std::vector<EngineOutput> next(std::chrono::milliseconds timeout);
  // Abandons the request (client gone): the engine aborts it at its next step.
  void cancel();
  bool finished() const;
  // Waits until the scheduler has admitted the request (its KV placed, it
  // runs) or the engine finished it (e.g. rejected at submission or at
  // admission); true when either happened in time.
  bool wait_admitted(std::chrono::milliseconds timeout);
  const std::string& id() const { return id_; }

 private:
  friend class Engine;
  explicit RequestStream(std::string id);
  void push(EngineOutput out);
  void mark_admitted();

  std::string id_;
  std::shared_ptr<std::atomic<bool>> cancelled_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<EngineOutput> queue_;
  bool finished_ = false;
  bool admitted_ = false;
};

struct EngineStats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  double kv_usage = 0.0;  // fraction of KV blocks in use
  int64_t prefix_queries = 0;
  int64_t prefix_hits = 0;
  int64_t num_preemptions = 0;
  int64_t num_steps = 0;
};

class Engine {
 public:
  // `connector` may be null (no cartridges). Starts the engine thread.
  static Result<std::unique_ptr<Engine>> create(const Model& model,
                                                std::unique_ptr<Backend> backend,
                                                const EngineConfig& config,
                                                MetricsRegistry* metrics = nullptr,
                                                KvConnector* connector = nullptr);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; never blocks on the model. Errors (invalid params,
  // never fits) arrive as a finished output with `error` set.
  std::shared_ptr<RequestStream> submit(GenerateRequest request);

  EngineStats stats() const;
  const Model& model() const { return model_; }
  const EngineConfig& config() const { return config_; }
  // Runs `fn` on the engine thread between steps (e.g. cartridge injection
  // into the KV cache) and waits for it.
  Status run_on_engine_thread(const std::function<Status(Backend&, BlockPool&)>& fn);
  void stop();

 private:
  struct Live;     // engine-thread state of one request
  struct Metrics;  // cached metric handles
  static Metrics make_metrics(MetricsRegistry& registry);

  Engine(const Model& model, std::unique_ptr<Backend> backend, const EngineConfig& config,
         BlockPool pool, MetricsRegistry* metrics, KvConnector* connector);
  void loop();
  void admit(GenerateRequest&& g, std::shared_ptr<RequestStream> stream);
  void step();
  void fail_all(const SchedulerOutput& out, const Status& st);
  void publish_tokens(const RequestUpdate& u, const std::vector<SampleResult>& samples);
  void finish_live(Live& live, FinishReason reason, Status error);
  void update_gauges();

  const Model& model_;
  std::unique_ptr<Backend> backend_;
  EngineConfig config_;
  BlockPool pool_;
  std::unique_ptr<Scheduler> scheduler_;
  Sampler sampler_;
  MetricsRegistry* metrics_;
  std::unique_ptr<Metrics> m_;  // null without a registry
  KvConnector* connector_;      // may be null
  std::vector<int32_t> stop_ids_;

  // Inbox (any thread -> engine thread).
  std::mutex inbox_mu_;
  std::condition_variable inbox_cv_;
  std::deque<std::pair<GenerateRequest, std::shared_ptr<RequestStream>>> inbox_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;

  // Engine-thread state.
  std::unordered_map<std::string, std::unique_ptr<Live>> live_;
  std::vector<float> logits_;  // [rows, vocab]
  uint64_t seed_counter_;

  mutable std::mutex stats_mu_;
  EngineStats stats_;
  std::thread thread_;
};

}  // namespace cartserve
