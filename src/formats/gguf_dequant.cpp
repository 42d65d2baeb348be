// Dequantization of ggml blocks to fp32. Each kernel walks whole blocks and
// reproduces gguf-py's float32 arithmetic exactly (see gguf_dequant.h):
//   Q8_0  [d:f16][q:i8 x32]                         y = q * d
//   Q4_0  [d:f16][q:u8 x16]  (low nibbles = 0..15, high = 16..31)
//                                                   y = (q - 8) * d
//   Q4_1  [d:f16][m:f16][q:u8 x16]                  y = d * q + m
//   Q4_K  [d:f16][dmin:f16][scales:u8 x12][q:u8 x128]
//         8 sub-blocks of 32 with 6-bit scale/min; 32 bytes of q hold two
//         sub-blocks (low nibbles, then high)      y = (d*sc) * q - (dmin*m)
//   Q6_K  [ql:u8 x128][qh:u8 x64][scales:i8 x16][d:f16]
//         two halves of 128; 16 sub-blocks of 16   y = (d*sc) * (q - 32)
#include "formats/gguf_dequant.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "formats/gguf.h"

namespace cartserve {
namespace {

static_assert(std::endian::native == std::endian::little, "GGUF data is read as little-endian");

constexpr int64_t kQK = 32;    // elements per Q4_0/Q4_1/Q8_0 block
constexpr int64_t kQKK = 256;  // elements per K-quant super-block

constexpr size_t kQ8_0Bytes = 2 + 32;
constexpr size_t kQ4_0Bytes = 2 + 16;
constexpr size_t kQ4_1Bytes = 2 + 2 + 16;
constexpr size_t kQ4_KBytes = 2 + 2 + 12 + 128;
constexpr size_t kQ6_KBytes = 128 + 64 + 16 + 2;

// fp16 -> f32 for every bit pattern, built once (256 KiB).
const float* fp16_table() {
  static const std::array<float, 65536> table = [] {
    std::array<float, 65536> t{};
    for (uint32_t h = 0; h < 65536; ++h)
      t[h] = fp16_to_f32(static_cast<uint16_t>(h));
    return t;
  }();
  return table.data();
}

inline float load_f16(const uint8_t* p, const float* table) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return table[h];
}

void dequant_f32(const uint8_t* src, float* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * 4);
}

void dequant_f16(const uint8_t* src, float* dst, int64_t n) {
  const float* t = fp16_table();
  for (int64_t i = 0; i < n; ++i)
    dst[i] = load_f16(src + 2 * i, t);
}

void dequant_bf16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, sizeof(h));
    dst[i] = bf16_to_f32(h);
  }
}

void dequant_f64(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    double v;
    std::memcpy(&v, src + 8 * i, sizeof(v));
    dst[i] = static_cast<float>(v);
  }
}

void dequant_q8_0(const uint8_t* src, float* dst, int64_t n_blocks) {
  const float* t = fp16_table();
  for (int64_t b = 0; b < n_blocks; ++b, src += kQ8_0Bytes, dst += kQK) {
    const float d = load_f16(src, t);
    const auto* q = reinterpret_cast<const int8_t*>(src + 2);
    for (int64_t j = 0; j < kQK; ++j)
      dst[j] = static_cast<float>(q[j]) * d;
  }
}

void dequant_q4_0(const uint8_t* src, float* dst, int64_t n_blocks) {
  const float* t = fp16_table();
  for (int64_t b = 0; b < n_blocks; ++b, src += kQ4_0Bytes, dst += kQK) {
    const float d = load_f16(src, t);
    const uint8_t* q = src + 2;
    for (int64_t j = 0; j < kQK / 2; ++j) {
      dst[j] = static_cast<float>(static_cast<int>(q[j] & 0x0f) - 8) * d;
      dst[j + kQK / 2] = static_cast<float>(static_cast<int>(q[j] >> 4) - 8) * d;
    }
  }
}

void dequant_q4_1(const uint8_t* src, float* dst, int64_t n_blocks) {
  const float* t = fp16_table();
  for (int64_t b = 0; b < n_blocks; ++b, src += kQ4_1Bytes, dst += kQK) {
    const float d = load_f16(src, t);
    const float m = load_f16(src + 2, t);
    const uint8_t* q = src + 4;
    for (int64_t j = 0; j < kQK / 2; ++j) {
      dst[j] = d * static_cast<float>(q[j] & 0x0f) + m;
      dst[j + kQK / 2] = d * static_cast<float>(q[j] >> 4) + m;
    }
  }
}

// 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes:
// bytes 0..3 hold scales 0..3 (low 6 bits) and the top 2 bits of scales 4..7,
// bytes 4..7 the same for the mins, bytes 8..11 the low 4 bits of scales 4..7
// (low nibble) and mins 4..7 (high nibble).
inline void q4k_scale_min(int j, const uint8_t* s, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void dequant_q4_k(const uint8_t* src, float* dst, int64_t n_blocks) {
  const float* t = fp16_table();
  for (int64_t b = 0; b < n_blocks; ++b, src += kQ4_KBytes, dst += kQKK) {
    const float d = load_f16(src, t);
    const float dmin = load_f16(src + 2, t);
    const uint8_t* scales = src + 4;
    const uint8_t* q = src + 16;
    for (int pair = 0; pair < 4; ++pair) {  // 64 elements from 32 bytes
      int sc0, m0, sc1, m1;
      q4k_scale_min(2 * pair, scales, &sc0, &m0);
      q4k_scale_min(2 * pair + 1, scales, &sc1, &m1);
      const float d0 = d * static_cast<float>(sc0);
      const float dm0 = dmin * static_cast<float>(m0);
      const float d1 = d * static_cast<float>(sc1);
      const float dm1 = dmin * static_cast<float>(m1);
      const uint8_t* qp = q + 32 * pair;
      float* y = dst + 64 * pair;
      for (int l = 0; l < 32; ++l) {
        y[l] = d0 * static_cast<float>(qp[l] & 0x0f) - dm0;
        y[l + 32] = d1 * static_cast<float>(qp[l] >> 4) - dm1;
      }
    }
  }
}

void dequant_q6_k(const uint8_t* src, float* dst, int64_t n_blocks) {
  const float* t = fp16_table();
  for (int64_t b = 0; b < n_blocks; ++b, src += kQ6_KBytes, dst += kQKK) {
    const uint8_t* ql = src;
    const uint8_t* qh = src + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(src + 192);
    const float d = load_f16(src + 208, t);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* l4 = ql + 64 * half;  // 64 bytes: low 4 bits of 128 values
      const uint8_t* h2 = qh + 32 * half;  // 32 bytes: high 2 bits of 128 values
      float* y = dst + 128 * half;
      // Sub-block scales for positions 0..127 of this half (16 values each).
      float ds[8];
      for (int i = 0; i < 8; ++i)
        ds[i] = d * static_cast<float>(sc[8 * half + i]);
      for (int l = 0; l < 32; ++l) {
        const int q0 = ((l4[l] & 0x0f) | (((h2[l] >> 0) & 3) << 4)) - 32;
        const int q1 = ((l4[l + 32] & 0x0f) | (((h2[l] >> 2) & 3) << 4)) - 32;
        const int q2 = ((l4[l] >> 4) | (((h2[l] >> 4) & 3) << 4)) - 32;
        const int q3 = ((l4[l + 32] >> 4) | (((h2[l] >> 6) & 3) << 4)) - 32;
        y[l] = ds[l / 16] * static_cast<float>(q0);
        y[l + 32] = ds[2 + l / 16] * static_cast<float>(q1);
        y[l + 64] = ds[4 + l / 16] * static_cast<float>(q2);
        y[l + 96] = ds[6 + l / 16] * static_cast<float>(q3);
      }
    }
  }
}

// Runs the kernel of `type` over n_blocks whole blocks.
void dequant_blocks(uint32_t type, const uint8_t* src, float* dst, int64_t n_blocks) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      dequant_f32(src, dst, n_blocks);
      return;
    case GgmlType::kF16:
      dequant_f16(src, dst, n_blocks);
      return;
    case GgmlType::kBF16:
      dequant_bf16(src, dst, n_blocks);
      return;
    case GgmlType::kF64:
      dequant_f64(src, dst, n_blocks);
      return;
    case GgmlType::kQ8_0:
      dequant_q8_0(src, dst, n_blocks);
      return;
    case GgmlType::kQ4_0:
      dequant_q4_0(src, dst, n_blocks);
      return;
    case GgmlType::kQ4_1:
      dequant_q4_1(src, dst, n_blocks);
      return;
    case GgmlType::kQ4_K:
      dequant_q4_k(src, dst, n_blocks);
      return;
    case GgmlType::kQ6_K:
      dequant_q6_k(src, dst, n_blocks);
      return;
    default:
      return;  // callers check ggml_type_traits first
  }
}

Status check_args(uint32_t type, const void* src, float* dst, int64_t n, GgmlTypeTraits* out) {
  const auto traits = ggml_type_traits(type);
  if (!traits) {
    return make_error(ErrorCode::kUnsupported, "cannot dequantize ggml type {}",
                      ggml_type_name(type));
  }
  if (n < 0 || n % traits->block_elems != 0) {
    return make_error(ErrorCode::kInvalidArgument,
                      "dequantize {}: {} elements is not a multiple of the block size {}",
                      ggml_type_name(type), n, traits->block_elems);
  }
  if (n > 0 && (src == nullptr || dst == nullptr)) {
    return make_error(ErrorCode::kInvalidArgument, "dequantize {}: null buffer",
                      ggml_type_name(type));
  }
  *out = *traits;
  return {};
}

}  // namespace

std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      return GgmlTypeTraits{1, 4};
    case GgmlType::kF16:
      return GgmlTypeTraits{1, 2};
    case GgmlType::kBF16:
      return GgmlTypeTraits{1, 2};
    case GgmlType::kF64:
      return GgmlTypeTraits{1, 8};
    case GgmlType::kQ8_0:
      return GgmlTypeTraits{kQK, kQ8_0Bytes};
    case GgmlType::kQ4_0:
      return GgmlTypeTraits{kQK, kQ4_0Bytes};
    case GgmlType::kQ4_1:
      return GgmlTypeTraits{kQK, kQ4_1Bytes};
    case GgmlType::kQ4_K:
      return GgmlTypeTraits{kQKK, kQ4_KBytes};
    case GgmlType::kQ6_K:
      return GgmlTypeTraits{kQKK, kQ6_KBytes};
    default:
      return std::nullopt;
  }
}

std::optional<GgmlTypeTraits> ggml_type_layout(uint32_t type) {
  if (auto t = ggml_type_traits(type)) return t;
  // (block elements, block bytes) as ggml defines them (GGML_QUANT_SIZES).
  switch (type) {
    case 6:
      return GgmlTypeTraits{32, 22};  // Q5_0
    case 7:
      return GgmlTypeTraits{32, 24};  // Q5_1
    case 9:
      return GgmlTypeTraits{32, 40};  // Q8_1
    case 10:
      return GgmlTypeTraits{256, 84};  // Q2_K
    case 11:
      return GgmlTypeTraits{256, 110};  // Q3_K
    case 13:
      return GgmlTypeTraits{256, 176};  // Q5_K
    case 15:
      return GgmlTypeTraits{256, 292};  // Q8_K
    case 16:
      return GgmlTypeTraits{256, 66};  // IQ2_XXS
    case 17:
      return GgmlTypeTraits{256, 74};  // IQ2_XS
    case 18:
      return GgmlTypeTraits{256, 98};  // IQ3_XXS
    case 19:
      return GgmlTypeTraits{256, 50};  // IQ1_S
    case 20:
      return GgmlTypeTraits{32, 18};  // IQ4_NL
    case 21:
      return GgmlTypeTraits{256, 110};  // IQ3_S
    case 22:
      return GgmlTypeTraits{256, 82};  // IQ2_S
    case 23:
      return GgmlTypeTraits{256, 136};  // IQ4_XS
    case 24:
      return GgmlTypeTraits{1, 1};  // I8
    case 25:
      return GgmlTypeTraits{1, 2};  // I16
    case 26:
      return GgmlTypeTraits{1, 4};  // I32
    case 27:
      return GgmlTypeTraits{1, 8};  // I64
    case 29:
      return GgmlTypeTraits{256, 56};  // IQ1_M
    case 34:
      return GgmlTypeTraits{256, 54};  // TQ1_0
    case 35:
      return GgmlTypeTraits{256, 66};  // TQ2_0
    case 39:
      return GgmlTypeTraits{32, 17};  // MXFP4
    default:
      return std::nullopt;
  }
}

std::optional<size_t> ggml_nbytes(uint32_t type, int64_t n) {
  const auto traits = ggml_type_traits(type);
  if (!traits || n < 0 || n % traits->block_elems != 0) return std::nullopt;
  const auto blocks = static_cast<uint64_t>(n / traits->block_elems);
  if (blocks > std::numeric_limits<size_t>::max() / traits->block_bytes) return std::nullopt;
  return static_cast<size_t>(blocks) * traits->block_bytes;
}

Status dequantize(uint32_t type, const void* src, float* dst, int64_t n) {
  GgmlTypeTraits traits{};
  CS_RETURN_IF_ERROR(check_args(type, src, dst, n, &traits));
  dequant_blocks(type, static_cast<const uint8_t*>(src), dst, n / traits.block_elems);
  return {};
}

Status dequantize_parallel(uint32_t type, const void* src, float* dst, int64_t n,
                           ThreadPool& pool) {
  GgmlTypeTraits traits{};
  CS_RETURN_IF_ERROR(check_args(type, src, dst, n, &traits));
  const auto n_blocks = static_cast<size_t>(n / traits.block_elems);
  // ~64K elements per task: large enough that scheduling costs nothing.
  const size_t min_chunk = std::max<size_t>(1, 65536 / static_cast<size_t>(traits.block_elems));
  const auto* s = static_cast<const uint8_t*>(src);
  pool.parallel_for(
      n_blocks,
      [&](size_t begin, size_t end) {
        dequant_blocks(type, s + begin * traits.block_bytes,
                       dst + static_cast<int64_t>(begin) * traits.block_elems,
                       static_cast<int64_t>(end - begin));
      },
      min_chunk);
  return {};
}

}  // namespace cartserve
