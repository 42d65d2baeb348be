// The CUDA backend of the backend-level GPU tests: a small KV cache and step
// buffers (256 positions of KV, 64-token steps, 8 sequences, 128 positions
// each), enough for their random models' prompts and decode steps.
#pragma once

#include "runtime/cuda/cuda_backend.h"

namespace cartserve::gpu_test {

inline cuda::CudaOptions small_backend_options() {
  cuda::CudaOptions o;
  o.kv_cache_tokens = 256;
  o.max_num_batched_tokens = 64;
  o.max_num_seqs = 8;
  o.max_model_len = 128;
  return o;
}

}  // namespace cartserve::gpu_test
