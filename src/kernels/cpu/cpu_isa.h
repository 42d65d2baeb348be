// Which instruction set the quantized kernels use, decided once at run time
// from what the CPU reports (CPUID), so one binary runs everywhere:
//   kAvx512  AVX-512 F/BW/VL/DQ + VNNI (vpdpbusd: 64 int8 products per op);
//   kAvx2    AVX2 + FMA + F16C (vpmaddubsw/vpmaddwd);
//   kScalar  portable C++ (any CPU; the reference the others are tested against).
// CARTSERVE_CPU_ISA=scalar|avx2|avx512 asks for a lower one (never one the
// CPU lacks); tests and benchmarks switch with set_cpu_isa.
#pragma once

namespace cartserve::ops::cpu {

enum class CpuIsa { kScalar, kAvx2, kAvx512 };

const char* cpu_isa_name(CpuIsa isa);  // "scalar", "avx2", "avx512"
// The best this CPU supports.
CpuIsa best_cpu_isa();
// The one in use: best_cpu_isa(), lowered by CARTSERVE_CPU_ISA or set_cpu_isa.
CpuIsa cpu_isa();
// Uses `isa` from now on if the CPU supports it (returns false otherwise).
// Not for use while kernels run on other threads.
bool set_cpu_isa(CpuIsa isa);

}  // namespace cartserve::ops::cpu
