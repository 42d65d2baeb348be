#include "cartridge/compose.h"

#include <cmath>
#include <cstring>

namespace cartserve {

void rotate_keys(float* keys, int32_t num_heads, int32_t num_tokens, int32_t head_dim,
                 int32_t shift, const std::vector<float>& inv_freq) {
  // R(p + s) = R(s) R(p): rotating a key stored at p by angle s * inv_freq
  // gives the key at p + s. Pairs (i, i + D/2) as in rotate_half.
  const int32_t half = head_dim / 2;
  std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
  for (int32_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(shift) * inv_freq[static_cast<size_t>(i)];
    c[i] = static_cast<float>(std::cos(angle));
    s[i] = static_cast<float>(std::sin(angle));
  }
  for (int32_t h = 0; h < num_heads; ++h) {
    for (int32_t t = 0; t < num_tokens; ++t) {
      float* k = keys + (static_cast<size_t>(h) * num_tokens + t) * head_dim;
      for (int32_t i = 0; i < half; ++i) {
        const float a = k[i], b = k[i + half];
        k[i] = a * c[i] - b * s[i];
        k[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

Result<CartridgeData> compose_cartridges(const std::vector<const CartridgeData*>& parts,
                                         bool rerotate, const std::vector<float>& inv_freq) {
  if (parts.empty()) return make_error(ErrorCode::kInvalidArgument, "nothing to compose");
  const CartridgeData& first = *parts[0];
  CartridgeData out;
  out.num_layers = first.num_layers;
  out.num_kv_heads = first.num_kv_heads;
  out.head_dim = first.head_dim;
  out.num_frozen_tokens = first.num_frozen_tokens;
  out.dtype = DType::kF32;
  bool all_ids = true;
  for (const auto* p : parts) {
    if (p->num_layers != first.num_layers || p->num_kv_heads != first.num_kv_heads ||
        p->head_dim != first.head_dim) {
      return make_error(ErrorCode::kInvalidArgument,
                        "cannot compose cartridges of different shapes ({} layers x {} heads x {} "
                        "vs {} x {} x {})",
                        first.num_layers, first.num_kv_heads, first.head_dim, p->num_layers,
                        p->num_kv_heads, p->head_dim);
    }
    out.num_tokens += p->num_tokens;
    all_ids = all_ids && !p->token_ids.empty();
  }
  if (rerotate && inv_freq.size() != static_cast<size_t>(first.head_dim / 2)) {
    return make_error(ErrorCode::kInvalidArgument, "re-rotation needs the model's RoPE table");
  }
  const int32_t H = out.num_kv_heads, D = out.head_dim, T = out.num_tokens;
  for (int32_t l = 0; l < out.num_layers; ++l) {
    Tensor k(DType::kF32, {H, T, D}), v(DType::kF32, {H, T, D});
    int32_t offset = 0;
    for (const auto* p : parts) {
      const Tensor pk = p->keys[static_cast<size_t>(l)].to(DType::kF32);
      const Tensor pv = p->values[static_cast<size_t>(l)].to(DType::kF32);
      std::vector<float> rot;
      const float* kd = pk.data<float>();
      if (rerotate && offset > 0) {
        rot.assign(kd, kd + pk.numel());
        rotate_keys(rot.data(), H, p->num_tokens, D, offset, inv_freq);
        kd = rot.data();
      }
      for (int32_t h = 0; h < H; ++h) {
        const size_t dst = (static_cast<size_t>(h) * T + offset) * D;
        const size_t src = static_cast<size_t>(h) * p->num_tokens * D;
        const size_t n = static_cast<size_t>(p->num_tokens) * D;
        std::memcpy(k.data<float>() + dst, kd + src, n * sizeof(float));
        std::memcpy(v.data<float>() + dst, pv.data<float>() + src, n * sizeof(float));
      }
      offset += p->num_tokens;
    }
    out.keys.push_back(std::move(k));
    out.values.push_back(std::move(v));
  }
  if (all_ids) {
    for (const auto* p : parts)
      out.token_ids.insert(out.token_ids.end(), p->token_ids.begin(), p->token_ids.end());
  }
  return out;
}

}  // namespace cartserve
