// Paged causal attention, fp32 reference. Each task is one (sequence, query
// head, query chunk). The sequence's positions are resolved to physical slots
// once per sequence (see AttnSeq), then scores, softmax and the V sum are
// plain loops over those slots.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/ops.h"

namespace cartserve::ops::cpu {

namespace {

// Physical slot of each KV position: [kv_len]
std::vector<int32_t> position_slots(const AttnSeq& s, int block_size) {
  std::vector<int32_t> slots(static_cast<size_t>(s.kv_len));
  for (int p = 0; p < s.kv_len; ++p)
    slots[p] = s.block_table[p / block_size] * block_size + p % block_size;
  return slots;
}

}  // namespace

void paged_attention(const float* q, const float* k_cache, const float* v_cache,
                     const AttnSeq* seqs, int n_seqs, float* out, int n_heads, int n_kv_heads,
                     int head_dim, int block_size, float scale) {
  const int group = n_heads / n_kv_heads;
  std::vector<std::vector<int32_t>> seq_slots(static_cast<size_t>(n_seqs));
  for (int s = 0; s < n_seqs; ++s)
    seq_slots[s] = position_slots(seqs[s], block_size);

  // Tasks: (seq, head, chunk of kQChunk queries).
  constexpr int kQChunk = 16;
  struct Task {
    int seq, head, q0, q1;
  };
  std::vector<Task> tasks;
  for (int s = 0; s < n_seqs; ++s) {
    for (int h = 0; h < n_heads; ++h) {
      for (int q0 = 0; q0 < seqs[s].q_len; q0 += kQChunk) {
        tasks.push_back({s, h, q0, std::min(seqs[s].q_len, q0 + kQChunk)});
      }
    }
  }
  const size_t kv_stride = static_cast<size_t>(n_kv_heads) * head_dim;
  ThreadPool::global().parallel_for(tasks.size(), [&](size_t tb, size_t te) {
    std::vector<float> scores;
    std::vector<float> acc(static_cast<size_t>(head_dim));
    for (size_t ti = tb; ti < te; ++ti) {
      const Task& t = tasks[ti];
      const AttnSeq& s = seqs[t.seq];
      const std::vector<int32_t>& slots = seq_slots[t.seq];
      const int kvh = t.head / group;
      for (int j = t.q0; j < t.q1; ++j) {
        const int row = s.q_start + j;
        const float* qv = q + (static_cast<size_t>(row) * n_heads + t.head) * head_dim;
        const int n_ctx = std::min<int>(s.kv_len - s.q_len + j + 1, static_cast<int>(slots.size()));
        scores.resize(static_cast<size_t>(n_ctx));
        float max_score = -INFINITY;
        for (int c = 0; c < n_ctx; ++c) {
          const float* kv = k_cache + static_cast<size_t>(slots[c]) * kv_stride +
                            static_cast<size_t>(kvh) * head_dim;
          float dot = 0.f;
          for (int d = 0; d < head_dim; ++d)
            dot += qv[d] * kv[d];
          scores[c] = dot * scale;
          max_score = std::max(max_score, scores[c]);
        }
        double denom = 0.0;
        for (int c = 0; c < n_ctx; ++c) {
          scores[c] = std::exp(scores[c] - max_score);
          denom += scores[c];
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int c = 0; c < n_ctx; ++c) {
          const float* vv = v_cache + static_cast<size_t>(slots[c]) * kv_stride +
                            static_cast<size_t>(kvh) * head_dim;
          const float p = scores[c];
          for (int d = 0; d < head_dim; ++d)
            acc[d] += p * vv[d];
        }
        float* o = out + (static_cast<size_t>(row) * n_heads + t.head) * head_dim;
        const float inv = static_cast<float>(1.0 / denom);
        for (int d = 0; d < head_dim; ++d)
          o[d] = acc[d] * inv;
      }
    }
  });
}

}  // namespace cartserve::ops::cpu
