// kernels/persistent_plan.h: the work split of the persistent decode kernel,
// checked on the CPU (the kernel itself runs only on a GPU): every weight row
// owned by exactly one CTA, every key of every (row, KV head) attended by
// exactly one item, the partial-sum and shared-memory sizes the launcher
// derives from the plan large enough.
#include "kernels/persistent_plan.h"
#include "kernels/persistent_timeline.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

namespace cartserve::ops {
namespace {

struct LinearCase {
  int in, out, granule;
};

// The linear phases of the 3B, SmolLM2-135M and GPU-test shapes.
const LinearCase kLinear[] = {
    {3072, 5120, 1}, {3072, 3072, 1}, {3072, 16384, 16}, {8192, 3072, 1},  // Llama-3.2-3B
    {576, 960, 1},   {576, 576, 1},   {576, 3072, 16},   {1536, 576, 1},   // SmolLM2-135M
    {256, 1152, 1},  {768, 256, 1},   {256, 1024, 16},   {512, 256, 1},    // gpu_test_spec
    {1024, 4608, 1}, {4096, 1024, 1}, {1024, 2048, 16},  {1024, 1024, 1},  // the 4-CTA test
};

TEST(PersistentPlan, CtaRowsCoverEveryRowOnceInWholeGranules) {
  for (const LinearCase& c : kLinear) {
    for (int ctas : {1, 4, 32, 66, 132, 200}) {
      SCOPED_TRACE(testing::Message() << c.in << "x" << c.out << " on " << ctas << " CTAs");
      const PersistentLinear s = persistent_plan_linear(c.in, c.out, c.granule, ctas);
      int next = 0;
      for (int cta = 0; cta < ctas; ++cta) {
        int r0 = -1, r1 = -1;
        persistent_cta_rows(s, cta, ctas, r0, r1);
        ASSERT_EQ(r0, next);  // contiguous and disjoint, in CTA order
        ASSERT_LE(r0, r1);
        EXPECT_EQ(r0 % c.granule, 0);
        EXPECT_EQ((r1 - r0) % c.granule, 0);
        // The partial sums of this CTA's units fit what the launcher sizes.
        EXPECT_LE((r1 - r0) * s.slices, persistent_most_units(s, ctas));
        next = r1;
      }
      EXPECT_EQ(next, c.out);
    }
  }
}

TEST(PersistentPlan, SlicesDivideTheRowAndBalanceTheWarps) {
  for (const LinearCase& c : kLinear) {
    for (int ctas : {4, 66, 132}) {
      const PersistentLinear s = persistent_plan_linear(c.in, c.out, c.granule, ctas);
      EXPECT_TRUE(s.slices == 1 || s.slices == 2 || s.slices == 4 || s.slices == 8);
      EXPECT_EQ((c.in / 8) % s.slices, 0) << c.in;
      EXPECT_EQ(s.in, c.in);
      EXPECT_EQ(s.out, c.out);
      EXPECT_EQ(s.granule, c.granule);
    }
  }
  // On 132 SMs (H100): the 3B QKV projection gives its 39 rows per CTA 2
  // slices (78 units: 5 per warp of 16, against 3 whole rows for some warps
  // with 1 slice); gate/up's 128 rows split evenly as whole rows.
  EXPECT_EQ(persistent_plan_linear(3072, 5120, 1, 132).slices, 2);
  EXPECT_EQ(persistent_plan_linear(3072, 16384, 16, 132).slices, 1);
  EXPECT_EQ(persistent_plan_linear(8192, 3072, 1, 132).slices, 2);
  // SmolLM2's QKV: 8 rows per CTA, 72 chunks a row: 2 slices of 36.
  EXPECT_EQ(persistent_plan_linear(576, 960, 1, 132).slices, 2);
}

TEST(PersistentPlan, SplitsCutAContextInWholeStagesAtMost32) {
  for (int ctx = 1; ctx <= 70000; ctx += (ctx < 300 ? 1 : 97)) {
    const int len = persistent_split_len(ctx);
    ASSERT_EQ(len % kPersistentChunk, 0) << ctx;
    ASSERT_GE(len, kPersistentChunk);
    const int n = (ctx + len - 1) / len;
    ASSERT_LE(n, kPersistentMaxSplits) << ctx;
    ASSERT_GE(n, 1);
    // No shorter whole-stage length would do: the splits are as short as allowed.
    if (len > kPersistentChunk) {
      EXPECT_GT((ctx + len - kPersistentChunk - 1) / (len - kPersistentChunk), kPersistentMaxSplits)
          << ctx;
    }
  }
}

TEST(PersistentPlan, ItemsAttendEveryKeyOfEveryRowAndHeadOnce) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> ctx_of(0, 5000);
  for (int trial = 0; trial < 200; ++trial) {
    const int rows = 1 + trial % 4;
    const int nkv = std::vector<int>{1, 2, 3, 8}[static_cast<size_t>(trial % 4)];
    std::vector<int32_t> ctx(static_cast<size_t>(rows));
    for (auto& c : ctx)
      c = trial % 7 == 0 ? 1 + trial % 3 : ctx_of(rng);  // short contexts too (and 0)
    // covered[t][g]: keys attended so far, in split order.
    std::vector<std::vector<int>> covered(static_cast<size_t>(rows),
                                          std::vector<int>(static_cast<size_t>(nkv), 0));
    std::vector<std::vector<int>> splits_seen(static_cast<size_t>(rows),
                                              std::vector<int>(static_cast<size_t>(nkv), 0));
    int items = 0;
    PersistentItem it;
    while (persistent_item(ctx.data(), rows, nkv, items, it)) {
      ASSERT_LT(it.row, rows);
      ASSERT_LT(it.kv_head, nkv);
      const auto t = static_cast<size_t>(it.row), g = static_cast<size_t>(it.kv_head);
      EXPECT_EQ(it.split, splits_seen[t][g]++);  // splits in order
      EXPECT_EQ(it.begin, covered[t][g]);        // contiguous keys
      EXPECT_LT(it.begin, it.end);               // never empty
      EXPECT_LE(it.end, ctx[t]);
      EXPECT_LE(it.end - it.begin, persistent_split_len(ctx[t]));
      EXPECT_LE(it.splits, kPersistentMaxSplits);
      covered[t][g] = it.end;
      ++items;
      ASSERT_LT(items, 1 << 20);
    }
    int expected = 0;
    for (int t = 0; t < rows; ++t) {
      const int len = persistent_split_len(ctx[static_cast<size_t>(t)]);
      const int n =
          ctx[static_cast<size_t>(t)] > 0 ? (ctx[static_cast<size_t>(t)] + len - 1) / len : 0;
      expected += nkv * n;
      for (int g = 0; g < nkv; ++g) {
        EXPECT_EQ(covered[static_cast<size_t>(t)][static_cast<size_t>(g)],
                  ctx[static_cast<size_t>(t)]);  // every key once
        EXPECT_EQ(splits_seen[static_cast<size_t>(t)][static_cast<size_t>(g)], n);
      }
    }
    EXPECT_EQ(items, expected);
  }
}

TEST(PersistentPlan, AttentionSharedMemoryIsAlignedAndDisjoint) {
  for (int d : {64, 128}) {
    for (int g = 1; g <= kPersistentMaxGroup; ++g) {
      const PersistentAttnSmem m(d, g);
      // (offset, bytes) of each region in order.
      const std::vector<std::pair<int, int>> regions = {{m.k, kPersistentChunk * d * 2},
                                                        {m.v, kPersistentChunk * d * 2},
                                                        {m.q, g * d * 4},
                                                        {m.sc, g * kPersistentChunk * 4},
                                                        {m.cs, d * 4},
                                                        {m.stats, 3 * kPersistentMaxGroup * 4},
                                                        {m.nk, d * 2},
                                                        {m.nv, d * 2},
                                                        {m.flag, 4}};
      int end = 0;
      for (const auto& [off, bytes] : regions) {
        EXPECT_EQ(off % 16, 0);
        EXPECT_GE(off, end);
        end = off + bytes;
      }
      EXPECT_LE(end, m.total);
      EXPECT_LE(m.total, 64 << 10);  // under every Hopper CTA's limit with room to spare
    }
  }
}

// kernels/persistent_timeline.h on stamps made up with known work and
// barrier times: CTA c works 1000 (k + 1) + 10 c ns in phase k, and leaves
// each barrier 200 + 10 c ns after the last CTA arrives; to the ns.
TEST(PersistentTimeline, PhasesGetTheirWorkAndBarrierTimes) {
  constexpr int L = 3, C = 4;
  // The global timer counts ns since the epoch: stamps near 1.8e18, where a
  // double resolves only 256 ns.
  constexpr uint64_t kBase = 1'765'000'000'000'000'123ull;
  const int last = kPersistentPhases * L;
  std::vector<uint64_t> t(persistent_timeline_stamps(L, C), 0);
  auto at = [&](int e, int r, int c) -> uint64_t& {
    return t[(2 * static_cast<size_t>(e) + static_cast<size_t>(r)) * C + static_cast<size_t>(c)];
  };
  std::vector<uint64_t> from(C);
  for (int c = 0; c < C; ++c)
    from[static_cast<size_t>(c)] = at(0, 0, c) = kBase + 5 * static_cast<uint64_t>(c);
  for (int e = 1; e <= last; ++e) {
    uint64_t latest = 0;
    for (int c = 0; c < C; ++c) {
      const uint64_t work = 1000 * (1 + (e - 1) % kPersistentPhases) + 10 * c;
      at(e, 0, c) = from[static_cast<size_t>(c)] + work;
      latest = std::max(latest, at(e, 0, c));
    }
    if (e == last) break;
    for (int c = 0; c < C; ++c)
      from[static_cast<size_t>(c)] = at(e, 1, c) = latest + 200 + 10 * static_cast<uint64_t>(c);
  }
  const PersistentTimeline s = summarize_persistent_timeline(t, L, C);
  uint64_t end = 0;
  for (int c = 0; c < C; ++c)
    end = std::max(end, at(last, 0, c));
  EXPECT_DOUBLE_EQ(s.step_us, static_cast<double>(end - kBase) / 1e3);
  for (int k = 0; k < kPersistentPhases; ++k) {
    SCOPED_TRACE(k);
    const PersistentPhaseTimes& p = s.phases[static_cast<size_t>(k)];
    EXPECT_NEAR(p.work_max_us, (1000.0 * (k + 1) + 30) / 1e3, 1e-9);
    EXPECT_NEAR(p.work_mean_us, (1000.0 * (k + 1) + 15) / 1e3, 1e-9);
    EXPECT_NEAR(p.barrier_us, 0.215, 1e-9);  // 200 + mean(0, 10, 20, 30)
  }
  EXPECT_STREQ(s.phases[1].phase, "attention");
  // Too few stamps: nothing is read.
  EXPECT_EQ(summarize_persistent_timeline(std::vector<uint64_t>(10), L, C).step_us, 0.0);
}

}  // namespace
}  // namespace cartserve::ops
