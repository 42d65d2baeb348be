// The SIMD helpers of the CPU kernels against libm.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/cpu/simd.h"

namespace cartserve {
namespace {

using ops::cpu::simd::v8f;

TEST(Simd, ExpRelativeErrorBelow2e7OverTheFloatRange) {
  double worst = 0;
  for (float x = -87.f; x <= 88.f; x += 0.00731f) {
    const v8f v = ops::cpu::simd::exp8(v8f{x, x + 1e-3f, -x, 0.f, x / 2, x / 3, x / 7, -1e-4f});
    for (int i = 0; i < 8; ++i) {
      const double in =
          static_cast<double>(v8f{x, x + 1e-3f, -x, 0.f, x / 2, x / 3, x / 7, -1e-4f}[i]);
      if (in < -87.0 || in > 88.0) continue;
      worst = std::max(worst, std::fabs(v[i] / std::exp(in) - 1.0));
    }
  }
  EXPECT_LT(worst, 2e-7);
}

TEST(Simd, ExpClampsOutOfRangeInputs) {
  const v8f v = ops::cpu::simd::exp8(v8f{-1000.f, -INFINITY, 1000.f, 0.f, 1.f, -1.f, 2.f, -2.f});
  EXPECT_GE(v[0], 0.f);
  EXPECT_LT(v[0], 1e-37f);
  EXPECT_LT(v[1], 1e-37f);
  EXPECT_TRUE(std::isfinite(v[2]));
  EXPECT_FLOAT_EQ(v[3], 1.f);
  EXPECT_NEAR(v[4], std::exp(1.f), 1e-6f);
}

TEST(Simd, HorizontalSumAndMax) {
  const v8f v = {1, -2, 3, 4, -5, 6, 7, 0.5f};
  EXPECT_FLOAT_EQ(ops::cpu::simd::hsum(v), 14.5f);
  EXPECT_FLOAT_EQ(ops::cpu::simd::hmax(v), 7.f);
}

}  // namespace
}  // namespace cartserve
