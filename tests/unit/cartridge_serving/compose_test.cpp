#include "cartridge/compose.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "kernels/ops.h"

namespace cartserve {
namespace {

CartridgeData make(int32_t tokens, float base, bool ids) {
  CartridgeData c;
  c.num_layers = 2;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  c.num_tokens = tokens;
  c.dtype = DType::kF32;
  for (int32_t l = 0; l < 2; ++l) {
    Tensor k(DType::kF32, {2, tokens, 4}), v(DType::kF32, {2, tokens, 4});
    for (int64_t i = 0; i < k.numel(); ++i) {
      k.data<float>()[i] = base + l * 1000 + static_cast<float>(i);
      v.data<float>()[i] = -(base + l * 1000 + static_cast<float>(i));
    }
    c.keys.push_back(k);
    c.values.push_back(v);
  }
  if (ids) {
    for (int32_t t = 0; t < tokens; ++t)
      c.token_ids.push_back(static_cast<int32_t>(base) + t);
  }
  return c;
}

TEST(Compose, ConcatenatesAlongTokensInRequestOrder) {
  const CartridgeData a = make(3, 0, true), b = make(2, 500, true);
  auto c = compose_cartridges({&a, &b}, false, {});
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_TRUE(c->validate().ok());
  EXPECT_EQ(c->num_tokens, 5);
  EXPECT_EQ(c->token_ids, (std::vector<int32_t>{0, 1, 2, 500, 501}));
  // Head 1, token 3 (b's token 0) of layer 1.
  const float* k = c->keys[1].data<float>();
  EXPECT_EQ(k[(1 * 5 + 3) * 4], b.keys[1].data<float>()[(1 * 2 + 0) * 4]);
  EXPECT_EQ(k[(1 * 5 + 2) * 4], a.keys[1].data<float>()[(1 * 3 + 2) * 4]);
  const CartridgeData no_ids = make(2, 7, false);
  EXPECT_TRUE(compose_cartridges({&a, &no_ids}, false, {})->token_ids.empty());
}

TEST(Compose, RejectsMismatchedShapes) {
  CartridgeData a = make(3, 0, false), b = make(2, 0, false);
  b.num_kv_heads = 1;
  EXPECT_FALSE(compose_cartridges({&a, &b}, false, {}).ok());
  EXPECT_FALSE(compose_cartridges({}, false, {}).ok());
  EXPECT_FALSE(compose_cartridges({&a, &a}, true, {1.f}).ok());  // wrong RoPE table size
}

TEST(Compose, RerotationEqualsRopeAtTheShiftedPosition) {
  // A key rotated for position p, then re-rotated by s, equals the same raw
  // key rotated for position p + s.
  const int32_t H = 2, D = 8, T = 5, shift = 37;
  std::vector<float> inv(D / 2);
  for (int i = 0; i < D / 2; ++i)
    inv[i] = std::pow(10000.f, -2.f * i / D);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> raw(static_cast<size_t>(T) * H * D);  // [T, H, D] for the rope op
  for (auto& x : raw)
    x = nd(rng);
  std::vector<int32_t> pos(T), pos_shifted(T);
  for (int32_t t = 0; t < T; ++t) {
    pos[t] = 11 + t;
    pos_shifted[t] = 11 + t + shift;
  }
  std::vector<float> at_p = raw, at_ps = raw;
  ops::cpu::rope(at_p.data(), pos.data(), {inv.data(), D}, T, H);
  ops::cpu::rope(at_ps.data(), pos_shifted.data(), {inv.data(), D}, T, H);
  // To [H, T, D], re-rotate, compare.
  std::vector<float> keys(at_p.size());
  for (int32_t t = 0; t < T; ++t)
    for (int32_t h = 0; h < H; ++h)
      for (int32_t d = 0; d < D; ++d)
        keys[(h * T + t) * D + d] = at_p[(t * H + h) * D + d];
  rotate_keys(keys.data(), H, T, D, shift, inv);
  float max_diff = 0.f;
  for (int32_t t = 0; t < T; ++t)
    for (int32_t h = 0; h < H; ++h)
      for (int32_t d = 0; d < D; ++d)
        max_diff =
            std::max(max_diff, std::fabs(keys[(h * T + t) * D + d] - at_ps[(t * H + h) * D + d]));
  EXPECT_LT(max_diff, 1e-4f);
}

}  // namespace
}  // namespace cartserve
