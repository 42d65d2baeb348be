// cpu::linear and linear_bf16 against a double-precision reference, on every
// path: up to 16 rows (the small-batch kernel, register blocks of 8 and their
// remainders) and many (gemm_nt; weights widened per panel for bf16);
// in_dim not a multiple of 8; with bias.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/gemm_nt.h"
#include "kernels/ops.h"

namespace cartserve {
namespace {

class LinearRows : public ::testing::TestWithParam<int> {};

// Every y[r, j] against bias[j] + sum_k x[r, k] * w[j, k] in double (w as the
// kernel sees it: fp32, or bf16 widened exactly); fp32 accumulation over
// in_dim terms of magnitude <= 1.
void expect_matches_double(const std::vector<float>& x, const std::vector<float>& w,
                           const std::vector<float>& bias, const std::vector<float>& y, int n,
                           int in_dim, int out_dim) {
  for (int r = 0; r < n; ++r) {
    for (int j = 0; j < out_dim; ++j) {
      double ref = bias[static_cast<size_t>(j)];
      for (int k = 0; k < in_dim; ++k)
        ref += static_cast<double>(x[static_cast<size_t>(r) * in_dim + k]) *
               w[static_cast<size_t>(j) * in_dim + k];
      ASSERT_NEAR(y[static_cast<size_t>(r) * out_dim + j], ref, 1e-5 * in_dim)
          << "n=" << n << " in_dim=" << in_dim << " row " << r << " col " << j;
    }
  }
}

TEST_P(LinearRows, MatchesDoubleReference) {
  const int n = GetParam();
  for (const int in_dim : {5, 64, 203}) {
    const int out_dim = 131;
    std::mt19937 rng(static_cast<uint32_t>(n * 1000 + in_dim));
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<float> x(static_cast<size_t>(n) * in_dim), w(static_cast<size_t>(out_dim) * in_dim),
        bias(out_dim), y(static_cast<size_t>(n) * out_dim, NAN);
    for (auto* v : {&x, &w, &bias})
      for (float& f : *v)
        f = u(rng);
    ops::cpu::linear(x.data(), w.data(), bias.data(), y.data(), n, in_dim, out_dim);
    expect_matches_double(x, w, bias, y, n, in_dim, out_dim);
    if (HasFatalFailure()) return;
  }
}

// bf16 weights: the same product with the weights widened exactly.
TEST_P(LinearRows, Bf16WeightsMatchDoubleReference) {
  const int n = GetParam();
  for (const int in_dim : {5, 64, 203}) {
    const int out_dim = 300;  // more than one sgemm panel of 256 rows
    std::mt19937 rng(static_cast<uint32_t>(n * 7919 + in_dim));
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<float> x(static_cast<size_t>(n) * in_dim), bias(out_dim),
        y(static_cast<size_t>(n) * out_dim, NAN);
    std::vector<uint16_t> w(static_cast<size_t>(out_dim) * in_dim);
    for (float& f : x)
      f = u(rng);
    for (float& f : bias)
      f = u(rng);
    for (uint16_t& h : w)
      h = f32_to_bf16(u(rng));
    ops::cpu::linear_bf16(x.data(), w.data(), bias.data(), y.data(), n, in_dim, out_dim);
    std::vector<float> widened(w.size());
    for (size_t i = 0; i < w.size(); ++i)
      widened[i] = bf16_to_f32(w[i]);
    expect_matches_double(x, widened, bias, y, n, in_dim, out_dim);
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Rows, LinearRows, ::testing::Values(1, 2, 3, 7, 8, 9, 15, 16, 17, 40));

// Decode steps of up to 16 sequences: each row's output is bit-identical to
// what the row alone gives (greedy answers do not change with concurrency).
TEST(Linear, RowsUpTo16AreBatchInvariant) {
  const int in_dim = 203, out_dim = 97;
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(16 * in_dim), w(static_cast<size_t>(out_dim) * in_dim);
  std::vector<uint16_t> wb(w.size());
  for (float& f : x)
    f = u(rng);
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = u(rng);
    wb[i] = f32_to_bf16(w[i]);
  }
  for (const int n : {2, 5, 8, 9, 16}) {
    std::vector<float> batch(static_cast<size_t>(n) * out_dim), alone(out_dim);
    std::vector<float> batch_b(batch.size()), alone_b(out_dim);
    ops::cpu::linear(x.data(), w.data(), nullptr, batch.data(), n, in_dim, out_dim);
    ops::cpu::linear_bf16(x.data(), wb.data(), nullptr, batch_b.data(), n, in_dim, out_dim);
    for (int r = 0; r < n; ++r) {
      const float* xr = x.data() + static_cast<size_t>(r) * in_dim;
      ops::cpu::linear(xr, w.data(), nullptr, alone.data(), 1, in_dim, out_dim);
      ops::cpu::linear_bf16(xr, wb.data(), nullptr, alone_b.data(), 1, in_dim, out_dim);
      for (int j = 0; j < out_dim; ++j) {
        ASSERT_EQ(batch[static_cast<size_t>(r) * out_dim + j], alone[static_cast<size_t>(j)])
            << "n=" << n << " row " << r;
        ASSERT_EQ(batch_b[static_cast<size_t>(r) * out_dim + j], alone_b[static_cast<size_t>(j)])
            << "bf16 n=" << n << " row " << r;
      }
    }
  }
}

// Prompt rows (LinearKernel::kGemm): every output is exactly the fused
// multiply-add chain over k in order, so a row's bits are the same whatever m
// it is computed in and wherever it sits (BLAS sgemm does not promise that:
// OpenBLAS's edge kernels move a row's sum with m).
TEST(Linear, GemmRowsAreTheFmaChainAtAnyBatch) {
  const int in_dim = 203, out_dim = 37;  // edge panel of 5 columns
  constexpr int kRows = 71;
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(static_cast<size_t>(kRows) * in_dim),
      w(static_cast<size_t>(out_dim) * in_dim);
  std::vector<uint16_t> wb(w.size());
  for (float& f : x)
    f = u(rng);
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = u(rng);
    wb[i] = f32_to_bf16(w[i]);
  }
  auto chain = [&](int r, int j, bool bf) {
    float acc = 0.f;
    for (int k = 0; k < in_dim; ++k) {
      const size_t wi = static_cast<size_t>(j) * in_dim + k;
      acc = std::fma(x[static_cast<size_t>(r) * in_dim + k], bf ? bf16_to_f32(wb[wi]) : w[wi], acc);
    }
    return acc;
  };
  for (const int m : {1, 5, 6, 7, 21, 64, kRows}) {
    for (const int first : {0, 3, kRows - m}) {
      if (first + m > kRows) continue;
      const float* xr = x.data() + static_cast<size_t>(first) * in_dim;
      std::vector<float> y(static_cast<size_t>(m) * out_dim), yb(y.size());
      ops::cpu::linear(xr, w.data(), nullptr, y.data(), m, in_dim, out_dim,
                       ops::cpu::LinearKernel::kGemm);
      ops::cpu::linear_bf16(xr, wb.data(), nullptr, yb.data(), m, in_dim, out_dim,
                            ops::cpu::LinearKernel::kGemm);
      for (int r = 0; r < m; ++r) {
        for (int j = 0; j < out_dim; ++j) {
          ASSERT_EQ(y[static_cast<size_t>(r) * out_dim + j], chain(first + r, j, false))
              << "m=" << m << " first=" << first << " row " << r << " col " << j;
          ASSERT_EQ(yb[static_cast<size_t>(r) * out_dim + j], chain(first + r, j, true))
              << "bf16 m=" << m << " first=" << first << " row " << r << " col " << j;
        }
      }
    }
  }
}

// gemm_nt writes only the first n columns of each y row (row stride ldy).
TEST(Linear, GemmNtKeepsColumnsPastN) {
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};           // [2, 3]
  const std::vector<float> w = {1, 0, 0, 0, 1, 0, 1, 1, 1};  // [3, 3]
  std::vector<float> y(2 * 5, -7.f);                         // [2, 5], ldy 5
  ops::cpu::gemm_nt(
      x.data(), 2, 3, 3,
      [&](int64_t j0, int count, float* dst) {
        std::copy(w.begin() + j0 * 3, w.begin() + (j0 + count) * 3, dst);
      },
      y.data(), 5);
  EXPECT_EQ(y, (std::vector<float>{1, 2, 6, -7, -7, 4, 5, 15, -7, -7}));
}

TEST(Linear, NoBiasLeavesPlainProduct) {
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};                    // [2, 3]
  const std::vector<float> w = {1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 2};  // [4, 3]
  std::vector<float> y(8);
  ops::cpu::linear(x.data(), w.data(), nullptr, y.data(), 2, 3, 4);
  EXPECT_EQ(y, (std::vector<float>{1, 2, 6, 6, 4, 5, 15, 12}));
}

}  // namespace
}  // namespace cartserve
