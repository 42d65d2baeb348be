// Row gathers into and out of the residual stream (fp32, or bf16 in the
// norm-folded forward).
//
// Design: both ops are pure copies (embedding also widens bf16 -> fp32,
// which is exact), so they are bandwidth-bound and need no arithmetic care.
// One CTA per output row (grid = n, known on the host); the threads of the
// CTA stride over the row in 16-byte vectors (8 bf16 in / two float4 out for
// embedding, one float4 for gather_rows) when the row length and the base
// pointers allow it, else element by element. No shared memory, no atomics;
// each output element is written by exactly one thread.
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kThreads = 128;

// x[row, :] = T(table[ids[row], :]) (T float: widened; bf16: copied).
// VEC: 8 (vectorised) or 1. Invariant: 0 <= ids[row] < vocab (validated by
// the caller).
template <int VEC, typename T>
__global__ void __launch_bounds__(kThreads)
    embedding_kernel(const bf16* __restrict__ table /* [vocab, dim] */,
                     const int32_t* __restrict__ ids /* [n] */, T* __restrict__ x /* [n, dim] */,
                     int dim) {
  pdl_wait();
  pdl_trigger();
  const int64_t row = blockIdx.x;
  const bf16* src = table + static_cast<int64_t>(ids[row]) * dim;
  T* dst = x + row * dim;
  if constexpr (VEC == 8 && std::is_same_v<T, bf16>) {
    for (int c = threadIdx.x; c < dim / 8; c += blockDim.x)
      reinterpret_cast<uint4*>(dst)[c] = reinterpret_cast<const uint4*>(src)[c];
  } else if constexpr (VEC == 8) {
    for (int c = threadIdx.x; c < dim / 8; c += blockDim.x) {
      float v[8];
      load_bf16x8(src + 8 * c, v);
      store_f32x8(dst + 8 * c, v);
    }
  } else if constexpr (std::is_same_v<T, bf16>) {
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
      dst[i] = src[i];
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
      dst[i] = __bfloat162float(src[i]);
  }
}

template <typename T>
void run_embedding(const bf16* table, const int32_t* ids, T* x, int n, int dim, cudaStream_t s) {
  if (n <= 0 || dim <= 0) return;
  if (dim % 8 == 0 && aligned16(table) && aligned16(x)) {
    launch(embedding_kernel<8, T>, n, kThreads, 0, s, table, ids, x, dim);
  } else {
    launch(embedding_kernel<1, T>, n, kThreads, 0, s, table, ids, x, dim);
  }
  check_launch("embedding");
}

// out[row, :] = x[rows[row], :].  VEC: 4 (float4) or 1.
template <int VEC>
__global__ void __launch_bounds__(kThreads)
    gather_rows_kernel(const float* __restrict__ x /* [*, dim] */,
                       const int32_t* __restrict__ rows /* [n] */,
                       float* __restrict__ out /* [n, dim] */, int dim) {
  pdl_wait();
  pdl_trigger();
  const int64_t row = blockIdx.x;
  const float* src = x + static_cast<int64_t>(rows[row]) * dim;
  float* dst = out + row * dim;
  if constexpr (VEC == 4) {
    for (int c = threadIdx.x; c < dim / 4; c += blockDim.x)
      reinterpret_cast<float4*>(dst)[c] = reinterpret_cast<const float4*>(src)[c];
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
      dst[i] = src[i];
  }
}

}  // namespace

void embedding(const bf16* table, const int32_t* ids, float* x, int n, int dim, cudaStream_t s) {
  run_embedding(table, ids, x, n, dim, s);
}

void embedding(const bf16* table, const int32_t* ids, bf16* x, int n, int dim, cudaStream_t s) {
  run_embedding(table, ids, x, n, dim, s);
}

void gather_rows(const float* x, const int32_t* rows, float* out, int n, int dim, cudaStream_t s) {
  if (n <= 0 || dim <= 0) return;
  if (dim % 4 == 0 && aligned16(x) && aligned16(out)) {
    launch(gather_rows_kernel<4>, n, kThreads, 0, s, x, rows, out, dim);
  } else {
    launch(gather_rows_kernel<1>, n, kThreads, 0, s, x, rows, out, dim);
  }
  check_launch("gather_rows");
}

}  // namespace cartserve::ops::cuda
