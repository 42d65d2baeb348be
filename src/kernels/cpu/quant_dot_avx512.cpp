// AVX-512 VNNI quantized dot products (vpdpbusd on 256-bit registers):
// kernels/cpu/quant_dot_x86.h. Only the code after the pragma is compiled for
// AVX-512 (every header it needs is included first, so no inline function
// shared with other files gets AVX-512 code), and it is called only when
// CPUID reports AVX-512 VNNI (cpu_isa.cpp): the binary runs on AVX2-only CPUs.
#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/quant_blocks.h"
#include "kernels/cpu/quant_dot.h"

#if defined(__clang__)
#pragma clang attribute push(                                                               \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), \
    apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#endif
#define QDOT_VNNI 1
#include "kernels/cpu/quant_dot_x86.h"

namespace cartserve::ops::cpu::detail {

void quant_dot_avx512(const QuantMatrix& w, int64_t j0, int64_t j1, const QActRows& a, int r0,
                      int r1, float* y, size_t ldy) {
  quant_dot_x86(w, j0, j1, a, r0, r1, y, ldy);
}

}  // namespace cartserve::ops::cpu::detail

#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
