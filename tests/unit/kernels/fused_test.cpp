// The fp32 twins of the CUDA ops (kernels/cpu/fused.cpp, kv_move.cpp)
// against straightforward loops: add_rms_norm, rope_qkv, silu_mul_fused,
// gather_rows, and KV import/export between a cartridge's file layout and
// an fp32 pool (fp32/fp16/bf16 files, shuffled blocks, partial last block,
// chunked ranges, CPU and block-major strides).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "kernels/ops.h"

namespace cartserve {
namespace {

std::vector<float> randn(size_t n, uint64_t seed, float stddev = 1.f, float mean = 0.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(mean, stddev);
  std::vector<float> v(n);
  for (auto& x : v)
    x = d(rng);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(FusedOps, AddRmsNormMatchesLoop) {
  const float eps = 1e-5f;
  uint64_t seed = 100;
  for (const int dim : {5, 64, 576}) {
    for (const int n : {1, 7, 33}) {
      const size_t nd = static_cast<size_t>(n) * dim;
      const auto x0 = randn(nd, seed++, 2.f);
      const auto delta = randn(nd, seed++);
      const auto w = randn(static_cast<size_t>(dim), seed++, 0.2f, 1.f);

      std::vector<float> x = x0, out(nd);
      ops::cpu::add_rms_norm(x.data(), delta.data(), w.data(), out.data(), n, dim, eps);
      for (int r = 0; r < n; ++r) {
        double ss = 0.0;
        for (int i = 0; i < dim; ++i) {
          const size_t k = static_cast<size_t>(r) * dim + i;
          const float xi = x0[k] + delta[k];
          ASSERT_EQ(x[k], xi) << "residual at " << k;  // one fp32 addition
          ss += static_cast<double>(xi) * xi;
        }
        const double inv = 1.0 / std::sqrt(ss / dim + eps);
        for (int i = 0; i < dim; ++i) {
          const size_t k = static_cast<size_t>(r) * dim + i;
          const double want = x[k] * inv * w[static_cast<size_t>(i)];
          ASSERT_NEAR(out[k], want, 1e-5 * (1.0 + std::fabs(want))) << "dim " << dim << " at " << k;
        }
      }

      // Without delta: x untouched and exactly rms_norm.
      std::vector<float> x2 = x0, out2(nd), ref(nd);
      ops::cpu::add_rms_norm(x2.data(), nullptr, w.data(), out2.data(), n, dim, eps);
      ops::cpu::rms_norm(x0.data(), w.data(), ref.data(), n, dim, eps);
      EXPECT_TRUE(same_bits(x2, x0));
      EXPECT_TRUE(same_bits(out2, ref));
    }
  }
}

struct RopeDims {
  int n_heads, n_kv_heads, head_dim;
};

TEST(FusedOps, RopeQkvMatchesLoopAndRope) {
  uint64_t seed = 200;
  for (const RopeDims d : {RopeDims{9, 3, 64}, RopeDims{4, 2, 128}, RopeDims{2, 1, 10}}) {
    for (const bool with_bias : {false, true}) {
      const int n = 5, hd = d.head_dim, half = hd / 2;
      const int H = d.n_heads, KV = d.n_kv_heads;
      const int width = (H + 2 * KV) * hd;
      const auto qkv0 = randn(static_cast<size_t>(n) * width, seed++);
      const auto bias = randn(static_cast<size_t>(width), seed++, 0.5f);
      const std::vector<int32_t> pos = {0, 1, 17, 4095, 100000};
      std::vector<float> inv(static_cast<size_t>(half));
      for (int i = 0; i < half; ++i)
        inv[static_cast<size_t>(i)] = static_cast<float>(std::pow(10000.0, -2.0 * i / hd));
      const ops::RopeTable table{inv.data(), hd};

      std::vector<float> qkv = qkv0;
      ops::cpu::rope_qkv(qkv.data(), with_bias ? bias.data() : nullptr, pos.data(), table, n, H,
                         KV);

      // The biased row, and its q|k heads through cpu::rope: same bits.
      std::vector<float> biased = qkv0;
      if (with_bias) {
        for (int r = 0; r < n; ++r)
          for (int i = 0; i < width; ++i)
            biased[static_cast<size_t>(r) * width + i] += bias[static_cast<size_t>(i)];
      }
      const int qk = (H + KV) * hd;
      std::vector<float> heads(static_cast<size_t>(n) * qk);
      for (int r = 0; r < n; ++r)
        std::copy_n(biased.begin() + static_cast<ptrdiff_t>(r) * width, qk,
                    heads.begin() + static_cast<ptrdiff_t>(r) * qk);
      ops::cpu::rope(heads.data(), pos.data(), table, n, H + KV);

      for (int r = 0; r < n; ++r) {
        for (int i = 0; i < width; ++i) {
          const size_t k = static_cast<size_t>(r) * width + i;
          if (i >= qk) {
            ASSERT_EQ(qkv[k], biased[k]) << "v must only get the bias, at " << k;
            continue;
          }
          ASSERT_EQ(qkv[k], heads[static_cast<size_t>(r) * qk + i]) << "vs rope at " << k;
          // Straightforward rotation in double (angle rounded to fp32 first).
          const int h = i / hd, j = i % hd, p = j % half;
          const float angle =
              static_cast<float>(pos[static_cast<size_t>(r)]) * inv[static_cast<size_t>(p)];
          const double c = std::cos(static_cast<double>(angle));
          const double s = std::sin(static_cast<double>(angle));
          const size_t base = static_cast<size_t>(r) * width + static_cast<size_t>(h) * hd;
          const double a = biased[base + p], b = biased[base + p + half];
          const double want = j < half ? a * c - b * s : b * c + a * s;
          ASSERT_NEAR(qkv[k], want, 1e-5)
              << "head " << h << " dim " << j << " pos " << pos[static_cast<size_t>(r)];
        }
      }
    }
  }
}

TEST(FusedOps, SiluMulFusedMatchesLoop) {
  uint64_t seed = 300;
  for (const int ff : {1, 7, 96}) {
    for (const int n : {1, 3}) {
      const auto gu = randn(static_cast<size_t>(n) * 2 * ff, seed++, 3.f);
      std::vector<float> out(static_cast<size_t>(n) * ff);
      ops::cpu::silu_mul_fused(gu.data(), out.data(), n, ff);
      std::vector<float> gate, up;
      for (int r = 0; r < n; ++r) {
        const auto row = gu.begin() + static_cast<ptrdiff_t>(r) * 2 * ff;
        gate.insert(gate.end(), row, row + ff);
        up.insert(up.end(), row + ff, row + 2 * ff);
      }
      std::vector<float> ref(out.size());
      ops::cpu::silu_mul(gate.data(), up.data(), ref.data(), static_cast<int64_t>(ref.size()));
      EXPECT_TRUE(same_bits(out, ref));
      for (size_t i = 0; i < out.size(); ++i) {
        const double g = gate[i];
        const double want = g / (1.0 + std::exp(-g)) * up[i];
        ASSERT_NEAR(out[i], want, 1e-6 * (1.0 + std::fabs(want)));
      }
    }
  }
}

TEST(FusedOps, GatherRows) {
  const int dim = 13, m = 10;
  const auto x = randn(static_cast<size_t>(m) * dim, 400);
  const std::vector<int32_t> rows = {9, 0, 4, 4};
  std::vector<float> out(rows.size() * dim, -1.f);
  ops::cpu::gather_rows(x.data(), rows.data(), out.data(), static_cast<int>(rows.size()), dim);
  for (size_t i = 0; i < rows.size(); ++i)
    for (int j = 0; j < dim; ++j)
      ASSERT_EQ(out[i * dim + j], x[static_cast<size_t>(rows[i]) * dim + j]);
}

// ---- KV import / export ----------------------------------------------------

struct KvCase {
  int n_kv, head_dim, tokens, block_size;
  bool block_major;  // pool stride of the CUDA layout (3 layers, K and V) vs the CPU one
};

std::vector<std::pair<int, int>> chunks_of(int first, int last, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::pair<int, int>> out;  // (first, count)
  const int max_len = std::max(1, (last - first) / 3);
  for (int p = first; p < last;) {
    const int len = std::min(last - p, std::uniform_int_distribution<int>(1, max_len)(rng));
    out.emplace_back(p, len);
    p += len;
  }
  return out;
}

TEST(FusedOps, KvImportExportRoundTrip) {
  constexpr float kSentinel = -777.f;
  uint64_t seed = 500;
  const KvCase cases[] = {{3, 8, 37, 4, false},
                          {3, 8, 37, 16, true},
                          {2, 5, 20, 8, false},
                          {4, 64, 2001, 16, false},  // large enough for several threads
                          {4, 64, 2001, 32, true}};
  for (const KvCase& c : cases) {
    for (const DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " hd=" + std::to_string(c.head_dim) +
                   " T=" + std::to_string(c.tokens) + " bs=" + std::to_string(c.block_size) +
                   (c.block_major ? " block-major" : " per-layer"));
      const int T = c.tokens, bs = c.block_size, hd = c.head_dim;
      const int64_t kv_dim = static_cast<int64_t>(c.n_kv) * hd;
      const int64_t block_stride = c.block_major ? 3 * 2 * bs * kv_dim : bs * kv_dim;
      const int64_t base = c.block_major ? 2 * bs * kv_dim : 0;  // layer 1's K
      const int nb = (T + bs - 1) / bs;
      const int num_blocks = nb + 2;
      std::vector<int32_t> blocks(static_cast<size_t>(num_blocks));
      std::iota(blocks.begin(), blocks.end(), 0);
      std::mt19937_64 rng(seed++);
      std::shuffle(blocks.begin(), blocks.end(), rng);
      blocks.resize(static_cast<size_t>(nb));

      const size_t file_elems = static_cast<size_t>(c.n_kv) * T * hd;
      const auto vals = randn(file_elems, seed++);
      const size_t es = dtype_size(dt);
      std::vector<uint8_t> file(file_elems * es);
      convert_from_f32(vals.data(), dt, file.data(), file_elems);
      std::vector<float> decoded(file_elems);
      convert_to_f32(dt, file.data(), decoded.data(), file_elems);

      std::vector<float> pool(static_cast<size_t>(num_blocks * block_stride), kSentinel);
      for (const auto& [first, count] : chunks_of(0, T, seed++)) {
        ops::cpu::kv_import(file.data(), dt, T, first, count, blocks.data(), pool.data() + base,
                            block_stride, bs, c.n_kv, hd);
      }
      // Every position at its slot; nothing else touched.
      std::vector<float> want(pool.size(), kSentinel);
      for (int h = 0; h < c.n_kv; ++h) {
        for (int p = 0; p < T; ++p) {
          const int64_t at = base + blocks[static_cast<size_t>(p / bs)] * block_stride +
                             (p % bs) * kv_dim + static_cast<int64_t>(h) * hd;
          for (int d = 0; d < hd; ++d)
            want[static_cast<size_t>(at + d)] =
                decoded[(static_cast<size_t>(h) * T + p) * hd + static_cast<size_t>(d)];
        }
      }
      ASSERT_TRUE(same_bits(pool, want));

      // Export around a gap, check the gap, then the gap: the file again.
      const int g0 = T / 3, g1 = g0 + std::max(1, T / 5);
      std::vector<uint8_t> out(file.size(), 0xAB);
      auto ranges = chunks_of(0, g0, seed++);
      for (const auto& r : chunks_of(g1, T, seed++))
        ranges.push_back(r);
      for (const auto& [first, count] : ranges) {
        ops::cpu::kv_export(pool.data() + base, block_stride, bs, c.n_kv, hd, blocks.data(), T,
                            first, count, out.data(), dt);
      }
      for (int h = 0; h < c.n_kv; ++h) {
        for (int p = 0; p < T; ++p) {
          const size_t at = (static_cast<size_t>(h) * T + p) * hd * es;
          for (size_t b = 0; b < static_cast<size_t>(hd) * es; ++b) {
            if (p >= g0 && p < g1) {
              ASSERT_EQ(out[at + b], 0xAB) << "export wrote position " << p;
            } else {
              ASSERT_EQ(out[at + b], file[at + b]) << "position " << p;
            }
          }
        }
      }
      ops::cpu::kv_export(pool.data() + base, block_stride, bs, c.n_kv, hd, blocks.data(), T, g0,
                          g1 - g0, out.data(), dt);
      EXPECT_TRUE(out == file);  // fp32 -> dt of values that came from dt is exact

      // count == 0 is a no-op.
      ops::cpu::kv_import(file.data(), dt, T, T, 0, blocks.data(), pool.data() + base, block_stride,
                          bs, c.n_kv, hd);
      EXPECT_TRUE(same_bits(pool, want));
    }
  }
}

}  // namespace
}  // namespace cartserve
