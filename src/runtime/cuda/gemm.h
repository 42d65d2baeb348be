// Linear layers on the GPU through cuBLASLt: y[n, out] = x[n, in] @ w[out, in]^T
// with bf16 operands and fp32 accumulation, y in bf16 or fp32. The algorithm
// for each shape is chosen once and kept: cuBLASLt's heuristic pick, or with
// CARTSERVE_GEMM_TUNE=1 (up to 256 rows) the fastest of its first 8
// candidates and the split-K forms of its first 3, timed on the first call
// (the first pick unless another is 8% faster). Off by default: on an H100
// (3B shape, 1-128 rows) split-K and the other candidates changed no layer
// by more than ~1 us (bench/results/gpu-h100-2026-12-07-0044.json), and a
// per-row-count choice made by timing could change a sequence's bits
// between batch sizes and between runs.
//
// Rows that must not depend on their batch (decode rows, sampled rows) are
// run with `decode` set. By default they go to cuBLASLt like the others: it
// picks its kernel (tiles, split-K) by the row count, yet the validation tiers
// on the GPU found greedy answers alone and among 16 concurrent requests equal.
// Three opt-in paths, each batch-invariant within its range, change that:
//  - CARTSERVE_DECODE_GEMV=N (1..16): decode runs of up to N rows go to
//    ops::cuda::gemv, whose row bits depend on nothing but the row for any
//    row count up to 16. The fastest kernel here at one row: on an H100 (3B
//    shape, weights past the L2) it reads the layers at 63-104% of the copy
//    rate against cuBLASLt's 52-98% (decode at batch 1: 3.04 vs 3.28
//    ms/step), but on CUDA cores it falls behind from 3-4 rows (at 16 rows
//    26-59% against 51-94%: serving 16 concurrent requests, 1.9k vs 2.9k
//    output tok/s). Off by default: a row alone (gemv) and in a larger batch
//    (cuBLASLt) would differ in its last bits, and greedy answers at near
//    ties with it (validation tier 2 measured 14/16 equal with gemv on).
//  - CARTSERVE_SKINNY=1: decode rows at any count go to ops::cuda::skinny_gemm
//    (tensor cores), batch-invariant at every row count but slower (57-87%
//    of the copy rate at 1 row, 26-54% at 64 rows: decode at batch 64 7.65
//    ms/step against 5.12; bench/results/gpu-h100-2026-12-06-1718.json).
//  - CARTSERVE_GEMM_FIXED=1: decode runs of 1..kFixedMaxRows rows take one
//    cuBLASLt configuration per weight shape (fixed_algo). Rows came out
//    bit-equal at every count tested (1-64) on the tested shapes, at the
//    default's speed (H100 decode: 3.24 vs 3.29 ms/step at batch 1, 5.17 vs
//    5.16 at 64); the choice is made by timing, so it can differ between
//    processes.
// Such decode runs go apart from a step's prompt rows (an extra read of the
// weights in a mixed step).
//
// With `gemv` on (CARTSERVE_GEMV=1), up to kGemvMaxRows rows of the other
// calls (prompt rows) go to gemv too.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "core/status.h"
#include "kernels/cuda_ops.h"

namespace cartserve::cuda {

class Gemm {
 public:
  // `workspace` (device, `workspace_bytes`) is the caller's, for every call.
  static Result<std::unique_ptr<Gemm>> create(void* workspace, size_t workspace_bytes,
                                              bool gemv = gemv_by_default(),
                                              bool skinny = skinny_by_default(),
                                              bool tune = tune_by_default(),
                                              int decode_gemv_rows = decode_gemv_rows_by_default(),
                                              bool fixed = fixed_by_default());
  static bool gemv_by_default();
  // CARTSERVE_DECODE_GEMV=N: decode runs of up to N rows (0..kGemvMaxRows;
  // default 0) through gemv.
  static int decode_gemv_rows_by_default();
  static bool skinny_by_default();
  // CARTSERVE_GEMM_FIXED=1: one cuBLASLt configuration per weight shape for
  // every decode run of up to kFixedMaxRows rows (see fixed_algo).
  static bool fixed_by_default();
  static constexpr int kFixedMaxRows = 64;
  // CARTSERVE_GEMM_TUNE=1 turns the per-shape timing of cuBLASLt's candidates on.
  static bool tune_by_default();
  bool skinny() const { return skinny_; }
  // Every call goes to cuBLASLt (no gemv or skinny path): what accumulate()
  // and a scaled run_swiglu() need.
  bool plain() const { return !gemv_ && !skinny_ && decode_gemv_rows_ == 0; }
  // The same decision from the environment, before a Gemm exists.
  static bool plain_by_default() {
    return !gemv_by_default() && !skinny_by_default() && decode_gemv_rows_by_default() == 0;
  }
  // Whether `decode` rows of a run of `n` take a batch-invariant kernel (so a
  // step's decode rows must run apart from its prompt rows).
  bool invariant_decode(int n) const {
    return skinny_ || (n > 0 && (n <= decode_gemv_rows_ || (fixed_ && n <= kFixedMaxRows)));
  }
  // The cuBLASLt configuration a shape runs with (its decode runs' fixed one
  // when fixed; zeros before its first call or when a custom kernel takes
  // it): for the benchmark's tables and the tests.
  struct Choice {
    int32_t algo_id = 0;
    uint32_t tile = 0;
    int32_t split_k = 0;
    uint32_t scheme = 0;
  };
  Choice choice(int n, int in, int out, bool y_fp32) const;
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // x: [n, in] bf16; w: [out, in] bf16; y: [n, out] (fp32 when y_fp32, else bf16).
  // decode: rows whose bits must not depend on n (see the top of this file).
  Status run(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_fp32, int n, int in,
             int out, cudaStream_t s, bool decode = false);
  // y[n, out] += x[n, in] @ w[out, in]^T (bf16 y, fp32 accumulation;
  // cuBLASLt's beta = 1, in place): the residual add of the norm-folded
  // forward. Many cuBLASLt kernels round the product to bf16 before adding
  // y (measured on an H100 at 1-300 rows), as HF's bf16 residual add does:
  // two roundings. cuBLASLt only (plain()); the algorithm is the shape's
  // heuristic (or fixed) pick, never timed on y.
  Status accumulate(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int n, int in,
                    int out, cudaStream_t s, bool decode = false);
  // The gate/up projection and SwiGLU: act[n, ff] from x [n, in] and w_gate_up
  // [2 * ff, in] (gate/up rows in blocks of ops::cuda::gate_up_block(ff)).
  // Decode rows through gemv or skinny: one kernel (SwiGLU in its epilogue);
  // else the projection into gu [n, 2 * ff] (bf16 scratch), then silu_mul.
  // With scale.x set (the norm-folded forward; plain() only): the projection,
  // then silu_mul_scaled.
  Status run_swiglu(const __nv_bfloat16* x, const __nv_bfloat16* w_gate_up, __nv_bfloat16* gu,
                    __nv_bfloat16* act, int n, int in, int ff, cudaStream_t s, bool decode = false,
                    const ops::cuda::RowRmsScale& scale = {});

 private:
  Gemm() = default;
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool settled = false;  // algo is final (chosen by timing, or no tuning wanted)
  };
  // The shape's plan, made on first use; x, w, y and s are the call's (the
  // candidates are timed on them).
  Result<const Plan*> plan(int n, int in, int out, bool y_fp32, const void* x, const void* w,
                           void* y, cudaStream_t s);
  static constexpr int kTuneCandidates = 8;
  static constexpr int kTuneMaxRows = 256;     // larger shapes keep the heuristic's pick
  static constexpr float kTuneMargin = 0.08f;  // a candidate must beat the first by 8%
  Result<cublasLtMatmulAlgo_t> fastest(const Plan& p,
                                       const std::vector<cublasLtMatmulAlgo_t>& cands,
                                       const void* x, const void* w, void* y, cudaStream_t s);
  // Appends split-K forms of the first candidates (tuning only).
  void split_k_variants(const Plan& p, std::vector<cublasLtMatmulAlgo_t>& cands) const;
  // The configuration every decode run of 1..kFixedMaxRows rows of this
  // weight shape takes, chosen on its first call (outside graph capture):
  // among cuBLASLt's picks for 1 and kFixedMaxRows rows and their split-K
  // forms, those valid at both counts, the one with the least sum of its
  // times at both relative to the fastest at each; during a capture (no
  // timing), the heuristic's pick for kFixedMaxRows rows.
  Result<cublasLtMatmulAlgo_t> fixed_algo(int in, int out, bool y_fp32, const void* w,
                                          cudaStream_t s);
  // y = x @ w^T (add: y += that) on cuBLASLt: the shape's plan, or its fixed
  // decode configuration.
  Status cublaslt(const __nv_bfloat16* x, const __nv_bfloat16* w, void* y, bool y_fp32, int n,
                  int in, int out, cudaStream_t s, bool decode, bool add);
  // Up to `max` heuristic picks for the plan's shape.
  Result<std::vector<cublasLtMatmulAlgo_t>> heuristic(const Plan& p, int max) const;
  // Median milliseconds of the algorithm on the plan's shape (1 warm-up, 5 timed).
  float time_ms(const Plan& p, const cublasLtMatmulAlgo_t& a, const void* x, const void* w, void* y,
                cudaStream_t s, cudaEvent_t e0, cudaEvent_t e1) const;

  cublasLtHandle_t handle_ = nullptr;
  bool gemv_ = false;         // small row counts through ops::cuda::gemv (set by create)
  bool skinny_ = false;       // decode rows through ops::cuda::skinny_gemm (set by create)
  int decode_gemv_rows_ = 0;  // decode runs of up to this many rows through ops::cuda::gemv
  bool tune_ = false;         // time cuBLASLt's candidates per shape (up to kTuneMaxRows rows)
  bool fixed_ = false;        // one configuration per weight shape for decode runs (fixed_algo)
  std::map<std::tuple<int, int, bool>, cublasLtMatmulAlgo_t> fixed_algos_;  // (in, out, y_fp32)
  void* probe_ = nullptr;  // [probe_bytes_] operands for choosing fixed configurations
  size_t probe_bytes_ = 0;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<std::tuple<int, int, int, bool>, Plan> plans_;
};

}  // namespace cartserve::cuda
