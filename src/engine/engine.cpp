#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <future>
#include <random>

#include "core/logging.h"

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
  bool export_kv = false;
  bool done = false;
};

struct Engine::PendingExport {
  std::shared_ptr<RequestStream> stream;
  std::vector<int32_t> blocks;  // held (one reference each) until the copy is done
  std::shared_ptr<ExportedKv> kv;
  std::optional<TransferId> transfer;
  Clock::time_point arrival;
};

Result<std::unique_ptr<Engine>> Engine::create(const Model& model, Backend& backend,
                                               BlockPool& pool, const EngineConfig& config,
                                               MetricsRegistry* metrics, KvConnector* connector) {
  const KvSpec& kv = backend.kv_spec();
  if (kv.num_blocks != pool.num_blocks() || kv.block_size != config.scheduler.block_size) {
    return make_error(ErrorCode::kInvalidArgument,
                      "engine: the backend has {} KV blocks of {} but the pool has {} and the "
                      "scheduler uses blocks of {}",
                      kv.num_blocks, kv.block_size, pool.num_blocks(), config.scheduler.block_size);
  }
  std::unique_ptr<Engine> e(new Engine(model, backend, pool, config, metrics, connector));
  CS_ASSIGN_OR_RETURN(e->scheduler_, Scheduler::create(config.scheduler, pool, connector));
  // News from the connector's loader (host data read) or the backend's copy
  // thread (a KV transfer done) ends the engine's short wait at once. Both
  // call it under their own locks; the engine never holds inbox_mu_ while
  // calling out, so taking it here cannot deadlock.
  auto wake = [raw = e.get()] {
    {
      std::lock_guard<std::mutex> lk(raw->inbox_mu_);
      raw->woken_ = true;
    }
    raw->inbox_cv_.notify_all();
  };
  backend.set_transfer_wakeup(wake);
  if (connector) connector->set_wakeup(wake);
  e->thread_ = std::thread([raw = e.get()] { raw->loop(); });
  return e;
}

Engine::Engine(const Model& model, Backend& backend, BlockPool& pool, const EngineConfig& config,
               MetricsRegistry* metrics, KvConnector* connector)
    : model_(model),
      backend_(backend),
      pool_(pool),
      config_(config),
      input_batch_(config.scheduler.block_size),
      connector_(connector),
      stop_ids_(model.tokenizer.stop_ids()),
      seed_counter_(std::random_device{}()) {
  if (metrics) metrics_ = std::make_unique<EngineMetrics>(*metrics);
  for (int32_t id : model.config.eos_token_ids) {
    if (std::find(stop_ids_.begin(), stop_ids_.end(), id) == stop_ids_.end()) {
      stop_ids_.push_back(id);
    }
  }
}

Engine::~Engine() {
  stop();
  if (connector_) connector_->set_wakeup(nullptr);
  backend_.set_transfer_wakeup(nullptr);
}

void Engine::stop() {
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    stopping_ = true;
  }
  inbox_cv_.notify_all();
  // One joiner at a time, never under inbox_mu_ (the engine thread's last
  // steps and the wake-up take it).
  std::lock_guard<std::mutex> lk(join_mu_);
  if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) thread_.join();
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

Status Engine::run_on_engine_thread(const std::function<Status()>& fn) {
  auto done = std::make_shared<std::promise<Status>>();
  auto fut = done->get_future();
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    if (stopping_) return make_error(ErrorCode::kUnavailable, "the engine is shutting down");
    tasks_.emplace_back([fn, done] { done->set_value(fn()); });
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
               scheduler_->has_unfinished_requests() || worker_busy_ || !exports_.empty();
      });
      if (stopping_) break;
      incoming.swap(inbox_);
      tasks.swap(tasks_);
    }
    for (auto& t : tasks)
      t();
    for (auto& [g, s] : incoming)
      admit(std::move(g), std::move(s));
    if (connector_) worker_busy_ = connector_->run_worker(backend_);
    poll_exports();
    const bool worked = scheduler_->has_unfinished_requests() && step();
    update_gauges();
    // KV loads the step asked for (a cartridge promotion) reach the worker
    // now, not after the idle wait below (a promotion's extra time to first
    // token on the CPU: 5.84 ms with that wait, 0.62 without).
    if (!worked && connector_) worker_busy_ = connector_->run_worker(backend_);
    if (!worked) {
      // Nothing could run (KV loading, blocks held by nobody running, copies
      // in flight): wait a little for news instead of spinning.
      const bool busy = worker_busy_ || !exports_.empty();
      std::unique_lock<std::mutex> lk(inbox_mu_);
      inbox_cv_.wait_for(lk, busy ? std::chrono::microseconds(200) : std::chrono::milliseconds(5),
                         [&] { return stopping_ || woken_ || !inbox_.empty() || !tasks_.empty(); });
      woken_ = false;
    }
  }
  // Shutdown: exports finish their copies (their blocks are ours); everything
  // still live ends with an error.
  for (auto& e : exports_) {
    if (e->transfer) (void)backend_.wait_transfer(*e->transfer);
    for (int32_t b : e->blocks)
      pool_.release(b);
    EngineOutput o;
    o.finished = true;
    o.finish_reason = FinishReason::kAbort;
    o.error = make_error(ErrorCode::kUnavailable, "the engine is shutting down");
    e->stream->push(std::move(o));
  }
  exports_.clear();
  for (auto& [id, live] : live_) {
    if (!live->done) {
      finish_live(*live, FinishReason::kAbort,
                  make_error(ErrorCode::kUnavailable, "the engine is shutting down"));
    }
  }
  // stopping_ is set: nothing joins the inbox or the tasks any more. They run
  // outside inbox_mu_, which is never held while calling out (the wake-up
  // below takes it from under the connector's and the copy thread's locks).
  std::deque<std::function<void()>> tasks;
  std::deque<std::pair<GenerateRequest, std::shared_ptr<RequestStream>>> inbox;
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    tasks.swap(tasks_);
    inbox.swap(inbox_);
  }
  for (auto& t : tasks)
    t();
  for (auto& [g, s] : inbox) {
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
  if (g.export_kv) {
    // Prefill only: one greedy token ends it, and its KV is copied out.
    req->sampling.max_tokens = 1;
    req->sampling.temperature = 0.f;
    req->sampling.ignore_eos = true;
    req->sampling.stop.clear();
  }

  auto live = std::make_unique<Live>();
  live->req = req;
  live->stream = stream;
  live->detok =
      std::make_unique<StreamingDetokenizer>(model_.tokenizer, req->sampling.skip_special_tokens);
  live->stops = std::make_unique<StopStringMatcher>(req->sampling.stop,
                                                    req->sampling.include_stop_str_in_output);
  live->arrival = req->arrival_time;
  live->export_kv = g.export_kv;
  Status st = req->sampling.validate(model_.config.vocab_size);
  if (st.ok() && g.export_kv && (req->num_virtual_tokens != 0 || !req->cartridge_ids.empty())) {
    st = make_error(ErrorCode::kInvalidArgument,
                    "a KV export covers the prompt alone: no cartridge in front of it");
  }
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
    metrics_->finished(reason, std::chrono::duration<double>(Clock::now() - live.arrival).count());
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

bool Engine::step() {
  const SchedulerOutput out = scheduler_->schedule();
  publish_schedule(out);
  if (out.scheduled.empty()) return false;
  if (Status st = run(out); !st.ok()) {
    fail_all(out, st);
    return true;
  }
  process_outputs(out);
  return true;
}

void Engine::publish_schedule(const SchedulerOutput& out) {
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
}

Status Engine::run(const SchedulerOutput& out) {
  CS_RETURN_IF_ERROR(input_batch_.build(
      out, [&](const std::string& id) { return scheduler_->get_request(id).get(); }, step_in_,
      plan_));
  return backend_.execute(step_in_, step_out_);
}

void Engine::process_outputs(const SchedulerOutput& out) {
  collect_prompt_logprobs(out);
  hold_exports(out);  // before the scheduler frees a finished export's blocks
  std::vector<int32_t> tokens;
  tokens.reserve(step_out_.samples.size());
  for (const auto& s : step_out_.samples)
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
  count_prompt_tokens(out);
  // Each request's sample, for its logprobs.
  std::unordered_map<std::string, const SampleResult*> by_id;
  for (size_t i = 0; i < plan_.sample_entry.size(); ++i)
    by_id[out.scheduled[plan_.sample_entry[i]].request_id] = &step_out_.samples[i];
  for (const auto& u : *updates) {
    const auto it = by_id.find(u.request_id);
    publish_tokens(u, it != by_id.end() && !u.new_token_ids.empty() ? it->second : nullptr);
  }
  for (auto& e : exports_) {
    if (!e->transfer) start_export(*e);
  }
}

void Engine::collect_prompt_logprobs(const SchedulerOutput& out) {
  for (size_t k = 0; k < plan_.prompt_rows.size(); ++k) {
    auto it = live_.find(out.scheduled[plan_.prompt_rows[k].entry].request_id);
    if (it == live_.end() || it->second->prompt_logprobs_sent) continue;
    auto& got = step_out_.prompt_logprobs[k];
    auto& dst = it->second->prompt_logprobs;
    dst.insert(dst.end(), std::make_move_iterator(got.begin()), std::make_move_iterator(got.end()));
  }
}

void Engine::count_prompt_tokens(const SchedulerOutput& out) {
  if (!metrics_) return;
  // Prompt positions computed in this step (prefix-cache hits excluded).
  int64_t n = 0;
  for (const auto& s : out.scheduled) {
    auto it = live_.find(s.request_id);
    if (it == live_.end()) continue;
    const Request& r = *it->second->req;
    const int32_t end = r.num_virtual_tokens + r.num_prompt_tokens();
    n += std::max(0, std::min(s.start_position + s.num_tokens, end) - s.start_position);
  }
  metrics_->prompt_tokens(n);
}

// ---------------------------------------------------------------- KV export

void Engine::hold_exports(const SchedulerOutput& out) {
  for (size_t i = 0; i < plan_.sample_entry.size(); ++i) {
    const std::string& id = out.scheduled[plan_.sample_entry[i]].request_id;
    auto it = live_.find(id);
    if (it == live_.end() || !it->second->export_kv || it->second->done) continue;
    Live& live = *it->second;
    const Request& r = *live.req;
    const int32_t B = config_.scheduler.block_size;
    const int32_t n = r.num_prompt_tokens();
    auto e = std::make_unique<PendingExport>();
    e->stream = live.stream;
    e->arrival = live.arrival;
    e->blocks.assign(r.block_table.begin(), r.block_table.begin() + (n + B - 1) / B);
    for (int32_t b : e->blocks)
      pool_.ref(b);
    const KvSpec& spec = backend_.kv_spec();
    e->kv = std::make_shared<ExportedKv>();
    e->kv->dtype = spec.dtype;
    e->kv->num_tokens = n;
    e->kv->token_ids = r.prompt_token_ids;
    // The request ends here: its answer is the KV, not the sampled token.
    live.done = true;
    scheduler_->finish_request(id, FinishReason::kLength);
    exports_.push_back(std::move(e));
  }
}

void Engine::start_export(PendingExport& e) {
  const KvSpec& spec = backend_.kv_spec();
  ExportedKv& kv = *e.kv;
  HostKv dst;
  dst.dtype = kv.dtype;
  dst.num_tokens = kv.num_tokens;
  for (int32_t l = 0; l < spec.num_layers; ++l) {
    kv.keys.emplace_back(kv.dtype, Shape{spec.num_kv_heads, kv.num_tokens, spec.head_dim});
    kv.values.emplace_back(kv.dtype, Shape{spec.num_kv_heads, kv.num_tokens, spec.head_dim});
    dst.keys.push_back(kv.keys.back().raw());
    dst.values.push_back(kv.values.back().raw());
  }
  auto id = backend_.start_kv_save(KvBlockList::whole(e.blocks), dst);
  if (id.ok()) {
    e.transfer = *id;
    return;
  }
  // Could not start: the request fails now; poll_exports drops it.
  e.transfer = 0;
  e.kv.reset();
  EngineOutput o;
  o.finished = true;
  o.finish_reason = FinishReason::kError;
  o.error = id.status();
  e.stream->push(std::move(o));
}

void Engine::poll_exports() {
  for (auto it = exports_.begin(); it != exports_.end();) {
    PendingExport& e = **it;
    std::optional<Status> done;
    if (!e.kv) {
      done = Status();  // failed to start; already answered
    } else if (e.transfer) {
      done = backend_.poll_transfer(*e.transfer);
    }
    if (!done) {
      ++it;
      continue;
    }
    for (int32_t b : e.blocks)
      pool_.release(b);
    if (e.kv) {
      EngineOutput o;
      o.finished = true;
      o.num_prompt_tokens = e.kv->num_tokens;
      if (done->ok()) {
        o.finish_reason = FinishReason::kLength;
        o.kv = std::move(e.kv);
      } else {
        o.finish_reason = FinishReason::kError;
        o.error = *done;
      }
      if (metrics_) {
        metrics_->finished(o.finish_reason,
                           std::chrono::duration<double>(Clock::now() - e.arrival).count());
      }
      e.stream->push(std::move(o));
    }
    it = exports_.erase(it);
  }
}

// ---------------------------------------------------------------- outputs

void Engine::publish_tokens(const RequestUpdate& u, const SampleResult* sample) {
  auto it = live_.find(u.request_id);
  if (it == live_.end()) return;
  Live& live = *it->second;
  if (live.done) {
    if (live.export_kv) live_.erase(it);  // answered by its export
    return;
  }
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
    if (metrics_) {
      const auto since = live.first_token_seen ? live.last_token : live.arrival;
      metrics_->output_token(!live.first_token_seen,
                             std::chrono::duration<double>(now - since).count());
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
  if (sample && (r.sampling.logprobs || r.sampling.top_logprobs > 0)) o.logprobs = {*sample};
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
  s.num_waiting_for_kv = scheduler_->num_waiting_for_kv();
  s.kv_usage = pool_.usage();
  s.kv_free_blocks = pool_.num_free_blocks();
  s.prefix_queries = pool_.stats().queries;
  s.prefix_hits = pool_.stats().hits;
  s.num_preemptions = scheduler_->stats().num_preemptions;
  {
    std::lock_guard<std::mutex> lk(stats_mu_);
    s.num_steps = stats_.num_steps;
    stats_ = s;
  }
  if (metrics_) metrics_->gauges(s);
}

}  // namespace cartserve
