// The serving engine: one thread owns the batch. HTTP threads submit
// requests and read their outputs through per-request streams; the engine
// thread loops over steps, each
//   schedule -> run (the backend's forward pass and sampling) -> process
//   outputs (detokenize, stop strings, publish)
// (nano-vllm's three-line step), and between steps lets the KV connector's
// worker side start and collect KV loads and collects finished KV exports.
// The engine borrows the backend, the block pool and the connector from the
// serving stack (server/serving_stack.h), which builds and owns them.
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
#include "core/tensor.h"
#include "engine/engine_metrics.h"
#include "engine/input_batch.h"
#include "engine/kv_connector.h"
#include "engine/request.h"
#include "engine/scheduler.h"
#include "engine/stop_checker.h"
#include "kv/block_pool.h"
#include "model/model.h"
#include "runtime/backend.h"
#include "tokenizer/tokenizer.h"

namespace cartserve {

struct EngineConfig {
  SchedulerConfig scheduler;
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
  // Prefill the prompt and return its KV (EngineOutput::kv) instead of
  // tokens: how a cartridge is built. Needs num_virtual_tokens == 0.
  bool export_kv = false;
};

// The KV of a prompt's positions [0, num_tokens), in the backend's dtype, in
// the cartridge file layout: per layer [num_kv_heads, num_tokens, head_dim].
struct ExportedKv {
  DType dtype = DType::kF32;
  int32_t num_tokens = 0;
  std::vector<Tensor> keys;        // [num_layers]
  std::vector<Tensor> values;      // [num_layers]
  std::vector<int32_t> token_ids;  // the prompt
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
  int32_t num_output_tokens = 0;         // so far
  int32_t num_cached_tokens = 0;         // prompt tokens served by the prefix cache
  std::shared_ptr<const ExportedKv> kv;  // export_kv requests, with the final output
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

class Engine {
 public:
  // Starts the engine thread. `backend`, `pool` and `connector` (null: no
  // cartridges) must outlive the engine; the pool has the backend's blocks.
  static Result<std::unique_ptr<Engine>> create(const Model& model, Backend& backend,
                                                BlockPool& pool, const EngineConfig& config,
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
  // Runs `fn` on the engine thread between steps (e.g. a residency change
  // that touches KV blocks) and waits for it.
  Status run_on_engine_thread(const std::function<Status()>& fn);
  void stop();

 private:
  struct Live;           // engine-thread state of one request
  struct PendingExport;  // a finished export_kv request whose KV is being copied out

  Engine(const Model& model, Backend& backend, BlockPool& pool, const EngineConfig& config,
         MetricsRegistry* metrics, KvConnector* connector);
  void loop();
  void admit(GenerateRequest&& g, std::shared_ptr<RequestStream> stream);

  // One step: schedule, run, process outputs.
  bool step();  // false when nothing could be scheduled
  void publish_schedule(const SchedulerOutput& out);
  Status run(const SchedulerOutput& out);
  void process_outputs(const SchedulerOutput& out);

  void collect_prompt_logprobs(const SchedulerOutput& out);
  void hold_exports(const SchedulerOutput& out);
  void start_export(PendingExport& e);
  void poll_exports();
  void count_prompt_tokens(const SchedulerOutput& out);
  void fail_all(const SchedulerOutput& out, const Status& st);
  void publish_tokens(const RequestUpdate& u, const SampleResult* sample);
  void finish_live(Live& live, FinishReason reason, Status error);
  void update_gauges();

  const Model& model_;
  Backend& backend_;
  BlockPool& pool_;
  EngineConfig config_;
  std::unique_ptr<Scheduler> scheduler_;
  InputBatch input_batch_;
  std::unique_ptr<EngineMetrics> metrics_;  // null without a registry
  KvConnector* connector_;                  // may be null
  std::vector<int32_t> stop_ids_;

  // Inbox (any thread -> engine thread).
  std::mutex inbox_mu_;
  std::condition_variable inbox_cv_;
  std::deque<std::pair<GenerateRequest, std::shared_ptr<RequestStream>>> inbox_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  bool woken_ = false;  // news from the connector or a finished transfer: ends a wait
  std::mutex join_mu_;  // serialises stop()'s join

  // Engine-thread state.
  std::unordered_map<std::string, std::unique_ptr<Live>> live_;
  StepInput step_in_;  // reused every step
  StepOutput step_out_;
  StepPlan plan_;
  std::vector<std::unique_ptr<PendingExport>> exports_;
  bool worker_busy_ = false;  // the connector has loads in flight
  uint64_t seed_counter_;

  mutable std::mutex stats_mu_;
  EngineStats stats_;
  std::thread thread_;
};

}  // namespace cartserve
