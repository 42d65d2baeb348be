// The many-row linear layer (prefill chunks) of the CPU backend, without
// BLAS: y[m, :n] (row stride ldy) = x[m, k] @ W[n, k]^T.
//
// Batch-invariant by construction: every y[r][c] is the chain of fused
// multiply-adds acc = fma(x[r][t], W[c][t], acc) for t = 0, 1, ..., k - 1 from
// acc = 0, so its bits depend on row r of x and row c of W alone: not on m,
// on which rows share the call, on the tiling or the threads, and not on the
// instruction set (a vector FMA rounds each lane as std::fma does). A prompt
// token's logits are then the same alone, in a batch and chunked differently.
// BLAS sgemm promises none of that: OpenBLAS 0.3.21 picks its edge kernels by
// m, and the same row's outputs differ between m = 21 and m = 64 on its
// Haswell, Zen and Cooperlake kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace cartserve::ops::cpu {

// Writes W's rows [j0, j0 + count) as fp32 to dst [count, k] (count <= 16).
using WeightRows = std::function<void(int64_t j0, int count, float* dst)>;

void gemm_nt(const float* x, int m, int k, int64_t n, const WeightRows& rows, float* y, size_t ldy);

namespace detail {
// y[rows, cols] = x[rows, k] @ panel for rows <= kGemmNtAvx512Rows, panel
// [k][16] (zero past `cols`); AVX-512, only where cpu_isa() reports it.
constexpr int kGemmNtAvx512Rows = 12;
void gemm_nt_tile_avx512(int rows, const float* x, int k, const float* panel, float* y, size_t ldy,
                         int cols);
}  // namespace detail

}  // namespace cartserve::ops::cpu
