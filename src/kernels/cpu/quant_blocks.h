// Field access for the ggml block formats (layouts: kernels/quant_ops.h),
// shared by the dequantization and the dot-product kernels.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/dtype.h"

namespace cartserve::ops::cpu::blocks {

inline constexpr size_t kQ4_0Bytes = 2 + 16;
inline constexpr size_t kQ4_1Bytes = 2 + 2 + 16;
inline constexpr size_t kQ8_0Bytes = 2 + 32;
inline constexpr size_t kQ4_KBytes = 2 + 2 + 12 + 128;
inline constexpr size_t kQ6_KBytes = 128 + 64 + 16 + 2;

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return fp16_to_f32(h);
}

// Scale and min (6 bits each) of Q4_K sub-block j (0..7) from the 12 packed
// bytes s: bytes 0..3 hold scales 0..3 and the top 2 bits of scales 4..7,
// bytes 4..7 the same for the mins, bytes 8..11 the low 4 bits of scales 4..7
// (low nibble) and of mins 4..7 (high nibble).
inline void q4k_scale_min(int j, const uint8_t* s, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Element t (0..255) of a Q6_K super-block as 0..63 (the value is this minus
// 32), and the index of its scale (0..15). Half h = t / 128 uses ql[64h..],
// qh[32h..]; within it, element 32p + l (p = 0..3, l = 0..31) takes the low
// (p = 0, 1) or high (p = 2, 3) nibble of ql[l + 32 (p % 2)] and bits 2p,
// 2p + 1 of qh[l].
inline uint8_t q6k_quant(const uint8_t* blk, int t) {
  const int h = t / 128, p = (t % 128) / 32, l = t % 32;
  const uint8_t* ql = blk + 64 * h;
  const uint8_t* qh = blk + 128 + 32 * h;
  const uint8_t lo = ql[l + 32 * (p % 2)];
  const uint8_t nib = p < 2 ? (lo & 0x0f) : (lo >> 4);
  return static_cast<uint8_t>(nib | (((qh[l] >> (2 * p)) & 3) << 4));
}
inline int q6k_scale_index(int t) {
  return t / 16;
}

}  // namespace cartserve::ops::cpu::blocks
