// The dot-product kernels behind ops::cpu::quant_dot_rows, one per ISA
// (kernels/cpu/cpu_isa.h), same contract: y[(r - r0) * ldy + (j - j0)] =
// sum_k w[j, k] * a(r, k) for j in [j0, j1), r in [r0, r1), where a(r, k) =
// a.q[r, k] * a.d[r, k / 32] (int16 quants). Block products are exact integer sums; the
// ISAs differ only in the order of the float sums over blocks.
#pragma once

#include "kernels/quant_ops.h"

namespace cartserve::ops::cpu::detail {

void quant_dot_scalar(const QuantMatrix& w, int64_t j0, int64_t j1, const QActRows& a, int r0,
                      int r1, float* y, size_t ldy);
#if defined(__x86_64__)
void quant_dot_avx2(const QuantMatrix& w, int64_t j0, int64_t j1, const QActRows& a, int r0, int r1,
                    float* y, size_t ldy);
void quant_dot_avx512(const QuantMatrix& w, int64_t j0, int64_t j1, const QActRows& a, int r0,
                      int r1, float* y, size_t ldy);
#endif

}  // namespace cartserve::ops::cpu::detail
