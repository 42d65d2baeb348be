#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <future>
#include <random>

#include "core/logging.h"
#include "engine/batch_builder.h"

namespace cartserve {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- streams

RequestStream::RequestStream(std::string id)
    : id_(std::move(id)), cancelled_(std::make_shared<std::atomic<bool>>(false)) {}

void RequestStream::push(EngineOutput out) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (out.finished) finished_ = true;
    queue_.push_back(std::move(out));
  }
  cv_.notify_all();
}

std::vector<EngineOutput> RequestStream::next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return !queue_.empty(); });
  std::vector<EngineOutput> out(std::make_move_iterator(queue_.begin()),
                                std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

void RequestStream::cancel() {
  cancelled_->store(true, std::memory_order_relaxed);
}

void RequestStream::mark_admitted() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    admitted_ = true;
  }
  cv_.notify_all();
}

bool RequestStream::wait_admitted(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  return cv_.wait_for(lk, timeout, [&] { return admitted_ || finished_; });
}

bool RequestStream::finished() const {
  std::lock_guard<std::mutex> lk(mu_);
  return finished_;
}

// ---------------------------------------------------------------- engine

struct Engine::Live {
  std::shared_ptr<Request> req;
  std::shared_ptr<RequestStream> stream;
  std::unique_ptr<StreamingDetokenizer> detok;
  std::unique_ptr<StopStringMatcher> stops;
  Clock::time_point arrival;
  Clock::time_point last_token;
  bool first_token_seen = false;
  bool prompt_logprobs_sent = false;
  std::vector<PromptLogprob> prompt_logprobs;  // gathered across prefill chunks
  bool admitted = false;                       // stream told once the scheduler first ran it
  bool done = false;
};

struct Engine::Metrics {
  Counter* prompt_tokens;
  Counter* generation_tokens;
  Histogram* ttft;
  Histogram* itl;
  Histogram* e2e;
  Gauge* running;
  Gauge* waiting;
  Gauge* kv_usage;
  Gauge* prefix_queries;
  Gauge* prefix_hits;
  Gauge* prefix_hit_rate;
  Gauge* preemptions;
};

Engine::Metrics Engine::make_metrics(MetricsRegistry& r) {
  return {&r.counter("cartserve:prompt_tokens_total", "Prompt tokens processed (prefill)"),
          &r.counter("cartserve:generation_tokens_total", "Tokens generated"),
          &r.histogram("cartserve:time_to_first_token_seconds", "Time to first token",
                       latency_buckets_seconds()),
          &r.histogram("cartserve:inter_token_latency_seconds", "Time between output tokens",
                       latency_buckets_seconds()),
          &r.histogram("cartserve:e2e_request_latency_seconds",
                       "Request latency, arrival to finish", latency_buckets_seconds()),
          &r.gauge("cartserve:num_requests_running", "Requests in the running batch"),
          &r.gauge("cartserve:num_requests_waiting", "Requests waiting to be scheduled"),
          &r.gauge("cartserve:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1)"),
          &r.gauge("cartserve:prefix_cache_queries", "Prompt tokens looked up in the prefix cache"),
          &r.gauge("cartserve:prefix_cache_hits", "Prompt tokens found in the prefix cache"),
          &r.gauge("cartserve:prefix_cache_hit_rate", "Prefix-cache hits / queries (0-1)"),
          &r.gauge("cartserve:num_preemptions", "Requests preempted (recomputed later)")};
}

namespace {

// log-softmax of one row, then the logprob of `token` and the top-n.
PromptLogprob prompt_logprob(const float* row, int32_t vocab, int32_t token, int32_t top_n) {
  float mx = -INFINITY;
  for (int32_t i = 0; i < vocab; ++i)
    mx = std::max(mx, row[i]);
  double z = 0.0;
  for (int32_t i = 0; i < vocab; ++i)
    z += std::exp(static_cast<double>(row[i] - mx));
  const float lse = mx + static_cast<float>(std::log(z));
  PromptLogprob p;
  p.token = token;
  p.logprob = row[token] - lse;
  if (top_n > 0) {
    std::vector<int32_t> idx(static_cast<size_t>(vocab));
    for (int32_t i = 0; i < vocab; ++i)
      idx[i] = i;
    const auto n = static_cast<ptrdiff_t>(std::min(top_n, vocab));
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    });
    for (ptrdiff_t i = 0; i < n; ++i)
      p.top.push_back({idx[i], row[idx[i]] - lse});
  }
  return p;
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::create(const Model& model, std::unique_ptr<Backend> backend,
                                               const EngineConfig& config, MetricsRegistry* metrics,
                                               KvConnector* connector) {
  if (!backend) return make_error(ErrorCode::kInvalidArgument, "engine: no backend");
  if (backend->num_blocks() != config.num_kv_blocks ||
      backend->block_size() != config.scheduler.block_size) {
    return make_error(ErrorCode::kInvalidArgument,
                      "engine: backend has {} blocks of {} but the config says {} of {}",
                      backend->num_blocks(), backend->block_size(), config.num_kv_blocks,
                      config.scheduler.block_size);
  }
  CS_ASSIGN_OR_RETURN(BlockPool pool,
                      BlockPool::create(config.num_kv_blocks, config.enable_prefix_caching));
  std::unique_ptr<Engine> e(
      new Engine(model, std::move(backend), config, std::move(pool), metrics, connector));
  CS_ASSIGN_OR_RETURN(e->scheduler_, Scheduler::create(config.scheduler, e->pool_, connector));
  if (connector) connector->bind(e->pool_, *e->backend_);
  e->thread_ = std::thread([raw = e.get()] { raw->loop(); });
  return e;
}

Engine::Engine(const Model& model, std::unique_ptr<Backend> backend, const EngineConfig& config,
               BlockPool pool, MetricsRegistry* metrics, KvConnector* connector)
    : model_(model),
      backend_(std::move(backend)),
      config_(config),
      pool_(std::move(pool)),
      sampler_(&ThreadPool::global()),
      metrics_(metrics),
      connector_(connector),
      stop_ids_(model.tokenizer.stop_ids()),
      seed_counter_(std::random_device{}()) {
  if (metrics_) m_ = std::make_unique<Metrics>(make_metrics(*metrics_));
  for (int32_t id : model.config.eos_token_ids) {
    if (std::find(stop_ids_.begin(), stop_ids_.end(), id) == stop_ids_.end()) {
      stop_ids_.push_back(id);
    }
  }
}

Engine::~Engine() {
  stop();
  if (connector_) connector_->unbind();  // its device copies die with our KV cache
}

void Engine::stop() {
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    if (stopping_) {
      if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) thread_.join();
      return;
    }
    stopping_ = true;
  }
  inbox_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<RequestStream> Engine::submit(GenerateRequest request) {
  auto stream = std::shared_ptr<RequestStream>(new RequestStream(request.id));
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    if (stopping_) {
      EngineOutput o;
      o.finished = true;
      o.finish_reason = FinishReason::kError;
      o.error = make_error(ErrorCode::kUnavailable, "the engine is shutting down");
      stream->push(std::move(o));
      return stream;
    }
    inbox_.emplace_back(std::move(request), stream);
  }
  inbox_cv_.notify_all();
  return stream;
}

Status Engine::run_on_engine_thread(const std::function<Status(Backend&, BlockPool&)>& fn) {
  auto done = std::make_shared<std::promise<Status>>();
  auto fut = done->get_future();
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    if (stopping_) return make_error(ErrorCode::kUnavailable, "the engine is shutting down");
    tasks_.emplace_back([this, fn, done] { done->set_value(fn(*backend_, pool_)); });
  }
  inbox_cv_.notify_all();
  return fut.get();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lk(stats_mu_);
  return stats_;
}

void Engine::loop() {
  for (;;) {
    std::deque<std::pair<GenerateRequest, std::shared_ptr<RequestStream>>> incoming;
    std::deque<std::function<void()>> tasks;
    {
      std::unique_lock<std::mutex> lk(inbox_mu_);
      inbox_cv_.wait(lk, [&] {
        return stopping_ || !inbox_.empty() || !tasks_.empty() ||
               scheduler_->has_unfinished_requests();
      });
      if (stopping_) break;
      incoming.swap(inbox_);
      tasks.swap(tasks_);
    }
    for (auto& t : tasks)
      t();
    for (auto& [g, s] : incoming)
      admit(std::move(g), std::move(s));
    if (scheduler_->has_unfinished_requests()) step();
    update_gauges();
  }
  // Shutdown: everything still live ends with an error.
  for (auto& [id, live] : live_) {
    if (!live->done) {
      finish_live(*live, FinishReason::kAbort,
                  make_error(ErrorCode::kUnavailable, "the engine is shutting down"));
    }
  }
  std::lock_guard<std::mutex> lk(inbox_mu_);
  for (auto& t : tasks_)
    t();
  for (auto& [g, s] : inbox_) {
    EngineOutput o;
    o.finished = true;
    o.finish_reason = FinishReason::kError;
    o.error = make_error(ErrorCode::kUnavailable, "the engine is shutting down");
    s->push(std::move(o));
  }
}

void Engine::admit(GenerateRequest&& g, std::shared_ptr<RequestStream> stream) {
  auto req = std::make_shared<Request>();
  req->id = g.id;
  req->prompt_token_ids = std::move(g.prompt_token_ids);
  req->sampling = std::move(g.sampling);
  req->eos_token_ids = stop_ids_;
  req->sampling_seed =
      req->sampling.seed ? *req->sampling.seed : seed_counter_++ * 0x9E3779B97F4A7C15ull;
  req->cancelled = stream->cancelled_;
  req->num_virtual_tokens = g.num_virtual_tokens;
  req->cartridge_ids = std::move(g.cartridge_ids);
  req->prefix_salt = std::move(g.prefix_salt);

  auto live = std::make_unique<Live>();
  live->req = req;
  live->stream = stream;
  live->detok =
      std::make_unique<StreamingDetokenizer>(model_.tokenizer, req->sampling.skip_special_tokens);
  live->stops = std::make_unique<StopStringMatcher>(req->sampling.stop,
                                                    req->sampling.include_stop_str_in_output);
  live->arrival = req->arrival_time;
  Status st = req->sampling.validate(model_.config.vocab_size);
  for (int32_t t : req->prompt_token_ids) {
    if (!st.ok()) break;
    if (t < 0 || t >= model_.config.vocab_size) {
      st = make_error(ErrorCode::kInvalidArgument,
                      "prompt token id {} outside the vocabulary [0, {})", t,
                      model_.config.vocab_size);
    }
  }
  if (st.ok() && live_.count(req->id)) {
    st = make_error(ErrorCode::kAlreadyExists, "a request with id '{}' is running", req->id);
  }
  if (st.ok()) st = scheduler_->add_request(req);
  if (!st.ok()) {
    finish_live(*live, FinishReason::kError, st);
    return;
  }
  live_[req->id] = std::move(live);
}

void Engine::finish_live(Live& live, FinishReason reason, Status error) {
  if (live.done) return;
  live.done = true;
  EngineOutput o;
  o.finished = true;
  o.finish_reason = reason;
  o.error = std::move(error);
  if (reason != FinishReason::kError && reason != FinishReason::kAbort) {
    // Whatever the detokenizer and stop matcher still hold.
    std::string tail = live.detok->flush();
    if (!live.stops->stopped()) {
      auto s = live.stops->push(tail);
      o.text = s.text;
      if (!s.stopped) o.text += live.stops->flush();
    }
  }
  const Request& r = *live.req;
  o.num_prompt_tokens = r.num_prompt_tokens();
  o.num_output_tokens = r.num_output_tokens();
  o.num_cached_tokens = r.num_cached_tokens;
  if (const auto* tok = std::get_if<int32_t>(&r.stop_reason)) o.stop_reason = std::to_string(*tok);
  if (const auto* str = std::get_if<std::string>(&r.stop_reason)) o.stop_reason = *str;
  if (metrics_) {
    const double e2e = std::chrono::duration<double>(Clock::now() - live.arrival).count();
    m_->e2e->observe(e2e);
    metrics_
        ->counter("cartserve:request_success_total", "Finished requests by reason",
                  fmt::format("finished_reason=\"{}\"",
                              reason == FinishReason::kNone ? "none" : finish_reason_name(reason)))
        .inc();
  }
  live.stream->push(std::move(o));
}

void Engine::fail_all(const SchedulerOutput& out, const Status& st) {
  LOG_ERROR("model step failed: {}", st.to_string());
  for (const auto& s : out.scheduled) {
    scheduler_->finish_request(s.request_id, FinishReason::kError, st.message());
    auto it = live_.find(s.request_id);
    if (it != live_.end()) finish_live(*it->second, FinishReason::kError, st);
  }
}

void Engine::step() {
  SchedulerOutput out = scheduler_->schedule();
  for (const auto& rej : out.rejected) {
    auto it = live_.find(rej.request_id);
    if (it != live_.end()) finish_live(*it->second, FinishReason::kError, rej.status);
  }
  for (const auto& id : out.finished_ids) {
    auto it = live_.find(id);
    if (it == live_.end()) continue;
    // Aborted (client gone) or finished by us earlier: publish if not yet done.
    const Request& r = *it->second->req;
    finish_live(*it->second,
                r.finish_reason == FinishReason::kNone ? FinishReason::kAbort : r.finish_reason,
                r.finish_reason == FinishReason::kError
                    ? make_error(ErrorCode::kInternal, "{}", r.finish_message)
                    : Status());
    live_.erase(it);
  }
  for (const auto& s : out.scheduled) {
    auto it = live_.find(s.request_id);
    if (it == live_.end() || it->second->admitted) continue;
    it->second->admitted = true;
    it->second->stream->mark_admitted();
  }
  if (out.scheduled.empty()) {
    // Nothing can run now (e.g. waiting for KV blocks held by nobody running).
    std::unique_lock<std::mutex> lk(inbox_mu_);
    inbox_cv_.wait_for(lk, std::chrono::milliseconds(5));
    return;
  }
  for (const auto& c : out.block_copies)
    backend_->copy_slots(c.src_block, c.dst_block, c.num_slots);

  const BatchPlan plan = build_batch(out, config_.scheduler.block_size, [&](const std::string& id) {
    auto it = live_.find(id);
    return it == live_.end() ? nullptr : it->second->req.get();
  });
  Status st = backend_->forward(plan.batch, logits_);
  if (!st.ok()) {
    fail_all(out, st);
    return;
  }
  const int32_t vocab = model_.config.vocab_size;

  // Prompt logprobs of this chunk.
  for (const auto& pr : plan.prompt_rows) {
    auto it = live_.find(out.scheduled[pr.entry].request_id);
    if (it == live_.end()) continue;
    Live& live = *it->second;
    if (live.prompt_logprobs_sent) continue;
    const Request& r = *live.req;
    for (int32_t i = 0; i < pr.count; ++i) {
      const int32_t pos = pr.first_position + i;
      const int32_t next_token = r.token_at(pos + 1);
      live.prompt_logprobs.push_back(
          prompt_logprob(logits_.data() + static_cast<size_t>(pr.first_logit + i) * vocab, vocab,
                         next_token, r.sampling.prompt_logprobs));
    }
  }

  // Sample.
  std::vector<SamplerRow> rows;
  std::vector<size_t> row_entry;
  std::vector<float> sample_logits;
  for (size_t e = 0; e < out.scheduled.size(); ++e) {
    if (plan.sample_index[e] < 0) continue;
    const Request* r = scheduler_->get_request(out.scheduled[e].request_id).get();
    if (!r) continue;
    rows.push_back(SamplerRow::from_request(*r));
    row_entry.push_back(e);
    const float* src = logits_.data() + static_cast<size_t>(plan.sample_index[e]) * vocab;
    sample_logits.insert(sample_logits.end(), src, src + vocab);
  }
  std::vector<SampleResult> samples;
  st = sampler_.sample(sample_logits, vocab, rows, samples);
  if (!st.ok()) {
    fail_all(out, st);
    return;
  }
  std::vector<int32_t> tokens;
  for (const auto& s : samples)
    tokens.push_back(s.token);
  auto updates = scheduler_->update_from_output(out, tokens);
  if (!updates.ok()) {
    fail_all(out, updates.status());
    return;
  }
  {
    std::lock_guard<std::mutex> lk(stats_mu_);
    ++stats_.num_steps;
  }
  // Map request id -> its sample for logprobs.
  std::unordered_map<std::string, SampleResult> by_id;
  for (size_t i = 0; i < samples.size(); ++i) {
    by_id[out.scheduled[row_entry[i]].request_id] = samples[i];
  }
  if (m_) {
    // Prompt positions computed in this step (prefix-cache hits excluded).
    int64_t prompt_tokens = 0;
    for (const auto& s : out.scheduled) {
      const Request* r = scheduler_->get_request(s.request_id).get();
      if (!r) continue;
      const int32_t end = r->num_virtual_tokens + r->num_prompt_tokens();
      prompt_tokens +=
          std::max(0, std::min(s.start_position + s.num_tokens, end) - s.start_position);
    }
    m_->prompt_tokens->inc(static_cast<double>(prompt_tokens));
  }
  for (const auto& u : *updates) {
    std::vector<SampleResult> these;
    if (auto it = by_id.find(u.request_id); it != by_id.end() && !u.new_token_ids.empty()) {
      these.push_back(it->second);
    }
    publish_tokens(u, these);
  }
}

void Engine::publish_tokens(const RequestUpdate& u, const std::vector<SampleResult>& samples) {
  auto it = live_.find(u.request_id);
  if (it == live_.end()) return;
  Live& live = *it->second;
  if (live.done) return;
  const Request& r = *live.req;
  EngineOutput o;
  o.num_prompt_tokens = r.num_prompt_tokens();
  o.num_cached_tokens = r.num_cached_tokens;
  if (!live.prompt_logprobs_sent && r.sampling.prompt_logprobs >= 0 && !u.new_token_ids.empty()) {
    o.prompt_logprobs = std::move(live.prompt_logprobs);
    live.prompt_logprobs_sent = true;
  }
  const auto now = Clock::now();
  for (int32_t tok : u.new_token_ids) {
    if (m_) {
      m_->generation_tokens->inc();
      if (!live.first_token_seen) {
        m_->ttft->observe(std::chrono::duration<double>(now - live.arrival).count());
      } else {
        m_->itl->observe(std::chrono::duration<double>(now - live.last_token).count());
      }
    }
    live.first_token_seen = true;
    live.last_token = now;
    o.token_ids.push_back(tok);
    auto step = live.stops->push(live.detok->push(tok));
    o.text += step.text;
    if (step.stopped) {
      live.req->stop_reason = step.matched;
      scheduler_->finish_request(r.id, FinishReason::kStop);
      o.finished = true;
      break;
    }
  }
  if (r.sampling.logprobs || r.sampling.top_logprobs > 0) o.logprobs = samples;
  o.num_output_tokens = r.num_output_tokens();
  const bool finished = o.finished || u.finished;
  if (!finished) {
    live.stream->push(std::move(o));
    return;
  }
  // Final output: this step's text first, then the final record with the tail.
  const FinishReason reason = o.finished ? FinishReason::kStop : u.finish_reason;
  o.finished = false;
  if (!o.token_ids.empty() || !o.text.empty() || !o.prompt_logprobs.empty()) {
    live.stream->push(std::move(o));
  }
  finish_live(live, reason, Status());
  live_.erase(it);
}

void Engine::update_gauges() {
  EngineStats s;
  s.num_running = scheduler_->num_running();
  s.num_waiting = scheduler_->num_waiting();
  s.kv_usage = pool_.usage();
  s.prefix_queries = pool_.stats().queries;
  s.prefix_hits = pool_.stats().hits;
  s.num_preemptions = scheduler_->stats().num_preemptions;
  {
    std::lock_guard<std::mutex> lk(stats_mu_);
    s.num_steps = stats_.num_steps;
    stats_ = s;
  }
  if (m_) {
    m_->running->set(s.num_running);
    m_->waiting->set(s.num_waiting);
    m_->kv_usage->set(s.kv_usage);
    m_->prefix_queries->set(static_cast<double>(s.prefix_queries));
    m_->prefix_hits->set(static_cast<double>(s.prefix_hits));
    m_->prefix_hit_rate->set(s.prefix_queries > 0 ? static_cast<double>(s.prefix_hits) /
                                                        static_cast<double>(s.prefix_queries)
                                                  : 0.0);
    m_->preemptions->set(static_cast<double>(s.num_preemptions));
  }
}

}  // namespace cartserve
