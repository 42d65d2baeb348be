// Tiling: W in panels of 16 rows (two 8-lane vectors of output columns),
// packed as [k][16], 4 panels per task of the thread pool; x in tiles of up
// to 6 rows (12 on AVX-512, gemm_nt_avx512.cpp), each element broadcast
// against a panel; a tile meets its task's 4 panels while it sits in L1. The
// FMA chain of each output is the same in every tile shape (gemm_nt.h), so
// edge tiles need no care beyond their size.
#include "kernels/cpu/gemm_nt.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__FMA__)
#include <immintrin.h>
#endif

#include "core/thread_pool.h"
#include "kernels/cpu/cpu_isa.h"
#include "kernels/cpu/simd.h"

namespace cartserve::ops::cpu {
namespace {

using simd::v8f;

constexpr int kPanel = 16;   // W rows (output columns) per panel
constexpr int kRowTile = 6;  // x rows per micro-tile
constexpr int kGroup = 4;    // panels per task (an x row tile meets all of them)

// c + a * b per lane, rounded once (as std::fma).
inline v8f fma8(v8f a, v8f b, v8f c) {
#if defined(__FMA__)
  return reinterpret_cast<v8f>(_mm256_fmadd_ps(
      reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(c)));
#else
  v8f r;
  for (int i = 0; i < 8; ++i)
    r[i] = std::fma(a[i], b[i], c[i]);
  return r;
#endif
}

// y[R, cols] = x[R, k] @ panel, panel [k][16] (columns past `cols` are zero).
template <int R>
void micro_tile(const float* x, int k, const float* panel, float* y, size_t ldy, int cols) {
  v8f acc[R][2] = {};
  for (int t = 0; t < k; ++t) {
    const v8f b0 = simd::load8(panel + static_cast<size_t>(t) * kPanel);
    const v8f b1 = simd::load8(panel + static_cast<size_t>(t) * kPanel + 8);
    for (int i = 0; i < R; ++i) {
      const v8f a = simd::splat(x[static_cast<size_t>(i) * k + t]);
      acc[i][0] = fma8(a, b0, acc[i][0]);
      acc[i][1] = fma8(a, b1, acc[i][1]);
    }
  }
  for (int i = 0; i < R; ++i) {
    float* yr = y + static_cast<size_t>(i) * ldy;
    if (cols == kPanel) {
      simd::store8(yr, acc[i][0]);
      simd::store8(yr + 8, acc[i][1]);
    } else {
      float tmp[kPanel];
      simd::store8(tmp, acc[i][0]);
      simd::store8(tmp + 8, acc[i][1]);
      std::memcpy(yr, tmp, sizeof(float) * static_cast<size_t>(cols));
    }
  }
}

void row_tile(int rows, const float* x, int k, const float* panel, float* y, size_t ldy, int cols) {
  switch (rows) {
    case 1:
      return micro_tile<1>(x, k, panel, y, ldy, cols);
    case 2:
      return micro_tile<2>(x, k, panel, y, ldy, cols);
    case 3:
      return micro_tile<3>(x, k, panel, y, ldy, cols);
    case 4:
      return micro_tile<4>(x, k, panel, y, ldy, cols);
    case 5:
      return micro_tile<5>(x, k, panel, y, ldy, cols);
    default:
      return micro_tile<6>(x, k, panel, y, ldy, cols);
  }
}

}  // namespace

void gemm_nt(const float* x, int m, int k, int64_t n, const WeightRows& rows, float* y,
             size_t ldy) {
  if (m <= 0 || n <= 0) return;
  const size_t ku = static_cast<size_t>(k);
  const auto groups = static_cast<size_t>((n + kGroup * kPanel - 1) / (kGroup * kPanel));
#if defined(__x86_64__)
  const bool avx512 = cpu_isa() == CpuIsa::kAvx512;
#else
  const bool avx512 = false;
#endif
  const int row_tile_max = avx512 ? detail::kGemmNtAvx512Rows : kRowTile;
  ThreadPool::global().parallel_for(
      groups,
      [&](size_t b, size_t e) {
        // Per worker thread: W rows [16, k] and the group's packed panels [kGroup][k][16].
        thread_local std::vector<float> w_rows, packed;
        w_rows.resize(kPanel * ku);
        packed.resize(kGroup * kPanel * ku);
        for (size_t g = b; g < e; ++g) {
          const int64_t g0 = static_cast<int64_t>(g) * kGroup * kPanel;
          const int n_panels =
              static_cast<int>(std::min<int64_t>(kGroup, (n - g0 + kPanel - 1) / kPanel));
          for (int p = 0; p < n_panels; ++p) {
            const int64_t j0 = g0 + static_cast<int64_t>(p) * kPanel;
            const int cols = static_cast<int>(std::min<int64_t>(kPanel, n - j0));
            rows(j0, cols, w_rows.data());
            float* panel = packed.data() + static_cast<size_t>(p) * kPanel * ku;
            for (int c = 0; c < kPanel; ++c) {
              const float* src = w_rows.data() + static_cast<size_t>(c) * ku;
              for (size_t t = 0; t < ku; ++t)
                panel[t * kPanel + static_cast<size_t>(c)] = c < cols ? src[t] : 0.f;
            }
          }
          // Each x row tile stays in L1 while it meets every panel of the group.
          for (int r0 = 0; r0 < m; r0 += row_tile_max) {
            const int rows_here = std::min(row_tile_max, m - r0);
            const float* xr = x + static_cast<size_t>(r0) * ku;
            for (int p = 0; p < n_panels; ++p) {
              const int64_t j0 = g0 + static_cast<int64_t>(p) * kPanel;
              const int cols = static_cast<int>(std::min<int64_t>(kPanel, n - j0));
              const float* panel = packed.data() + static_cast<size_t>(p) * kPanel * ku;
              float* yr = y + static_cast<size_t>(r0) * ldy + static_cast<size_t>(j0);
#if defined(__x86_64__)
              if (avx512) {
                detail::gemm_nt_tile_avx512(rows_here, xr, k, panel, yr, ldy, cols);
                continue;
              }
#endif
              row_tile(rows_here, xr, k, panel, yr, ldy, cols);
            }
          }
        }
      },
      1);
}

}  // namespace cartserve::ops::cpu
