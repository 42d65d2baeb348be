#include "runtime/cuda/gemm.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <vector>

#include "core/env.h"
#include "kernels/cuda_ops.h"
#include "runtime/cuda/cuda_status.h"

namespace cartserve::cuda {

bool Gemm::gemv_by_default() {
  return env_flag("CARTSERVE_GEMV");
}

bool Gemm::tune_by_default() {
  return env_flag("CARTSERVE_GEMM_TUNE");
}

int Gemm::decode_gemv_rows_by_default() {
  const char* env = std::getenv("CARTSERVE_DECODE_GEMV");
  if (env == nullptr) return 0;
  return std::clamp(std::atoi(env), 0, ops::cuda::kGemvMaxRows);
}

bool Gemm::fixed_by_default() {
  return env_flag("CARTSERVE_GEMM_FIXED");
}

bool Gemm::skinny_by_default() {
  return env_flag("CARTSERVE_SKINNY");
}

Result<std::unique_ptr<Gemm>> Gemm::create(void* workspace, size_t workspace_bytes, bool gemv,
                                           bool skinny, bool tune, int decode_gemv_rows,
                                           bool fixed) {
  std::unique_ptr<Gemm> g(new Gemm());
  CS_CUBLAS(cublasLtCreate(&g->handle_));
  g->workspace_ = workspace;
  g->workspace_bytes_ = workspace_bytes;
  g->gemv_ = gemv;
  g->skinny_ = skinny;
  g->tune_ = tune;
  g->decode_gemv_rows_ = std::clamp(decode_gemv_rows, 0, ops::cuda::kGemvMaxRows);
  g->fixed_ = fixed;
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
  if (probe_) cudaFree(probe_);
}

// Column-major view: Y^T [out, n] = W [out, in] (stored as W^T [in, out], ld in,
// transposed) x X^T [in, n] (ld in).
Result<const Gemm::Plan*> Gemm::plan(int n, int in, int out, bool y_fp32, const void* x,
                                     const void* w, void* y, cudaStream_t s) {
  const auto key = std::make_tuple(n, in, out, y_fp32);
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    Plan p;
    CS_CUBLAS(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CS_CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CS_CUBLAS(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CS_CUBLAS(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, in, out, in));
    CS_CUBLAS(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, in, n, in));
    CS_CUBLAS(cublasLtMatrixLayoutCreate(&p.c, y_fp32 ? CUDA_R_32F : CUDA_R_16BF, out, n, out));
    CS_ASSIGN_OR_RETURN(const std::vector<cublasLtMatmulAlgo_t> first, heuristic(p, 1));
    if (first.empty()) {
      return make_error(ErrorCode::kInternal, "cuBLASLt has no algorithm for a {}x{}x{} GEMM", n,
                        in, out);
    }
    p.algo = first[0];
    p.settled = !(tune_ && n <= kTuneMaxRows);
    it = plans_.emplace(key, p).first;
  }
  Plan& p = it->second;
  // Tuning: cuBLASLt's candidates and their split-K forms timed on the
  // call's own operands, on the shape's first call with operands (x null:
  // descriptors only, as fixed_algo asks); a first call inside a graph
  // capture keeps the heuristic's pick for good (captured graphs hold it).
  if (!p.settled && x != nullptr) {
    p.settled = true;
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    CS_CUDA(cudaStreamIsCapturing(s, &cap));
    if (cap == cudaStreamCaptureStatusNone) {
      CS_ASSIGN_OR_RETURN(std::vector<cublasLtMatmulAlgo_t> cands, heuristic(p, kTuneCandidates));
      split_k_variants(p, cands);
      if (cands.size() > 1) {
        CS_ASSIGN_OR_RETURN(p.algo, fastest(p, cands, x, w, y, s));
      }
    }
  }
  return &p;
}

Result<std::vector<cublasLtMatmulAlgo_t>> Gemm::heuristic(const Plan& p, int max) const {
  cublasLtMatmulPreference_t pref = nullptr;
  CS_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  CS_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                 &workspace_bytes_, sizeof workspace_bytes_));
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(max));
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c, pref,
                                                           max, results.data(), &found);
  cublasLtMatmulPreferenceDestroy(pref);
  CS_CUBLAS(st);
  std::vector<cublasLtMatmulAlgo_t> algos;
  for (int i = 0; i < found; ++i) {
    if (results[static_cast<size_t>(i)].state == CUBLAS_STATUS_SUCCESS)
      algos.push_back(results[static_cast<size_t>(i)].algo);
  }
  return algos;
}

float Gemm::time_ms(const Plan& p, const cublasLtMatmulAlgo_t& a, const void* x, const void* w,
                    void* y, cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1) const {
  const float alpha = 1.0f, beta = 0.0f;
  std::vector<float> t;
  for (int r = 0; r < 6; ++r) {
    cudaEventRecord(e0, s);
    const cublasStatus_t cs = cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c,
                                             y, p.c, &a, workspace_, workspace_bytes_, s);
    cudaEventRecord(e1, s);
    if (cs != CUBLAS_STATUS_SUCCESS || cudaEventSynchronize(e1) != cudaSuccess) {
      cudaGetLastError();
      return std::numeric_limits<float>::infinity();  // cannot run: never chosen
    }
    float ms = 0.f;
    cudaEventElapsedTime(&ms, e0, e1);
    if (r > 0) t.push_back(ms);
  }
  std::nth_element(t.begin(), t.begin() + 2, t.end());
  return t[2];
}

Result<cublasLtMatmulAlgo_t> Gemm::fixed_algo(int in, int out, bool y_fp32, const void* w,
                                              cudaStream_t s) {
  const auto key = std::make_tuple(in, out, y_fp32);
  if (auto it = fixed_algos_.find(key); it != fixed_algos_.end()) return it->second;
  constexpr int kRows[2] = {1, kFixedMaxRows};
  const Plan* plans[2] = {};
  for (int i = 0; i < 2; ++i) {
    // Descriptors only: the probe pointers are never read without tuning.
    CS_ASSIGN_OR_RETURN(plans[i], plan(kRows[i], in, out, y_fp32, nullptr, w, nullptr, s));
  }
  cublasLtMatmulAlgo_t chosen = plans[1]->algo;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  CS_CUDA(cudaStreamIsCapturing(s, &cap));
  if (cap == cudaStreamCaptureStatusNone) {
    // Candidates: each count's picks and their split-K forms, kept if
    // cuBLASLt accepts them at both counts.
    std::vector<cublasLtMatmulAlgo_t> cands;
    for (const Plan* p : {plans[1], plans[0]}) {
      CS_ASSIGN_OR_RETURN(std::vector<cublasLtMatmulAlgo_t> picks, heuristic(*p, kTuneCandidates));
      split_k_variants(*p, picks);
      for (const cublasLtMatmulAlgo_t& a : picks) {
        bool ok = true;
        for (const Plan* q : plans) {
          cublasLtMatmulHeuristicResult_t check{};
          ok = ok &&
               cublasLtMatmulAlgoCheck(handle_, q->op, q->a, q->b, q->c, q->c, &a, &check) ==
                   CUBLAS_STATUS_SUCCESS &&
               check.workspaceSize <= workspace_bytes_;
        }
        if (ok) cands.push_back(a);
      }
    }
    const size_t x_bytes = static_cast<size_t>(kFixedMaxRows) * in * 2;
    const size_t need = x_bytes + static_cast<size_t>(kFixedMaxRows) * out * 4;
    if (need > probe_bytes_) {
      if (probe_) cudaFree(probe_);
      probe_ = nullptr;
      probe_bytes_ = 0;
      CS_CUDA(cudaMalloc(&probe_, need));
      probe_bytes_ = need;
      CS_CUDA(cudaMemsetAsync(probe_, 0x3c, need, s));  // finite bf16/fp32 operands
    }
    void* px = probe_;
    void* py = static_cast<uint8_t*>(probe_) + x_bytes;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    CS_CUDA(cudaEventCreate(&e0));
    CS_CUDA(cudaEventCreate(&e1));
    std::vector<float> t[2];
    float best[2] = {std::numeric_limits<float>::infinity(),
                     std::numeric_limits<float>::infinity()};
    for (const cublasLtMatmulAlgo_t& a : cands) {
      for (int i = 0; i < 2; ++i) {
        t[i].push_back(time_ms(*plans[i], a, px, w, py, s, e0, e1));
        best[i] = std::min(best[i], t[i].back());
      }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    double best_score = std::numeric_limits<double>::infinity();
    for (size_t c = 0; c < cands.size(); ++c) {
      const double score = t[0][c] / best[0] + t[1][c] / best[1];
      if (score < best_score) {
        best_score = score;
        chosen = cands[c];
      }
    }
  }
  fixed_algos_.emplace(key, chosen);
  return chosen;
}

// Split-K forms of the heuristic's first kSplitKBases picks: the k range cut
// into kSplitKCounts[j] parts reduced in a fixed order (in place with
// counters, or through the workspace in fp32), whichever the algorithm
// supports and cuBLASLt accepts for the shape. A few output tiles per SM
// leave most of the GPU idle at decode's row counts (the o-projection's
// 3072 outputs at one row) unless k is split.
void Gemm::split_k_variants(const Plan& p, std::vector<cublasLtMatmulAlgo_t>& cands) const {
  constexpr int kSplitKBases = 3;
  constexpr int32_t kSplitKCounts[] = {2, 3, 4, 6, 8, 12, 16};
  const size_t bases = std::min<size_t>(cands.size(), kSplitKBases);
  for (size_t i = 0; i < bases; ++i) {
    const cublasLtMatmulAlgo_t base = cands[i];
    int32_t supported = 0;
    uint32_t schemes = 0;
    size_t written = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &supported,
                                          sizeof supported, &written) != CUBLAS_STATUS_SUCCESS ||
        supported == 0)
      continue;
    if (cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &schemes,
                                          sizeof schemes, &written) != CUBLAS_STATUS_SUCCESS)
      continue;
    for (const uint32_t scheme : {uint32_t{CUBLASLT_REDUCTION_SCHEME_INPLACE},
                                  uint32_t{CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE}}) {
      if ((schemes & scheme) == 0) continue;
      for (const int32_t k : kSplitKCounts) {
        cublasLtMatmulAlgo_t a = base;
        if (cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &k,
                                                 sizeof k) != CUBLAS_STATUS_SUCCESS ||
            cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                                 sizeof scheme) != CUBLAS_STATUS_SUCCESS)
          continue;
        cublasLtMatmulHeuristicResult_t check{};
        if (cublasLtMatmulAlgoCheck(handle_, p.op, p.a, p.b, p.c, p.c, &a, &check) !=
                CUBLAS_STATUS_SUCCESS ||
            check.workspaceSize > workspace_bytes_)
          continue;
        cands.push_back(a);
      }
    }
  }
}

Gemm::Choice Gemm::choice(int n, int in, int out, bool y_fp32) const {
  Choice c;
  const cublasLtMatmulAlgo_t* found = nullptr;
  if (const auto f = fixed_algos_.find(std::make_tuple(in, out, y_fp32));
      fixed_ && n <= kFixedMaxRows && f != fixed_algos_.end()) {
    found = &f->second;
  } else if (const auto it = plans_.find(std::make_tuple(n, in, out, y_fp32)); it != plans_.end()) {
    found = &it->second.algo;
  }
  if (found == nullptr) return c;
  const cublasLtMatmulAlgo_t& a = *found;
  size_t written = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_ID, &c.algo_id, sizeof c.algo_id,
                                       &written);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &c.tile, sizeof c.tile,
                                       &written);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &c.split_k,
                                       sizeof c.split_k, &written);
  cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &c.scheme,
                                       sizeof c.scheme, &written);
  return c;
}

// Times each candidate on the call's own operands (1 warm-up, median of 5)
// and keeps the heuristic's first choice unless another is kTuneMargin
// faster, so that noise rarely changes the pick (and hence the bits) between
// runs. Synchronises the stream: only outside graph capture, once per shape.
Result<cublasLtMatmulAlgo_t> Gemm::fastest(const Plan& p,
                                           const std::vector<cublasLtMatmulAlgo_t>& cands,
                                           const void* x, const void* w, void* y, cudaStream_t s) {
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  CS_CUDA(cudaEventCreate(&e0));
  CS_CUDA(cudaEventCreate(&e1));
  // A first candidate that cannot run counts as infinitely slow.
  float first_ms = std::numeric_limits<float>::infinity(), best_ms = first_ms;
  size_t best = 0;
  for (size_t i = 0; i < cands.size(); ++i) {
    const float med = time_ms(p, cands[i], x, w, y, s, e0, e1);
    if (i == 0) first_ms = best_ms = med;
    if (i > 0 && med < best_ms && med < first_ms * (1.0f - kTuneMargin)) {
      best = i;
      best_ms = med;
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  CS_CUDA(cudaGetLastError());
  return cands[best];
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
  return cublaslt(x, w, y, y_fp32, n, in, out, s, decode, false);
}

Status Gemm::cublaslt(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_fp32, int n,
                      int in, int out, cudaStream_t s, bool decode, bool add) {
  const bool fixed = decode && fixed_ && n <= kFixedMaxRows;
  cublasLtMatmulAlgo_t algo{};
  if (fixed) {
    CS_ASSIGN_OR_RETURN(algo, fixed_algo(in, out, y_fp32, w, s));
  }
  // Adding into y: the plan's descriptors and pick without timing (x null),
  // which would add into y once per candidate.
  CS_ASSIGN_OR_RETURN(const Plan* p, plan(n, in, out, y_fp32, add ? nullptr : x, w, y, s));
  const float alpha = 1.0f, beta = add ? 1.0f : 0.0f;
  CS_CUBLAS(cublasLtMatmul(handle_, p->op, &alpha, w, p->a, x, p->b, &beta, y, p->c, y, p->c,
                           fixed ? &algo : &p->algo, workspace_, workspace_bytes_, s));
  return {};
}

Status Gemm::accumulate(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int n,
                        int in, int out, cudaStream_t s, bool decode) {
  if (n == 0) return {};
  if (!plain()) {
    return make_error(ErrorCode::kInternal,
                      "Gemm::accumulate runs on cuBLASLt only (gemv and skinny paths are on)");
  }
  return cublaslt(x, w, y, false, n, in, out, s, decode, true);
}

Status Gemm::run_swiglu(const __nv_bfloat16* x, const __nv_bfloat16* w_gate_up, __nv_bfloat16* gu,
                        __nv_bfloat16* act, int n, int in, int ff, cudaStream_t s, bool decode,
                        const ops::cuda::RowRmsScale& scale) {
  if (n == 0) return {};
  const int block = ops::cuda::gate_up_block(ff);
  if (scale.x != nullptr) {  // the norm-folded forward: cuBLASLt, then the scaled SwiGLU
    if (!plain()) {
      return make_error(ErrorCode::kInternal,
                        "Gemm::run_swiglu with a row scale runs on cuBLASLt only");
    }
    CS_RETURN_IF_ERROR(run(x, w_gate_up, gu, false, n, in, 2 * ff, s, decode));
    ops::cuda::silu_mul_scaled(gu, act, n, ff, scale, s, block);
    return {};
  }
  const bool gemv =
      decode && n <= decode_gemv_rows_ && ops::cuda::gemv_supports(x, w_gate_up, n, in);
  if (gemv && block == 8) {
    ops::cuda::gemv_swiglu(x, w_gate_up, act, n, in, ff, s);
    return {};
  }
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
