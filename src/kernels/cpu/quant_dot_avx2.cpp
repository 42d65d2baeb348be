// AVX2 quantized dot products (vpmaddubsw + vpmaddwd): kernels/cpu/quant_dot_x86.h.
#if defined(__x86_64__)
#include <algorithm>
#include <cstring>

#define QDOT_VNNI 0
#include "kernels/cpu/quant_dot.h"
#include "kernels/cpu/quant_dot_x86.h"

namespace cartserve::ops::cpu::detail {

void quant_dot_avx2(const QuantMatrix& w, int64_t j0, int64_t j1, const QActRows& a, int r0, int r1,
                    float* y, size_t ldy) {
  quant_dot_x86(w, j0, j1, a, r0, r1, y, ldy);
}

}  // namespace cartserve::ops::cpu::detail
#endif
