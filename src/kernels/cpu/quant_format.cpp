// Sizes and names of the quantized formats, and their dequantization to fp32
// (the embedding lookup of a quantized table, the prefill panels and the
// tests' reference).
#include <cassert>

#include "kernels/cpu/quant_blocks.h"
#include "kernels/quant_ops.h"

namespace cartserve::ops {

bool quant_type_from_ggml(uint32_t ggml_type, QuantType* out) {
  for (QuantType t :
       {QuantType::kQ4_0, QuantType::kQ4_1, QuantType::kQ8_0, QuantType::kQ4_K, QuantType::kQ6_K}) {
    if (static_cast<uint32_t>(t) == ggml_type) {
      *out = t;
      return true;
    }
  }
  return false;
}

const char* quant_type_name(QuantType t) {
  switch (t) {
    case QuantType::kQ4_0:
      return "Q4_0";
    case QuantType::kQ4_1:
      return "Q4_1";
    case QuantType::kQ8_0:
      return "Q8_0";
    case QuantType::kQ4_K:
      return "Q4_K";
    case QuantType::kQ6_K:
      return "Q6_K";
  }
  return "?";
}

int quant_block_elems(QuantType t) {
  return t == QuantType::kQ4_K || t == QuantType::kQ6_K ? 256 : 32;
}

size_t quant_block_bytes(QuantType t) {
  switch (t) {
    case QuantType::kQ4_0:
      return cpu::blocks::kQ4_0Bytes;
    case QuantType::kQ4_1:
      return cpu::blocks::kQ4_1Bytes;
    case QuantType::kQ8_0:
      return cpu::blocks::kQ8_0Bytes;
    case QuantType::kQ4_K:
      return cpu::blocks::kQ4_KBytes;
    case QuantType::kQ6_K:
      return cpu::blocks::kQ6_KBytes;
  }
  return 0;
}

size_t quant_row_bytes(QuantType t, int64_t cols) {
  return static_cast<size_t>(cols / quant_block_elems(t)) * quant_block_bytes(t);
}

namespace cpu {
namespace {

using blocks::f16;

// One row of k elements.
void dequantize_row(QuantType t, const uint8_t* p, int64_t k, float* y) {
  switch (t) {
    case QuantType::kQ4_0:
      for (int64_t b = 0; b < k / 32; ++b, p += blocks::kQ4_0Bytes, y += 32) {
        const float d = f16(p);
        for (int i = 0; i < 16; ++i) {
          y[i] = static_cast<float>((p[2 + i] & 0x0f) - 8) * d;
          y[i + 16] = static_cast<float>((p[2 + i] >> 4) - 8) * d;
        }
      }
      return;
    case QuantType::kQ4_1:
      for (int64_t b = 0; b < k / 32; ++b, p += blocks::kQ4_1Bytes, y += 32) {
        const float d = f16(p), m = f16(p + 2);
        for (int i = 0; i < 16; ++i) {
          y[i] = static_cast<float>(p[4 + i] & 0x0f) * d + m;
          y[i + 16] = static_cast<float>(p[4 + i] >> 4) * d + m;
        }
      }
      return;
    case QuantType::kQ8_0:
      for (int64_t b = 0; b < k / 32; ++b, p += blocks::kQ8_0Bytes, y += 32) {
        const float d = f16(p);
        for (int i = 0; i < 32; ++i)
          y[i] = static_cast<float>(static_cast<int8_t>(p[2 + i])) * d;
      }
      return;
    case QuantType::kQ4_K:
      for (int64_t b = 0; b < k / 256; ++b, p += blocks::kQ4_KBytes, y += 256) {
        const float d = f16(p), dmin = f16(p + 2);
        const uint8_t* q = p + 16;
        for (int j = 0; j < 8; ++j) {
          int sc, m;
          blocks::q4k_scale_min(j, p + 4, &sc, &m);
          const float ds = d * static_cast<float>(sc), dm = dmin * static_cast<float>(m);
          const uint8_t* qj = q + 32 * (j / 2);
          for (int i = 0; i < 32; ++i) {
            const int v = j % 2 == 0 ? (qj[i] & 0x0f) : (qj[i] >> 4);
            y[32 * j + i] = ds * static_cast<float>(v) - dm;
          }
        }
      }
      return;
    case QuantType::kQ6_K:
      for (int64_t b = 0; b < k / 256; ++b, p += blocks::kQ6_KBytes, y += 256) {
        const float d = f16(p + 208);
        const auto* sc = reinterpret_cast<const int8_t*>(p + 192);
        for (int t6 = 0; t6 < 256; ++t6) {
          y[t6] = d * static_cast<float>(sc[blocks::q6k_scale_index(t6)]) *
                  static_cast<float>(blocks::q6k_quant(p, t6) - 32);
        }
      }
      return;
  }
}

}  // namespace

void dequantize_rows(const QuantMatrix& w, int64_t row0, int64_t n, float* out) {
  assert(row0 >= 0 && row0 + n <= w.rows);
  for (int64_t r = 0; r < n; ++r)
    dequantize_row(w.type, w.data + static_cast<size_t>(row0 + r) * w.row_bytes, w.cols,
                   out + static_cast<size_t>(r) * static_cast<size_t>(w.cols));
}

}  // namespace cpu
}  // namespace cartserve::ops
