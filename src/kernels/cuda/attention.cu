// Paged causal attention, straightforward version: one block per (query
// token, head); the block walks the sequence's KV blocks in table order, keeps
// an online softmax (running max and sum) per thread over a strided subset of
// KV entries, then merges threads. Correctness reference for the GPU; the
// fast decode/prefill kernels come with the CUDA backend.
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kMaxHeadDim = 256;
constexpr int kThreads = 128;

struct DevSeq {
  int q_start, q_len, kv_len, n_blocks;
  const int32_t* block_table;
};

__global__ void paged_attention_kernel(const float* q, const float* k_cache, const float* v_cache,
                                       const DevSeq* seqs, const int32_t* row_seq, float* out,
                                       int n_heads, int n_kv_heads, int head_dim, int block_size,
                                       float scale) {
  const int row = blockIdx.x;
  const int head = blockIdx.y;
  const DevSeq s = seqs[row_seq[row]];
  const int j = row - s.q_start;
  const int n_ctx = s.kv_len - s.q_len + j + 1;
  const int kvh = head / (n_heads / n_kv_heads);
  const size_t kv_stride = static_cast<size_t>(n_kv_heads) * head_dim;
  const float* qv = q + (static_cast<size_t>(row) * n_heads + head) * head_dim;

  float m = -INFINITY, l = 0.f;
  float o_local[kMaxHeadDim];  // this thread's unnormalised output: [head_dim]
  for (int d = 0; d < head_dim; ++d)
    o_local[d] = 0.f;

  // Walk positions block by block; thread t takes offsets t, t + blockDim.x, ...
  for (int b = 0; b < s.n_blocks && b * block_size < n_ctx; ++b) {
    for (int o = threadIdx.x; o < block_size && b * block_size + o < n_ctx; o += blockDim.x) {
      const size_t slot = static_cast<size_t>(s.block_table[b]) * block_size + o;
      const float* kv = k_cache + slot * kv_stride + static_cast<size_t>(kvh) * head_dim;
      float dot = 0.f;
      for (int d = 0; d < head_dim; ++d)
        dot += qv[d] * kv[d];
      const float sc = dot * scale;
      const float m_new = fmaxf(m, sc);
      const float corr = __expf(m - m_new);
      const float p = __expf(sc - m_new);
      l = l * corr + p;
      const float* vv = v_cache + slot * kv_stride + static_cast<size_t>(kvh) * head_dim;
      for (int d = 0; d < head_dim; ++d)
        o_local[d] = o_local[d] * corr + p * vv[d];
      m = m_new;
    }
  }

  // Merge the per-thread partial softmaxes through shared memory.
  __shared__ float sm_m[kThreads];
  __shared__ float sm_l[kThreads];
  sm_m[threadIdx.x] = m;
  __syncthreads();
  float g_max = -INFINITY;
  for (int t = 0; t < blockDim.x; ++t)
    g_max = fmaxf(g_max, sm_m[t]);
  const float w = (m == -INFINITY) ? 0.f : __expf(m - g_max);
  sm_l[threadIdx.x] = l * w;
  __syncthreads();
  float g_l = 0.f;
  for (int t = 0; t < blockDim.x; ++t)
    g_l += sm_l[t];
  __shared__ float sm_o[kMaxHeadDim];
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    sm_o[d] = 0.f;
  __syncthreads();
  for (int d = 0; d < head_dim; ++d)
    atomicAdd(&sm_o[d], o_local[d] * w);
  __syncthreads();
  float* orow = out + (static_cast<size_t>(row) * n_heads + head) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    orow[d] = sm_o[d] / g_l;
}

}  // namespace

void paged_attention(const float* q, const float* k_cache, const float* v_cache,
                     const AttnSeq* seqs, int n_seqs, float* out, int n_heads, int n_kv_heads,
                     int head_dim, int block_size, float scale) {
  if (head_dim > kMaxHeadDim) {
    std::fprintf(stderr, "paged_attention: head_dim %d > %d\n", head_dim, kMaxHeadDim);
    std::abort();
  }
  std::vector<DevSeq> host(static_cast<size_t>(n_seqs));
  std::vector<int32_t> row_seq;
  for (int i = 0; i < n_seqs; ++i) {
    host[i] = {seqs[i].q_start, seqs[i].q_len, seqs[i].kv_len, seqs[i].n_blocks,
               seqs[i].block_table};
    for (int j = 0; j < seqs[i].q_len; ++j) {
      if (static_cast<int>(row_seq.size()) <= seqs[i].q_start + j) {
        row_seq.resize(static_cast<size_t>(seqs[i].q_start + j + 1), 0);
      }
      row_seq[static_cast<size_t>(seqs[i].q_start + j)] = i;
    }
  }
  if (row_seq.empty()) return;
  DevSeq* d_seqs = nullptr;
  int32_t* d_row_seq = nullptr;
  cudaMalloc(&d_seqs, host.size() * sizeof(DevSeq));
  cudaMalloc(&d_row_seq, row_seq.size() * sizeof(int32_t));
  cudaMemcpy(d_seqs, host.data(), host.size() * sizeof(DevSeq), cudaMemcpyHostToDevice);
  cudaMemcpy(d_row_seq, row_seq.data(), row_seq.size() * sizeof(int32_t), cudaMemcpyHostToDevice);
  const dim3 grid(static_cast<unsigned>(row_seq.size()), static_cast<unsigned>(n_heads));
  paged_attention_kernel<<<grid, kThreads>>>(q, k_cache, v_cache, d_seqs, d_row_seq, out, n_heads,
                                             n_kv_heads, head_dim, block_size, scale);
  check_launch("paged_attention");
  cudaFree(d_seqs);
  cudaFree(d_row_seq);
}

}  // namespace cartserve::ops::cuda
