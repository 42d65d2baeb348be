#include "model/rope.h"

#include <cmath>
#include <numbers>

namespace cartserve {

std::vector<float> rope_inv_freq(const ModelConfig& config,
                                 const std::vector<float>& freq_factors) {
  const int half = config.head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    // fp32 exponent as in the HF reference (arange(0, dim, 2).float() / dim).
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(config.head_dim);
    inv[i] = static_cast<float>(1.0 / std::pow(config.rope_theta, static_cast<double>(exponent)));
  }
  const RopeScaling& rs = config.rope_scaling;
  if (rs.type == RopeScaling::Type::kLinear) {
    for (float& f : inv)
      f = static_cast<float>(f / rs.factor);
  } else if (rs.type == RopeScaling::Type::kLlama3) {
    const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
    const double low_wavelen = old_ctx / rs.low_freq_factor;
    const double high_wavelen = old_ctx / rs.high_freq_factor;
    for (float& f : inv) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = static_cast<float>(f / rs.factor);
      } else if (wavelen >= high_wavelen) {  // medium band: blend
        const double smooth =
            (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = static_cast<float>((1.0 - smooth) * f / rs.factor + smooth * f);
      }
    }
  }
  if (!freq_factors.empty()) {
    for (int i = 0; i < half && i < static_cast<int>(freq_factors.size()); ++i) {
      inv[i] = inv[i] / freq_factors[i];
    }
  }
  return inv;
}

}  // namespace cartserve
