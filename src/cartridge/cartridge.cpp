#include "cartridge/cartridge.h"

namespace cartserve {

uint64_t CartridgeData::nbytes() const {
  uint64_t n = 0;
  for (const auto& t : keys) n += t.nbytes();
  for (const auto& t : values) n += t.nbytes();
  return n;
}

Status CartridgeData::validate() const {
  if (num_layers <= 0 || num_kv_heads <= 0 || head_dim <= 0 || num_tokens <= 0) {
    return make_error(ErrorCode::kCorrupt,
                      "cartridge dimensions must be positive (layers={}, kv_heads={}, "
                      "head_dim={}, tokens={})",
                      num_layers, num_kv_heads, head_dim, num_tokens);
  }
  if (num_frozen_tokens < 0 || num_frozen_tokens > num_tokens) {
    return make_error(ErrorCode::kCorrupt, "cartridge frozen tokens {} not in [0, {}]",
                      num_frozen_tokens, num_tokens);
  }
  if (keys.size() != static_cast<size_t>(num_layers) ||
      values.size() != static_cast<size_t>(num_layers)) {
    return make_error(ErrorCode::kCorrupt,
                      "cartridge has {} key layers and {} value layers, expected {}", keys.size(),
                      values.size(), num_layers);
  }
  const Shape want = {num_kv_heads, num_tokens, head_dim};
  for (int32_t l = 0; l < num_layers; ++l) {
    for (const auto* t : {&keys[l], &values[l]}) {
      if (t->shape() != want) {
        return make_error(ErrorCode::kCorrupt, "cartridge layer {} {} has shape {}, expected {}", l,
                          t == &keys[l] ? "keys" : "values", shape_to_string(t->shape()),
                          shape_to_string(want));
      }
      if (t->dtype() != dtype) {
        return make_error(ErrorCode::kCorrupt, "cartridge layer {} has dtype {}, expected {}", l,
                          dtype_name(t->dtype()), dtype_name(dtype));
      }
    }
  }
  if (!token_ids.empty() && token_ids.size() != static_cast<size_t>(num_tokens)) {
    return make_error(ErrorCode::kCorrupt, "cartridge stores {} token ids for {} tokens",
                      token_ids.size(), num_tokens);
  }
  return {};
}

}  // namespace cartserve
