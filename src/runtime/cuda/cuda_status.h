// CUDA and cuBLAS errors as Status values, with what was being done.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "core/status.h"

namespace cartserve::cuda {

inline Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return {};
  const ErrorCode code =
      err == cudaErrorMemoryAllocation ? ErrorCode::kResourceExhausted : ErrorCode::kInternal;
  return make_error(code, "CUDA error in {}: {} ({})", what, cudaGetErrorString(err),
                    cudaGetErrorName(err));
}

inline Status cublas_status(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return {};
  return make_error(
      st == CUBLAS_STATUS_ALLOC_FAILED ? ErrorCode::kResourceExhausted : ErrorCode::kInternal,
      "cuBLAS error in {}: {} ({})", what, cublasLtGetStatusString(st), cublasLtGetStatusName(st));
}

// A kernel launch's error (launch configuration, or a fault of an earlier op).
inline Status last_error(const char* what) {
  return cuda_status(cudaGetLastError(), what);
}

}  // namespace cartserve::cuda

#define CS_CUDA(expr) CS_RETURN_IF_ERROR(::cartserve::cuda::cuda_status((expr), #expr))
#define CS_CUBLAS(expr) CS_RETURN_IF_ERROR(::cartserve::cuda::cublas_status((expr), #expr))
