// Paged attention against a dense reference computed from the KV positions
// directly: scattered block tables, a partly filled last block, GQA, and
// several sequences of mixed prefill/decode in one batch.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/ops.h"

namespace cartserve {
namespace {

struct Seq {
  std::vector<int32_t> blocks;
  int kv_len, q_len;
};

// Dense softmax(q k^T * scale) v over logical entries [0, limit].
void dense_attention(const std::vector<float>& q_row, const std::vector<std::vector<float>>& ks,
                     const std::vector<std::vector<float>>& vs, int limit, float scale,
                     std::vector<float>& out) {
  const size_t d = q_row.size();
  std::vector<double> s(static_cast<size_t>(limit + 1));
  double m = -1e300;
  for (int c = 0; c <= limit; ++c) {
    double dot = 0;
    for (size_t i = 0; i < d; ++i)
      dot += static_cast<double>(q_row[i]) * ks[c][i];
    s[c] = dot * scale;
    m = std::max(m, s[c]);
  }
  double z = 0;
  for (auto& x : s)
    z += (x = std::exp(x - m));
  out.assign(d, 0.f);
  for (int c = 0; c <= limit; ++c) {
    for (size_t i = 0; i < d; ++i)
      out[i] += static_cast<float>(s[c] / z * vs[c][i]);
  }
}

// Runs paged attention over `seqs` (random K/V/Q) and returns the largest
// difference from the dense reference.
float max_diff_from_dense(int n_heads, int n_kv, int hd, int bs, int num_blocks,
                          const std::vector<Seq>& seqs, uint32_t seed) {
  const int kv_dim = n_kv * hd;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> kc(static_cast<size_t>(num_blocks) * bs * kv_dim), vc(kc.size());
  for (auto& x : kc)
    x = nd(rng);
  for (auto& x : vc)
    x = nd(rng);
  int rows = 0;
  for (auto& s : seqs)
    rows += s.q_len;
  std::vector<float> q(static_cast<size_t>(rows) * n_heads * hd);
  for (auto& x : q)
    x = nd(rng);
  std::vector<ops::AttnSeq> as;
  int start = 0;
  for (auto& s : seqs) {
    ops::AttnSeq a;
    a.q_start = start;
    a.q_len = s.q_len;
    a.kv_len = s.kv_len;
    a.block_table = s.blocks.data();
    a.n_blocks = static_cast<int>(s.blocks.size());
    as.push_back(a);
    start += s.q_len;
  }
  std::vector<float> out(q.size(), NAN);
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  ops::cpu::paged_attention(q.data(), kc.data(), vc.data(), as.data(), static_cast<int>(as.size()),
                            out.data(), n_heads, n_kv, hd, bs, scale);
  float max_diff = 0.f;
  start = 0;
  for (auto& s : seqs) {
    for (int h = 0; h < n_heads; ++h) {
      const int kvh = h / (n_heads / n_kv);
      std::vector<std::vector<float>> ks, vs;
      for (int p = 0; p < s.kv_len; ++p) {
        const size_t base =
            (static_cast<size_t>(s.blocks[p / bs]) * bs + p % bs) * kv_dim + kvh * hd;
        ks.emplace_back(kc.begin() + base, kc.begin() + base + hd);
        vs.emplace_back(vc.begin() + base, vc.begin() + base + hd);
      }
      for (int j = 0; j < s.q_len; ++j) {
        const size_t qb = (static_cast<size_t>(start + j) * n_heads + h) * hd;
        std::vector<float> qrow(q.begin() + qb, q.begin() + qb + hd), ref;
        dense_attention(qrow, ks, vs, s.kv_len - s.q_len + j, scale, ref);
        for (int i = 0; i < hd; ++i) {
          const float d = std::fabs(ref[i] - out[qb + i]);
          max_diff = std::isnan(d) ? INFINITY : std::max(max_diff, d);
        }
      }
    }
    start += s.q_len;
  }
  return max_diff;
}

// Blocks 0..n-1 of a pool of `pool` blocks, in a scattered order.
std::vector<int32_t> scattered_blocks(int n, int pool, uint32_t seed) {
  std::vector<int32_t> all(static_cast<size_t>(pool));
  for (int i = 0; i < pool; ++i)
    all[static_cast<size_t>(i)] = i;
  std::shuffle(all.begin(), all.end(), std::mt19937(seed));
  all.resize(static_cast<size_t>(n));
  return all;
}

TEST(PagedAttention, MatchesDenseWithScatteredBlocksAndGqa) {
  // Seq 0: 10 positions over 3 scattered blocks, 5 queries (a prefill chunk).
  // Seq 1: 11 positions, 1 query (decode). Seq 2: 6 positions, 3 queries.
  const std::vector<Seq> seqs = {
      {{3, 7, 1}, 10, 5},
      {{2, 5, 9}, 11, 1},
      {{4, 6}, 6, 3},
  };
  EXPECT_LT(max_diff_from_dense(4, 2, 8, 4, 16, seqs, 7), 1e-5f);
}

// Long chunks take the sgemm path (tiles of rows, a partial last tile, a
// chunk after earlier context); decode and short chunks the SIMD path beside
// them; head_dim 64 and 128 (register-blocked kernels) and 20 (generic, SIMD
// tails), groups of 3 query heads.
TEST(PagedAttention, LongChunksAndDecodeInOneBatch) {
  for (const int hd : {64, 128, 20}) {
    const int bs = 16, pool = 64;
    const std::vector<Seq> seqs = {
        {scattered_blocks(10, pool, 1), 150, 100},  // prefill chunk after 50 positions
        {scattered_blocks(12, pool, 2), 181, 1},    // decode, partial last block
        {scattered_blocks(3, pool, 3), 40, 40},     // whole prompt, one chunk
        {scattered_blocks(5, pool, 4), 70, 7},      // short chunk
    };
    EXPECT_LT(max_diff_from_dense(6, 2, hd, bs, pool, seqs, 11), 2e-5f) << "head_dim " << hd;
  }
}

}  // namespace
}  // namespace cartserve
