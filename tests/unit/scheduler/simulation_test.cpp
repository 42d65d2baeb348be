// Many random requests through the scheduler and the fake model for hundreds
// of steps, checking the invariants after every step and every request's
// output against its unbatched reference at the end.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <set>

#include "engine/scheduler.h"
#include "fake_model.h"

namespace cartserve {
namespace {

using testing::FakeCartridgeConnector;
using testing::FakeModel;
using testing::reference_output;

constexpr int32_t kVocab = 60;  // EOS (0) comes up now and then

struct SimResult {
  int64_t preemptions = 0;
  int64_t prefix_hits = 0;
  int steps = 0;
  int checked = 0;
};

void check_step_invariants(const Scheduler& s, const SchedulerOutput& out,
                           const FakeCartridgeConnector& conn, BlockPool& pool) {
  const SchedulerConfig& c = s.config();
  ASSERT_LE(out.num_scheduled_tokens, c.max_num_batched_tokens);
  int32_t sum = 0;
  std::set<std::string> ids;
  for (const auto& e : out.scheduled) {
    sum += e.num_tokens;
    ASSERT_GT(e.num_tokens, 0);
    ASSERT_TRUE(ids.insert(e.request_id).second) << "scheduled twice: " << e.request_id;
  }
  ASSERT_EQ(sum, out.num_scheduled_tokens);
  ASSERT_LE(static_cast<int32_t>(out.scheduled.size()), c.max_num_seqs);
  ASSERT_LE(s.num_running(), c.max_num_seqs);

  const Status inv = pool.check_invariants();
  ASSERT_TRUE(inv.ok()) << inv.to_string();
  // Every reference is accounted for: running block tables + the connector's.
  std::map<int32_t, int> refs = conn.held();
  std::map<int32_t, int> holders;
  for (const auto& r : s.running()) {
    ASSERT_EQ(r->status, RequestStatus::kRunning);
    std::set<int32_t> own;
    for (int32_t b : r->block_table) {
      ASSERT_NE(b, BlockPool::kNullBlock);
      ASSERT_TRUE(own.insert(b).second) << r->id << " holds block " << b << " twice";
      ++refs[b];
      ++holders[b];
    }
    ASSERT_GE(static_cast<int64_t>(r->block_table.size()) * c.block_size, r->num_computed_tokens);
  }
  for (const auto& r : s.waiting()) {
    ASSERT_TRUE(r->block_table.empty()) << r->id;
    ASSERT_EQ(r->num_computed_tokens, 0);
  }
  const auto held = conn.held();
  for (int32_t b = 1; b < pool.num_blocks(); ++b) {
    const int want = refs.count(b) ? refs[b] : 0;
    ASSERT_EQ(pool.ref_count(b), want) << "block " << b;
    // Shared by several requests only through the prefix cache or a connector.
    if (holders.count(b) && holders[b] > 1) {
      ASSERT_TRUE(pool.hash_of(b).has_value() || held.count(b)) << "block " << b;
    }
  }
}

SimResult simulate(uint32_t seed, bool caching) {
  SimResult res;
  std::mt19937 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  SchedulerConfig c;
  c.block_size = 4;
  c.max_num_seqs = 6;
  c.max_num_batched_tokens = 24;
  c.max_model_len = 96;
  auto pool = std::move(BlockPool::create(48, caching)).value();
  FakeCartridgeConnector conn(pool, c.block_size);
  auto sched = std::move(Scheduler::create(c, pool, &conn)).value();
  FakeModel model(*sched, kVocab);
  conn.add("cart-5", 5, model);
  conn.add("cart-8", 8, model);

  std::vector<std::vector<int32_t>> families(3);
  for (auto& f : families) {
    for (int i = 0; i < 40; ++i)
      f.push_back(uni(1, kVocab - 1));
  }
  const int kRequests = 90;
  std::vector<std::shared_ptr<Request>> reqs;
  std::set<std::string> interrupted;  // aborted or finished by the "engine"
  int added = 0;
  for (int step = 0; step < 4000; ++step) {
    while (added < kRequests && uni(0, 9) < 4) {
      auto r = std::make_shared<Request>();
      r->id = fmt::format("r{}", added++);
      const auto& f = families[static_cast<size_t>(uni(0, 2))];
      r->prompt_token_ids.assign(f.begin(), f.begin() + uni(0, 30));
      for (int i = uni(1, 20); i > 0; --i)
        r->prompt_token_ids.push_back(uni(1, kVocab - 1));
      r->eos_token_ids = {0};
      r->sampling.ignore_eos = uni(0, 1) == 0;
      if (uni(0, 4) == 0) {
        const bool five = uni(0, 1) == 0;
        r->cartridge_ids = {five ? "cart-5" : "cart-8"};
        r->num_virtual_tokens = five ? 5 : 8;
        r->prefix_salt = r->cartridge_ids[0];
      }
      r->sampling.max_tokens = std::min(uni(1, 24), c.max_model_len - r->num_positions());
      r->cancelled = std::make_shared<std::atomic<bool>>(false);
      EXPECT_TRUE(sched->add_request(r).ok());
      reqs.push_back(r);
    }
    // Random client disconnects and engine-side stops (stop strings).
    for (const auto& r : reqs) {
      if (r->is_finished() || interrupted.count(r->id)) continue;
      if (uni(0, 399) == 0) {
        r->cancelled->store(true);
        interrupted.insert(r->id);
      } else if (r->status == RequestStatus::kRunning && uni(0, 299) == 0) {
        sched->finish_request(r->id, FinishReason::kStop);
        interrupted.insert(r->id);
      }
    }
    SchedulerOutput out = sched->schedule();
    check_step_invariants(*sched, out, conn, pool);
    if (::testing::Test::HasFatalFailure()) return res;
    const auto sampled = model.run(out);
    auto upd = sched->update_from_output(out, sampled);
    EXPECT_TRUE(upd.ok());
    check_step_invariants(*sched, SchedulerOutput{}, conn, pool);
    if (::testing::Test::HasFatalFailure()) return res;
    res.steps = step + 1;
    if (added == kRequests && !sched->has_unfinished_requests()) break;
  }
  EXPECT_FALSE(sched->has_unfinished_requests()) << "requests left after " << res.steps << " steps";
  for (const auto& r : reqs) {
    EXPECT_TRUE(r->is_finished()) << r->id;
    EXPECT_TRUE(r->block_table.empty()) << r->id;
    if (interrupted.count(r->id)) continue;
    EXPECT_EQ(r->output_token_ids, reference_output(*r, kVocab, c.max_model_len)) << r->id;
    ++res.checked;
  }
  // Everything released but the connector's cartridges.
  EXPECT_EQ(pool.num_free_blocks(),
            pool.num_usable_blocks() - static_cast<int32_t>(conn.held().size()));
  res.preemptions = sched->stats().num_preemptions;
  res.prefix_hits = pool.stats().hits;
  return res;
}

TEST(SchedulerSimulation, RandomWorkloadKeepsInvariantsAndMatchesReference) {
  int64_t preemptions = 0, hits = 0;
  for (uint32_t seed : {1u, 2u, 3u, 4u}) {
    SCOPED_TRACE(seed);
    const SimResult r = simulate(seed, /*caching=*/true);
    if (HasFatalFailure()) return;
    EXPECT_GT(r.checked, 60);
    preemptions += r.preemptions;
    hits += r.prefix_hits;
    std::printf("seed %u: %d steps, %lld preemptions, %lld prefix-hit tokens, %d outputs checked\n",
                seed, r.steps, static_cast<long long>(r.preemptions),
                static_cast<long long>(r.prefix_hits), r.checked);
  }
  // The workload must exercise the interesting paths.
  EXPECT_GT(preemptions, 0);
  EXPECT_GT(hits, 0);
}

TEST(SchedulerSimulation, RandomWorkloadWithoutPrefixCaching) {
  const SimResult r = simulate(7, /*caching=*/false);
  if (HasFatalFailure()) return;
  EXPECT_EQ(r.prefix_hits, 0);
  EXPECT_GT(r.checked, 60);
}

}  // namespace
}  // namespace cartserve
