// The on-device sampler (kernels/sampling_ops.h): the CPU Sampler
// (runtime/cpu/sampler.cpp) step for step.
//
// Design.
//  - A row (128256 fp32 = 501 KB, too large for shared memory) is cut into
//    chunks of kChunk logits, one CTA each, which find in one read what needs
//    no decision: the chunk's max, validity, argmax, top-n and its sum of
//    exp(x - chunk max). The row's last CTA to finish (an arrival counter)
//    combines them in chunk order: a greedy row, with or without logprobs,
//    is then done without reading the row again, and a single CTA does not
//    stream 501 KB several times (about 57 us a pass at batch 1 before).
//  - A plain draw (temperature and min_p only: the OpenAI API's default) is
//    chunk-parallel too: a second kernel (draw_kernel) has each chunk's CTA
//    sum its candidates' weights (exact, below), and the row's last CTA
//    finds the chunk where the running total passes the target and walks
//    that chunk alone.
//  - The rest is one CTA (the last) streaming the row, kThreads threads
//    strided so loads are coalesced: a draw with top_k or top_p, an edit that
//    moves the argmax, the rank of a token below the max. A row that samples
//    with top_p costs about a dozen passes.
//  - Exact arithmetic where the CPU sums weights. A weight w = exp((x - m)/T)
//    in [0, 1] is a float; it is split exactly into a 2-word fixed-point
//    number Fx (a: units of 2^-40, b: units of 2^-80; the bits of a weight
//    below 2^-80 are dropped, < 2^-63 over a whole row, far below a double
//    ulp of the total, which is >= 1). Sums of Fx are integer sums: exact,
//    independent of the order, so shared-memory integer atomics may build the
//    mass histograms and the result is still the same bits every run (there
//    are no float atomics). The CPU sums the same floats in double, in its
//    candidate order; the two differ by the CPU's rounding (<= n * 2^-53
//    relative), so a decision can differ only when a target lands within that
//    of a cumulative boundary (probability ~1e-11 per draw or less).
//  - The weights themselves are the CPU's bit for bit: glibc_expf below is a
//    port of glibc's expf (the FMA variant that x86-64 CPUs with FMA run;
//    checked equal to glibc 2.36's expf on every float). Thresholds use the
//    CPU's float operations with explicit _rn intrinsics (no FMA
//    contraction): m + T * log(min_p) with log(min_p) from the host, the
//    repetition / frequency / presence arithmetic, (x - m) * (1 / T).
//  - Order keys: a float maps to a uint32 (-0 folded into +0) whose unsigned
//    order is the float order. "Better" (the CPU's top_p/top-n order) is key
//    descending, then id ascending.
//  - select_better(set, T): the first element of `set` in better order whose
//    inclusive cumulative weight exceeds T (weight: 1 per element for counts,
//    Fx for mass). A radix select over the key, 11 + 11 + 10 bits: per level a
//    histogram (count or mass) of the elements that share the prefix chosen so
//    far, scanned from the top bin down to the bin where the cumulative weight
//    crosses T; then, among the elements with exactly that key, a walk in id
//    order (ties go by id) finds the element. No sort. Used for top_k (the
//    k-th largest finite value: counts, T = k - 1), top-n logprobs (counts,
//    T = n - 1, then the n best are collected and the <= 20 sorted), the
//    top_p cut (mass, T = ceil(top_p * total) - 1: the first element whose
//    inclusive mass reaches top_p * total is the last one kept, i.e. a
//    candidate is kept while the mass before it is below the target) and a
//    draw that lands in the CPU's top_p edge bucket (below).
//  - first_in_id_order(set, base, T): the first element in id order with
//    base + inclusive weight > T: each warp sums a contiguous segment, the
//    segment sums are scanned, and the one warp whose segment crosses walks
//    it 32 at a time with a warp scan. Exact, so identical to the CPU's
//    sequential walk in exact arithmetic.
//  - The draw: u = Sampler::uniform(seed, draw_index) (splitmix64, bit-exact),
//    target = u * total (double, as the CPU), token = the first kept
//    candidate in the CPU's candidate order whose inclusive mass > target
//    (the CPU: acc += w; if (acc > target) return), else the last one.
//    The CPU's candidate order is token id order, except after top_p:
//    apply_top_p keeps the candidates of the histogram buckets above the cut
//    bucket b in id order and appends those of bucket b in better order
//    (4096 buckets over [lo, hi] of the candidate logits). The cut (the last
//    kept candidate e*) lies in bucket b, so b = bucket_of(x[e*]) with the
//    CPU's own double arithmetic; the draw first walks A = {kept, bucket > b}
//    in id order and, past A's mass, selects in E = {kept, bucket == b} in
//    better order. When all candidates have one logit (lo == hi) the CPU
//    keeps id order, and so does this.
//  - Edits (mask, penalties) are applied in place before sampling with the
//    raw values saved in the workspace, and undone at the end, so the raw
//    logits are there for the rank of the chosen token (and the caller gets
//    its logits back unchanged).
//
// Known differences from the CPU sampler (all at fp rounding boundaries):
//  - weight sums: exact here, rounded double on the CPU (see above);
//  - log-sum-exp for logprobs: each chunk sums its float weights about its
//    own max in double, rescaled by exp(chunk max - row max) (exactly 1 for
//    the chunk holding the max), in another order than the CPU, and the
//    device log(): logprobs agree to ~1e-6;
//  - a CPU without FMA runs glibc's SSE2 expf, which can differ from the
//    FMA variant in the last bit for a tiny fraction of inputs; a weight one
//    ulp off moves a cumulative boundary by ~6e-8 of that weight.
// Shapes are validated by the caller except where the host side checks.

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/sampling_ops.h"

namespace cartserve::ops::cuda {
namespace {

using u64 = unsigned long long;

constexpr int kThreads = 512;  // per CTA
constexpr int kWarps = kThreads / 32;
constexpr int kPer = 8;                  // logits per thread in a chunk
constexpr int kChunk = kThreads * kPer;  // logits per chunk CTA
constexpr int kMaxBins = 2048;           // radix bins of the widest digit (11 bits)
constexpr int kCpuBuckets = 4096;        // the CPU's top_p histogram (sampler.cpp kBuckets)
constexpr float kGreedyEpsilon = 1e-5f;  // SamplingParams::kGreedyEpsilon
constexpr float kInf = __builtin_huge_valf();
constexpr u64 kLow40 = (1ull << 40) - 1;
constexpr unsigned kFull = 0xffffffffu;

// ---- glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, FMA variant) ----------

// tab[i] = asuint64(2^(i/32)) - (i << 47) (glibc __exp2f_data.tab).
__device__ const u64 kExpTab[32] = {
    0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,
    0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,
    0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,
    0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,
    0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,
    0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,
    0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,
    0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull};

// exp(x) = 2^(k/32) * 2^(r/32) with a cubic for 2^(r/32), in double, rounded
// once to float. Every multiply-add below is one fused operation, as in the
// x86-64 FMA build of glibc (whose disassembly this follows).
__device__ __forceinline__ float glibc_expf(float x) {
  const uint32_t ux = __float_as_uint(x);
  const uint32_t abstop = (ux >> 20) & 0x7ffu;
  if (abstop >= 0x42bu) {  // |x| >= 88, inf or nan
    if (ux == 0xff800000u) return 0.0f;
    if (abstop >= 0x7f8u) return x + x;
    if (x > 0x1.62e42ep6f) return kInf;        // overflow
    if (x < -0x1.9fe368p6f) return 0.0f;       // underflow to 0
    if (x < -0x1.9d1d9ep6f) return 0x1p-149f;  // __math_may_uflowf: 0x1.4p-75f squared
  }
  constexpr double kInvLn2N = 0x1.71547652b82fep+5;  // 32 / ln 2
  constexpr double kShift = 0x1.8p+52;
  constexpr double kC0 = 0x1.c6af84b912394p-20;  // poly_scaled
  constexpr double kC1 = 0x1.ebfce50fac4f3p-13;
  constexpr double kC2 = 0x1.62e42ff0c52d6p-6;
  const double xd = static_cast<double>(x);
  double kd = __fma_rn(kInvLn2N, xd, kShift);
  const u64 ki = static_cast<u64>(__double_as_longlong(kd));
  kd = __dsub_rn(kd, kShift);
  const double r = __fma_rn(kInvLn2N, xd, -kd);
  const u64 t = kExpTab[ki & 31u] + (ki << 47);
  const double s = __longlong_as_double(static_cast<long long>(t));
  const double z = __fma_rn(r, kC0, kC1);
  const double r2 = __dmul_rn(r, r);
  double y = __fma_rn(r, kC2, 1.0);
  y = __fma_rn(z, r2, y);
  y = __dmul_rn(y, s);
  return __double2float_rn(y);
}

// ---- Sampler::uniform ------------------------------------------------------

__device__ __forceinline__ u64 splitmix64(u64 x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ double uniform(u64 seed, u64 index) {
  const u64 h = splitmix64(splitmix64(seed) ^ (index * 0xD1B54A32D192ED03ull));
  return __dmul_rn(__ull2double_rn(h >> 11), 0x1.0p-53);
}

// ---- order keys ------------------------------------------------------------

// Unsigned order of the key = float order (-0 and +0 share the key of +0).
__device__ __forceinline__ uint32_t key_of(float v) {
  const uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float float_of_key(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The CPU's bucket_of (sampler.cpp), same double operations.
__device__ __forceinline__ int cpu_bucket(float v, double lo, double scale) {
  const double b = __dmul_rn(__dsub_rn(static_cast<double>(v), lo), scale);
  return b <= 0.0 ? 0 : (b >= kCpuBuckets - 1 ? kCpuBuckets - 1 : static_cast<int>(b));
}

// ---- exact fixed-point weights --------------------------------------------

// a * 2^-40 + b * 2^-80. Sums keep a and b apart (no carries: both stay
// below 2^64 for fewer than 2^24 terms of at most 1); fx_norm carries.
struct Fx {
  u64 a;
  u64 b;
};

__device__ __forceinline__ Fx fx_zero() {
  return Fx{0ull, 0ull};
}
__device__ __forceinline__ Fx fx_add(Fx x, Fx y) {
  return Fx{x.a + y.a, x.b + y.b};
}
__device__ __forceinline__ Fx fx_norm(Fx x) {
  return Fx{x.a + (x.b >> 40), x.b & kLow40};
}
// x > y, exactly.
__device__ __forceinline__ bool fx_gt(Fx x, Fx y) {
  x = fx_norm(x);
  y = fx_norm(y);
  return x.a > y.a || (x.a == y.a && x.b > y.b);
}

// A weight in [0, 1] (exact for w >= 2^-57; below that the bits under 2^-80
// are dropped).
__device__ __forceinline__ Fx fx_of_weight(float w) {
  const double s = __dmul_rn(static_cast<double>(w), 0x1p40);
  const double hi = floor(s);
  const double lo = __dmul_rn(__dsub_rn(s, hi), 0x1p40);  // exact
  return Fx{static_cast<u64>(hi), static_cast<u64>(lo)};
}

__device__ __forceinline__ double fx_to_double(Fx x) {
  x = fx_norm(x);
  return __dadd_rn(__dmul_rn(__ull2double_rn(x.a), 0x1p-40),
                   __dmul_rn(__ull2double_rn(x.b), 0x1p-80));
}

// floor(t * 2^80) for t >= 0 (t < 2^24), and whether t * 2^80 is an integer.
__device__ __forceinline__ Fx fx_floor(double t, bool* exact) {
  const double s = __dmul_rn(t, 0x1p40);
  const double hi = floor(s);
  const double r = __dmul_rn(__dsub_rn(s, hi), 0x1p40);
  const double lo = floor(r);
  if (exact) *exact = (r == lo);
  return Fx{static_cast<u64>(hi), static_cast<u64>(lo)};
}

// ceil(t * 2^80) - 1 (clamped at 0): X >= t  <=>  X > this, for integer X.
__device__ __forceinline__ Fx fx_ceil_minus_one(double t) {
  bool exact = false;
  Fx f = fx_floor(t, &exact);
  if (!exact) return f;
  if (f.b > 0) return Fx{f.a, f.b - 1};
  if (f.a > 0) return Fx{f.a - 1, kLow40};
  return f;
}

// ---- shared state and block reductions ------------------------------------

struct Smem {
  u64 hist_a[kMaxBins];  // [bins] radix histogram (count or Fx.a)
  u64 hist_b[kMaxBins];  // [bins] Fx.b
  u64 red_a[kWarps];     // [warps] reduction scratch
  u64 red_b[kWarps];
  double red_d[kWarps];
  float red_f[kWarps];
  int32_t red_i[kWarps];
  int32_t sel_digit;
  u64 sel_a, sel_b;
  int32_t walk_id;
  u64 walk_a, walk_b;
  int32_t top_count;
  int32_t top_id[kMaxTopLogprobs];
  uint32_t top_key[kMaxTopLogprobs];
};

__device__ __forceinline__ int lane_id() {
  return static_cast<int>(threadIdx.x & 31u);
}
__device__ __forceinline__ int warp_id() {
  return static_cast<int>(threadIdx.x >> 5);
}

__device__ __forceinline__ Fx warp_sum_fx(Fx v) {
  for (int o = 16; o > 0; o >>= 1) {
    v.a += __shfl_xor_sync(kFull, v.a, o);
    v.b += __shfl_xor_sync(kFull, v.b, o);
  }
  return v;
}

// Exact, so any order gives the same total. Every thread gets it.
__device__ Fx block_sum_fx(Fx v, Smem& sh) {
  v = warp_sum_fx(v);
  if (lane_id() == 0) {
    sh.red_a[warp_id()] = v.a;
    sh.red_b[warp_id()] = v.b;
  }
  __syncthreads();
  Fx t = fx_zero();
  for (int w = 0; w < kWarps; ++w)
    t = fx_add(t, Fx{sh.red_a[w], sh.red_b[w]});
  __syncthreads();
  return t;
}

// Exclusive prefix over the threads in thread order (exact).
__device__ Fx block_exclusive_scan_fx(Fx v, Smem& sh) {
  const int lane = lane_id();
  Fx inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    const u64 a = __shfl_up_sync(kFull, inc.a, o);
    const u64 b = __shfl_up_sync(kFull, inc.b, o);
    if (lane >= o) {
      inc.a += a;
      inc.b += b;
    }
  }
  if (lane == 31) {
    sh.red_a[warp_id()] = inc.a;
    sh.red_b[warp_id()] = inc.b;
  }
  __syncthreads();
  Fx before = fx_zero();
  for (int w = 0; w < warp_id(); ++w)
    before = fx_add(before, Fx{sh.red_a[w], sh.red_b[w]});
  __syncthreads();
  return Fx{before.a + inc.a - v.a, before.b + inc.b - v.b};
}

__device__ int32_t block_sum_i32(int32_t v, Smem& sh) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(kFull, v, o);
  if (lane_id() == 0) sh.red_i[warp_id()] = v;
  __syncthreads();
  int32_t t = 0;
  for (int w = 0; w < kWarps; ++w)
    t += sh.red_i[w];
  __syncthreads();
  return t;
}

__device__ int32_t block_max_i32(int32_t v, Smem& sh) {
  for (int o = 16; o > 0; o >>= 1)
    v = max(v, __shfl_xor_sync(kFull, v, o));
  if (lane_id() == 0) sh.red_i[warp_id()] = v;
  __syncthreads();
  int32_t t = INT_MIN;
  for (int w = 0; w < kWarps; ++w)
    t = max(t, sh.red_i[w]);
  __syncthreads();
  return t;
}

// Fixed order: a butterfly per warp (every lane gets the same bits, addition
// being commutative), then the warp totals in warp order.
__device__ double block_sum_f64(double v, Smem& sh) {
  for (int o = 16; o > 0; o >>= 1)
    v = __dadd_rn(v, __shfl_xor_sync(kFull, v, o));
  if (lane_id() == 0) sh.red_d[warp_id()] = v;
  __syncthreads();
  double t = 0.0;
  for (int w = 0; w < kWarps; ++w)
    t = __dadd_rn(t, sh.red_d[w]);
  __syncthreads();
  return t;
}

__device__ float block_min_f32(float v, Smem& sh) {
  for (int o = 16; o > 0; o >>= 1)
    v = fminf(v, __shfl_xor_sync(kFull, v, o));
  if (lane_id() == 0) sh.red_f[warp_id()] = v;
  __syncthreads();
  float t = kInf;
  for (int w = 0; w < kWarps; ++w)
    t = fminf(t, sh.red_f[w]);
  __syncthreads();
  return t;
}

__device__ float block_max_f32(float v, Smem& sh) {
  for (int o = 16; o > 0; o >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  if (lane_id() == 0) sh.red_f[warp_id()] = v;
  __syncthreads();
  float t = -kInf;
  for (int w = 0; w < kWarps; ++w)
    t = fmaxf(t, sh.red_f[w]);
  __syncthreads();
  return t;
}

// ---- element sets ----------------------------------------------------------

// Which elements of a row take part and with what weight. One struct with
// switches (the same for the whole block, so no divergence).
struct RowSet {
  float thr = -kInf;    // in: v >= thr
  bool finite = false;  // in: v > -inf
  bool counts = true;   // weight: 1 (count) or exp((v - m) * inv_t) (mass)
  float m = 0.0f;
  float inv_t = 1.0f;
  bool cut = false;  // in: better than or equal to (cut_key, cut_id)
  uint32_t cut_key = 0;
  int32_t cut_id = 0;
  int bucket_mode = 0;  // 0: any; 1: cpu_bucket(v) > bucket; 2: == bucket
  int32_t bucket = 0;
  double lo = 0.0;
  double scale = 0.0;
  bool tie = false;  // in: key == tie_key
  uint32_t tie_key = 0;

  __device__ bool in(int32_t i, float v, uint32_t key) const {
    if (!(v >= thr)) return false;
    if (finite && !(v > -kInf)) return false;
    if (tie && key != tie_key) return false;
    if (cut && !(key > cut_key || (key == cut_key && i <= cut_id))) return false;
    if (bucket_mode != 0) {
      const int b = cpu_bucket(v, lo, scale);
      if (bucket_mode == 1 ? b <= bucket : b != bucket) return false;
    }
    return true;
  }

  __device__ Fx weight(float v) const {
    if (counts) return Fx{1ull, 0ull};
    return fx_of_weight(glibc_expf(__fmul_rn(__fsub_rn(v, m), inv_t)));
  }
};

// ---- first in id order -----------------------------------------------------

struct Walk {
  int32_t id;  // -1: base + the set's whole weight <= T
  Fx incl;     // base + the inclusive weight at id
  Fx total;    // the set's whole weight (without base)
};

// The first element i (ascending) of `set` in ids [begin, end) with
// base + sum_{begin <= j <= i} w_j > T.
__device__ Walk first_in_id_order(const float* x, int begin, int end, const RowSet& set, Fx base,
                                  Fx T, Smem& sh) {
  const int lane = lane_id();
  const int warp = warp_id();
  const int seg = ((end - begin + kWarps - 1) / kWarps + 31) / 32 * 32;  // [warp] contiguous
  const int b0 = min(end, begin + warp * seg);
  const int e0 = min(end, b0 + seg);
  Fx s = fx_zero();
  for (int i = b0 + lane; i < e0; i += 32) {
    const float v = x[i];
    if (set.in(i, v, key_of(v))) s = fx_add(s, set.weight(v));
  }
  s = warp_sum_fx(s);
  if (lane == 0) {
    sh.red_a[warp] = s.a;
    sh.red_b[warp] = s.b;
  }
  if (threadIdx.x == 0) sh.walk_id = -1;
  __syncthreads();
  Fx run = base;
  Fx total = fx_zero();
  Fx start = fx_zero();
  int wsel = -1;
  for (int w = 0; w < kWarps; ++w) {
    const Fx seg_sum{sh.red_a[w], sh.red_b[w]};
    const Fx next = fx_add(run, seg_sum);
    if (wsel < 0 && fx_gt(next, T)) {
      wsel = w;
      start = run;
    }
    run = next;
    total = fx_add(total, seg_sum);
  }
  if (warp == wsel) {
    Fx acc = start;
    for (int c = b0; c < e0; c += 32) {
      const int i = c + lane;
      Fx w = fx_zero();
      if (i < e0) {
        const float v = x[i];
        if (set.in(i, v, key_of(v))) w = set.weight(v);
      }
      Fx inc = w;
      for (int o = 1; o < 32; o <<= 1) {
        const u64 a = __shfl_up_sync(kFull, inc.a, o);
        const u64 b = __shfl_up_sync(kFull, inc.b, o);
        if (lane >= o) {
          inc.a += a;
          inc.b += b;
        }
      }
      const Fx mine = fx_add(acc, inc);
      const unsigned hit = __ballot_sync(kFull, fx_gt(mine, T));
      if (hit != 0u) {
        if (lane == __ffs(static_cast<int>(hit)) - 1) {
          const Fx nm = fx_norm(mine);
          sh.walk_id = i;
          sh.walk_a = nm.a;
          sh.walk_b = nm.b;
        }
        break;
      }
      acc = fx_add(acc, Fx{__shfl_sync(kFull, inc.a, 31), __shfl_sync(kFull, inc.b, 31)});
    }
  }
  __syncthreads();
  Walk out{sh.walk_id, Fx{sh.walk_a, sh.walk_b}, total};
  __syncthreads();
  return out;
}

// The largest id of `set` in [begin, end) (-1 when none).
__device__ int32_t last_in_set(const float* x, int begin, int end, const RowSet& set, Smem& sh) {
  int32_t best = -1;
  for (int i = begin + static_cast<int>(threadIdx.x); i < end; i += kThreads) {
    const float v = x[i];
    if (set.in(i, v, key_of(v))) best = i;
  }
  return block_max_i32(best, sh);
}

// ---- select in better order ------------------------------------------------

struct Sel {
  bool found;    // false: base + the set's whole weight <= T
  uint32_t key;  // key of the selected element
  int32_t id;    // its id (when asked for)
  Fx above;      // base + weight of the set's elements with a greater key
  Fx incl;       // base + weight up to and including the element (when id asked)
};

// The first element of `set` in better order (key descending, id ascending)
// with base + inclusive weight > T. Radix select on the key (11 + 11 + 10
// bits), then the ties at the selected key in id order.
__device__ Sel select_better(const float* x, int n, const RowSet& set, Fx base, Fx T, bool want_id,
                             Smem& sh) {
  const int tid = static_cast<int>(threadIdx.x);
  uint32_t prefix = 0;
  uint32_t pmask = 0;
#pragma unroll 1
  for (int level = 0; level < 3; ++level) {
    const int shift = level == 0 ? 21 : (level == 1 ? 10 : 0);
    const int nb = level == 2 ? 1024 : 2048;
    const uint32_t dmask = static_cast<uint32_t>(nb - 1);
    for (int j = tid; j < nb; j += kThreads) {
      sh.hist_a[j] = 0ull;
      sh.hist_b[j] = 0ull;
    }
    if (tid == 0) sh.sel_digit = -1;
    __syncthreads();
    for (int i = tid; i < n; i += kThreads) {
      const float v = x[i];
      const uint32_t key = key_of(v);
      if ((key & pmask) != prefix || !set.in(i, v, key)) continue;
      const Fx w = set.weight(v);
      const uint32_t d = (key >> shift) & dmask;
      // Integer atomics: exact, so the histogram does not depend on their order.
      if (w.a != 0ull) atomicAdd(&sh.hist_a[d], w.a);
      if (w.b != 0ull) atomicAdd(&sh.hist_b[d], w.b);
    }
    __syncthreads();
    // Bins from the top down: thread t owns bins nb-1-t*per .. nb-per-t*per.
    const int per = nb / kThreads;
    Fx local = fx_zero();
    for (int k = 0; k < per; ++k) {
      const int d = nb - 1 - (tid * per + k);
      local = fx_add(local, Fx{sh.hist_a[d], sh.hist_b[d]});
    }
    Fx run = fx_add(base, block_exclusive_scan_fx(local, sh));
    if (!fx_gt(run, T)) {
      for (int k = 0; k < per; ++k) {
        const int d = nb - 1 - (tid * per + k);
        const Fx next = fx_add(run, Fx{sh.hist_a[d], sh.hist_b[d]});
        if (fx_gt(next, T)) {  // exactly one thread gets here
          const Fx nr = fx_norm(run);
          sh.sel_digit = d;
          sh.sel_a = nr.a;
          sh.sel_b = nr.b;
          break;
        }
        run = next;
      }
    }
    __syncthreads();
    const int digit = sh.sel_digit;
    const Fx above{sh.sel_a, sh.sel_b};
    __syncthreads();
    if (digit < 0) return Sel{false, 0u, -1, base, base};
    base = above;
    prefix |= static_cast<uint32_t>(digit) << shift;
    pmask |= dmask << shift;
  }
  Sel out{true, prefix, -1, base, base};
  if (want_id) {
    RowSet ties = set;
    ties.tie = true;
    ties.tie_key = prefix;
    const Walk w = first_in_id_order(x, 0, n, ties, base, T, sh);
    out.id = w.id;  // found: base + the ties' weight > T
    out.incl = w.incl;
  }
  return out;
}

// ---- raw logprobs ----------------------------------------------------------

// log of sum exp(raw - m) in double, + m (the CPU's fill_logprobs).
__device__ double raw_lse(const float* x, int n, float mx, Smem& sh) {
  double z = 0.0;
  for (int i = static_cast<int>(threadIdx.x); i < n; i += kThreads)
    z = __dadd_rn(z, static_cast<double>(glibc_expf(__fsub_rn(x[i], mx))));
  z = block_sum_f64(z, sh);
  return __dadd_rn(static_cast<double>(mx), log(z));
}

// The top n_top (1..20) tokens of the raw row, best first, ties by id, into
// out_ids/out_lp [kMaxTopLogprobs] (slots past n_top untouched).
__device__ void raw_top_n(const float* x, int n, int n_top, double lse, int32_t* out_ids,
                          float* out_lp, Smem& sh) {
  RowSet all;  // every element, counted
  const Fx T{static_cast<u64>(n_top - 1), 0ull};
  const Sel s = select_better(x, n, all, fx_zero(), T, true, sh);
  if (threadIdx.x == 0) sh.top_count = 0;
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < n; i += kThreads) {
    const uint32_t key = key_of(x[i]);
    if (key > s.key || (key == s.key && i <= s.id)) {
      const int slot = atomicAdd(&sh.top_count, 1);  // the set is exact; sorted below
      if (slot < kMaxTopLogprobs) {
        sh.top_id[slot] = i;
        sh.top_key[slot] = key;
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int cnt = min(sh.top_count, n_top);
    for (int a = 1; a < cnt; ++a) {  // insertion sort: key descending, id ascending
      const int32_t id = sh.top_id[a];
      const uint32_t key = sh.top_key[a];
      int b = a - 1;
      while (b >= 0 && (sh.top_key[b] < key || (sh.top_key[b] == key && sh.top_id[b] > id))) {
        sh.top_id[b + 1] = sh.top_id[b];
        sh.top_key[b + 1] = sh.top_key[b];
        --b;
      }
      sh.top_id[b + 1] = id;
      sh.top_key[b + 1] = key;
    }
    for (int j = 0; j < cnt; ++j) {
      const int32_t id = sh.top_id[j];
      out_ids[j] = id;
      out_lp[j] = __double2float_rn(__dsub_rn(static_cast<double>(x[id]), lse));
    }
  }
  __syncthreads();
}

// 1 + the number of elements strictly above x[token].
__device__ int32_t raw_rank(const float* x, int n, float chosen, Smem& sh) {
  int32_t higher = 0;
  for (int i = static_cast<int>(threadIdx.x); i < n; i += kThreads)
    higher += x[i] > chosen ? 1 : 0;
  return block_sum_i32(higher, sh) + 1;
}

// ---- the sampler -----------------------------------------------------------

struct ArgMax {
  float v;
  int32_t i;
};

__device__ __forceinline__ bool argmax_better(ArgMax a, ArgMax b) {
  return a.v > b.v || (a.v == b.v && a.i < b.i);
}

// The best of every thread's `best` (value descending, id ascending); every
// thread gets it.
__device__ ArgMax block_argmax_of(ArgMax best, Smem& sh) {
  for (int o = 16; o > 0; o >>= 1) {
    const ArgMax c{__shfl_xor_sync(kFull, best.v, o), __shfl_xor_sync(kFull, best.i, o)};
    if (argmax_better(c, best)) best = c;
  }
  if (lane_id() == 0) {
    sh.red_f[warp_id()] = best.v;
    sh.red_i[warp_id()] = best.i;
  }
  __syncthreads();
  ArgMax t{-kInf, INT_MAX};
  for (int w = 0; w < kWarps; ++w) {
    const ArgMax c{sh.red_f[w], sh.red_i[w]};
    if (argmax_better(c, t)) t = c;
  }
  __syncthreads();
  return t;
}

// argmax, ties to the lowest id (all -inf: id 0, as the CPU).
__device__ ArgMax block_argmax(const float* x, int n, Smem& sh) {
  ArgMax best{-kInf, INT_MAX};
  for (int i = static_cast<int>(threadIdx.x); i < n; i += kThreads) {
    const ArgMax c{x[i], i};
    if (argmax_better(c, best)) best = c;
  }
  return block_argmax_of(best, sh);
}

// The candidates of a draw about the processed max m: finite, at least
// thr, weighted exp((v - m) / T). min_p_floor(p, m) is thr without top_k.
__device__ __forceinline__ float min_p_floor(const SampleRowParams& p, float m) {
  return p.min_p > 0.0f ? __fadd_rn(m, __fmul_rn(p.temperature, p.log_min_p)) : -kInf;
}

__device__ RowSet candidate_set(const SampleRowParams& p, float m, float thr) {
  RowSet cand;
  cand.thr = thr;
  cand.finite = true;
  cand.counts = false;
  cand.m = m;
  cand.inv_t = __fdiv_rn(1.0f, p.temperature);
  return cand;
}

struct CandSums {
  int32_t cnt;
  Fx total;
  float lo;
};

// The candidates in ids [begin, end): count, total weight (exact), lowest
// logit. Every thread gets them. Not inlined: inlined into draw_token it
// raised sample_kernel's spills (ptxas: 168 bytes loaded, 36 with the call).
__device__ __noinline__ CandSums candidate_sums(const float* x, int begin, int end,
                                                const RowSet& cand, Smem& sh) {
  int32_t cnt = 0;
  Fx total = fx_zero();
  float lo = kInf;
  for (int i = begin + static_cast<int>(threadIdx.x); i < end; i += kThreads) {
    const float v = x[i];
    if (cand.in(i, v, 0u)) {
      ++cnt;
      total = fx_add(total, cand.weight(v));
      lo = fminf(lo, v);
    }
  }
  cnt = block_sum_i32(cnt, sh);
  total = block_sum_fx(total, sh);
  lo = block_min_f32(lo, sh);
  return CandSums{cnt, total, lo};
}

// Steps 5 of the CPU sampler (build_support, apply_top_p, draw) on the
// processed row x whose argmax is am.
__device__ int32_t draw_token(const float* x, int n, const SampleRowParams& p, ArgMax am,
                              Smem& sh) {
  const float m = am.v;
  if (!(m > -kInf)) return am.i;  // everything masked: the argmax (id 0)
  float thr = min_p_floor(p, m);
  if (p.top_k > 0 && p.top_k < n) {
    RowSet finite;
    finite.finite = true;
    const Sel s =
        select_better(x, n, finite, fx_zero(), Fx{static_cast<u64>(p.top_k - 1), 0ull}, false, sh);
    const float kth = s.found ? float_of_key(s.key) : -kInf;  // fewer finite: -inf
    thr = thr < kth ? kth : thr;                              // std::max
  }

  const RowSet cand = candidate_set(p, m, thr);
  const CandSums sums = candidate_sums(x, 0, n, cand, sh);
  const int32_t cnt = sums.cnt;
  const Fx total = sums.total;
  const float lo = sums.lo;
  if (cnt == 0) return am.i;  // (m itself is a candidate, so not reached)

  RowSet kept = cand;
  Fx kept_total = total;
  bool edge = false;  // the CPU's top_p order: buckets above b by id, then bucket b
  int32_t bucket = 0;
  double lo_d = 0.0;
  double scale = 0.0;
  int32_t worst = -1;  // the last kept candidate in better order (the cut)
  if (p.top_p < 1.0f && cnt > 1) {
    const double t = __dmul_rn(static_cast<double>(p.top_p), fx_to_double(total));
    const Sel s = select_better(x, n, cand, fx_zero(), fx_ceil_minus_one(t), true, sh);
    if (s.found) {  // always, but for a target above the exact total
      kept.cut = true;
      kept.cut_key = s.key;
      kept.cut_id = s.id;
      kept_total = s.incl;
      worst = s.id;
    }
    if (lo < m) {  // the CPU's lo != hi
      edge = true;
      lo_d = static_cast<double>(lo);
      scale = __ddiv_rn(static_cast<double>(kCpuBuckets), __dsub_rn(static_cast<double>(m), lo_d));
      bucket = s.found ? cpu_bucket(float_of_key(s.key), lo_d, scale) : 0;
    }
  }

  const double u = uniform(p.seed, p.draw_index);
  const Fx target = fx_floor(__dmul_rn(u, fx_to_double(kept_total)), nullptr);  // X > u*total
  if (!edge) {
    const Walk w = first_in_id_order(x, 0, n, kept, fx_zero(), target, sh);
    if (w.id >= 0) return w.id;
    return last_in_set(x, 0, n, kept, sh);  // the CPU's cand.back()
  }
  RowSet above = kept;  // A: kept candidates of the buckets above b, by id
  above.bucket_mode = 1;
  above.bucket = bucket;
  above.lo = lo_d;
  above.scale = scale;
  const Walk wa = first_in_id_order(x, 0, n, above, fx_zero(), target, sh);
  if (wa.id >= 0) return wa.id;
  RowSet edge_set = above;  // E: kept candidates of bucket b, in better order
  edge_set.bucket_mode = 2;
  const Sel se = select_better(x, n, edge_set, wa.total, target, true, sh);
  if (se.found) return se.id;
  if (worst >= 0) return worst;  // the CPU's cand.back(): the cut
  RowSet last = cand;            // everything kept: the worst candidate
  last.tie = true;
  last.tie_key = key_of(lo);
  return last_in_set(x, 0, n, last, sh);
}

// ---- the row scan: one CTA per chunk of a row ------------------------------

// What the CTA of one chunk of a row found; the row's last CTA reads them all.
struct ChunkStat {
  double z;     // sum of glibc_expf(x - m) over the chunk (rows with logprobs; 0 if m = -inf)
  float m;      // the chunk's max (-inf: all -inf)
  int32_t bad;  // a NaN or +inf in the chunk
  int32_t arg;  // the lowest id holding m
  int32_t n;    // entries of key/id: the chunk's best min(n_top, size), best first
  uint32_t key[kMaxTopLogprobs];
  int32_t id[kMaxTopLogprobs];
};

// Chunks of a row (depends on the vocabulary only, so a row's sums are the
// same bits in any batch).
__host__ __device__ constexpr int chunks_of(int vocab) {
  return (vocab + kChunk - 1) / kChunk;
}

// A row whose draw the draw kernel does (sample_kernel decides, having
// applied the edits it leaves in place for it).
struct DrawRow {
  double lse;       // the raw log-sum-exp (rows with logprobs)
  ArgMax am;        // the argmax after the edits (am.v > -inf)
  float raw_m;      // the raw max
  int32_t n_top;    // top logprobs already written
  int32_t pending;  // 1: the draw kernel finishes the row (sample_kernel sets it every call)
};

// One chunk's candidates for a plain draw: their weight (exact) and count.
struct DrawChunk {
  u64 a, b;
  int32_t cnt;
};

// A row's block of the workspace: [arrival counters: sample, draw][DrawRow]
// [ChunkStat, chunks][DrawChunk, chunks].
__host__ __device__ constexpr size_t row_block_bytes(int vocab) {
  return (16 + sizeof(DrawRow) +
          (sizeof(ChunkStat) + sizeof(DrawChunk)) * static_cast<size_t>(chunks_of(vocab)) + 255) /
         256 * 256;
}

struct RowBlock {
  unsigned* count;       // sample_kernel's arrivals
  unsigned* draw_count;  // draw_kernel's arrivals
  DrawRow* draw;
  ChunkStat* stats;   // [chunks]
  DrawChunk* chunks;  // [chunks]
};

__device__ RowBlock row_block(uint8_t* blocks, int r, int vocab) {
  uint8_t* b = blocks + static_cast<size_t>(r) * row_block_bytes(vocab);
  auto* stats = reinterpret_cast<ChunkStat*>(b + 16 + sizeof(DrawRow));
  return RowBlock{reinterpret_cast<unsigned*>(b), reinterpret_cast<unsigned*>(b) + 1,
                  reinterpret_cast<DrawRow*>(b + 16), stats,
                  reinterpret_cast<DrawChunk*>(stats + chunks_of(vocab))};
}
static_assert(sizeof(DrawRow) % 8 == 0 && sizeof(ChunkStat) % 8 == 0, "8-byte alignment");

// A draw that sample_kernel leaves to draw_kernel: temperature, min_p, no
// top_k and no top_p (the OpenAI API's default request), whose candidate
// sums are chunk-parallel.
__device__ __forceinline__ bool plain_draw(const SampleRowParams& p, int n) {
  return p.temperature >= kGreedyEpsilon && p.top_p >= 1.0f && !(p.top_k > 0 && p.top_k < n);
}

// Whether this CTA is the last of the row's `n_chunks` to pass here (arrival
// counter, reset by the last): the release before and the acquire after
// make the other CTAs' writes before this point visible to the last.
__device__ bool last_to_arrive(unsigned* count, int n_chunks, int* s_last) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    *s_last = atomicAdd(count, 1u) + 1 == static_cast<unsigned>(n_chunks);
    if (*s_last) *count = 0;  // every chunk has counted: the next launch starts at 0
  }
  __syncthreads();
  const bool last = *s_last != 0;
  if (last) __threadfence();
  return last;
}

// The saved raw logits of the edited tokens come first (max_edits floats).
__host__ __device__ constexpr size_t saved_bytes(int max_edits) {
  return (static_cast<size_t>(max_edits > 0 ? max_edits : 0) * sizeof(float) + 255) / 256 * 256;
}

// (key, id) strictly after (lk, li) in better order.
__device__ __forceinline__ bool worse_than(uint32_t key, int32_t id, uint32_t lk, int32_t li) {
  return key < lk || (key == lk && id > li);
}

// The best (key desc, id asc) over the block; every thread gets it. A thread
// with nothing offers (0, INT_MAX), which loses to every element.
__device__ void block_best(uint32_t& key, int32_t& id, Smem& sh) {
  for (int o = 16; o > 0; o >>= 1) {
    const uint32_t k2 = __shfl_xor_sync(kFull, key, o);
    const int32_t i2 = __shfl_xor_sync(kFull, id, o);
    if (k2 > key || (k2 == key && i2 < id)) {
      key = k2;
      id = i2;
    }
  }
  if (lane_id() == 0) {
    sh.red_a[warp_id()] = key;
    sh.red_i[warp_id()] = id;
  }
  __syncthreads();
  key = 0u;
  id = INT_MAX;
  for (int w = 0; w < kWarps; ++w) {
    const auto k2 = static_cast<uint32_t>(sh.red_a[w]);
    const int32_t i2 = sh.red_i[w];
    if (k2 > key || (k2 == key && i2 < id)) {
      key = k2;
      id = i2;
    }
  }
  __syncthreads();
}

// The chunk's part of every row-wide figure, from one read of its logits:
// max, validity, argmax, the sum of exp for the log-sum-exp (about the
// chunk's own max; the last CTA rescales) and the chunk's top n_top.
__device__ void scan_chunk(const float* x, int begin, int end, bool want_lp, int n_top,
                           ChunkStat* st, Smem& sh) {
  const int tid = static_cast<int>(threadIdx.x);
  float v[kPer];  // element begin + k * kThreads + tid (-inf past the end)
  int32_t bad = 0;
  ArgMax best{-kInf, INT_MAX};
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = begin + k * kThreads + tid;
    v[k] = i < end ? x[i] : -kInf;
  }
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int i = begin + k * kThreads + tid;
    if (i >= end) continue;
    bad |= (isnan(v[k]) || v[k] == kInf) ? 1 : 0;
    const ArgMax c{v[k], i};
    if (argmax_better(c, best)) best = c;
  }
  bad = block_max_i32(bad, sh);
  best = block_argmax_of(best, sh);
  double z = 0.0;
  if (want_lp && best.v > -kInf) {
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      if (begin + k * kThreads + tid < end)
        z = __dadd_rn(z, static_cast<double>(glibc_expf(__fsub_rn(v[k], best.v))));
    }
    z = block_sum_f64(z, sh);
  }
  // The chunk's top n by rounds: each takes the best element after the last.
  const int n = min(n_top, end - begin);
  uint32_t lk = 0xffffffffu;
  int32_t li = -1;  // before every element
  for (int t = 0; t < n; ++t) {
    uint32_t key = 0u;
    int32_t id = INT_MAX;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int i = begin + k * kThreads + tid;
      const uint32_t kk = key_of(v[k]);
      if (i < end && worse_than(kk, i, lk, li) && (kk > key || (kk == key && i < id))) {
        key = kk;
        id = i;
      }
    }
    block_best(key, id, sh);
    if (tid == 0) {
      st->key[t] = key;
      st->id[t] = id;
    }
    lk = key;
    li = id;
  }
  if (tid == 0) {
    st->z = z;
    st->m = best.v;
    st->bad = bad;
    st->arg = best.i;
    st->n = n;
  }
}

// The row-wide figures from the chunk stats (read through L2: other CTAs wrote
// them), in chunk order.
struct RowScan {
  float m;      // the raw max
  int32_t bad;  // a NaN or +inf in the row
  ArgMax arg;   // the raw argmax (ties to the lowest id)
  double z;     // sum over the row of exp(x - m), for the log-sum-exp
};

__device__ RowScan reduce_chunks(const ChunkStat* st, int n_chunks, bool want_lp, Smem& sh) {
  const int tid = static_cast<int>(threadIdx.x);
  ArgMax best{-kInf, INT_MAX};
  int32_t bad = 0;
  for (int c = tid; c < n_chunks; c += kThreads) {
    const ArgMax a{__ldcg(&st[c].m), __ldcg(&st[c].arg)};
    if (argmax_better(a, best)) best = a;
    bad |= __ldcg(&st[c].bad);
  }
  RowScan r;
  r.bad = block_max_i32(bad, sh);
  r.arg = block_argmax_of(best, sh);
  r.m = r.arg.v;
  r.z = 0.0;
  if (want_lp) {
    // Each chunk's sum rescaled from its max to the row's: exp(m_c - m) is 1
    // for the chunk holding the max (its weights are the CPU's), 0 for an
    // all -inf chunk, NaN for an all -inf row (as the CPU's log-sum-exp).
    double z = 0.0;
    for (int c = tid; c < n_chunks; c += kThreads) {
      const double f = exp(__dsub_rn(static_cast<double>(__ldcg(&st[c].m)), r.m));
      z = __dadd_rn(z, __dmul_rn(__ldcg(&st[c].z), f));
    }
    r.z = block_sum_f64(z, sh);
  }
  return r;
}

// The row's top n_top (best first, ties by id) merged from the chunks' lists
// (each the chunk's best min(n_top, size), best first) into sh.top_id.
// Needs n_chunks <= kThreads and n_chunks * n_top <= kMaxBins.
__device__ void merge_top(const ChunkStat* st, int n_chunks, int n_top, Smem& sh) {
  const int tid = static_cast<int>(threadIdx.x);
  // The lists into shared memory: chunk c's entry j at c * n_top + j.
  for (int e = tid; e < n_chunks * n_top; e += kThreads) {
    const int c = e / n_top;
    const int j = e % n_top;
    const bool in = j < __ldcg(&st[c].n);
    sh.hist_a[e] = in ? __ldcg(&st[c].key[j]) : 0u;
    sh.hist_b[e] = static_cast<u64>(in ? __ldcg(&st[c].id[j]) : INT_MAX);
  }
  __syncthreads();
  int head = 0;  // thread c: the next entry of chunk c
  const int avail = tid < n_chunks ? __ldcg(&st[tid].n) : 0;
  for (int t = 0; t < n_top; ++t) {
    uint32_t key = 0u;
    int32_t id = INT_MAX;
    if (head < avail) {
      key = static_cast<uint32_t>(sh.hist_a[tid * n_top + head]);
      id = static_cast<int32_t>(sh.hist_b[tid * n_top + head]);
    }
    const int32_t mine = id;
    block_best(key, id, sh);
    if (head < avail && mine == id) ++head;  // ids are distinct: only the winner's chunk moves
    if (tid == 0) sh.top_id[t] = id;
  }
  __syncthreads();
}

// The argmax of the row after its edits: the raw argmax unless an edit moved
// it (then one pass over the row), against the edited tokens' new values.
__device__ ArgMax edited_argmax(const float* x, int n, const SampleRowParams& p,
                                const TokenEdit* edits, ArgMax raw, Smem& sh) {
  if (p.edit_end <= p.edit_begin) return raw;
  ArgMax best{-kInf, INT_MAX};
  int32_t moved = 0;
  for (int j = p.edit_begin + static_cast<int>(threadIdx.x); j < p.edit_end; j += kThreads) {
    const int32_t t = edits[j].token;
    if (t < 0 || t >= n) continue;
    moved |= t == raw.i ? 1 : 0;
    const ArgMax c{x[t], t};
    if (argmax_better(c, best)) best = c;
  }
  if (block_max_i32(moved, sh)) return block_argmax(x, n, sh);
  best = block_argmax_of(best, sh);
  // The raw argmax is not edited, so it is the best unedited token.
  return argmax_better(raw, best) ? raw : best;
}

struct SampleArgs {
  float* logits;
  int vocab;
  const SampleRowParams* rows;
  const TokenEdit* edits;
  float* saved;     // [edits] raw logits of the edited tokens
  uint8_t* blocks;  // [rows] row_block_bytes(vocab) each (RowBlock)
  int32_t* out_token;
  float* out_logprob;
  int32_t* out_rank;
  int32_t* out_top_ids;
  float* out_top_logprobs;
  bool parallel_draws;  // plain draws are left to draw_kernel
};

// Where a CTA of the (chunks, rows) grid stands.
struct ChunkCta {
  int c, r, n_chunks, tid;
  RowBlock rb;
  float* x;  // [vocab] the row's logits
};

__device__ ChunkCta chunk_cta(const SampleArgs& a) {
  const int r = static_cast<int>(blockIdx.y);
  return ChunkCta{static_cast<int>(blockIdx.x),
                  r,
                  static_cast<int>(gridDim.x),
                  static_cast<int>(threadIdx.x),
                  row_block(a.blocks, r, a.vocab),
                  a.logits + static_cast<size_t>(r) * static_cast<size_t>(a.vocab)};
}

// The end of a row once its token is chosen: undo the edits, then the raw
// logprob and rank of the token (no token is above the raw max raw_m), the
// outputs, and the unused top slots.
__device__ void finish_row(const SampleArgs& a, int r, const SampleRowParams& p, float* x, int n,
                           int32_t token, float raw_m, double lse, int n_top, Smem& sh) {
  const int tid = static_cast<int>(threadIdx.x);
  for (int j = p.edit_begin + tid; j < p.edit_end; j += kThreads) {
    const int32_t t = a.edits[j].token;
    if (t >= 0 && t < n) x[t] = a.saved[j];
  }
  __syncthreads();
  float logprob = 0.0f;
  int32_t rank = 0;
  if (p.num_logprobs >= 0) {
    const float chosen = x[token];
    rank = chosen == raw_m ? 1 : raw_rank(x, n, chosen, sh);
    logprob = __double2float_rn(__dsub_rn(static_cast<double>(chosen), lse));
  }
  if (tid == 0) {
    a.out_token[r] = token;
    if (a.out_logprob) a.out_logprob[r] = logprob;
    if (a.out_rank) a.out_rank[r] = rank;
  }
  if (tid >= n_top && tid < kMaxTopLogprobs) {
    if (a.out_top_ids) a.out_top_ids[static_cast<size_t>(r) * kMaxTopLogprobs + tid] = -1;
    if (a.out_top_logprobs)
      a.out_top_logprobs[static_cast<size_t>(r) * kMaxTopLogprobs + tid] = -kInf;
  }
}

// Grid (chunks, rows). Every CTA scans its chunk of the row; the last to
// arrive finishes the row (the CPU sampler's steps) from the chunks' stats,
// going over the whole row again only where a step needs it: a draw with
// top_k or top_p, an edit that moves the argmax, the rank of a token that is
// not the max, a top-n too wide to merge. A plain draw is left to
// draw_kernel, with the edits still applied.
__global__ void __launch_bounds__(kThreads, 2) sample_kernel(SampleArgs a) {
  __shared__ Smem sh;
  __shared__ int s_last;
  const ChunkCta cta = chunk_cta(a);
  const int c = cta.c, r = cta.r, n = a.vocab, n_chunks = cta.n_chunks, tid = cta.tid;
  const RowBlock& rb = cta.rb;
  float* x = cta.x;
  const SampleRowParams p = a.rows[r];
  const bool want_lp = p.num_logprobs >= 0;
  const int n_top = min(max(p.num_logprobs, 0), min(kMaxTopLogprobs, n));
  const bool merge = n_chunks <= kThreads && n_chunks * n_top <= kMaxBins;
  scan_chunk(x, c * kChunk, min(n, (c + 1) * kChunk), want_lp, merge ? n_top : 0, &rb.stats[c], sh);
  if (!last_to_arrive(rb.count, n_chunks, &s_last)) return;
  if (tid == 0) rb.draw->pending = 0;

  int32_t* top_ids =
      a.out_top_ids ? a.out_top_ids + static_cast<size_t>(r) * kMaxTopLogprobs : nullptr;
  float* top_lp =
      a.out_top_logprobs ? a.out_top_logprobs + static_cast<size_t>(r) * kMaxTopLogprobs : nullptr;
  const RowScan row = reduce_chunks(rb.stats, n_chunks, want_lp, sh);
  if (row.bad) {
    if (tid == 0) {
      a.out_token[r] = -1;
      if (a.out_logprob) a.out_logprob[r] = __int_as_float(0x7fc00000);
      if (a.out_rank) a.out_rank[r] = 0;
    }
    if (top_ids && tid < kMaxTopLogprobs) top_ids[tid] = -1;
    if (top_lp && tid < kMaxTopLogprobs) top_lp[tid] = __int_as_float(0x7fc00000);
    return;
  }

  // 1. Raw logprobs (everything that does not depend on the chosen token).
  double lse = 0.0;
  if (want_lp) {
    lse = __dadd_rn(static_cast<double>(row.m), log(row.z));
    if (n_top > 0 && top_ids && top_lp) {
      if (merge) {
        merge_top(rb.stats, n_chunks, n_top, sh);
        if (tid < n_top) {
          const int32_t id = sh.top_id[tid];
          top_ids[tid] = id;
          top_lp[tid] = __double2float_rn(__dsub_rn(static_cast<double>(x[id]), lse));
        }
        __syncthreads();
      } else {
        raw_top_n(x, n, n_top, lse, top_ids, top_lp, sh);
      }
    }
  }

  // 2. Edits in place, raw values saved: mask, repetition, frequency/presence.
  for (int j = p.edit_begin + tid; j < p.edit_end; j += kThreads) {
    const TokenEdit e = a.edits[j];
    if (e.token < 0 || e.token >= n) continue;
    float v = x[e.token];
    a.saved[j] = v;
    if (e.flags & kEditMask) v = -kInf;
    if (e.flags & kEditRepetition) {
      v = v > 0.0f ? __fdiv_rn(v, p.repetition_penalty) : __fmul_rn(v, p.repetition_penalty);
    }
    if (e.output_count > 0) {
      v = __fsub_rn(v, __fadd_rn(__fmul_rn(p.frequency_penalty, __int2float_rn(e.output_count)),
                                 p.presence_penalty));
    }
    x[e.token] = v;
  }
  __syncthreads();

  // 3-5. Greedy or the draw.
  const ArgMax am = edited_argmax(x, n, p, a.edits, row.arg, sh);
  if (a.parallel_draws && am.v > -kInf && plain_draw(p, n)) {
    if (tid == 0) *rb.draw = DrawRow{lse, am, row.m, n_top, 1};
    return;
  }
  const int32_t token = p.temperature < kGreedyEpsilon ? am.i : draw_token(x, n, p, am, sh);
  finish_row(a, r, p, x, n, token, row.m, lse, n_top, sh);
}

// Grid (chunks, rows), after sample_kernel: the plain draws (plain_draw). Each
// CTA sums its chunk's candidate weights (exact, so the row's total is the
// same in any order); the row's last CTA finds the chunk where the running
// total passes the target and walks that chunk alone in id order: the CPU's
// acc += w; if (acc > target) over the candidates in id order.
__global__ void __launch_bounds__(kThreads, 2) draw_kernel(SampleArgs a) {
  __shared__ Smem sh;
  __shared__ int s_last;
  const ChunkCta cta = chunk_cta(a);
  const int c = cta.c, r = cta.r, n = a.vocab, n_chunks = cta.n_chunks, tid = cta.tid;
  const RowBlock& rb = cta.rb;
  if (!rb.draw->pending) return;  // the whole CTA
  const DrawRow dr = *rb.draw;
  const SampleRowParams p = a.rows[r];
  float* x = cta.x;  // edited by sample_kernel
  // draw_token's candidates without top_k and top_p.
  const RowSet cand = candidate_set(p, dr.am.v, min_p_floor(p, dr.am.v));
  const CandSums sums = candidate_sums(x, c * kChunk, min(n, (c + 1) * kChunk), cand, sh);
  if (tid == 0) rb.chunks[c] = DrawChunk{sums.total.a, sums.total.b, sums.cnt};
  if (!last_to_arrive(rb.draw_count, n_chunks, &s_last)) return;

  // The chunks' sums in shared memory (hist_a/b: weight, hist_b's twin below).
  const bool staged = n_chunks <= kMaxBins / 2;
  for (int k = tid; staged && k < n_chunks; k += kThreads) {
    sh.hist_a[k] = __ldcg(&rb.chunks[k].a);
    sh.hist_b[k] = __ldcg(&rb.chunks[k].b);
    sh.hist_a[kMaxBins / 2 + k] = static_cast<u64>(__ldcg(&rb.chunks[k].cnt));
  }
  __syncthreads();
  if (tid == 0) {
    const auto chunk = [&](int k) {
      return staged ? DrawChunk{sh.hist_a[k], sh.hist_b[k],
                                static_cast<int32_t>(sh.hist_a[kMaxBins / 2 + k])}
                    : DrawChunk{__ldcg(&rb.chunks[k].a), __ldcg(&rb.chunks[k].b),
                                __ldcg(&rb.chunks[k].cnt)};
    };
    Fx sum = fx_zero();
    int last = -1;  // the last chunk holding a candidate
    for (int k = 0; k < n_chunks; ++k) {
      const DrawChunk d = chunk(k);
      sum = fx_add(sum, Fx{d.a, d.b});
      if (d.cnt > 0) last = k;
    }
    const double u = uniform(p.seed, p.draw_index);
    const Fx target = fx_floor(__dmul_rn(u, fx_to_double(sum)), nullptr);  // X > u*total
    Fx run = fx_zero();
    int hit = -1;
    for (int k = 0; k < n_chunks && hit < 0; ++k) {
      const DrawChunk d = chunk(k);
      const Fx next = fx_add(run, Fx{d.a, d.b});
      if (fx_gt(next, target)) {
        hit = k;
      } else {
        run = next;
      }
    }
    const Fx nr = fx_norm(run);
    sh.sel_digit = hit;
    sh.walk_a = nr.a;  // the weight before chunk `hit`
    sh.walk_b = nr.b;
    sh.sel_a = target.a;
    sh.sel_b = target.b;
    sh.top_count = last;
  }
  __syncthreads();
  const int hit = sh.sel_digit;
  const int last = sh.top_count;
  const Fx before{sh.walk_a, sh.walk_b};
  const Fx target{sh.sel_a, sh.sel_b};
  __syncthreads();
  int32_t token = dr.am.i;  // no candidate (m itself is one, so not reached)
  if (hit >= 0) {
    const Walk w =
        first_in_id_order(x, hit * kChunk, min(n, (hit + 1) * kChunk), cand, before, target, sh);
    token = w.id;
  }
  if (hit < 0 || token < 0) {  // past the total (rounding): the CPU's cand.back()
    if (last >= 0) token = last_in_set(x, last * kChunk, min(n, (last + 1) * kChunk), cand, sh);
  }
  if (tid == 0) rb.draw->pending = 0;
  finish_row(a, r, p, x, n, token, dr.raw_m, dr.lse, dr.n_top, sh);
}

__global__ void __launch_bounds__(kThreads)
    token_logprobs_kernel(const float* logits, int n, const int32_t* tokens, int top_n,
                          float* out_logprob, int32_t* out_rank, int32_t* out_top_ids,
                          float* out_top_logprobs) {
  __shared__ Smem sh;
  const int r = static_cast<int>(blockIdx.x);
  const int tid = static_cast<int>(threadIdx.x);
  const float* x = logits + static_cast<size_t>(r) * static_cast<size_t>(n);  // [vocab]
  float mx = -kInf;
  for (int i = tid; i < n; i += kThreads)
    mx = fmaxf(mx, x[i]);
  mx = block_max_f32(mx, sh);
  const double lse = raw_lse(x, n, mx, sh);
  const int n_top = min(max(top_n, 0), min(kMaxTopLogprobs, n));
  int32_t* top_ids = out_top_ids ? out_top_ids + static_cast<size_t>(r) * kMaxTopLogprobs : nullptr;
  float* top_lp =
      out_top_logprobs ? out_top_logprobs + static_cast<size_t>(r) * kMaxTopLogprobs : nullptr;
  if (n_top > 0 && top_ids && top_lp) raw_top_n(x, n, n_top, lse, top_ids, top_lp, sh);
  const int32_t token = tokens[r];
  float logprob = __int_as_float(0x7fc00000);
  int32_t rank = 0;
  if (token >= 0 && token < n) {  // uniform over the block
    const float chosen = x[token];
    rank = raw_rank(x, n, chosen, sh);
    logprob = __double2float_rn(__dsub_rn(static_cast<double>(chosen), lse));
  }
  if (tid == 0) {
    out_logprob[r] = logprob;
    out_rank[r] = rank;
  }
  if (tid >= n_top && tid < kMaxTopLogprobs) {
    if (top_ids) top_ids[tid] = -1;
    if (top_lp) top_lp[tid] = -kInf;
  }
}

__global__ void expf_kernel(const float* x, float* y, int n) {
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < n;
       i += static_cast<int>(gridDim.x * blockDim.x))
    y[i] = glibc_expf(x[i]);
}

constexpr int kMaxVocab = 1 << 24;  // keeps the fixed-point sums below 2^64

}  // namespace

int append_token_edits(const int32_t* prompt, size_t n_prompt, const int32_t* output,
                       size_t n_output, bool repetition, bool frequency, const int32_t* masked,
                       size_t n_masked, int32_t vocab, std::vector<TokenEdit>& out) {
  const auto in_vocab = [vocab](int32_t t) { return t >= 0 && t < vocab; };
  const auto sorted = [&](const int32_t* p, size_t n) {
    std::vector<int32_t> v;
    v.reserve(n);
    for (size_t i = 0; i < n; ++i)
      if (in_vocab(p[i])) v.push_back(p[i]);
    std::sort(v.begin(), v.end());
    return v;
  };
  const std::vector<int32_t> outs =
      (repetition || frequency) ? sorted(output, n_output) : std::vector<int32_t>{};
  const std::vector<int32_t> prom = repetition ? sorted(prompt, n_prompt) : std::vector<int32_t>{};
  const std::vector<int32_t> mask = sorted(masked, n_masked);
  std::vector<int32_t> ids;
  ids.reserve(outs.size() + prom.size() + mask.size());
  ids.insert(ids.end(), prom.begin(), prom.end());
  ids.insert(ids.end(), outs.begin(), outs.end());
  ids.insert(ids.end(), mask.begin(), mask.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  int added = 0;
  for (int32_t t : ids) {
    TokenEdit e;
    e.token = t;
    const auto range = std::equal_range(outs.begin(), outs.end(), t);
    const auto count = static_cast<int32_t>(range.second - range.first);
    if (repetition && (count > 0 || std::binary_search(prom.begin(), prom.end(), t))) {
      e.flags |= kEditRepetition;
    }
    if (frequency) e.output_count = count;
    if (std::binary_search(mask.begin(), mask.end(), t)) e.flags |= kEditMask;
    if (e.flags != 0u || e.output_count > 0) {
      out.push_back(e);
      ++added;
    }
  }
  return added;
}

size_t sample_workspace_bytes(int max_rows, int vocab, int max_edits) {
  if (max_rows <= 0 || vocab <= 0) return saved_bytes(max_edits);
  return saved_bytes(max_edits) + static_cast<size_t>(max_rows) * row_block_bytes(vocab);
}

void sample(float* logits, int vocab, const SampleRowParams* rows, int n_rows,
            const TokenEdit* edits, void* workspace, int max_edits, int32_t* out_token,
            float* out_logprob, int32_t* out_rank, int32_t* out_top_ids, float* out_top_logprobs,
            bool parallel_draws, cudaStream_t s) {
  if (n_rows < 0 || n_rows > 65535 || vocab <= 0 || vocab >= kMaxVocab)
    op_fail("sample", "bad shape");
  if (n_rows == 0) return;
  if (!logits || !rows || !out_token || !workspace)
    op_fail("sample", "null logits, rows, workspace or out_token");
  auto* ws = static_cast<uint8_t*>(workspace);
  SampleArgs a{logits,
               vocab,
               rows,
               edits,
               reinterpret_cast<float*>(ws),
               ws + saved_bytes(max_edits),
               out_token,
               out_logprob,
               out_rank,
               out_top_ids,
               out_top_logprobs,
               parallel_draws};
  const dim3 grid(static_cast<unsigned>(chunks_of(vocab)), static_cast<unsigned>(n_rows));
  sample_kernel<<<grid, kThreads, 0, s>>>(a);
  check_launch("sample");
  if (parallel_draws) {
    draw_kernel<<<grid, kThreads, 0, s>>>(a);
    check_launch("sample (draw)");
  }
}

void token_logprobs(const float* logits, int vocab, int n_rows, const int32_t* tokens, int top_n,
                    float* out_logprob, int32_t* out_rank, int32_t* out_top_ids,
                    float* out_top_logprobs, cudaStream_t s) {
  if (n_rows < 0 || vocab <= 0 || vocab >= kMaxVocab || top_n < 0 || top_n > kMaxTopLogprobs) {
    op_fail("token_logprobs", "bad shape");
  }
  if (n_rows == 0) return;
  token_logprobs_kernel<<<static_cast<unsigned>(n_rows), kThreads, 0, s>>>(
      logits, vocab, tokens, top_n, out_logprob, out_rank, out_top_ids, out_top_logprobs);
  check_launch("token_logprobs");
}

void sampler_expf(const float* x, float* y, int n, cudaStream_t s) {
  if (n <= 0) return;
  expf_kernel<<<grid_for(n, 256, 4096), 256, 0, s>>>(x, y, n);
  check_launch("sampler_expf");
}

}  // namespace cartserve::ops::cuda
