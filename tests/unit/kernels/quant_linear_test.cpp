// Quantized weights (kernels/quant_ops.h) against the dequantized fp32
// reference, on random GGUF blocks of every format we compute on:
//  - dequantize_rows gives exactly the floats of formats/gguf_dequant (itself
//    bit-exact with gguf-py);
//  - linear_quant on every ISA this CPU has (portable, AVX2, AVX-512 VNNI;
//    set at run time) against a double-precision product with the
//    dequantized weights, twice (up to 16 rows the integer kernels; more rows
//    sgemm on dequantized panels, with the activations rounded alike):
//    (a) with the activations as the kernel quantizes them (q * d): only
//        float summation order differs; required within 2e-6 of sum |w x|;
//    (b) with the fp32 activations: the int16 activation rounding error, which
//        is at most sum |w| * d_x / 2 per output (d_x the block's scale);
//        required within that bound, and the observed error printed relative
//        to the outputs' RMS (int16 activations: required < 0.01%; observed
//        about 0.002%).
//  - up to 16 rows, a row's output does not depend on the other rows (bitwise).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "formats/gguf.h"
#include "formats/gguf_dequant.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/quant_ops.h"

namespace cartserve {
namespace {

using ops::QuantMatrix;
using ops::QuantType;
using ops::cpu::CpuIsa;

struct Format {
  QuantType type;
  GgmlType ggml;
};
const Format kFormats[] = {{QuantType::kQ4_0, GgmlType::kQ4_0},
                           {QuantType::kQ4_1, GgmlType::kQ4_1},
                           {QuantType::kQ8_0, GgmlType::kQ8_0},
                           {QuantType::kQ4_K, GgmlType::kQ4_K},
                           {QuantType::kQ6_K, GgmlType::kQ6_K}};

void put_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_fp16(v);
  std::memcpy(p, &h, 2);
}

// rows x cols of random blocks in the file's layout, scales of a realistic size.
std::vector<uint8_t> random_gguf(QuantType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const size_t bb = ops::quant_block_bytes(t);
  const int64_t nblocks = rows * cols / ops::quant_block_elems(t);
  std::vector<uint8_t> v(static_cast<size_t>(nblocks) * bb);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f);
  for (auto& b : v)
    b = static_cast<uint8_t>(byte(rng));
  for (int64_t i = 0; i < nblocks; ++i) {
    uint8_t* blk = v.data() + static_cast<size_t>(i) * bb;
    switch (t) {
      case QuantType::kQ4_1:
        put_f16(blk + 2, -8.0f * scale(rng));
        [[fallthrough]];
      case QuantType::kQ4_0:
      case QuantType::kQ8_0:
        put_f16(blk, scale(rng));
        break;
      case QuantType::kQ4_K:
        put_f16(blk, scale(rng) / 16);
        put_f16(blk + 2, scale(rng) / 4);
        break;
      case QuantType::kQ6_K:
        put_f16(blk + 208, scale(rng) / 16);
        break;
    }
  }
  return v;
}

// A GGUF matrix and its fp32 reference.
struct TestMatrix {
  std::vector<uint8_t> gguf;
  std::vector<float> ref;  // [rows, cols]
  QuantMatrix q;
};

TestMatrix make_matrix(const Format& f, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  TestMatrix m;
  m.gguf = random_gguf(f.type, rows, cols, rng);
  m.ref.resize(static_cast<size_t>(rows * cols));
  EXPECT_TRUE(
      dequantize(static_cast<uint32_t>(f.ggml), m.gguf.data(), m.ref.data(), rows * cols).ok());
  m.q = {f.type, m.gguf.data(), rows, cols, ops::quant_row_bytes(f.type, cols)};
  return m;
}

std::vector<CpuIsa> isas() {
  std::vector<CpuIsa> v = {CpuIsa::kScalar};
  if (ops::cpu::best_cpu_isa() >= CpuIsa::kAvx2) v.push_back(CpuIsa::kAvx2);
  if (ops::cpu::best_cpu_isa() >= CpuIsa::kAvx512) v.push_back(CpuIsa::kAvx512);
  return v;
}

// Restores the ISA in use when a test ends.
class QuantLinear : public ::testing::Test {
 protected:
  void TearDown() override { ops::cpu::set_cpu_isa(saved_); }
  CpuIsa saved_ = ops::cpu::cpu_isa();
};

std::vector<int64_t> col_sizes(QuantType t) {
  if (ops::quant_block_elems(t) == 256) return {256, 768};
  return {32, 96, 224, 576};  // 1, 3, 7 and 18 blocks: odd and even counts, tails of 8
}

TEST_F(QuantLinear, DequantizeEqualsGgufDequant) {
  for (const Format& f : kFormats) {
    for (int64_t cols : col_sizes(f.type)) {
      const int64_t rows = 5;
      TestMatrix m = make_matrix(f, rows, cols, 11);
      std::vector<float> out(m.ref.size());
      ops::cpu::dequantize_rows(m.q, 0, rows, out.data());
      ASSERT_EQ(std::memcmp(out.data(), m.ref.data(), out.size() * sizeof(float)), 0)
          << ops::quant_type_name(f.type) << " cols " << cols;
      std::vector<float> one(static_cast<size_t>(cols));  // a single row from the middle
      ops::cpu::dequantize_rows(m.q, 3, 1, one.data());
      ASSERT_EQ(std::memcmp(one.data(), m.ref.data() + 3 * cols, one.size() * sizeof(float)), 0);
    }
  }
}

TEST_F(QuantLinear, ActivationQuantizationBounds) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 2.f);
  const int n = 3, k = 96;
  std::vector<float> x(n * k);
  for (auto& v : x)
    v = nd(rng);
  x[40] = 0.f;
  for (int i = 64; i < 96; ++i)
    x[i] = 0.f;  // an all-zero block: d = 0, q = 0
  ops::QActRows a;
  ops::cpu::quantize_rows_act(x.data(), n, k, a);
  for (int r = 0; r < n; ++r) {
    for (int b = 0; b < k / 32; ++b) {
      const float d = a.d[r * 3 + b];
      int sum = 0;
      for (int i = 0; i < 32; ++i) {
        const int e = r * k + 32 * b + i;
        ASSERT_LE(std::abs(a.q[e]), 32767);
        EXPECT_LE(std::fabs(x[e] - a.q[e] * d), 0.5f * d * 1.0001f + 1e-30f);
        sum += a.q[e];
      }
      EXPECT_EQ(a.s[r * 3 + b], d * static_cast<float>(sum));
    }
  }
  EXPECT_EQ(a.d[2], 0.f);
}

TEST_F(QuantLinear, MatchesDequantizedReferenceOnEveryIsa) {
  for (CpuIsa isa : isas()) {
    ASSERT_TRUE(ops::cpu::set_cpu_isa(isa));
    for (const Format& f : kFormats) {
      double worst_rel_rms = 0.0;
      for (int64_t cols : col_sizes(f.type)) {
        const int64_t rows = 37;
        TestMatrix m = make_matrix(f, rows, cols, static_cast<uint32_t>(cols * 7 + 1));
        for (int n : {1, 3, 4, 5, 9, 16, 67}) {
          std::mt19937 rng(static_cast<uint32_t>(n * 31 + cols));
          std::normal_distribution<float> nd(0.f, 1.f);
          std::vector<float> x(static_cast<size_t>(n * cols)), bias(static_cast<size_t>(rows));
          for (auto& v : x)
            v = nd(rng);
          for (auto& v : bias)
            v = nd(rng);
          std::vector<float> y(static_cast<size_t>(n * rows), NAN);
          ops::cpu::linear_quant(x.data(), m.q, bias.data(), y.data(), n);
          // The activations as the kernel sees them.
          ops::QActRows a;
          ops::cpu::quantize_rows_act(x.data(), n, static_cast<int>(cols), a);
          double sq = 0.0, sq_err = 0.0;
          for (int r = 0; r < n; ++r) {
            for (int64_t j = 0; j < rows; ++j) {
              double exact_q = bias[j], exact = bias[j], mag = 0.0, bound = 0.0;
              for (int64_t c = 0; c < cols; ++c) {
                const double w = m.ref[static_cast<size_t>(j * cols + c)];
                const size_t e = static_cast<size_t>(r * cols + c);
                const double dx = a.d[static_cast<size_t>(r * cols / 32 + c / 32)];
                const double xq = a.q[e] * dx;
                exact_q += w * xq;
                exact += w * x[e];
                mag += std::fabs(w * xq);
                bound += std::fabs(w) * dx / 2;
              }
              const double got = y[static_cast<size_t>(r * rows + j)];
              ASSERT_NEAR(got, exact_q, 2e-6 * mag + 1e-6)
                  << ops::cpu::cpu_isa_name(isa) << " " << ops::quant_type_name(f.type) << " cols "
                  << cols << " n " << n << " row " << r << " col " << j;
              ASSERT_LE(std::fabs(got - exact), bound * 1.001 + 2e-6 * mag + 1e-6)
                  << ops::quant_type_name(f.type);
              sq += exact * exact;
              sq_err += (got - exact) * (got - exact);
            }
          }
          worst_rel_rms = std::max(worst_rel_rms, std::sqrt(sq_err / sq));
        }
      }
      std::printf("[quant] %-6s %-5s error vs fp32 activations: %.4f%% of the outputs' RMS\n",
                  ops::cpu::cpu_isa_name(isa), ops::quant_type_name(f.type), 100 * worst_rel_rms);
      EXPECT_LT(worst_rel_rms, 1e-4) << ops::quant_type_name(f.type);
    }
  }
}

TEST_F(QuantLinear, RowResultsDoNotDependOnTheBatch) {
  for (CpuIsa isa : isas()) {
    ASSERT_TRUE(ops::cpu::set_cpu_isa(isa));
    for (const Format& f : kFormats) {
      const int64_t cols = ops::quant_block_elems(f.type) == 256 ? 512 : 576, rows = 50;
      TestMatrix m = make_matrix(f, rows, cols, 3);
      const int n = 16;
      std::mt19937 rng(9);
      std::normal_distribution<float> nd(0.f, 1.f);
      std::vector<float> x(static_cast<size_t>(n * cols));
      for (auto& v : x)
        v = nd(rng);
      std::vector<float> all(static_cast<size_t>(n * rows));
      ops::cpu::linear_quant(x.data(), m.q, nullptr, all.data(), n);
      for (int r : {0, 5, 13, 15}) {
        std::vector<float> one(static_cast<size_t>(rows));
        ops::cpu::linear_quant(x.data() + r * cols, m.q, nullptr, one.data(), 1);
        ASSERT_EQ(std::memcmp(one.data(), all.data() + r * rows, one.size() * sizeof(float)), 0)
            << ops::cpu::cpu_isa_name(isa) << " " << ops::quant_type_name(f.type) << " row " << r;
      }
    }
  }
}

}  // namespace
}  // namespace cartserve
