// The work split of the persistent decode kernel (cuda/decode_persistent.cu),
// one definition for the kernel, its host launcher and the CPU tests: which
// weight rows a CTA owns in a linear phase, how a phase's rows are cut into
// (row, column slice) units, how a row's context is cut into attention
// splits, how the attention items enumerate (row, KV head, split), and the
// attention phase's shared-memory layout.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define CS_PLAN_HD __host__ __device__
#else
#define CS_PLAN_HD
#endif

namespace cartserve::ops {

inline constexpr int kPersistentThreads = 512;  // one CTA per SM
inline constexpr int kPersistentWarps = kPersistentThreads / 32;
inline constexpr int kPersistentChunk = 64;  // attention positions per shared-memory stage
inline constexpr int kPersistentMaxGroup = 16;
// Splits of one (row, KV head) at most; the workspace holds that many
// partials per (row, query head).
inline constexpr int kPersistentMaxSplits = 32;

// One linear phase: w [out, in]; CTA row ranges are whole granules; a unit
// is one row's 16-byte column chunks [s, s + 1) * in / 8 / slices.
struct PersistentLinear {
  int in = 0, out = 0;
  int granule = 1;
  int slices = 1;
};

// CTA `cta` of `ctas`: rows [r0, r1) (contiguous, disjoint, covering [0, out)).
CS_PLAN_HD inline void persistent_cta_rows(const PersistentLinear& s, int cta, int ctas, int& r0,
                                           int& r1) {
  const int64_t granules = s.out / s.granule;
  r0 = static_cast<int>(granules * cta / ctas) * s.granule;
  r1 = static_cast<int>(granules * (cta + 1) / ctas) * s.granule;
}

// The most rows any CTA owns, times slices: the partial sums a CTA keeps.
CS_PLAN_HD inline int persistent_most_units(const PersistentLinear& s, int ctas) {
  return (s.out / s.granule + ctas - 1) / ctas * s.granule * s.slices;
}

// Slices per row (1, 2, 4 or 8, dividing in / 8): the fewest lane-iterations
// of a warp for the CTA with the most rows (units over the warps, chunks of
// a unit over 32 lanes); ties take fewer slices.
CS_PLAN_HD inline PersistentLinear persistent_plan_linear(int in, int out, int granule, int ctas) {
  const int chunks = in / 8;
  const int rows = (out / granule + ctas - 1) / ctas * granule;
  PersistentLinear s{in, out, granule, 1};
  long long best = -1;
  for (int k = 1; k <= 8; k *= 2) {
    if (chunks % k != 0) continue;
    const long long cost =
        static_cast<long long>((rows * k + kPersistentWarps - 1) / kPersistentWarps) *
        ((chunks / k + 31) / 32);
    if (best < 0 || cost < best) {
      best = cost;
      s.slices = k;
    }
  }
  return s;
}

// KV positions per split of a row with `ctx` keys: whole stages, at most
// kPersistentMaxSplits splits (a function of ctx alone).
CS_PLAN_HD inline int persistent_split_len(int ctx) {
  const int per = (ctx + kPersistentMaxSplits - 1) / kPersistentMaxSplits;
  const int whole = (per + kPersistentChunk - 1) / kPersistentChunk * kPersistentChunk;
  return whole > kPersistentChunk ? whole : kPersistentChunk;
}

// One attention item: keys [begin, end) of row `row`'s KV head `kv_head`,
// split `split` of `splits`.
struct PersistentItem {
  int row = 0, kv_head = 0, split = 0, splits = 0, begin = 0, end = 0;
};

// Item `item` of the rows' (context_lens[0..rows)) items, rows in order, then
// KV heads, then splits; false past the last one. context_lens may be a
// device or a host array (whichever side calls).
CS_PLAN_HD inline bool persistent_item(const int32_t* context_lens, int rows, int num_kv_heads,
                                       int item, PersistentItem& it) {
  int rem = item;
  for (int t = 0; t < rows; ++t) {
    const int ctx = context_lens[t];
    const int len = persistent_split_len(ctx);
    const int n = ctx > 0 ? (ctx + len - 1) / len : 0;
    if (rem < num_kv_heads * n) {
      it.row = t;
      it.kv_head = rem / n;
      it.split = rem % n;
      it.splits = n;
      it.begin = it.split * len;
      it.end = it.begin + len < ctx ? it.begin + len : ctx;
      return true;
    }
    rem -= num_kv_heads * n;
  }
  return false;
}

// The attention phase's shared memory (byte offsets, each 16-byte aligned)
// for head_dim D and a GQA group of G.
struct PersistentAttnSmem {
  int k, v, q, sc, cs, stats, nk, nv, flag, total;
  CS_PLAN_HD PersistentAttnSmem(int D, int G) {
    k = 0;                                         // bf16 [kPersistentChunk][D]
    v = k + up(kPersistentChunk * D * 2);          // bf16 [kPersistentChunk][D]
    q = v + up(kPersistentChunk * D * 2);          // f32 [G][D]
    sc = q + up(G * D * 4);                        // f32 [G][kPersistentChunk]
    cs = sc + up(G * kPersistentChunk * 4);        // f32 [D]: cos | sin
    stats = cs + up(D * 4);                        // f32 [3][kPersistentMaxGroup]
    nk = stats + up(3 * kPersistentMaxGroup * 4);  // bf16 [D] the row's own k
    nv = nk + up(D * 2);                           // bf16 [D] its v
    flag = nv + up(D * 2);                         // int
    total = flag + 16;
  }
  CS_PLAN_HD static int up(int bytes) { return (bytes + 15) / 16 * 16; }
};

}  // namespace cartserve::ops

#undef CS_PLAN_HD
