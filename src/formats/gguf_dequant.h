// Dequantization of ggml block formats to fp32 (reference, on load).
// Block layouts follow ggml-common.h: Q4_0/Q4_1/Q8_0 use 32-element blocks,
// the K-quants (Q4_K, Q6_K) 256-element super-blocks.
//
// NOTE: results are bit-identical to gguf-py's gguf.quants.dequantize (same
// float32 operations in the same order; cs_formats is built with
// -ffp-contract=off so no multiply-add is fused).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "core/status.h"

namespace cartserve {

class ThreadPool;

struct GgmlTypeTraits {
  int64_t block_elems;  // elements per block
  size_t block_bytes;   // bytes per block
};

// Traits for the types we can read: F32, F16, BF16, F64, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K;
// nullopt for any other type value.
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type);

// Block size and bytes of every type ggml defines (also those we cannot
// dequantize, e.g. Q5_K or IQ2_XS), so a file's tensor sizes can be checked;
// nullopt for a value ggml does not define.
std::optional<GgmlTypeTraits> ggml_type_layout(uint32_t type);

// Bytes taken by `n` elements of `type`; nullopt if unknown or n is not a
// multiple of the block size.
std::optional<size_t> ggml_nbytes(uint32_t type, int64_t n);

// dst[0..n) = dequantized src. n must be a multiple of the block size.
// kUnsupported for a type without traits, kInvalidArgument for a bad n.
Status dequantize(uint32_t type, const void* src, float* dst, int64_t n);

// Same, split over the pool's threads in whole blocks (inline when small).
Status dequantize_parallel(uint32_t type, const void* src, float* dst, int64_t n, ThreadPool& pool);

}  // namespace cartserve
