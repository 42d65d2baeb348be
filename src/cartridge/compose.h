// Composition: several cartridges concatenated along the token axis, in
// request order. Each keeps the RoPE positions it was stored with (the
// Cartridges paper composes this way, without retraining), or, when asked,
// each part's keys are re-rotated to where it now sits (part i shifted by the
// tokens before it).
#pragma once

#include <vector>

#include "cartridge/cartridge.h"
#include "core/status.h"

namespace cartserve {

// `inv_freq` [head_dim / 2] (the model's RoPE table, rotate_half layout) is
// needed only when `rerotate`. Parts must agree on layers, kv heads and
// head_dim; the result has the first part's dtype and frozen tokens, and
// token ids only when every part has them.
Result<CartridgeData> compose_cartridges(const std::vector<const CartridgeData*>& parts,
                                         bool rerotate, const std::vector<float>& inv_freq);

// Rotates keys in place from positions p to p + shift. keys: [H, T, D] fp32.
void rotate_keys(float* keys, int32_t num_heads, int32_t num_tokens, int32_t head_dim,
                 int32_t shift, const std::vector<float>& inv_freq);

}  // namespace cartserve
