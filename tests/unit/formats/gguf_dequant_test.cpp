// Dequantization kernels: block sizes (ggml's GGML_QUANT_SIZES), argument
// errors, hand-computed blocks, and the threaded path equal to the serial one.
// Values against gguf-py are checked in gguf_test.cpp (fixture types.gguf).
#include "formats/gguf_dequant.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "formats/gguf.h"

namespace cartserve {
namespace {

constexpr uint32_t t(GgmlType g) {
  return static_cast<uint32_t>(g);
}

TEST(GgufDequant, TraitsMatchGgml) {
  struct Want {
    GgmlType type;
    int64_t elems;
    size_t bytes;
  };
  // GGML_QUANT_SIZES in gguf-py's constants.py.
  for (const Want& w :
       {Want{GgmlType::kF32, 1, 4}, Want{GgmlType::kF16, 1, 2}, Want{GgmlType::kBF16, 1, 2},
        Want{GgmlType::kF64, 1, 8}, Want{GgmlType::kQ8_0, 32, 34}, Want{GgmlType::kQ4_0, 32, 18},
        Want{GgmlType::kQ4_1, 32, 20}, Want{GgmlType::kQ4_K, 256, 144},
        Want{GgmlType::kQ6_K, 256, 210}}) {
    auto tr = ggml_type_traits(t(w.type));
    ASSERT_TRUE(tr.has_value()) << ggml_type_name(t(w.type));
    EXPECT_EQ(tr->block_elems, w.elems);
    EXPECT_EQ(tr->block_bytes, w.bytes);
  }
  EXPECT_FALSE(ggml_type_traits(t(GgmlType::kQ5_K)).has_value());
  EXPECT_FALSE(ggml_type_traits(t(GgmlType::kI32)).has_value());
  EXPECT_FALSE(ggml_type_traits(1000).has_value());
  // Layout-only types (sizes for validation).
  EXPECT_EQ(ggml_type_layout(t(GgmlType::kQ5_K))->block_bytes, 176u);
  EXPECT_EQ(ggml_type_layout(t(GgmlType::kQ2_K))->block_bytes, 84u);
  EXPECT_EQ(ggml_type_layout(t(GgmlType::kQ3_K))->block_bytes, 110u);
  EXPECT_EQ(ggml_type_layout(t(GgmlType::kQ8_K))->block_bytes, 292u);
  EXPECT_EQ(ggml_type_layout(t(GgmlType::kI64))->block_bytes, 8u);
  EXPECT_FALSE(ggml_type_layout(1000).has_value());
  EXPECT_EQ(ggml_type_name(12), "Q4_K");
  EXPECT_EQ(ggml_type_name(30), "BF16");
  EXPECT_EQ(ggml_type_name(1000), "type1000");
}

TEST(GgufDequant, Nbytes) {
  EXPECT_EQ(ggml_nbytes(t(GgmlType::kQ4_K), 512), 288u);
  EXPECT_EQ(ggml_nbytes(t(GgmlType::kQ8_0), 64), 68u);
  EXPECT_EQ(ggml_nbytes(t(GgmlType::kF16), 3), 6u);
  EXPECT_EQ(ggml_nbytes(t(GgmlType::kQ4_0), 0), 0u);
  EXPECT_FALSE(ggml_nbytes(t(GgmlType::kQ4_0), 33).has_value());
  EXPECT_FALSE(ggml_nbytes(t(GgmlType::kQ4_0), -32).has_value());
  EXPECT_FALSE(ggml_nbytes(t(GgmlType::kQ5_K), 256).has_value());
}

TEST(GgufDequant, ArgumentErrors) {
  std::vector<uint8_t> src(1024);
  std::vector<float> dst(1024);
  EXPECT_EQ(dequantize(t(GgmlType::kQ5_K), src.data(), dst.data(), 256).code(),
            ErrorCode::kUnsupported);
  EXPECT_EQ(dequantize(t(GgmlType::kQ4_K), src.data(), dst.data(), 100).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(dequantize(t(GgmlType::kQ8_0), nullptr, dst.data(), 32).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_TRUE(dequantize(t(GgmlType::kQ8_0), nullptr, nullptr, 0).ok());
}

// One Q8_0 block, computed by hand: d = 0.5 (fp16 0x3800), q = j - 16.
TEST(GgufDequant, Q8_0HandBlock) {
  uint8_t block[34];
  const uint16_t d = 0x3800;
  std::memcpy(block, &d, 2);
  for (int j = 0; j < 32; ++j)
    block[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 16));
  float out[32];
  ASSERT_TRUE(dequantize(t(GgmlType::kQ8_0), block, out, 32).ok());
  for (int j = 0; j < 32; ++j)
    EXPECT_EQ(out[j], 0.5f * static_cast<float>(j - 16)) << j;
}

// Q4_0 / Q4_1: element j < 16 is the low nibble of byte j, element j + 16
// its high nibble.
TEST(GgufDequant, Q4HandBlocks) {
  uint8_t b0[18];
  const uint16_t two = 0x4000;  // 2.0
  std::memcpy(b0, &two, 2);
  for (int j = 0; j < 16; ++j)
    b0[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float o0[32];
  ASSERT_TRUE(dequantize(t(GgmlType::kQ4_0), b0, o0, 32).ok());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(o0[j], 2.0f * static_cast<float>(j - 8));
    EXPECT_EQ(o0[j + 16], 2.0f * static_cast<float>(15 - j - 8));
  }
  uint8_t b1[20];
  const uint16_t half = 0x3800, minus3 = 0xc200;  // d = 0.5, m = -3
  std::memcpy(b1, &half, 2);
  std::memcpy(b1 + 2, &minus3, 2);
  std::memcpy(b1 + 4, b0 + 2, 16);
  float o1[32];
  ASSERT_TRUE(dequantize(t(GgmlType::kQ4_1), b1, o1, 32).ok());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(o1[j], 0.5f * static_cast<float>(j) - 3.0f);
    EXPECT_EQ(o1[j + 16], 0.5f * static_cast<float>(15 - j) - 3.0f);
  }
}

// Random blocks with finite fp16 scales at every scale position.
std::vector<uint8_t> random_blocks(uint32_t type, int64_t n, std::mt19937& rng) {
  const auto tr = *ggml_type_traits(type);
  const int64_t n_blocks = n / tr.block_elems;
  std::vector<uint8_t> buf(static_cast<size_t>(n_blocks) * tr.block_bytes);
  for (auto& b : buf)
    b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> scale(-0.02f, 0.02f);
  auto put = [&](size_t off) {
    const uint16_t h = f32_to_fp16(scale(rng));
    std::memcpy(&buf[off], &h, 2);
  };
  for (int64_t b = 0; b < n_blocks; ++b) {
    const size_t base = static_cast<size_t>(b) * tr.block_bytes;
    switch (static_cast<GgmlType>(type)) {
      case GgmlType::kF16:
      case GgmlType::kBF16:
        put(base);
        break;
      case GgmlType::kF32: {
        const float v = scale(rng);
        std::memcpy(&buf[base], &v, 4);
        break;
      }
      case GgmlType::kF64: {
        const double v = scale(rng);
        std::memcpy(&buf[base], &v, 8);
        break;
      }
      case GgmlType::kQ8_0:
      case GgmlType::kQ4_0:
        put(base);
        break;
      case GgmlType::kQ4_1:
      case GgmlType::kQ4_K:
        put(base);
        put(base + 2);
        break;
      case GgmlType::kQ6_K:
        put(base + 208);
        break;
      default:
        break;
    }
  }
  return buf;
}

TEST(GgufDequant, ParallelEqualsSerialAndThroughput) {
  ThreadPool pool(4);
  std::mt19937 rng(1234);
  const int64_t n = 1 << 22;  // 4M values: many tasks per thread
  for (GgmlType g :
       {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kF64, GgmlType::kQ8_0,
        GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ4_K, GgmlType::kQ6_K}) {
    const std::vector<uint8_t> src = random_blocks(t(g), n, rng);
    std::vector<float> serial(n), parallel(n, -1.0f);
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(dequantize(t(g), src.data(), serial.data(), n).ok());
    const auto t1 = std::chrono::steady_clock::now();
    ASSERT_TRUE(dequantize_parallel(t(g), src.data(), parallel.data(), n, pool).ok());
    const auto t2 = std::chrono::steady_clock::now();
    EXPECT_EQ(std::memcmp(serial.data(), parallel.data(), n * sizeof(float)), 0)
        << ggml_type_name(t(g));
    const double s1 = std::chrono::duration<double>(t1 - t0).count();
    const double s2 = std::chrono::duration<double>(t2 - t1).count();
    std::cout << "[   info   ] " << ggml_type_name(t(g)) << ": 1 thread " << n * 4 / s1 / 1e6
              << " MB/s, 4 threads " << n * 4 / s2 / 1e6 << " MB/s (fp32 out)\n";
  }
}

}  // namespace
}  // namespace cartserve
