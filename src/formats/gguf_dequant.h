// Dequantization of ggml block formats to fp32 (reference, on load).
// Block layouts follow ggml-common.h: Q4_0/Q4_1/Q8_0 use 32-element blocks,
// the K-quants (Q4_K, Q6_K) 256-element super-blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "core/status.h"

namespace cartserve {

struct GgmlTypeTraits {
  int64_t block_elems;  // elements per block
  size_t block_bytes;   // bytes per block
};

// Traits for the types we can read: F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K;
// nullopt for any other type value.
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type);

// Bytes taken by `n` elements of `type`; nullopt if unknown or n is not a
// multiple of the block size.
std::optional<size_t> ggml_nbytes(uint32_t type, int64_t n);

// dst[0..n) = dequantized src. n must be a multiple of the block size.
Status dequantize(uint32_t type, const void* src, float* dst, int64_t n);

}  // namespace cartserve
