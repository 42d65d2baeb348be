// Portable dot products of quantized weight rows with int16 activation rows
// (kernels/cpu/quant_dot.h): the reference the SIMD kernels are tested
// against, and the kernels of CPUs without AVX2. Per block of 32 (16 for
// Q6_K's scales): an exact integer dot product of the quants with the int16
// activations, scaled by both scales; the offsets come in through the
// activation sums s = dx * sum(x):
//   Q8_0  d*dx*sum(q*x)                       (q signed)
//   Q4_0  d*dx*sum(q*x) - 8*d*s               (q in 0..15)
//   Q4_1  d*dx*sum(q*x) + m*s
//   Q4_K  d*sc_j*dx*sum(q*x) - dmin*m_j*s     (sub-blocks j of 32)
//   Q6_K  d*dx*sum_g sc_g*sum((q-32)*x)       (q in 0..63, groups g of 16)
#include "kernels/cpu/quant_blocks.h"
#include "kernels/cpu/quant_dot.h"

namespace cartserve::ops::cpu::detail {
namespace {

using blocks::f16;

// Exact sum of n products of quants u (0..255) with int16 activations x.
inline int32_t idot(const uint8_t* u, const int16_t* x, int n) {
  int32_t s = 0;
  for (int i = 0; i < n; ++i)
    s += static_cast<int32_t>(u[i]) * x[i];
  return s;
}

float dot_row(QuantType t, const uint8_t* p, const int16_t* x, const float* dx, const float* sx,
              int64_t k) {
  float acc = 0.f;
  uint8_t u[32];
  switch (t) {
    case QuantType::kQ8_0:
      for (int64_t b = 0; b < k / 32; ++b, p += blocks::kQ8_0Bytes) {
        int32_t s = 0;
        for (int i = 0; i < 32; ++i)
          s += static_cast<int32_t>(static_cast<int8_t>(p[2 + i])) * x[32 * b + i];
        acc += f16(p) * dx[b] * static_cast<float>(s);
      }
      break;
    case QuantType::kQ4_0:
    case QuantType::kQ4_1: {
      const bool q41 = t == QuantType::kQ4_1;
      const size_t bytes = q41 ? blocks::kQ4_1Bytes : blocks::kQ4_0Bytes;
      for (int64_t b = 0; b < k / 32; ++b, p += bytes) {
        const uint8_t* q = p + (q41 ? 4 : 2);
        for (int i = 0; i < 16; ++i) {
          u[i] = q[i] & 0x0f;
          u[i + 16] = q[i] >> 4;
        }
        const float d = f16(p);
        const float off = q41 ? f16(p + 2) : -8.0f * d;
        acc += d * dx[b] * static_cast<float>(idot(u, x + 32 * b, 32)) + off * sx[b];
      }
      break;
    }
    case QuantType::kQ4_K:
      for (int64_t b = 0; b < k / 256; ++b, p += blocks::kQ4_KBytes) {
        const float d = f16(p), dmin = f16(p + 2);
        for (int j = 0; j < 8; ++j) {
          int sc, m;
          blocks::q4k_scale_min(j, p + 4, &sc, &m);
          const uint8_t* qj = p + 16 + 32 * (j / 2);
          for (int i = 0; i < 32; ++i)
            u[i] = j % 2 == 0 ? (qj[i] & 0x0f) : (qj[i] >> 4);
          const int64_t xb = 8 * b + j;
          acc +=
              d * static_cast<float>(sc) * dx[xb] * static_cast<float>(idot(u, x + 32 * xb, 32)) -
              dmin * static_cast<float>(m) * sx[xb];
        }
      }
      break;
    case QuantType::kQ6_K:
      for (int64_t b = 0; b < k / 256; ++b, p += blocks::kQ6_KBytes) {
        const float d = f16(p + 208);
        const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
        for (int j = 0; j < 8; ++j) {
          const int16_t* xj = x + 256 * b + 32 * j;
          float s = 0.f;
          for (int g = 0; g < 2; ++g) {
            int32_t sg = 0;  // |.| <= 16 * 32 * 32767
            for (int i = 16 * g; i < 16 * g + 16; ++i)
              sg += (blocks::q6k_quant(p, 32 * j + i) - 32) * xj[i];
            s += static_cast<float>(sc[2 * j + g]) * static_cast<float>(sg);
          }
          acc += d * dx[8 * b + j] * s;
        }
      }
      break;
  }
  return acc;
}

}  // namespace

void quant_dot_scalar(const QuantMatrix& w, int64_t j0, int64_t j1, const QActRows& a, int r0,
                      int r1, float* y, size_t ldy) {
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* row = w.data + static_cast<size_t>(j) * w.row_bytes;
    for (int r = r0; r < r1; ++r) {
      y[static_cast<size_t>(r - r0) * ldy + static_cast<size_t>(j - j0)] =
          dot_row(w.type, row, a.q_row(r), a.d_row(r), a.s_row(r), w.cols);
    }
  }
}

}  // namespace cartserve::ops::cpu::detail
