// gemm_nt's micro-tile on AVX-512 (kernels/cpu/gemm_nt.h): up to 12 x rows
// against one packed panel of 16 W rows, one zmm accumulator per x row. The
// same FMA chain per output as the AVX2 tile, so the same bits. Only the code
// after the pragma is compiled for AVX-512, and gemm_nt calls it only when
// cpu_isa() says the CPU has it: the binary still runs on AVX2-only CPUs.
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstddef>

#include "kernels/cpu/gemm_nt.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,avx512f"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,avx512f")
#endif

namespace cartserve::ops::cpu::detail {
namespace {

template <int R>
void tile(const float* x, int k, const float* panel, float* y, size_t ldy, int cols) {
  __m512 acc[R];
  for (int i = 0; i < R; ++i)
    acc[i] = _mm512_setzero_ps();
  for (int t = 0; t < k; ++t) {
    const __m512 b = _mm512_loadu_ps(panel + static_cast<size_t>(t) * 16);
    for (int i = 0; i < R; ++i)
      acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(x[static_cast<size_t>(i) * k + t]), b, acc[i]);
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1u);
  for (int i = 0; i < R; ++i)
    _mm512_mask_storeu_ps(y + static_cast<size_t>(i) * ldy, mask, acc[i]);
}

}  // namespace

void gemm_nt_tile_avx512(int rows, const float* x, int k, const float* panel, float* y, size_t ldy,
                         int cols) {
  switch (rows) {
    case 1:
      return tile<1>(x, k, panel, y, ldy, cols);
    case 2:
      return tile<2>(x, k, panel, y, ldy, cols);
    case 3:
      return tile<3>(x, k, panel, y, ldy, cols);
    case 4:
      return tile<4>(x, k, panel, y, ldy, cols);
    case 5:
      return tile<5>(x, k, panel, y, ldy, cols);
    case 6:
      return tile<6>(x, k, panel, y, ldy, cols);
    case 7:
      return tile<7>(x, k, panel, y, ldy, cols);
    case 8:
      return tile<8>(x, k, panel, y, ldy, cols);
    case 9:
      return tile<9>(x, k, panel, y, ldy, cols);
    case 10:
      return tile<10>(x, k, panel, y, ldy, cols);
    case 11:
      return tile<11>(x, k, panel, y, ldy, cols);
    default:
      return tile<12>(x, k, panel, y, ldy, cols);
  }
}

}  // namespace cartserve::ops::cpu::detail

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
