// The x86 dot-product kernels of quant_dot_avx2.cpp and quant_dot_avx512.cpp,
// written once: each includes this header under its own target (the AVX-512
// one through #pragma GCC target, so the binary still runs on AVX2-only
// CPUs) and with QDOT_VNNI set to use vpdpwssd (AVX-512 VNNI on 256-bit
// registers) instead of vpmaddwd + vpaddd for the block products.
//
// Per weight row, every block of 32 weights is decoded once into registers
// (two vectors of 16 int16 quants, a float scale and an offset coefficient)
// and dotted with up to kMaxR int16 activation rows, whose partial sums stay
// in registers. Include in one .cpp only, after setting QDOT_VNNI.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/quant_blocks.h"
#include "kernels/quant_ops.h"

#ifndef QDOT_VNNI
#error "define QDOT_VNNI (0 or 1) before including quant_dot_x86.h"
#endif

namespace {

using cartserve::ops::QActRows;
using cartserve::ops::QuantMatrix;
using cartserve::ops::QuantType;
namespace blocks = cartserve::ops::cpu::blocks;

constexpr int kMaxR = 4;

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m128i load16(const void* p) {
  return _mm_loadu_si128(static_cast<const __m128i*>(p));
}
inline __m256i load32(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// 32 weights as int16: lo = elements 0..15, hi = 16..31.
struct W32 {
  __m256i lo, hi;
};

// 8 int32 partial sums of w[i] * x[i] over the 32 elements at x.
inline __m256i dot32(const W32& w, const int16_t* x) {
  const __m256i s = _mm256_madd_epi16(w.lo, load32(x));
#if QDOT_VNNI
  return _mm256_dpwssd_epi32(s, w.hi, load32(x + 16));
#else
  return _mm256_add_epi32(s, _mm256_madd_epi16(w.hi, load32(x + 16)));
#endif
}

// 16 bytes of nibbles (element i < 16 low, 16 + i high) -> 32 weights.
inline W32 nibbles(const uint8_t* q) {
  const __m256i b = _mm256_cvtepu8_epi16(load16(q));
  return {_mm256_and_si256(b, _mm256_set1_epi16(0x0f)), _mm256_srli_epi16(b, 4)};
}

// One decoded block of 32 weights: w = scale * q + off.
struct Block {
  W32 q;
  float scale;
  float off;
};

// Rows [r0, r0 + R) of a against blocks [b0, nb) of one weight row of a
// format with 32-element units decoded by dec(b, &blk) (b = index of the
// 32-block in the row); y[r * ldy] = the sum + base[r] (base may be null).
template <int R, bool kOff, typename Dec>
inline void run_rows(const Dec& dec, int64_t nb, const QActRows& a, int r0, float* y, size_t ldy,
                     int64_t b0 = 0, const float* base = nullptr) {
  __m256 acc[R];
  float off[R];
  const int16_t* xq[R];
  const float* dx[R];
  const float* sx[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    off[r] = 0.f;
    xq[r] = a.q_row(r0 + r);
    dx[r] = a.d_row(r0 + r);
    sx[r] = a.s_row(r0 + r);
  }
  for (int64_t b = b0; b < nb; ++b) {
    Block blk;
    dec(b, &blk);
    for (int r = 0; r < R; ++r) {
      const __m256 p = _mm256_cvtepi32_ps(dot32(blk.q, xq[r] + 32 * b));
      acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(blk.scale * dx[r][b]), acc[r]);
      if constexpr (kOff) off[r] += blk.off * sx[r][b];
    }
  }
  for (int r = 0; r < R; ++r)
    y[static_cast<size_t>(r) * ldy] = hsum(acc[r]) + off[r] + (base ? base[r] : 0.f);
}

// Block decoders of run_rows.
struct DecQ4_0 {
  const uint8_t* p;
  void operator()(int64_t b, Block* o) const {
    const uint8_t* q = p + b * blocks::kQ4_0Bytes;
    o->q = nibbles(q + 2);
    o->scale = f16(q);
    o->off = -8.0f * o->scale;
  }
};
struct DecQ4_1 {
  const uint8_t* p;
  void operator()(int64_t b, Block* o) const {
    const uint8_t* q = p + b * blocks::kQ4_1Bytes;
    o->q = nibbles(q + 4);
    o->scale = f16(q);
    o->off = f16(q + 2);
  }
};
struct DecQ8_0 {
  const uint8_t* p;
  void operator()(int64_t b, Block* o) const {
    const uint8_t* q = p + b * blocks::kQ8_0Bytes;
    o->q = {_mm256_cvtepi8_epi16(load16(q + 2)), _mm256_cvtepi8_epi16(load16(q + 18))};
    o->scale = f16(q);
    o->off = 0.f;
  }
};
struct DecQ4_K {
  const uint8_t* p;
  void operator()(int64_t b, Block* o) const {
    const uint8_t* q = p + (b / 8) * blocks::kQ4_KBytes;
    const int j = static_cast<int>(b % 8);
    int sc, m;
    blocks::q4k_scale_min(j, q + 4, &sc, &m);
    const uint8_t* qj = q + 16 + 32 * (j / 2);
    const __m256i lo = _mm256_cvtepu8_epi16(load16(qj));
    const __m256i hi = _mm256_cvtepu8_epi16(load16(qj + 16));
    if (j % 2 == 0) {
      o->q = {_mm256_and_si256(lo, _mm256_set1_epi16(0x0f)),
              _mm256_and_si256(hi, _mm256_set1_epi16(0x0f))};
    } else {
      o->q = {_mm256_srli_epi16(lo, 4), _mm256_srli_epi16(hi, 4)};
    }
    o->scale = f16(q) * static_cast<float>(sc);
    o->off = -f16(q + 2) * static_cast<float>(m);
  }
};

// 8 vectors of 8 int32 -> one vector of their 8 sums (s[0]'s first).
inline __m256i reduce8(const __m256i* s) {
  const __m256i h01 = _mm256_hadd_epi32(s[0], s[1]);
  const __m256i h23 = _mm256_hadd_epi32(s[2], s[3]);
  const __m256i h45 = _mm256_hadd_epi32(s[4], s[5]);
  const __m256i h67 = _mm256_hadd_epi32(s[6], s[7]);
  // t: [s0..s3 over lanes 0-3 | over lanes 4-7]; u the same for s4..s7.
  const __m256i t = _mm256_hadd_epi32(h01, h23);
  const __m256i u = _mm256_hadd_epi32(h45, h67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(t, u, 0x20),
                          _mm256_permute2x128_si256(t, u, 0x31));
}

// Eight f16 values at p, p + stride, ... as floats.
inline __m256 load_f16x8(const uint8_t* p, size_t stride) {
  uint16_t h[8];
  for (int i = 0; i < 8; ++i)
    std::memcpy(&h[i], p + i * stride, 2);
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h)));
}

// Q4_0, Q4_1, Q8_0 (blocks of 32 with one f16 scale, Q4_1 an f16 min):
// groups of 8 blocks, whose 8 integer block sums are reduced into one
// vector, so the float work (conversion, scales, offsets) is one vector op
// per group instead of one per block. The rest of the row (nb % 8 blocks)
// goes through run_rows.
template <int R, QuantType T>
inline void run_rows_32(const uint8_t* p, int64_t nb, const QActRows& a, int r0, float* y,
                        size_t ldy) {
  constexpr bool kOff = T != QuantType::kQ8_0;
  constexpr size_t kBytes = T == QuantType::kQ4_0   ? blocks::kQ4_0Bytes
                            : T == QuantType::kQ4_1 ? blocks::kQ4_1Bytes
                                                    : blocks::kQ8_0Bytes;
  __m256 acc[R], off[R];
  const int16_t* xq[R];
  const float* dx[R];
  const float* sx[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    off[r] = _mm256_setzero_ps();
    xq[r] = a.q_row(r0 + r);
    dx[r] = a.d_row(r0 + r);
    sx[r] = a.s_row(r0 + r);
  }
  const int64_t nb8 = nb / 8 * 8;
  for (int64_t b = 0; b < nb8; b += 8) {
    const uint8_t* q = p + static_cast<size_t>(b) * kBytes;
    W32 w[8];
    for (int i = 0; i < 8; ++i) {
      const uint8_t* qi = q + i * kBytes;
      if constexpr (T == QuantType::kQ4_0) w[i] = nibbles(qi + 2);
      if constexpr (T == QuantType::kQ4_1) w[i] = nibbles(qi + 4);
      if constexpr (T == QuantType::kQ8_0) {
        w[i] = {_mm256_cvtepi8_epi16(load16(qi + 2)), _mm256_cvtepi8_epi16(load16(qi + 18))};
      }
    }
    const __m256 dw = load_f16x8(q, kBytes);
    __m256 mw = _mm256_setzero_ps();
    if constexpr (T == QuantType::kQ4_0) mw = _mm256_mul_ps(dw, _mm256_set1_ps(-8.0f));
    if constexpr (T == QuantType::kQ4_1) mw = load_f16x8(q + 2, kBytes);
    for (int r = 0; r < R; ++r) {
      __m256i s[8];
      for (int i = 0; i < 8; ++i)
        s[i] = dot32(w[i], xq[r] + 32 * (b + i));
      const __m256 p8 = _mm256_cvtepi32_ps(reduce8(s));
      acc[r] = _mm256_fmadd_ps(p8, _mm256_mul_ps(dw, _mm256_loadu_ps(dx[r] + b)), acc[r]);
      if constexpr (kOff) off[r] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(sx[r] + b), off[r]);
    }
  }
  float sums[R];
  for (int r = 0; r < R; ++r)
    sums[r] = hsum(_mm256_add_ps(acc[r], off[r]));
  if (nb8 == nb) {
    for (int r = 0; r < R; ++r)
      y[static_cast<size_t>(r) * ldy] = sums[r];
  } else if constexpr (T == QuantType::kQ4_0) {
    run_rows<R, true>(DecQ4_0{p}, nb, a, r0, y, ldy, nb8, sums);
  } else if constexpr (T == QuantType::kQ4_1) {
    run_rows<R, true>(DecQ4_1{p}, nb, a, r0, y, ldy, nb8, sums);
  } else {
    run_rows<R, false>(DecQ8_0{p}, nb, a, r0, y, ldy, nb8, sums);
  }
}

// Q6_K: per 32-block two scales of 16, multiplied into the int16 weights
// (|(q - 32) * sc| <= 32 * 128), so each int32 lane of the block product
// holds 4 products: |.| <= 4 * 4096 * 32767 < 2^31.
template <int R>
inline void run_rows_q6k(const uint8_t* p, int64_t nsb, const QActRows& a, int r0, float* y,
                         size_t ldy) {
  __m256 acc[R];
  const int16_t* xq[R];
  const float* dx[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    xq[r] = a.q_row(r0 + r);
    dx[r] = a.d_row(r0 + r);
  }
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m256i m2 = _mm256_set1_epi8(0x03);
  const __m256i k32 = _mm256_set1_epi16(32);
  for (int64_t sb = 0; sb < nsb; ++sb, p += blocks::kQ6_KBytes) {
    const float d = f16(p + 208);
    const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load32(p + 64 * h);
      const __m256i ql1 = load32(p + 64 * h + 32);
      const __m256i qh = load32(p + 128 + 32 * h);
      __m256i q[4];  // 32 quants 0..63 of 32-blocks 4h .. 4h + 3
      q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4),
                             _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
      q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
      q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
      q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                             _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
      for (int pq = 0; pq < 4; ++pq) {
        const int j = 4 * h + pq;  // 32-block within the super-block
        const __m256i lo =
            _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(q[pq])), k32);
        const __m256i hi =
            _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(q[pq], 1)), k32);
        const W32 w = {_mm256_mullo_epi16(lo, _mm256_set1_epi16(sc[2 * j])),
                       _mm256_mullo_epi16(hi, _mm256_set1_epi16(sc[2 * j + 1]))};
        const int64_t xb = 8 * sb + j;
        for (int r = 0; r < R; ++r) {
          const __m256 pf = _mm256_cvtepi32_ps(dot32(w, xq[r] + 32 * xb));
          acc[r] = _mm256_fmadd_ps(pf, _mm256_set1_ps(d * dx[r][xb]), acc[r]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    y[static_cast<size_t>(r) * ldy] = hsum(acc[r]);
}

template <int R>
void dot_one_row(const QuantMatrix& w, const uint8_t* p, const QActRows& a, int r0, float* y,
                 size_t ldy) {
  const int64_t nb = w.cols / 32;
  switch (w.type) {
    case QuantType::kQ4_0:
      return run_rows_32<R, QuantType::kQ4_0>(p, nb, a, r0, y, ldy);
    case QuantType::kQ4_1:
      return run_rows_32<R, QuantType::kQ4_1>(p, nb, a, r0, y, ldy);
    case QuantType::kQ8_0:
      return run_rows_32<R, QuantType::kQ8_0>(p, nb, a, r0, y, ldy);
    case QuantType::kQ4_K:
      return run_rows<R, true>(DecQ4_K{p}, nb, a, r0, y, ldy);
    case QuantType::kQ6_K:
      return run_rows_q6k<R>(p, w.cols / 256, a, r0, y, ldy);
  }
}

// The kernel contract of kernels/cpu/quant_dot.h.
inline void quant_dot_x86(const QuantMatrix& w, int64_t j0, int64_t j1, const QActRows& a, int r0,
                          int r1, float* y, size_t ldy) {
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* p = w.data + static_cast<size_t>(j) * w.row_bytes;
    float* yj = y + (j - j0);
    for (int r = r0; r < r1; r += kMaxR) {
      float* yr = yj + static_cast<size_t>(r - r0) * ldy;
      switch (std::min(kMaxR, r1 - r)) {
        case 1:
          dot_one_row<1>(w, p, a, r, yr, ldy);
          break;
        case 2:
          dot_one_row<2>(w, p, a, r, yr, ldy);
          break;
        case 3:
          dot_one_row<3>(w, p, a, r, yr, ldy);
          break;
        default:
          dot_one_row<4>(w, p, a, r, yr, ldy);
          break;
      }
    }
  }
}

}  // namespace
