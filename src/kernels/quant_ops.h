// Quantized weight matrices on the CPU: the ggml block formats of a GGUF file
// (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) kept in memory as the file stores them, and
// the dense layer over them. Weights are dequantized in registers only; the
// activations are quantized per block of 32 to int16 (QActRows), so each block
// product is an exact integer dot product (AVX-512 VNNI, AVX2 or portable
// code, chosen at run time: kernels/cpu/cpu_isa.h).
//
// Why int16 and not int8 (ggml's q8_1): with int8 activations the SmolLM2
// Q4_1 model's next token differed from the fp32 reference's at 4% of the
// golden positions (tests/model/golden_test.cpp); int16 keeps the rounding
// ~256x smaller (top-1 as fp32), for about the same instruction count per
// block (vpmaddwd / vpdpwssd on 16 lanes instead of vpmaddubsw / vpdpbusd on
// 32, the weights widened to 16 bits in registers).
//
// Block layouts (ggml-common.h; one row is cols / block_elems blocks):
//   Q4_0  [d: f16][q: 16 bytes]; element i < 16 in the low nibble of byte i,
//         element 16 + i in its high nibble          w = d * (q - 8)
//   Q4_1  [d: f16][m: f16][q: 16 bytes as Q4_0]     w = d * q + m
//   Q8_0  [d: f16][q: i8 x 32]                      w = d * q
//   Q4_K  256 elements: [d, dmin: f16][scales: 12 bytes, 6-bit scale and min
//         of 8 sub-blocks of 32][q: 128 bytes; bytes 32c..32c+31 hold
//         sub-block 2c (low nibbles) and 2c + 1 (high)]
//                                                   w = d * sc * q - dmin * m
//   Q6_K  256 elements: [ql: 128][qh: 64][scales: i8 x 16][d: f16];
//         16 sub-blocks of 16                       w = d * sc * (q - 32)
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/ops.h"

namespace cartserve::ops {

// Values are the GGML type ids of the file.
enum class QuantType : uint8_t { kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8, kQ4_K = 12, kQ6_K = 14 };

// A GGML type id as a QuantType; false for any other type.
bool quant_type_from_ggml(uint32_t ggml_type, QuantType* out);
// "Q4_0", "Q4_1", ...
const char* quant_type_name(QuantType t);
// Elements per block (32, or 256 for the K-quants) and bytes per block.
int quant_block_elems(QuantType t);
size_t quant_block_bytes(QuantType t);
// Bytes of one row of `cols` elements (cols a multiple of the block size).
size_t quant_row_bytes(QuantType t, int64_t cols);

// A quantized matrix [rows, cols]: row r starts at data + r * row_bytes.
struct QuantMatrix {
  QuantType type = QuantType::kQ8_0;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
};

// Activations quantized for the integer dot products: per row, blocks of 32
// with d = max|x| / 32767, q = round(x / d) in [-32767, 32767], and
// s = d * sum(q) (through which the offsets of Q4_0, Q4_1 and Q4_K apply).
// Bounds: |w_q| <= 255 (every format's quants), so a block's integer sum
// stays below 32 * 255 * 32767 < 2^31.
struct QActRows {
  int n = 0;               // rows
  int k = 0;               // elements per row (a multiple of 32)
  std::vector<int16_t> q;  // [n, k]
  std::vector<float> d;    // [n, k / 32]
  std::vector<float> s;    // [n, k / 32]

  const int16_t* q_row(int r) const { return q.data() + static_cast<size_t>(r) * k; }
  const float* d_row(int r) const { return d.data() + static_cast<size_t>(r) * (k / 32); }
  const float* s_row(int r) const { return s.data() + static_cast<size_t>(r) * (k / 32); }
};

namespace cpu {

// out[n, cols] = rows [row0, row0 + n) of w dequantized to fp32 (the float
// operations of ggml's dequantization, up to fused multiply-adds).
void dequantize_rows(const QuantMatrix& w, int64_t row0, int64_t n, float* out);

// x[n, k] -> a (k a multiple of 32).
void quantize_rows_act(const float* x, int n, int k, QActRows& a);

// y[(r - r0) * ldy + (j - j0)] = sum_k w[j, k] * a(r, k) for j in [j0, j1),
// r in [r0, r1). Single-threaded; the ISA of cpu_isa.h.
void quant_dot_rows(const QuantMatrix& w, int64_t j0, int64_t j1, const QActRows& a, int r0, int r1,
                    float* y, size_t ldy);

// Dense layer over quantized weights: y[n, w.rows] = x[n, w.cols] @ w^T
// (+ bias[w.rows] if non-null). kPerRow (kAuto: up to a few rows, decode):
// the integer kernels; kGemm (kAuto: many rows, prefill): sgemm on
// dequantized panels. Each gives a row the same result in any batch
// (LinearKernel in kernels/ops.h).
void linear_quant(const float* x, const QuantMatrix& w, const float* bias, float* y, int n,
                  LinearKernel kernel = LinearKernel::kAuto);

}  // namespace cpu
}  // namespace cartserve::ops
