// cpu::linear and linear_bf16 against a double-precision reference, on every
// path: up to 16 rows (the small-batch kernel, register blocks of 8 and their
// remainders) and many (sgemm; panels of widened rows for bf16 past 32 rows);
// in_dim not a multiple of 8; with bias.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
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

TEST(Linear, NoBiasLeavesPlainProduct) {
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};                    // [2, 3]
  const std::vector<float> w = {1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 2};  // [4, 3]
  std::vector<float> y(8);
  ops::cpu::linear(x.data(), w.data(), nullptr, y.data(), 2, 3, 4);
  EXPECT_EQ(y, (std::vector<float>{1, 2, 6, 6, 4, 5, 15, 12}));
}

}  // namespace
}  // namespace cartserve
