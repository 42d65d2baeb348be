// The element-wise sum of a few bf16 buffers: the reduction of tensor
// parallelism's one-device all-reduce (runtime/cuda/device_comm.h), where
// every rank's o_proj / down partial lives on the same GPU.
//
// Design: bandwidth-bound and element-wise. A grid-stride loop over chunks
// of 8 elements (16-byte loads and store) when every pointer is aligned and
// count % 8 == 0, else one element per step. Each output element adds its
// inputs in input order in fp32 and rounds once to bf16 (the CPU twin:
// InProcessComm's rank-ordered fp32 sum), so the bits do not depend on the
// launch shape.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda_ops.h"

namespace cartserve::ops::cuda {

namespace {

constexpr int kThreads = 256;

struct Inputs {
  const bf16* p[kMaxSumInputs];
};

template <int VEC>
__global__ void __launch_bounds__(kThreads)
    sum_kernel(Inputs in, int n_in, bf16* out /* [count], may alias an input */, int64_t count) {
  const int64_t chunks = count / VEC;
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < chunks;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = c * VEC;
    if constexpr (VEC == 8) {
      float acc[8], v[8];
      load_bf16x8(in.p[0] + e, acc);
      for (int r = 1; r < n_in; ++r) {
        load_bf16x8(in.p[r] + e, v);
#pragma unroll
        for (int k = 0; k < 8; ++k)
          acc[k] += v[k];
      }
      store_bf16x8(out + e, acc);
    } else {
      float acc = __bfloat162float(in.p[0][e]);
      for (int r = 1; r < n_in; ++r)
        acc += __bfloat162float(in.p[r][e]);
      out[e] = __float2bfloat16_rn(acc);
    }
  }
}

}  // namespace

void sum_bf16(const bf16* const* inputs, int n_inputs, bf16* out, int64_t count, cudaStream_t s) {
  if (count <= 0) return;
  if (n_inputs < 1 || n_inputs > kMaxSumInputs) op_fail("sum_bf16", "needs 1 to 8 inputs");
  Inputs in{};
  bool vec = count % 8 == 0 && aligned16(out);
  for (int r = 0; r < n_inputs; ++r) {
    in.p[r] = inputs[r];
    vec = vec && aligned16(inputs[r]);
  }
  const unsigned grid = grid_for(vec ? count / 8 : count, kThreads, 4096);
  if (vec) {
    sum_kernel<8><<<grid, kThreads, 0, s>>>(in, n_inputs, out, count);
  } else {
    sum_kernel<1><<<grid, kThreads, 0, s>>>(in, n_inputs, out, count);
  }
  check_launch("sum_bf16");
}

}  // namespace cartserve::ops::cuda
