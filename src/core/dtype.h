// Element types and scalar conversions shared by formats, kernels and cartridges.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace cartserve {

enum class DType : uint8_t { kF32, kF16, kBF16, kF64, kI8, kU8, kI16, kI32, kI64, kBool };

size_t dtype_size(DType t);
// Lower-case canonical names: "float32", "float16", "bfloat16", "int32", ...
const char* dtype_name(DType t);
// Accepts canonical names plus common aliases ("fp32", "f16", "bf16", "half", "F32", ...).
std::optional<DType> parse_dtype(std::string_view name);

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Round to nearest even; NaN stays NaN (quiet).
inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float fp16_to_f32(uint16_t h);
uint16_t f32_to_fp16(float f);  // round to nearest even, overflow -> inf

// Converts n elements of `src_type` to float32.
void convert_to_f32(DType src_type, const void* src, float* dst, size_t n);
// Converts n float32 values to `dst_type` (F32, F16 or BF16).
void convert_from_f32(const float* src, DType dst_type, void* dst, size_t n);

}  // namespace cartserve
