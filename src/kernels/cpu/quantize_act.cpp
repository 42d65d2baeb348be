// fp32 activations -> QActRows (kernels/quant_ops.h): per block of 32,
// d = max|x| / 32767 and q = x / d rounded to nearest (ties to even), so
// |q| <= 32767 and q * d is within d / 2 of x. One portable implementation
// (GCC vector extensions: AVX2 where the kernels are built for it), the same
// bits on every ISA.
#include <algorithm>
#include <cstring>

#include "core/thread_pool.h"
#include "kernels/cpu/simd.h"
#include "kernels/quant_ops.h"

namespace cartserve::ops::cpu {
namespace {

using simd::v8f;
using simd::v8i;

// Round to nearest even for |v| < 2^22 (adding 1.5 * 2^23 leaves no fraction bits).
inline v8f round_even(v8f v) {
  const v8f magic = simd::splat(12582912.0f);
  return (v + magic) - magic;
}

inline v8f vabs(v8f v) {
  v8i bits;
  std::memcpy(&bits, &v, sizeof(v));
  bits &= 0x7fffffff;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// One row: q[k], d[k / 32], s[k / 32].
void quantize_row(const float* x, int k, int16_t* q, float* d, float* s) {
  for (int b = 0; b < k / 32; ++b) {
    const float* xb = x + 32 * b;
    v8f v[4];
    v8f m = {};
    for (int i = 0; i < 4; ++i) {
      v[i] = simd::load8(xb + 8 * i);
      const v8f a = vabs(v[i]);
      m = a > m ? a : m;
    }
    const float amax = simd::hmax(m);
    const float db = amax / 32767.0f;
    const float id = db != 0.0f ? 1.0f / db : 0.0f;
    v8i sum = {};
    for (int i = 0; i < 4; ++i) {
      const v8i qi = __builtin_convertvector(round_even(v[i] * id), v8i);
      sum += qi;
      for (int l = 0; l < 8; ++l)
        q[32 * b + 8 * i + l] = static_cast<int16_t>(qi[l]);
    }
    int total = 0;
    for (int l = 0; l < 8; ++l)
      total += sum[l];
    d[b] = db;
    s[b] = db * static_cast<float>(total);
  }
}

}  // namespace

void quantize_rows_act(const float* x, int n, int k, QActRows& a) {
  a.n = n;
  a.k = k;
  const size_t nn = static_cast<size_t>(n);
  const size_t kk = static_cast<size_t>(k);
  const size_t nb = kk / 32;
  a.q.resize(nn * kk);
  a.d.resize(nn * nb);
  a.s.resize(nn * nb);
  const auto run = [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; ++r)
      quantize_row(x + r * kk, k, a.q.data() + r * kk, a.d.data() + r * nb, a.s.data() + r * nb);
  };
  if (nn * kk < (1u << 15)) {
    run(0, nn);
  } else {
    ThreadPool::global().parallel_for(nn, run, std::max<size_t>(1, 8192 / kk));
  }
}

}  // namespace cartserve::ops::cpu
