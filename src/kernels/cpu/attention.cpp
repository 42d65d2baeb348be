// Paged causal attention in fp32. The sequence's KV positions are resolved to
// physical slots once (see AttnSeq). Two paths, same result:
//  - a few query rows (decode, short chunks): one task per (sequence, KV
//    head, chunk of rows); SIMD dots (at head_dim 64 and 128 each K and V
//    row read once for up to three query heads of its group), exp and sums;
//  - many query rows (prefill with BLAS): per (sequence, KV head) K and V
//    are gathered into contiguous rows, then per query head and tile of rows
//    S = Q K^T and O = softmax(S) V are sgemms, the softmax in between.
#ifdef CARTSERVE_HAVE_BLAS
#include <cblas.h>
#endif

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/simd.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {

namespace {

using simd::v8f;

// Query rows from which a sequence takes the sgemm path.
constexpr int kGemmMinRows = 8;
// Query rows per sgemm tile: its score tile is [kTileRows, kv_len].
constexpr int kTileRows = 64;
// Query rows per task on the SIMD path.
constexpr int kQChunk = 16;

// Physical slot of each KV position: [kv_len]
std::vector<int32_t> position_slots(const AttnSeq& s, int block_size) {
  std::vector<int32_t> slots(static_cast<size_t>(s.kv_len));
  for (int p = 0; p < s.kv_len; ++p)
    slots[p] = s.block_table[p / block_size] * block_size + p % block_size;
  return slots;
}

inline float dot(const float* a, const float* b, int d) {
  v8f a0 = {}, a1 = {};
  int i = 0;
  for (; i + 16 <= d; i += 16) {
    a0 += simd::load8(a + i) * simd::load8(b + i);
    a1 += simd::load8(a + i + 8) * simd::load8(b + i + 8);
  }
  for (; i + 8 <= d; i += 8)
    a0 += simd::load8(a + i) * simd::load8(b + i);
  float s = simd::hsum(a0 + a1);
  for (; i < d; ++i)
    s += a[i] * b[i];
  return s;
}

// y[:d] += a * x[:d]
inline void axpy(float a, const float* x, float* y, int d) {
  const v8f va = simd::splat(a);
  int i = 0;
  for (; i + 8 <= d; i += 8)
    simd::store8(y + i, simd::load8(y + i) + va * simd::load8(x + i));
  for (; i < d; ++i)
    y[i] += a * x[i];
}

// s[:n] = exp(s - max(s)) / sum; s[n:n_zero] = 0.
void softmax_row(float* s, int n, int n_zero) {
  float m = -INFINITY;
  int i = 0;
  if (n >= 8) {
    v8f vm = simd::load8(s);
    for (i = 8; i + 8 <= n; i += 8) {
      const v8f x = simd::load8(s + i);
      vm = x > vm ? x : vm;
    }
    m = simd::hmax(vm);
  }
  for (; i < n; ++i)
    m = std::max(m, s[i]);
  v8f vsum = {};
  i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f e = simd::exp8(simd::load8(s + i) - m);
    simd::store8(s + i, e);
    vsum += e;
  }
  double sum = simd::hsum(vsum);
  for (; i < n; ++i) {
    s[i] = std::exp(s[i] - m);
    sum += s[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  const v8f vinv = simd::splat(inv);
  i = 0;
  for (; i + 8 <= n; i += 8)
    simd::store8(s + i, simd::load8(s + i) * vinv);
  for (; i < n; ++i)
    s[i] *= inv;
  std::fill(s + n, s + n_zero, 0.f);
}

// r[k][l] -> r[l][k] (8 x 8 lanes).
inline void transpose8(v8f (&r)[8]) {
  using simd::v8i;
  const v8i lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const v8f t0 = __builtin_shuffle(r[0], r[1], lo), t1 = __builtin_shuffle(r[0], r[1], hi);
  const v8f t2 = __builtin_shuffle(r[2], r[3], lo), t3 = __builtin_shuffle(r[2], r[3], hi);
  const v8f t4 = __builtin_shuffle(r[4], r[5], lo), t5 = __builtin_shuffle(r[4], r[5], hi);
  const v8f t6 = __builtin_shuffle(r[6], r[7], lo), t7 = __builtin_shuffle(r[6], r[7], hi);
  const v8i plo = {0, 1, 8, 9, 4, 5, 12, 13}, phi = {2, 3, 10, 11, 6, 7, 14, 15};
  const v8f u0 = __builtin_shuffle(t0, t2, plo), u1 = __builtin_shuffle(t0, t2, phi);
  const v8f u2 = __builtin_shuffle(t1, t3, plo), u3 = __builtin_shuffle(t1, t3, phi);
  const v8f u4 = __builtin_shuffle(t4, t6, plo), u5 = __builtin_shuffle(t4, t6, phi);
  const v8f u6 = __builtin_shuffle(t5, t7, plo), u7 = __builtin_shuffle(t5, t7, phi);
  const v8i qlo = {0, 1, 2, 3, 8, 9, 10, 11}, qhi = {4, 5, 6, 7, 12, 13, 14, 15};
  r[0] = __builtin_shuffle(u0, u4, qlo);
  r[4] = __builtin_shuffle(u0, u4, qhi);
  r[1] = __builtin_shuffle(u1, u5, qlo);
  r[5] = __builtin_shuffle(u1, u5, qhi);
  r[2] = __builtin_shuffle(u2, u6, qlo);
  r[6] = __builtin_shuffle(u2, u6, qhi);
  r[3] = __builtin_shuffle(u3, u7, qlo);
  r[7] = __builtin_shuffle(u3, u7, qhi);
}

// The head_dims attend_heads handles (8 * HD8 floats in registers).
constexpr bool blocked_head_dim(int hd) {
  return hd == 64 || hd == 128;
}

struct Geometry {
  int n_heads, n_kv_heads, head_dim, group;
  size_t kv_stride;  // floats between consecutive slots
};

// One query row of G heads of a KV group against its n_ctx keys, head_dim =
// 8 * HD8 (64 or 128): each K and V row is fetched once for the G heads (a
// long context, such as a cartridge, does not fit in L1; K rows are reused
// from L1 across heads, V rows in registers). Every
// head's arithmetic is what it would be alone: a score of keys [0, n_ctx & ~3)
// is one fp32 accumulator over 8-lane chunks in order, of the last n_ctx % 4
// keys dot()'s; the output accumulates p * V over keys in order.
// qv: [G, hd]; s: scratch [G, n_ctx]; o: [G, hd].
template <int HD8, int G>
void attend_heads(const float* qv, const float* k_base, const float* v_base, const int32_t* slots,
                  size_t kv_stride, int n_ctx, float scale, float* s, float* o) {
  constexpr int hd = 8 * HD8;
  const int n4 = n_ctx & ~3;
  int c = 0;
  // Eight keys per pass, one head at a time (the eight K rows stay in L1):
  // eight accumulators, transposed so that one vector sum over lanes 0..7 in
  // order gives the eight scores with simd::hsum's exact sequence of adds.
  for (; c + 8 <= n4; c += 8) {
    const float* k[8];
    for (int j = 0; j < 8; ++j)
      k[j] = k_base + static_cast<size_t>(slots[c + j]) * kv_stride;
    for (int h = 0; h < G; ++h) {
      v8f a[8] = {};
      for (int i = 0; i < hd; i += 8) {
        const v8f q = simd::load8(qv + h * hd + i);
        for (int j = 0; j < 8; ++j)
          a[j] += q * simd::load8(k[j] + i);
      }
      transpose8(a);
      v8f sum = {};  // hsum starts from 0.f
      for (int l = 0; l < 8; ++l)
        sum += a[l];
      simd::store8(s + h * n_ctx + c, sum * scale);
    }
  }
  for (; c < n4; ++c) {  // at most 4 keys left before the tail: one accumulator each
    const float* kr = k_base + static_cast<size_t>(slots[c]) * kv_stride;
    for (int h = 0; h < G; ++h) {
      v8f a = {};
      for (int i = 0; i < hd; i += 8)
        a += simd::load8(qv + h * hd + i) * simd::load8(kr + i);
      s[h * n_ctx + c] = simd::hsum(a) * scale;
    }
  }
  for (; c < n_ctx; ++c) {
    const float* kr = k_base + static_cast<size_t>(slots[c]) * kv_stride;
    for (int h = 0; h < G; ++h)
      s[h * n_ctx + c] = dot(qv + h * hd, kr, hd) * scale;
  }
  for (int h = 0; h < G; ++h)
    softmax_row(s + h * n_ctx, n_ctx, n_ctx);
  // Output 32 floats (4 lanes) of every head at a time, keys in order.
  for (int i0 = 0; i0 < HD8; i0 += 4) {
    v8f acc[G][4] = {};
    for (c = 0; c < n_ctx; ++c) {
      const float* vr = v_base + static_cast<size_t>(slots[c]) * kv_stride + 8 * i0;
      const v8f v[4] = {simd::load8(vr), simd::load8(vr + 8), simd::load8(vr + 16),
                        simd::load8(vr + 24)};
      for (int h = 0; h < G; ++h) {
        const v8f p = simd::splat(s[h * n_ctx + c]);
        for (int i = 0; i < 4; ++i)
          acc[h][i] += p * v[i];
      }
    }
    for (int h = 0; h < G; ++h)
      for (int i = 0; i < 4; ++i)
        simd::store8(o + h * hd + 8 * (i0 + i), acc[h][i]);
  }
}

// The `group` query heads of one row, in chunks of at most 3 heads (what
// AVX2's 16 vector registers hold without spilling).
template <int HD8>
void attend_group(const float* qv, const float* k_base, const float* v_base, const int32_t* slots,
                  size_t kv_stride, int n_ctx, float scale, int group, float* s, float* o) {
  constexpr int hd = 8 * HD8;
  for (int h = 0; h < group;) {
    const int g = std::min(3, group - h);
    auto* f = g == 3 ? attend_heads<HD8, 3> : g == 2 ? attend_heads<HD8, 2> : attend_heads<HD8, 1>;
    f(qv + h * hd, k_base, v_base, slots, kv_stride, n_ctx, scale, s, o + h * hd);
    h += g;
  }
}

// Rows [q0, q1) of sequence s, query heads [h0, h1) of KV head kvh's group
// (the whole group unless head_dim is 64 or 128). scores: scratch.
void attend_rows(const float* q, const float* k_cache, const float* v_cache, const AttnSeq& s,
                 const std::vector<int32_t>& slots, int kvh, int q0, int q1, int h0, int h1,
                 float scale, const Geometry& g, float* out, std::vector<float>& scores) {
  const int hd = g.head_dim;
  const size_t head_off = static_cast<size_t>(kvh) * hd;
  for (int j = q0; j < q1; ++j) {
    const int row = s.q_start + j;
    const int n_ctx = std::min<int>(s.kv_len - s.q_len + j + 1, static_cast<int>(slots.size()));
    const float* q_row = q + (static_cast<size_t>(row) * g.n_heads + kvh * g.group) * hd;
    float* o_row = out + (static_cast<size_t>(row) * g.n_heads + kvh * g.group) * hd;
    if (blocked_head_dim(hd)) {
      scores.resize(static_cast<size_t>(std::min(3, h1 - h0)) * n_ctx);
      (hd == 64 ? attend_group<8> : attend_group<16>)(q_row + h0 * hd, k_cache + head_off,
                                                      v_cache + head_off, slots.data(), g.kv_stride,
                                                      n_ctx, scale, h1 - h0, scores.data(),
                                                      o_row + h0 * hd);
      continue;
    }
    // Any other head_dim: each K and V row read once for all `group` heads.
    scores.resize(static_cast<size_t>(g.group) * n_ctx);
    for (int c = 0; c < n_ctx; ++c) {
      const float* kr = k_cache + static_cast<size_t>(slots[c]) * g.kv_stride + head_off;
      for (int h = 0; h < g.group; ++h)
        scores[static_cast<size_t>(h) * n_ctx + c] = dot(q_row + h * hd, kr, hd) * scale;
    }
    for (int h = 0; h < g.group; ++h) {
      softmax_row(scores.data() + static_cast<size_t>(h) * n_ctx, n_ctx, n_ctx);
      std::fill(o_row + h * hd, o_row + (h + 1) * hd, 0.f);
    }
    for (int c = 0; c < n_ctx; ++c) {
      const float* vr = v_cache + static_cast<size_t>(slots[c]) * g.kv_stride + head_off;
      for (int h = 0; h < g.group; ++h)
        axpy(scores[static_cast<size_t>(h) * n_ctx + c], vr, o_row + h * hd, hd);
    }
  }
}

#ifdef CARTSERVE_HAVE_BLAS
// Every row of sequence s through sgemms; the pool runs the gathers and the
// softmax, OpenBLAS its own threads for the products.
void attend_sequence_gemm(const float* q, const float* k_cache, const float* v_cache,
                          const AttnSeq& s, const std::vector<int32_t>& slots, float scale,
                          const Geometry& g, float* out) {
  const int hd = g.head_dim;
  const int kv_len = s.kv_len;
  const size_t ldq = static_cast<size_t>(g.n_heads) * hd;
  std::vector<float> kc(static_cast<size_t>(kv_len) * hd);         // [kv_len, hd]
  std::vector<float> vc(static_cast<size_t>(kv_len) * hd);         // [kv_len, hd]
  std::vector<float> sc(static_cast<size_t>(kTileRows) * kv_len);  // [tile rows, n_hi]
  for (int kvh = 0; kvh < g.n_kv_heads; ++kvh) {
    ThreadPool::global().parallel_for(
        static_cast<size_t>(kv_len),
        [&](size_t b, size_t e) {
          for (size_t c = b; c < e; ++c) {
            const size_t src =
                static_cast<size_t>(slots[c]) * g.kv_stride + static_cast<size_t>(kvh) * hd;
            std::copy_n(k_cache + src, hd, kc.data() + c * hd);
            std::copy_n(v_cache + src, hd, vc.data() + c * hd);
          }
        },
        256);
    for (int h = kvh * g.group; h < (kvh + 1) * g.group; ++h) {
      for (int j0 = 0; j0 < s.q_len; j0 += kTileRows) {
        const int rows = std::min(kTileRows, s.q_len - j0);
        const int n_hi = kv_len - s.q_len + j0 + rows;  // context of the tile's last row
        const float* q_tile =
            q + static_cast<size_t>(s.q_start + j0) * ldq + static_cast<size_t>(h) * hd;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n_hi, hd, scale, q_tile,
                    static_cast<int>(ldq), kc.data(), hd, 0.0f, sc.data(), n_hi);
        ThreadPool::global().parallel_for(static_cast<size_t>(rows), [&](size_t b, size_t e) {
          for (size_t r = b; r < e; ++r) {
            const int n_ctx = kv_len - s.q_len + j0 + static_cast<int>(r) + 1;
            softmax_row(sc.data() + r * n_hi, n_ctx, n_hi);
          }
        });
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, n_hi, 1.0f, sc.data(),
                    n_hi, vc.data(), hd, 0.0f,
                    out + static_cast<size_t>(s.q_start + j0) * ldq + static_cast<size_t>(h) * hd,
                    static_cast<int>(ldq));
      }
    }
  }
}
#endif

}  // namespace

void paged_attention(const float* q, const float* k_cache, const float* v_cache,
                     const AttnSeq* seqs, int n_seqs, float* out, int n_heads, int n_kv_heads,
                     int head_dim, int block_size, float scale) {
  const Geometry g{n_heads, n_kv_heads, head_dim, n_heads / n_kv_heads,
                   static_cast<size_t>(n_kv_heads) * head_dim};
  std::vector<std::vector<int32_t>> seq_slots(static_cast<size_t>(n_seqs));
  for (int s = 0; s < n_seqs; ++s)
    seq_slots[s] = position_slots(seqs[s], block_size);

  // Tasks of the SIMD path: (seq, kv head, chunk of kQChunk query rows, its
  // query heads).
  struct Task {
    int seq, kvh, q0, q1, h0, h1;
  };
  std::vector<Task> tasks;
  for (int s = 0; s < n_seqs; ++s) {
#ifdef CARTSERVE_HAVE_BLAS
    if (seqs[s].q_len >= kGemmMinRows) {
      attend_sequence_gemm(q, k_cache, v_cache, seqs[s], seq_slots[s], scale, g, out);
      continue;
    }
#endif
    for (int kvh = 0; kvh < n_kv_heads; ++kvh) {
      for (int q0 = 0; q0 < seqs[s].q_len; q0 += kQChunk)
        tasks.push_back({s, kvh, q0, std::min(seqs[s].q_len, q0 + kQChunk), 0, g.group});
    }
  }
  // Too few tasks for the pool (a lone decode row has one per KV head): one
  // per query head instead. Each head computes the same either way; its
  // group's K and V rows are then read once per head (from cache).
  if (blocked_head_dim(head_dim) && g.group > 1 && tasks.size() < 2 * ThreadPool::global().size()) {
    std::vector<Task> split;
    for (const Task& t : tasks) {
      for (int h = 0; h < g.group; ++h)
        split.push_back({t.seq, t.kvh, t.q0, t.q1, h, h + 1});
    }
    tasks = std::move(split);
  }
  ThreadPool::global().parallel_for(tasks.size(), [&](size_t tb, size_t te) {
    std::vector<float> scores;
    for (size_t ti = tb; ti < te; ++ti) {
      const Task& t = tasks[ti];
      attend_rows(q, k_cache, v_cache, seqs[t.seq], seq_slots[t.seq], t.kvh, t.q0, t.q1, t.h0, t.h1,
                  scale, g, out, scores);
    }
  });
}

}  // namespace cartserve::ops::cpu
