// The value formula of tools/make_cartridge_fixtures.py, shared by the
// cartridge-format and torch .pt tests:
//   value(which, layer, head, token, dim) =
//       ((which*17 + layer*31 + head*13 + token*7 + dim*3) % 61 - 30) / 8
// which = 0 for keys, 1 for values; token counts frozen tokens first.
// Every value is a multiple of 1/8 in [-3.75, 3.75]: exact in bf16/fp16/fp32.
#pragma once

#include <cstdint>

namespace cartserve::testing {

constexpr int kFixLayers = 2, kFixHeads = 2, kFixFrozen = 3, kFixTrainable = 5, kFixDim = 4;
constexpr int kFixTokens = kFixFrozen + kFixTrainable;

inline float fixture_value(int which, int layer, int head, int token, int dim) {
  return static_cast<float>((which * 17 + layer * 31 + head * 13 + token * 7 + dim * 3) % 61 - 30) /
         8.0f;
}

}  // namespace cartserve::testing
