// The tensor-parallel head/slice plan (runtime/cpu/tp_plan.h), the in-process
// all-reduce and the weight slicing: plain logic, no model.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "kernels/quant_ops.h"
#include "random_model.h"
#include "runtime/cpu/tp_comm.h"
#include "runtime/cpu/tp_plan.h"
#include "runtime/cpu/tp_shard.h"

namespace cartserve {
namespace {

// The invariants of every plan: each q head on exactly one rank, next to its
// KV head under the model's grouping; every KV head somewhere; replication
// exactly when N > KV heads; each KV head exported by one rank that owns all
// or none of its heads; the MLP slices tile [0, ff).
void check_plan(const TpPlan& p, int heads, int kv, int ff, int n, int align) {
  SCOPED_TRACE(p.describe());
  ASSERT_EQ(p.size, n);
  ASSERT_EQ(static_cast<int>(p.ranks.size()), n);
  const int g = heads / kv;
  std::vector<int> q_count(static_cast<size_t>(heads), 0), kv_count(static_cast<size_t>(kv), 0);
  int ff_next = 0;
  for (int r = 0; r < n; ++r) {
    const TpRank& k = p.ranks[static_cast<size_t>(r)];
    ASSERT_GE(k.num_q_heads(), 1);
    ASSERT_GE(k.num_kv_heads(), 1);
    for (int q = k.q_head_begin; q < k.q_head_end; ++q) {
      ++q_count[static_cast<size_t>(q)];
      // The q head's KV head is local, at the index LlamaForward's grouping
      // (local q / (local q heads / local KV heads)) gives.
      const int local_q = q - k.q_head_begin;
      const int local_group = k.num_q_heads() / k.num_kv_heads();
      ASSERT_EQ(k.num_q_heads() % k.num_kv_heads(), 0);
      EXPECT_EQ(k.kv_head_begin + local_q / local_group, q / g);
    }
    for (int h = k.kv_head_begin; h < k.kv_head_end; ++h)
      ++kv_count[static_cast<size_t>(h)];
    const bool owns_first = p.kv_head_owner(k.kv_head_begin) == r;
    for (int h = k.kv_head_begin; h < k.kv_head_end; ++h)
      EXPECT_EQ(p.kv_head_owner(h) == r, owns_first);
    EXPECT_EQ(k.ff_begin, ff_next);
    EXPECT_GT(k.ff_end, k.ff_begin);
    if (ff % align == 0 && ff / align >= n) {
      EXPECT_EQ(k.ff_begin % align, 0);
    }
    ff_next = k.ff_end;
  }
  EXPECT_EQ(ff_next, ff);
  for (int c : q_count)
    EXPECT_EQ(c, 1);
  for (int c : kv_count) {
    EXPECT_GE(c, 1);
    if (n <= kv) {
      EXPECT_EQ(c, 1);
    }
  }
  EXPECT_EQ(p.kv_replicated, n > kv);
}

TEST(TpPlan, InvariantsOverManyLayouts) {
  const int layouts[][3] = {{12, 3, 128}, {24, 8, 8192}, {32, 8, 14336}, {9, 3, 576},
                            {16, 16, 64}, {8, 1, 96},    {12, 2, 160},   {24, 3, 8192},
                            {4, 2, 160},  {32, 4, 1024}, {14, 2, 4864}};
  for (const auto& l : layouts) {
    for (int n : {1, 2, 4, 8}) {
      if (n > l[0]) continue;
      for (int align : {1, 32, 256}) {
        auto p = make_tp_plan(l[0], l[1], l[2], n, align);
        ASSERT_TRUE(p.ok()) << p.status().to_string();
        check_plan(*p, l[0], l[1], l[2], n, align);
      }
    }
  }
}

TEST(TpPlan, ThreeKvHeadsOverTwoAndFourRanks) {
  auto p2 = make_tp_plan(12, 3, 128, 2);
  ASSERT_TRUE(p2.ok());
  EXPECT_FALSE(p2->kv_replicated);
  EXPECT_EQ(p2->ranks[0].kv_head_begin, 0);  // uneven: {0} and {1, 2}
  EXPECT_EQ(p2->ranks[0].kv_head_end, 1);
  EXPECT_EQ(p2->ranks[0].q_head_end, 4);
  EXPECT_EQ(p2->ranks[1].kv_head_begin, 1);
  EXPECT_EQ(p2->ranks[1].kv_head_end, 3);
  EXPECT_EQ(p2->ranks[1].q_head_begin, 4);
  EXPECT_EQ(p2->ranks[1].q_head_end, 12);
  EXPECT_EQ(p2->max_kv_heads_per_rank(), 2);

  auto p4 = make_tp_plan(12, 3, 128, 4);
  ASSERT_TRUE(p4.ok());
  EXPECT_TRUE(p4->kv_replicated);
  // Rank r holds KV head floor(r * 3 / 4): 0, 0, 1, 2; KV head 0's four q
  // heads split between ranks 0 and 1.
  const int kv[] = {0, 0, 1, 2}, qb[] = {0, 2, 4, 8}, qe[] = {2, 4, 8, 12};
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(p4->ranks[r].kv_head_begin, kv[r]);
    EXPECT_EQ(p4->ranks[r].num_kv_heads(), 1);
    EXPECT_EQ(p4->ranks[r].q_head_begin, qb[r]);
    EXPECT_EQ(p4->ranks[r].q_head_end, qe[r]);
    EXPECT_EQ(p4->ranks[r].ff_size(), 32);
  }
  EXPECT_EQ(p4->kv_head_owner(0), 0);
  EXPECT_EQ(p4->kv_head_owner(1), 2);
  EXPECT_EQ(p4->kv_head_owner(2), 3);
  EXPECT_NE(p4->describe().find("replicated"), std::string::npos);
}

TEST(TpPlan, AlignsTheMlpSliceToQuantBlocks) {
  auto p = make_tp_plan(12, 3, 96 * 32, 8, 256);  // 3072 = 12 blocks of 256 over 8 ranks
  ASSERT_TRUE(p.ok());
  for (const TpRank& r : p->ranks) {
    EXPECT_EQ(r.ff_begin % 256, 0);
    EXPECT_EQ(r.ff_end % 256, 0);
  }
}

TEST(TpPlan, MlpSliceFallsBackToElementsWhenBlocksAreTooFew) {
  auto p = make_tp_plan(12, 3, 64, 4, 32);  // 2 blocks of 32 for 4 ranks
  ASSERT_TRUE(p.ok());
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(p->ranks[r].ff_begin, 16 * r);
    EXPECT_EQ(p->ranks[r].ff_size(), 16);
  }
}

TEST(TpPlan, RefusesWhatCannotSplit) {
  EXPECT_FALSE(make_tp_plan(12, 3, 128, 3).ok());   // not 1, 2, 4, 8
  EXPECT_FALSE(make_tp_plan(12, 3, 128, 16).ok());  // not 1, 2, 4, 8
  EXPECT_FALSE(make_tp_plan(4, 2, 128, 8).ok());    // more ranks than q heads
  EXPECT_FALSE(make_tp_plan(12, 5, 128, 2).ok());   // heads do not group
  EXPECT_TRUE(make_tp_plan(12, 3, 128, 1).ok());
}

TEST(TpComm, AllReduceSumsInRankOrderOnEveryRank) {
  for (int n : {2, 4, 8}) {
    InProcessComm comm(n);
    const size_t len = 1001;  // not a multiple of the rank count
    std::vector<std::vector<float>> bufs(static_cast<size_t>(n));
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<std::vector<float>> inputs(static_cast<size_t>(n));
    for (auto& b : inputs) {
      b.resize(len);
      for (float& x : b)
        x = u(rng);
    }
    std::vector<float> want(len);
    for (size_t i = 0; i < len; ++i) {
      float s = inputs[0][i];
      for (int r = 1; r < n; ++r)
        s += inputs[static_cast<size_t>(r)][i];
      want[i] = s;
    }
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r) {
      threads.emplace_back([&, r] {
        // Three rounds of different sizes: the buffers are reused safely.
        for (size_t round : {len, size_t{3}, len}) {
          bufs[static_cast<size_t>(r)] = std::vector<float>(
              inputs[static_cast<size_t>(r)].begin(),
              inputs[static_cast<size_t>(r)].begin() + static_cast<ptrdiff_t>(round));
          comm.all_reduce_sum(r, bufs[static_cast<size_t>(r)].data(), round);
        }
      });
    }
    for (auto& t : threads)
      t.join();
    for (int r = 0; r < n; ++r)
      EXPECT_EQ(bufs[static_cast<size_t>(r)], want) << "rank " << r;  // bit-equal
  }
}

// Columns [c0, c0 + n) of a Q8_0 matrix, dequantized, equal those columns of
// the whole matrix dequantized: as blocks when aligned, as fp32 when not.
TEST(TpShard, SlicesQuantizedColumnsOnBlocksOrAsFp32) {
  std::mt19937 rng(3);
  const int64_t rows = 5, cols = 128;
  const Tensor w = testing::random_q8_0(rng, rows, cols, 0.1f);
  const ops::QuantMatrix whole{ops::QuantType::kQ8_0, w.data<uint8_t>(), rows, cols,
                               static_cast<size_t>(w.dim(1))};
  std::vector<float> full(static_cast<size_t>(rows * cols));
  ops::cpu::dequantize_rows(whole, 0, rows, full.data());
  struct Case {
    int64_t c0, n;
    bool blocks;
  } cases[] = {{32, 64, true}, {0, 128, true}, {16, 64, false}, {32, 48, false}};
  for (const Case& c : cases) {
    bool dq = false;
    const Tensor s = tp_slice_cols(w, c.c0, c.n, &dq);
    EXPECT_EQ(dq, !c.blocks);
    std::vector<float> got(static_cast<size_t>(rows * c.n));
    if (c.blocks) {
      ASSERT_EQ(s.block_type(), 8u);
      const ops::QuantMatrix m{ops::QuantType::kQ8_0, s.data<uint8_t>(), rows, c.n,
                               static_cast<size_t>(s.dim(1))};
      ops::cpu::dequantize_rows(m, 0, rows, got.data());
    } else {
      ASSERT_EQ(s.dtype(), DType::kF32);
      std::memcpy(got.data(), s.data<float>(), got.size() * sizeof(float));
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < c.n; ++j)
        EXPECT_EQ(got[static_cast<size_t>(r * c.n + j)],
                  full[static_cast<size_t>(r * cols + c.c0 + j)]);
    }
  }
  // Rows of a quantized matrix: whole rows of blocks.
  const Tensor rws = tp_slice_rows(w, 2, 2);
  EXPECT_EQ(rws.block_type(), 8u);
  EXPECT_EQ(std::memcmp(rws.data<uint8_t>(), w.data<uint8_t>() + 2 * w.dim(1),
                        static_cast<size_t>(2 * w.dim(1))),
            0);
}

}  // namespace
}  // namespace cartserve
