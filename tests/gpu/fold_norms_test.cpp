// CudaOptions::fold_norms, the norm-folded forward (a bf16 residual stream,
// the RMSNorm weights folded into the QKV and gate/up weights, inv_rms applied
// by RoPE and SwiGLU, the residual adds made by the o and down projections),
// against the CPU's fp32 forward and the unfolded GPU forward on the same
// random bf16 model, without and with QKV bias: every prefill row of a
// chunked prompt and five decode steps (captured graphs).
//
// Bound: the folded forward rounds the residual stream to bf16 after every
// add where the unfolded one keeps fp32, so it may sit further from the CPU,
// but by at most twice the unfolded forward's own bf16 distance (+1e-3); and
// where the CPU's top-2 logit gap exceeds twice the folded distance, both
// pick the same top-1 token. The folded forward is also deterministic (two
// runs, same bits).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "gpu/backend_options.h"
#include "gpu/gpu_test_util.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/gemm.h"
#include "unit/tp/random_model.h"
#include "unit/tp/tp_check.h"

namespace cartserve {
namespace {

cuda::CudaOptions options(bool fold) {
  cuda::CudaOptions o = gpu_test::small_backend_options();
  o.fold_norms = fold;
  return o;
}

std::vector<float> gpu_logits(const Model& m, bool fold) {
  auto b = cuda::CudaBackend::create(m, options(fold));
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  if (!b.ok()) return {};
  EXPECT_EQ((*b)->folded_norms(), fold);
  return testing::tp_run_logits(**b, m.config.vocab_size);
}

TEST(CudaBackendFold, FoldedForwardMatchesTheCpuAndTheUnfolded) {
  CS_REQUIRE_GPU();
  if (!cuda::Gemm::plain_by_default()) GTEST_SKIP() << "a gemv or skinny path is on: no folding";
  for (const bool bias : {false, true}) {
    SCOPED_TRACE(bias ? "qkv bias" : "no bias");
    testing::RandomModelSpec spec = testing::gpu_test_spec();
    spec.bias = bias;
    auto m = testing::random_model(spec);
    const int vocab = m->config.vocab_size;
    auto cpu = CpuBackend::create(*m, 16, KvBudget{0, 256});
    ASSERT_TRUE(cpu.ok());
    const std::vector<float> ref = testing::tp_run_logits(**cpu, vocab);
    const std::vector<float> unfolded = gpu_logits(*m, false);
    const std::vector<float> folded = gpu_logits(*m, true);
    ASSERT_EQ(folded.size(), ref.size());
    ASSERT_EQ(unfolded.size(), ref.size());
    const float d_unf = testing::max_abs_diff(ref, unfolded);
    const float d_fold = testing::max_abs_diff(ref, folded);
    std::printf("[fold norms] bias %d: max|dlogit| vs CPU fp32 folded %.3e, unfolded %.3e\n", bias,
                d_fold, d_unf);
    EXPECT_LE(d_fold, 2.f * d_unf + 1e-3f);
    EXPECT_GT(d_fold, 0.f);  // the folded path ran (it cannot match the fp32 CPU bit for bit)
    const int decided = testing::expect_decided_top1(ref, folded, vocab, 2.f * d_fold);
    std::printf("[fold norms] bias %d: top-1 checked on %d of %zu rows\n", bias, decided,
                ref.size() / vocab);
    const std::vector<float> again = gpu_logits(*m, true);
    ASSERT_EQ(again.size(), folded.size());
    EXPECT_EQ(0, std::memcmp(again.data(), folded.data(), folded.size() * sizeof(float)));
  }
}

}  // namespace
}  // namespace cartserve
