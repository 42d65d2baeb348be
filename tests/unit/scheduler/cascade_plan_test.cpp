// runtime/cascade_plan: which decode sequences share a prefix, and the work
// items of the shared-prefix attention kernel.
#include "runtime/cascade_plan.h"

#include <gtest/gtest.h>

#include <vector>

#include "kernels/cascade_split.h"
#include "runtime/step.h"

namespace cartserve {
namespace {

constexpr int32_t kB = 16;

// query_start of n sequences of one row each.
std::vector<int32_t> rows1(size_t n) {
  std::vector<int32_t> q(n + 1);
  for (size_t i = 0; i <= n; ++i)
    q[i] = static_cast<int32_t>(i);
  return q;
}

// Tables of `max_blocks` entries; sequence s gets `rows[s]`, zero-padded.
std::vector<int32_t> tables(const std::vector<std::vector<int32_t>>& rows, int32_t max_blocks) {
  std::vector<int32_t> t;
  for (const auto& r : rows) {
    t.insert(t.end(), r.begin(), r.end());
    t.insert(t.end(), static_cast<size_t>(max_blocks) - r.size(), 0);
  }
  return t;
}

TEST(CascadePlan, SplitRuleDependsOnThePrefixAlone) {
  EXPECT_EQ(ops::cascade_split_len(256), 128);
  EXPECT_EQ(ops::cascade_num_splits(256), 2);
  EXPECT_EQ(ops::cascade_num_splits(100), 1);
  EXPECT_EQ(ops::cascade_split_len(2048), 128);
  EXPECT_EQ(ops::cascade_num_splits(2048), 16);
  EXPECT_EQ(ops::cascade_split_len(2064), 192);  // 2064 / 16 rounded up to 64
  EXPECT_EQ(ops::cascade_num_splits(2064), 11);  // the last one holds 144
  // Long prefixes: at most kMaxCascadeSplits splits of a multiple of 64.
  for (int p : {4096, 4112, 10000, 100000}) {
    EXPECT_LE(ops::cascade_num_splits(p), ops::kMaxCascadeSplits) << p;
    EXPECT_EQ(ops::cascade_split_len(p) % 64, 0) << p;
    EXPECT_GE(ops::cascade_num_splits(p) * ops::cascade_split_len(p), p) << p;
  }
  EXPECT_EQ(ops::cascade_num_splits(0), 0);
}

TEST(CascadePlan, GroupsBySharedBlocksAndTilesByGqaGroup) {
  // 24 sequences on one 512-position prefix (blocks 1..32), two on another
  // (blocks 100..131), one whose shared prefix is too short, one with none.
  const int32_t mb = 40;
  std::vector<std::vector<int32_t>> rows;
  std::vector<int32_t> shared, ctx;
  std::vector<int32_t> a(32), b(32);
  for (int32_t i = 0; i < 32; ++i) {
    a[static_cast<size_t>(i)] = 1 + i;
    b[static_cast<size_t>(i)] = 100 + i;
  }
  for (int32_t s = 0; s < 28; ++s) {
    std::vector<int32_t> r = s == 3 || s == 9 ? b : a;
    r.push_back(200 + s);  // the sequence's own block
    rows.push_back(r);
    shared.push_back(s == 20 ? 128 : s == 21 ? 0 : 512);
    ctx.push_back(512 + 1 + s % 7);
  }
  CascadePlan plan;
  plan_cascade(shared, rows1(28), ctx, tables(rows, mb), mb, kB, /*gqa_group=*/3,
               /*min_prefix=*/256, plan);
  ASSERT_EQ(plan.prefix_len.size(), 28u);
  EXPECT_EQ(plan.prefix_len[20], 0);  // 128 < min_prefix
  EXPECT_EQ(plan.prefix_len[21], 0);
  EXPECT_EQ(plan.prefix_len[0], 512);
  // Group of blocks 1..: 24 members in sequence order, then 3 and 9.
  ASSERT_EQ(plan.members.size(), 26u);
  EXPECT_EQ(plan.members[0], 0);
  EXPECT_EQ(plan.members[23], 27);
  EXPECT_EQ(plan.members[24], 3);
  EXPECT_EQ(plan.members[25], 9);
  // 21 members per tile (64 rows / 3 heads): tiles of 21 + 3, then 2; 4
  // splits of 128 each.
  std::vector<int32_t> want;
  for (const auto& [first, count] : {std::pair{0, 21}, std::pair{21, 3}, std::pair{24, 2}}) {
    for (int32_t z = 0; z < 4; ++z)
      want.insert(want.end(), {first, count, z, 512});
  }
  EXPECT_EQ(plan.items, want);
  // A mixed step: sequence 5 prefills 3 rows; it leaves the group.
  std::vector<int32_t> qs = rows1(28);
  for (size_t i = 6; i < qs.size(); ++i)
    qs[i] += 2;
  plan_cascade(shared, qs, ctx, tables(rows, mb), mb, kB, 3, 256, plan);
  EXPECT_EQ(plan.prefix_len[5], 0);
  EXPECT_EQ(plan.members.size(), 25u);
  EXPECT_EQ(plan.items[1], 21);
  EXPECT_EQ(plan.items[4 * 4 + 1], 2);  // 21 + 2 members on the first prefix
}

TEST(CascadePlan, AloneASequenceStillTakesItsPrefixPath) {
  // The same sequence alone plans the same prefix (batch invariance).
  std::vector<int32_t> r(20);
  for (int32_t i = 0; i < 20; ++i)
    r[static_cast<size_t>(i)] = 7 + i;
  CascadePlan plan;
  plan_cascade(std::vector<int32_t>{304}, rows1(1), std::vector<int32_t>{319}, tables({r}, 20), 20,
               kB, 8, 256, plan);
  EXPECT_EQ(plan.prefix_len, std::vector<int32_t>{304});
  EXPECT_EQ(plan.members, std::vector<int32_t>{0});
  EXPECT_EQ(plan.items, (std::vector<int32_t>{0, 1, 0, 304, 0, 1, 1, 304, 0, 1, 2, 304}));
}

TEST(CascadePlan, PrefixStopsBeforeTheQueryAndWholeBlocks) {
  std::vector<int32_t> r(20, 5);
  CascadePlan plan;
  // A claimed prefix past the query row is cut to the whole blocks before it.
  plan_cascade(std::vector<int32_t>{320}, rows1(1), std::vector<int32_t>{300}, tables({r}, 20), 20,
               kB, 1, 64, plan);
  EXPECT_EQ(plan.prefix_len, std::vector<int32_t>{288});
  // Off: min_prefix 0, no hint, or a GQA group wider than a tile.
  plan_cascade(std::vector<int32_t>{288}, rows1(1), std::vector<int32_t>{300}, tables({r}, 20), 20,
               kB, 1, 0, plan);
  EXPECT_TRUE(plan.empty());
  plan_cascade({}, rows1(1), std::vector<int32_t>{300}, tables({r}, 20), 20, kB, 1, 64, plan);
  EXPECT_TRUE(plan.empty());
  EXPECT_EQ(plan.prefix_len, std::vector<int32_t>{0});
  plan_cascade(std::vector<int32_t>{288}, rows1(1), std::vector<int32_t>{300}, tables({r}, 20), 20,
               kB, 65, 64, plan);
  EXPECT_TRUE(plan.empty());
}

TEST(CascadePlan, ValidateStepChecksSharedPrefix) {
  StepInput in;
  const std::vector<int32_t> table = {1, 2, 3};
  const std::vector<int32_t> tok = {5};
  in.max_blocks = 3;
  in.append_sequence(table, kB, 40, tok);
  in.shared_prefix = {32};
  EXPECT_TRUE(validate_step(in, {}, 100, 8, kB).ok());
  for (int32_t bad : {-16, 8, 48}) {  // negative, not whole blocks, past the row
    in.shared_prefix = {bad};
    EXPECT_FALSE(validate_step(in, {}, 100, 8, kB).ok()) << bad;
  }
  in.shared_prefix = {0, 0};
  EXPECT_FALSE(validate_step(in, {}, 100, 8, kB).ok());
}

}  // namespace
}  // namespace cartserve
