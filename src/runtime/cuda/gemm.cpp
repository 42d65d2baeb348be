#include "runtime/cuda/gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cuda_ops.h"
#include "runtime/cuda/cuda_status.h"

namespace cartserve::cuda {

bool Gemm::gemv_by_default() {
  const char* env = std::getenv("CARTSERVE_GEMV");
  return env != nullptr && std::strcmp(env, "1") == 0;
}

bool Gemm::tune_by_default() {
  const char* env = std::getenv("CARTSERVE_GEMM_TUNE");
  return env != nullptr && std::strcmp(env, "1") == 0;
}

int Gemm::decode_gemv_rows_by_default() {
  const char* env = std::getenv("CARTSERVE_DECODE_GEMV");
  if (env == nullptr) return 0;
  return std::clamp(std::atoi(env), 0, ops::cuda::kGemvMaxRows);
}

bool Gemm::skinny_by_default() {
  const char* env = std::getenv("CARTSERVE_SKINNY");
  return env != nullptr && std::strcmp(env, "1") == 0;
}

Result<std::unique_ptr<Gemm>> Gemm::create(void* workspace, size_t workspace_bytes, bool gemv,
                                           bool skinny, bool tune, int decode_gemv_rows) {
  std::unique_ptr<Gemm> g(new Gemm());
  CS_CUBLAS(cublasLtCreate(&g->handle_));
  g->workspace_ = workspace;
  g->workspace_bytes_ = workspace_bytes;
  g->gemv_ = gemv;
  g->skinny_ = skinny;
  g->tune_ = tune;
  g->decode_gemv_rows_ = std::clamp(decode_gemv_rows, 0, ops::cuda::kGemvMaxRows);
  return g;
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
  }
  if (handle_) cublasLtDestroy(handle_);
}

// Column-major view: Y^T [out, n] = W [out, in] (stored as W^T [in, out], ld in,
// transposed) x X^T [in, n] (ld in).
Result<const Gemm::Plan*> Gemm::plan(int n, int in, int out, bool y_fp32, const void* x,
                                     const void* w, void* y, cudaStream_t s) {
  const auto key = std::make_tuple(n, in, out, y_fp32);
  if (auto it = plans_.find(key); it != plans_.end()) return &it->second;
  Plan p;
  CS_CUBLAS(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  CS_CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  CS_CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  CS_CUBLAS(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, in, out, in));
  CS_CUBLAS(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, in, n, in));
  CS_CUBLAS(cublasLtMatrixLayoutCreate(&p.c, y_fp32 ? CUDA_R_32F : CUDA_R_16BF, out, n, out));
  cublasLtMatmulPreference_t pref = nullptr;
  CS_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  CS_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                 &workspace_bytes_, sizeof workspace_bytes_));
  // Candidates to time when tuning this shape; otherwise the first pick only.
  const bool tune = tune_ && n <= kTuneMaxRows;
  cublasLtMatmulHeuristicResult_t results[kTuneCandidates]{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
      handle_, p.op, p.a, p.b, p.c, p.c, pref, tune ? kTuneCandidates : 1, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  CS_CUBLAS(st);
  if (found == 0) {
    return make_error(ErrorCode::kInternal, "cuBLASLt has no algorithm for a {}x{}x{} GEMM", n, in,
                      out);
  }
  p.algo = results[0].algo;
  if (tune && found > 1) {
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    CS_CUDA(cudaStreamIsCapturing(s, &cap));
    if (cap == cudaStreamCaptureStatusNone) {
      CS_ASSIGN_OR_RETURN(p.algo, fastest(p, results, found, x, w, y, s));
    }
  }
  return &plans_.emplace(key, p).first->second;
}

// Times each candidate on the call's own operands (1 warm-up, median of 5)
// and keeps the heuristic's first choice unless another is kTuneMargin
// faster, so that noise rarely changes the pick (and hence the bits) between
// runs. Synchronises the stream: only outside graph capture, once per shape.
Result<cublasLtMatmulAlgo_t> Gemm::fastest(const Plan& p,
                                           const cublasLtMatmulHeuristicResult_t* results,
                                           int found, const void* x, const void* w, void* y,
                                           cudaStream_t s) {
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  CS_CUDA(cudaEventCreate(&e0));
  CS_CUDA(cudaEventCreate(&e1));
  const float alpha = 1.0f, beta = 0.0f;
  // A first candidate that cannot run counts as infinitely slow.
  float first_ms = std::numeric_limits<float>::infinity(), best_ms = first_ms;
  int best = 0;
  Status status;
  for (int i = 0; i < found && status.ok(); ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    std::vector<float> t;
    for (int r = 0; r < 6 && status.ok(); ++r) {
      cudaEventRecord(e0, s);
      const cublasStatus_t cs =
          cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c,
                         &results[i].algo, workspace_, workspace_bytes_, s);
      cudaEventRecord(e1, s);
      if (cs != CUBLAS_STATUS_SUCCESS) break;  // this candidate is skipped
      if (cudaEventSynchronize(e1) != cudaSuccess) {
        status = make_error(ErrorCode::kInternal, "CUDA error while timing cuBLASLt algorithms");
        break;
      }
      float ms = 0.f;
      cudaEventElapsedTime(&ms, e0, e1);
      if (r > 0) t.push_back(ms);
    }
    if (t.size() < 5) continue;
    std::nth_element(t.begin(), t.begin() + 2, t.end());
    const float med = t[2];
    if (i == 0) first_ms = best_ms = med;
    if (i > 0 && med < best_ms && med < first_ms * (1.0f - kTuneMargin)) {
      best = i;
      best_ms = med;
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  CS_RETURN_IF_ERROR(status);
  return results[best].algo;
}

Status Gemm::run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_fp32, int n,
                 int in, int out, cudaStream_t s, bool decode) {
  if (n == 0) return {};
  if (decode && n <= decode_gemv_rows_ && ops::cuda::gemv_supports(x, w, n, in)) {
    ops::cuda::gemv(x, w, y, y_fp32, n, in, out, s);
    return {};
  }
  if (decode && skinny_ && ops::cuda::skinny_gemm_supports(x, w, in)) {
    ops::cuda::skinny_gemm(x, w, y, y_fp32, n, in, out, s);
    return {};
  }
  if (gemv_ && ops::cuda::gemv_supports(x, w, n, in)) {
    ops::cuda::gemv(x, w, y, y_fp32, n, in, out, s);
    return {};
  }
  CS_ASSIGN_OR_RETURN(const Plan* p, plan(n, in, out, y_fp32, x, w, y, s));
  const float alpha = 1.0f, beta = 0.0f;
  CS_CUBLAS(cublasLtMatmul(handle_, p->op, &alpha, w, p->a, x, p->b, &beta, y, p->c, y, p->c,
                           &p->algo, workspace_, workspace_bytes_, s));
  return {};
}

Status Gemm::run_swiglu(const __nv_bfloat16* x, const __nv_bfloat16* w_gate_up, __nv_bfloat16* gu,
                        __nv_bfloat16* act, int n, int in, int ff, cudaStream_t s, bool decode) {
  if (n == 0) return {};
  const int block = ops::cuda::gate_up_block(ff);
  const bool gemv =
      decode && n <= decode_gemv_rows_ && ops::cuda::gemv_supports(x, w_gate_up, n, in);
  if (!gemv && decode && skinny_ && block == 8 &&
      ops::cuda::skinny_gemm_supports(x, w_gate_up, in)) {
    ops::cuda::skinny_gemm_swiglu(x, w_gate_up, act, n, in, ff, s);
    return {};
  }
  CS_RETURN_IF_ERROR(run(x, w_gate_up, gu, false, n, in, 2 * ff, s, decode));
  ops::cuda::silu_mul(gu, act, n, ff, s, block);
  return {};
}

}  // namespace cartserve::cuda
