#include "kernels/cpu/cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace cartserve::ops::cpu {
namespace {

CpuIsa detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni")) {
    return CpuIsa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2;
#endif
  return CpuIsa::kScalar;
}

std::atomic<CpuIsa>& current() {
  static std::atomic<CpuIsa> isa = [] {
    CpuIsa best = best_cpu_isa();
    if (const char* env = std::getenv("CARTSERVE_CPU_ISA")) {
      for (CpuIsa i : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
        if (std::strcmp(env, cpu_isa_name(i)) == 0 && i <= best) best = i;
      }
    }
    return best;
  }();
  return isa;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

CpuIsa best_cpu_isa() {
  static const CpuIsa best = detect();
  return best;
}

CpuIsa cpu_isa() {
  return current().load(std::memory_order_relaxed);
}

bool set_cpu_isa(CpuIsa isa) {
  if (isa > best_cpu_isa()) return false;
  current().store(isa, std::memory_order_relaxed);
  return true;
}

}  // namespace cartserve::ops::cpu
