// 8-lane float vectors through GCC vector extensions: AVX2 where the kernels
// are built for x86-64-v3, plain code the compiler splits elsewhere.
#pragma once

#include <cstdint>
#include <cstring>

namespace cartserve::ops::cpu::simd {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Eight bf16 values (the top halves of fp32s) widened to fp32.
inline v8f load8_bf16(const uint16_t* p) {
  typedef uint16_t v8u16 __attribute__((vector_size(16)));
  v8u16 h;
  std::memcpy(&h, p, sizeof(h));
  const v8i bits = __builtin_convertvector(h, v8i) << 16;
  v8f v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

inline void store8(float* p, v8f v) {
  std::memcpy(p, &v, sizeof(v));
}

inline v8f splat(float x) {
  return v8f{x, x, x, x, x, x, x, x};
}

inline float hsum(v8f v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i)
    s += v[i];
  return s;
}

inline float hmax(v8f v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i)
    m = v[i] > m ? v[i] : m;
  return m;
}

// e^x per lane, relative error below 2e-7 for x in [-87, 88] (clamped there):
// 2^n e^r with n = round(x log2 e) and r = x - n ln 2 in two parts (Cody-Waite),
// |r| <= ln 2 / 2, e^r by its degree-7 series.
inline v8f exp8(v8f x) {
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const v8f magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const v8f n = (x * 1.44269504088896341f + magic) - magic;
  const v8f r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  v8f p = splat(1.0f / 5040);
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

}  // namespace cartserve::ops::cpu::simd
