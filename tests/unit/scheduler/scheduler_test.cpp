#include "engine/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <numeric>

#include "fake_model.h"

namespace cartserve {
namespace {

using testing::FakeCartridgeConnector;
using testing::FakeModel;
using testing::reference_output;

constexpr int32_t kVocab = 1000;

std::vector<int32_t> prompt(int32_t n, int32_t base = 100) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), base);
  return p;
}

std::shared_ptr<Request> make_req(const std::string& id, std::vector<int32_t> p, int32_t max_tokens,
                                  bool ignore_eos = true) {
  auto r = std::make_shared<Request>();
  r->id = id;
  r->prompt_token_ids = std::move(p);
  r->sampling.max_tokens = max_tokens;
  r->sampling.ignore_eos = ignore_eos;
  r->eos_token_ids = {0};
  return r;
}

struct Harness {
  explicit Harness(SchedulerConfig cfg, int32_t num_blocks, bool caching = true,
                   bool with_connector = false)
      : pool(std::move(BlockPool::create(num_blocks, caching)).value()) {
    if (with_connector) connector = std::make_unique<FakeCartridgeConnector>(pool, cfg.block_size);
    sched = std::move(Scheduler::create(cfg, pool, connector.get())).value();
    model = std::make_unique<FakeModel>(*sched, kVocab);
  }
  // One full step; returns the output it ran.
  SchedulerOutput step() {
    SchedulerOutput out = sched->schedule();
    const auto sampled = model->run(out);
    auto upd = sched->update_from_output(out, sampled);
    EXPECT_TRUE(upd.ok()) << upd.status().to_string();
    EXPECT_TRUE(pool.check_invariants().ok()) << pool.check_invariants().to_string();
    return out;
  }
  void add(const std::shared_ptr<Request>& r) {
    const Status s = sched->add_request(r);
    ASSERT_TRUE(s.ok()) << s.to_string();
  }
  const ScheduledRequest* find(const SchedulerOutput& out, const std::string& id) {
    for (const auto& e : out.scheduled) {
      if (e.request_id == id) return &e;
    }
    return nullptr;
  }

  BlockPool pool;
  std::unique_ptr<FakeCartridgeConnector> connector;
  std::unique_ptr<Scheduler> sched;
  std::unique_ptr<FakeModel> model;
};

SchedulerConfig cfg(int32_t block, int32_t seqs, int32_t budget, int32_t max_len = 1024) {
  SchedulerConfig c;
  c.block_size = block;
  c.max_num_seqs = seqs;
  c.max_num_batched_tokens = budget;
  c.max_model_len = max_len;
  return c;
}

TEST(Scheduler, ConfigValidation) {
  auto pool = std::move(BlockPool::create(8)).value();
  EXPECT_FALSE(Scheduler::create(cfg(0, 1, 1), pool).ok());
  EXPECT_FALSE(Scheduler::create(cfg(4, 0, 1), pool).ok());
  auto bad = Scheduler::create(cfg(4, 1, 0), pool);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("max_num_batched_tokens"), std::string::npos);
  auto starving = Scheduler::create(cfg(4, 16, 8), pool);
  ASSERT_FALSE(starving.ok());
  EXPECT_NE(starving.status().message().find("must be >= max_num_seqs (16)"), std::string::npos);
  EXPECT_TRUE(Scheduler::create(cfg(4, 8, 8), pool).ok());
}

TEST(Scheduler, AdmissionUnderTokenBudgetAndChunking) {
  Harness h(cfg(4, 8, 10), 64);
  h.add(make_req("a", prompt(4), 3));
  h.add(make_req("b", prompt(4, 200), 3));
  h.add(make_req("c", prompt(9, 300), 3));
  auto o1 = h.step();
  // a and b fully, c gets the 2 tokens left in the budget.
  ASSERT_EQ(o1.scheduled.size(), 3u);
  EXPECT_EQ(o1.num_scheduled_tokens, 10);
  EXPECT_EQ(h.find(o1, "a")->num_tokens, 4);
  EXPECT_TRUE(h.find(o1, "a")->needs_logits);
  EXPECT_EQ(h.find(o1, "c")->num_tokens, 2);
  EXPECT_FALSE(h.find(o1, "c")->needs_logits);
  auto o2 = h.step();
  // Decodes first (a, b: 1 each), then c's next chunk of 8.
  ASSERT_EQ(o2.scheduled.size(), 3u);
  EXPECT_EQ(o2.scheduled[0].request_id, "a");
  EXPECT_EQ(o2.scheduled[0].num_tokens, 1);
  EXPECT_EQ(o2.scheduled[0].start_position, 4);
  EXPECT_EQ(o2.scheduled[1].request_id, "b");
  EXPECT_EQ(o2.scheduled[2].request_id, "c");
  EXPECT_EQ(o2.scheduled[2].start_position, 2);
  EXPECT_EQ(o2.scheduled[2].num_tokens, 7);
  EXPECT_TRUE(o2.scheduled[2].needs_logits);
  EXPECT_EQ(o2.num_scheduled_tokens, 9);
  while (h.sched->has_unfinished_requests())
    h.step();
  for (const char* id : {"a", "b", "c"})
    EXPECT_TRUE(h.model->positions_.count(id));
}

TEST(Scheduler, LongPromptChunkedWithDecodeMixedIn) {
  Harness h(cfg(4, 8, 8), 64);
  auto a = make_req("a", prompt(3), 20);
  h.add(a);
  h.step();  // a prefilled, sampled its first token
  auto b = make_req("b", prompt(25, 500), 2);
  h.add(b);
  std::vector<std::pair<int32_t, int32_t>> b_chunks;
  for (int i = 0; i < 4; ++i) {
    auto o = h.step();
    ASSERT_NE(h.find(o, "a"), nullptr);
    EXPECT_EQ(h.find(o, "a")->num_tokens, 1);  // a decodes every step
    const auto* eb = h.find(o, "b");
    ASSERT_NE(eb, nullptr);
    b_chunks.emplace_back(eb->start_position, eb->num_tokens);
    EXPECT_EQ(eb->needs_logits, i == 3);
    EXPECT_LE(o.num_scheduled_tokens, 8);
  }
  EXPECT_EQ(b_chunks, (std::vector<std::pair<int32_t, int32_t>>{{0, 7}, {7, 7}, {14, 7}, {21, 4}}));
  EXPECT_EQ(b->num_output_tokens(), 1);
  while (h.sched->has_unfinished_requests())
    h.step();
  EXPECT_EQ(a->output_token_ids, reference_output(*a, kVocab, 1024));
  EXPECT_EQ(b->output_token_ids, reference_output(*b, kVocab, 1024));
  EXPECT_EQ(a->finish_reason, FinishReason::kLength);
}

TEST(Scheduler, MaxNumSeqs) {
  Harness h(cfg(4, 2, 100), 64);
  for (const char* id : {"a", "b", "c"})
    h.add(make_req(id, prompt(3), 3));
  auto o = h.step();
  EXPECT_EQ(o.scheduled.size(), 2u);
  EXPECT_EQ(h.sched->num_running(), 2);
  EXPECT_EQ(h.sched->num_waiting(), 1);
  h.step();
  o = h.step();  // a and b finish (3 tokens) in this step's update
  EXPECT_EQ(h.find(o, "c"), nullptr);
  o = h.step();
  ASSERT_NE(h.find(o, "c"), nullptr);
  EXPECT_EQ(o.finished_ids, (std::vector<std::string>{"a", "b"}));
}

TEST(Scheduler, AdmissionWaitsWhenBlocksRunOut) {
  // 6 usable blocks of 4; a needs 4 blocks for its prompt, b 3: b waits.
  Harness h(cfg(4, 8, 64), 7);
  auto a = make_req("a", prompt(16), 4);
  auto b = make_req("b", prompt(12, 400), 2);
  h.add(a);
  h.add(b);
  auto o = h.step();
  EXPECT_EQ(o.scheduled.size(), 1u);
  EXPECT_EQ(h.sched->num_waiting(), 1);
  while (a->status != RequestStatus::kFinished) {
    o = h.step();
    EXPECT_EQ(h.find(o, "b"), nullptr);
    EXPECT_TRUE(o.preempted_ids.empty());
  }
  o = h.step();
  ASSERT_NE(h.find(o, "b"), nullptr);
  EXPECT_EQ(h.find(o, "b")->start_position, 0);
  while (h.sched->has_unfinished_requests())
    h.step();
  EXPECT_EQ(b->output_token_ids, reference_output(*b, kVocab, 1024));
}

TEST(Scheduler, PreemptsNewestAndResumesWhereItLeft) {
  // 4 usable blocks of 4. a and b: 4-token prompts, 8 new tokens each: both
  // need a third block at position 8; only one can have it.
  Harness h(cfg(4, 8, 64), 5, /*caching=*/false);
  auto a = make_req("a", prompt(4), 9);
  auto b = make_req("b", prompt(4, 300), 9);
  h.add(a);
  h.add(b);
  std::vector<std::string> preempted;
  int steps = 0;
  while (h.sched->has_unfinished_requests() && steps++ < 100) {
    auto o = h.step();
    preempted.insert(preempted.end(), o.preempted_ids.begin(), o.preempted_ids.end());
    if (!o.preempted_ids.empty()) {
      // The newest (b) goes back to the front of the queue, without blocks.
      EXPECT_EQ(o.preempted_ids[0], "b");
      EXPECT_EQ(h.find(o, "b"), nullptr);
      EXPECT_EQ(b->status, RequestStatus::kPreempted);
      EXPECT_TRUE(b->block_table.empty());
      EXPECT_EQ(b->num_computed_tokens, 0);
      EXPECT_EQ(h.sched->waiting().front()->id, "b");
      EXPECT_GT(b->num_output_tokens(), 0);  // generated tokens kept
    }
  }
  ASSERT_FALSE(preempted.empty());
  EXPECT_EQ(std::count(preempted.begin(), preempted.end(), "a"), 0);
  EXPECT_EQ(b->num_preemptions, static_cast<int32_t>(preempted.size()));
  // b recomputed prompt + kept output from position 0 in one chunk, then went on.
  const auto& chunks = h.model->positions_["b"];
  bool saw_recompute = false;
  for (size_t i = 1; i < chunks.size(); ++i) {
    if (chunks[i].first == 0) {
      saw_recompute = true;
      EXPECT_EQ(chunks[i].first + chunks[i].second, chunks[i - 1].first + chunks[i - 1].second + 1)
          << "resumed at the position it would have computed next";
    }
  }
  EXPECT_TRUE(saw_recompute);
  EXPECT_EQ(a->output_token_ids, reference_output(*a, kVocab, 1024));
  EXPECT_EQ(b->output_token_ids, reference_output(*b, kVocab, 1024));
  EXPECT_EQ(a->num_output_tokens(), 9);
  EXPECT_EQ(b->num_output_tokens(), 9);
  EXPECT_EQ(h.pool.num_free_blocks(), 4);
}

TEST(Scheduler, PreemptedRequestRecoversThroughPrefixCache) {
  Harness h(cfg(4, 8, 64), 5, /*caching=*/true);
  auto a = make_req("a", prompt(4), 9);
  auto b = make_req("b", prompt(4, 300), 9);
  h.add(a);
  h.add(b);
  int steps = 0;
  while (h.sched->has_unfinished_requests() && steps++ < 100)
    h.step();
  ASSERT_GT(b->num_preemptions, 0);
  EXPECT_EQ(b->output_token_ids, reference_output(*b, kVocab, 1024));
  EXPECT_EQ(a->output_token_ids, reference_output(*a, kVocab, 1024));
}

TEST(Scheduler, RejectsRequestsThatCanNeverFit) {
  Harness h(cfg(4, 8, 64, /*max_len=*/32), 5);  // 4 usable blocks = 16 positions
  auto too_long = make_req("long", prompt(20), 13);
  Status s = h.sched->add_request(too_long);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.message().find("maximum context length is 32"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("long"), std::string::npos);
  auto too_big = make_req("big", prompt(10), 10);  // 20 positions: 5 blocks > 4
  s = h.sched->add_request(too_big);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kResourceExhausted);
  EXPECT_NE(s.message().find("KV cache has only 4"), std::string::npos) << s.message();
  EXPECT_FALSE(h.sched->add_request(make_req("empty", {}, 4)).ok());
  auto bad = make_req("bad", prompt(3), 4);
  bad->sampling.top_p = 0.0f;
  s = h.sched->add_request(bad);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("top_p"), std::string::npos);
  h.add(make_req("ok", prompt(8), 8));
  EXPECT_EQ(h.sched->add_request(make_req("ok", prompt(3), 3)).code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(h.sched->num_waiting(), 1);
}

TEST(Scheduler, AbortFreesBlocksAtNextStep) {
  Harness h(cfg(4, 8, 64), 16);
  auto a = make_req("a", prompt(10), 50);
  auto b = make_req("b", prompt(6, 300), 50);
  auto c = make_req("c", prompt(6, 500), 50);
  b->cancelled = std::make_shared<std::atomic<bool>>(false);
  h.add(a);
  h.add(b);
  h.step();
  h.step();
  const int32_t free_before = h.pool.num_free_blocks();
  h.sched->abort_request("a");
  b->cancelled->store(true);                         // client went away
  EXPECT_EQ(h.pool.num_free_blocks(), free_before);  // nothing happens until the next step
  h.add(c);
  h.sched->abort_request("c");  // waiting: dropped too
  auto o = h.step();
  EXPECT_EQ(o.finished_ids, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(o.scheduled.empty());
  EXPECT_EQ(a->finish_reason, FinishReason::kAbort);
  EXPECT_EQ(b->finish_reason, FinishReason::kAbort);
  EXPECT_EQ(c->status, RequestStatus::kFinished);
  EXPECT_FALSE(h.sched->has_unfinished_requests());
  EXPECT_EQ(h.pool.num_free_blocks(), 15);
  EXPECT_DOUBLE_EQ(h.pool.usage(), 0.0);
  h.sched->abort_request("nobody");  // ignored
  EXPECT_TRUE(h.sched->schedule().finished_ids.empty());
}

TEST(Scheduler, FinishRequestFromEngineFreesBlocksAndSkipsItsSample) {
  Harness h(cfg(4, 8, 64), 16);
  auto a = make_req("a", prompt(5), 50);
  h.add(a);
  h.step();
  auto o = h.sched->schedule();
  const auto sampled = h.model->run(o);
  h.sched->finish_request("a", FinishReason::kStop);  // e.g. a stop string matched
  auto upd = h.sched->update_from_output(o, sampled);
  ASSERT_TRUE(upd.ok());
  EXPECT_TRUE(upd->empty());
  EXPECT_EQ(a->num_output_tokens(), 1);
  EXPECT_EQ(h.pool.num_free_blocks(), 15);
  EXPECT_EQ(h.sched->schedule().finished_ids, std::vector<std::string>{"a"});
}

TEST(Scheduler, PrefixCacheHitSkipsComputationButComputesLastToken) {
  Harness h(cfg(4, 8, 64), 32);
  auto a = make_req("a", prompt(10), 2);
  h.add(a);
  h.step();
  const std::vector<int32_t> a_blocks = a->block_table;
  while (h.sched->has_unfinished_requests())
    h.step();
  // Same 10-token prompt: blocks [0,4) and [4,8) are cached; 8..9 computed.
  auto b = make_req("b", prompt(10), 2);
  h.add(b);
  auto o = h.step();
  ASSERT_NE(h.find(o, "b"), nullptr);
  EXPECT_EQ(h.find(o, "b")->start_position, 8);
  EXPECT_EQ(h.find(o, "b")->shared_blocks, 2);  // + the cached block
  EXPECT_EQ(h.find(o, "b")->num_tokens, 2);
  EXPECT_EQ(b->num_cached_tokens, 8);
  EXPECT_EQ(b->block_table[0], a_blocks[0]);
  EXPECT_EQ(b->block_table[1], a_blocks[1]);
  EXPECT_NE(b->block_table[2], a_blocks[2]);
  // A prompt of exactly 8 tokens: the second block is cached but position 7
  // must be computed for its logits, so only the first block is reused.
  auto c = make_req("c", prompt(8), 1);
  h.add(c);
  o = h.step();
  ASSERT_NE(h.find(o, "c"), nullptr);
  EXPECT_EQ(h.find(o, "c")->start_position, 4);
  EXPECT_EQ(h.find(o, "c")->num_tokens, 4);
  while (h.sched->has_unfinished_requests())
    h.step();
  EXPECT_EQ(b->output_token_ids, reference_output(*b, kVocab, 1024));
  EXPECT_EQ(c->output_token_ids, reference_output(*c, kVocab, 1024));
  EXPECT_EQ(h.pool.stats().queries, 10 + 10 + 8);
  EXPECT_EQ(h.pool.stats().hits, 8 + 4);
}

TEST(Scheduler, RunningRequestsShareCachedBlocks) {
  Harness h(cfg(4, 8, 64), 32);
  auto a = make_req("a", prompt(9), 10);
  h.add(a);
  h.step();
  auto b = make_req("b", prompt(9), 10);  // same prompt while a runs
  h.add(b);
  h.step();
  EXPECT_EQ(b->block_table[0], a->block_table[0]);
  EXPECT_EQ(b->block_table[1], a->block_table[1]);
  EXPECT_NE(b->block_table[2], a->block_table[2]);
  EXPECT_EQ(h.pool.ref_count(a->block_table[0]), 2);
  // A different salt (another cartridge, or none) never shares.
  auto c = make_req("c", prompt(9), 10);
  c->prefix_salt = "cartridge-X";
  h.add(c);
  h.step();
  EXPECT_NE(c->block_table[0], a->block_table[0]);
  EXPECT_EQ(c->num_cached_tokens, 0);
  while (h.sched->has_unfinished_requests())
    h.step();
  EXPECT_EQ(b->output_token_ids, a->output_token_ids);
  EXPECT_EQ(c->output_token_ids, reference_output(*c, kVocab, 1024));
}

TEST(Scheduler, StopTokens) {
  Harness h(cfg(4, 8, 64), 64);
  auto a = make_req("a", prompt(5), 40, /*ignore_eos=*/false);
  const auto ref = reference_output(*a, kVocab, 1024);
  ASSERT_GE(ref.size(), 3u);
  // Make the third generated token an EOS of this request.
  a->eos_token_ids = {ref[2]};
  auto b = make_req("b", prompt(5), 40, /*ignore_eos=*/true);
  b->eos_token_ids = {ref[2]};
  auto c = make_req("c", prompt(5), 40, true);
  c->sampling.stop_token_ids = {ref[1]};
  auto d = make_req("d", prompt(5), 40, false);
  d->eos_token_ids = {ref[0]};
  d->sampling.min_tokens = 2;  // no stop before 2 tokens
  for (auto& r : {a, b, c, d})
    h.add(r);
  while (h.sched->has_unfinished_requests())
    h.step();
  EXPECT_EQ(a->num_output_tokens(), 3);
  EXPECT_EQ(a->finish_reason, FinishReason::kStop);
  EXPECT_TRUE(std::holds_alternative<std::monostate>(a->stop_reason));
  EXPECT_EQ(b->num_output_tokens(), 40);
  EXPECT_EQ(b->finish_reason, FinishReason::kLength);
  EXPECT_EQ(c->num_output_tokens(), 2);
  EXPECT_EQ(std::get<int32_t>(c->stop_reason), ref[1]);
  EXPECT_GE(d->num_output_tokens(), 2);
}

TEST(Scheduler, UpdateValidatesSampledCountAndStaleOutputIsRecomputed) {
  Harness h(cfg(4, 8, 64), 16);
  auto a = make_req("a", prompt(5), 3);
  h.add(a);
  auto o = h.sched->schedule();
  EXPECT_FALSE(h.sched->update_from_output(o, {}).ok());
  // A failed model step: no update; the same positions are scheduled again.
  auto o2 = h.sched->schedule();
  ASSERT_EQ(o2.scheduled.size(), 1u);
  EXPECT_EQ(o2.scheduled[0].start_position, 0);
  EXPECT_EQ(o2.scheduled[0].num_tokens, 5);
  // Its blocks were reported already (the runner applied the deltas).
  EXPECT_TRUE(o.scheduled[0].new_row);
  EXPECT_FALSE(o2.scheduled[0].new_row);
  EXPECT_TRUE(o2.scheduled[0].new_block_ids.empty());
  EXPECT_EQ(o.scheduled[0].new_block_ids, a->block_table);
}

TEST(Scheduler, ConnectorVirtualPrefixSharedBlocksAndPartialCopy) {
  // Block size 4; cartridge of 6 virtual positions: block 0 full (shared),
  // block 1 holds 2 valid slots (copied into the request's own block).
  Harness h(cfg(4, 8, 64), 32, true, /*with_connector=*/true);
  h.connector->add("cart", 6, *h.model);
  const int32_t shared = h.connector->carts_["cart"].blocks[0];
  const int32_t partial = h.connector->carts_["cart"].blocks[1];
  auto mk = [&](const std::string& id) {
    auto r = make_req(id, prompt(5, 700), 4);
    r->cartridge_ids = {"cart"};
    r->num_virtual_tokens = 6;
    r->prefix_salt = "cart";
    return r;
  };
  auto a = mk("a");
  h.add(a);
  auto o = h.step();
  ASSERT_EQ(o.block_copies.size(), 1u);
  EXPECT_EQ(o.block_copies[0].src_block, partial);
  EXPECT_EQ(o.block_copies[0].dst_block, a->block_table[1]);
  EXPECT_EQ(o.block_copies[0].num_slots, 2);
  EXPECT_EQ(a->block_table[0], shared);
  EXPECT_EQ(h.pool.ref_count(shared), 2);  // connector + a
  ASSERT_NE(h.find(o, "a"), nullptr);
  EXPECT_EQ(h.find(o, "a")->start_position, 6);  // prompt starts after the cartridge
  EXPECT_EQ(h.find(o, "a")->num_tokens, 5);
  EXPECT_EQ(h.find(o, "a")->shared_blocks, 1);  // the cartridge's full block
  EXPECT_EQ(h.connector->allocated["a"], 1);
  // A second request with the same cartridge and prompt: shares block 0 from
  // the connector and block 1 (cartridge tail + 2 tokens) from the prefix cache.
  auto b = mk("b");
  h.add(b);
  o = h.step();
  EXPECT_TRUE(o.block_copies.empty());
  EXPECT_EQ(b->block_table[0], shared);
  EXPECT_EQ(b->block_table[1], a->block_table[1]);
  EXPECT_EQ(h.find(o, "b")->start_position, 8);
  EXPECT_EQ(h.find(o, "b")->shared_blocks, 2);  // + the cached block
  EXPECT_EQ(h.pool.ref_count(shared), 3);
  while (h.sched->has_unfinished_requests())
    h.step();
  EXPECT_EQ(a->output_token_ids, reference_output(*a, kVocab, 1024));
  EXPECT_EQ(b->output_token_ids, a->output_token_ids);
  EXPECT_EQ(h.pool.ref_count(shared), 1);  // only the connector's
  EXPECT_EQ(h.connector->finished["a"], 1);
  // The same prompt without the cartridge computes everything.
  auto c = make_req("c", prompt(5, 700), 4);
  h.add(c);
  o = h.step();
  EXPECT_EQ(h.find(o, "c")->start_position, 0);
  EXPECT_NE(c->block_table[0], shared);
}

TEST(Scheduler, ConnectorNotReadyWaitsAndErrorsReject) {
  Harness h(cfg(4, 8, 64), 32, true, true);
  h.connector->add("cart", 8, *h.model);
  auto a = make_req("a", prompt(3), 2);
  a->cartridge_ids = {"cart"};
  a->num_virtual_tokens = 8;
  a->prefix_salt = "cart";
  auto x = make_req("x", prompt(3), 2);
  x->cartridge_ids = {"missing"};
  h.connector->ready = false;
  h.add(a);
  auto o = h.step();
  EXPECT_TRUE(o.scheduled.empty());
  EXPECT_EQ(h.sched->num_waiting(), 1);
  h.connector->ready = true;
  o = h.step();
  ASSERT_NE(h.find(o, "a"), nullptr);
  EXPECT_EQ(h.find(o, "a")->start_position, 8);
  EXPECT_TRUE(o.block_copies.empty());  // 8 % 4 == 0: nothing to copy
  h.add(x);
  o = h.step();
  ASSERT_EQ(o.rejected.size(), 1u);
  EXPECT_EQ(o.rejected[0].request_id, "x");
  EXPECT_NE(o.rejected[0].status.message().find("unknown cartridge 'missing'"), std::string::npos);
  EXPECT_EQ(x->finish_reason, FinishReason::kError);
  EXPECT_EQ(h.sched->stats().num_rejected, 1);
  // A request that needs virtual positions nobody provides is rejected too.
  auto y = make_req("y", prompt(3), 2);
  y->num_virtual_tokens = 4;
  h.add(y);
  o = h.step();
  ASSERT_EQ(o.rejected.size(), 1u);
  EXPECT_NE(o.rejected[0].status.message().find("virtual positions"), std::string::npos);
  while (h.sched->has_unfinished_requests())
    h.step();
  EXPECT_EQ(a->output_token_ids, reference_output(*a, kVocab, 1024));
}

TEST(Scheduler, LoadingKvStepsAsideAndDoesNotHoldTheQueue) {
  Harness h(cfg(4, 8, 64), 32, true, true);
  h.connector->add("cart", 8, *h.model);
  auto a = make_req("a", prompt(3), 2);
  a->cartridge_ids = {"cart"};
  a->num_virtual_tokens = 8;
  a->prefix_salt = "cart";
  auto b = make_req("b", prompt(4, 300), 2);  // no cartridge, queued behind a
  h.connector->loading = true;
  h.add(a);
  h.add(b);
  auto o = h.step();
  // a waits for its KV aside; b runs meanwhile.
  EXPECT_EQ(h.find(o, "a"), nullptr);
  ASSERT_NE(h.find(o, "b"), nullptr);
  EXPECT_EQ(a->status, RequestStatus::kWaitingForKv);
  EXPECT_EQ(h.sched->num_waiting_for_kv(), 1);
  EXPECT_EQ(h.sched->num_waiting(), 1);
  o = h.step();
  EXPECT_EQ(h.find(o, "a"), nullptr);
  h.connector->loading = false;  // the load finished
  o = h.step();
  ASSERT_NE(h.find(o, "a"), nullptr);
  EXPECT_EQ(h.find(o, "a")->start_position, 8);
  EXPECT_EQ(h.sched->num_waiting_for_kv(), 0);
  while (h.sched->has_unfinished_requests())
    h.step();
  EXPECT_EQ(a->output_token_ids, reference_output(*a, kVocab, 1024));
  EXPECT_EQ(b->output_token_ids, reference_output(*b, kVocab, 1024));
  // Aborting a request that waits for its KV releases it.
  auto c = make_req("c", prompt(3, 900), 2);
  c->cartridge_ids = {"cart"};
  c->num_virtual_tokens = 8;
  c->prefix_salt = "cart";
  h.connector->loading = true;
  h.add(c);
  h.step();
  EXPECT_EQ(c->status, RequestStatus::kWaitingForKv);
  h.sched->abort_request("c");
  o = h.step();
  EXPECT_EQ(h.sched->num_waiting_for_kv(), 0);
  EXPECT_EQ(h.connector->finished["c"], 1);
  EXPECT_FALSE(h.sched->has_unfinished_requests());
}

TEST(Scheduler, PreemptedConnectorRequestIsReinjected) {
  // 6 usable blocks; the cartridge holds 2 (6 positions); a and b each need up
  // to 3 own blocks (positions 6..13): they cannot both finish without preemption.
  Harness h(cfg(4, 8, 64), 7, true, true);
  h.connector->add("cart", 6, *h.model);
  auto mk = [&](const std::string& id, int32_t base) {
    auto r = make_req(id, prompt(2, base), 6);
    r->cartridge_ids = {"cart"};
    r->num_virtual_tokens = 6;
    r->prefix_salt = "cart";
    return r;
  };
  auto a = mk("a", 10), b = mk("b", 50);
  h.add(a);
  h.add(b);
  int steps = 0;
  while (h.sched->has_unfinished_requests() && steps++ < 100)
    h.step();
  EXPECT_GT(a->num_preemptions + b->num_preemptions, 0);
  EXPECT_GT(h.connector->preempted["b"], 0);
  EXPECT_EQ(h.connector->allocated["b"], h.connector->preempted["b"] + 1);
  EXPECT_EQ(a->output_token_ids, reference_output(*a, kVocab, 1024));
  EXPECT_EQ(b->output_token_ids, reference_output(*b, kVocab, 1024));
  EXPECT_EQ(h.pool.ref_count(h.connector->carts_["cart"].blocks[0]), 1);
}

}  // namespace
}  // namespace cartserve
