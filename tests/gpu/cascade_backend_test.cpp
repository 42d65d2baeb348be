// Shared-prefix ("cascade") decode attention inside the CUDA backend: four
// sequences whose tables start with the same two blocks (a 32-position
// prefix, as a cartridge gives them) decode together with
// StepInput::shared_prefix set, through the eager step, the graph capture
// and its replays, and a mixed step where a fifth sequence on the same
// prefix prefills beside them (then decodes with them). Their logits are compared with the CPU
// backend's fp32 forward of the same steps, next to the same GPU steps with the cascade off. Bound:
// twice the cascade-off distance from the CPU plus 1e-3 (both GPU runs differ from fp32 by bf16
// rounding; the cascade also rounds the prefix's softmax probabilities to bf16 before P V).
// Observed values are printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "gpu/backend_options.h"
#include "gpu/gpu_test_util.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/cuda/cuda_backend.h"
#include "unit/tp/random_model.h"
#include "unit/tp/tp_check.h"

namespace cartserve {
namespace {

constexpr int32_t kB = 16;

// A prompt of 40 tokens for sequence 0 in blocks {1, 2, 3}; sequences 1..3
// share its blocks 1 and 2 and prefill 5 tokens of their own in blocks
// {4, 5, 6}; then 6 decode steps of all four with the 32-position prefix
// hinted, sequence 4 (blocks {1, 2, 7}) prefilling 5 tokens in the third and
// decoding from the fourth on. Logits of every sampled row: [28, vocab].
std::vector<float> run(Backend& b, int vocab) {
  const std::vector<std::vector<int32_t>> tables = {
      {1, 2, 3}, {1, 2, 4}, {1, 2, 5}, {1, 2, 6}, {1, 2, 7}};
  std::vector<int32_t> len(5);
  auto step = [&](const std::vector<int>& seqs, const std::vector<std::vector<int32_t>>& toks,
                  bool hint, std::vector<float>* keep) {
    StepInput in;
    in.max_blocks = 3;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const int s = seqs[i];
      const int32_t row = in.append_sequence(tables[static_cast<size_t>(s)], kB,
                                             len[static_cast<size_t>(s)], toks[i]);
      len[static_cast<size_t>(s)] += static_cast<int32_t>(toks[i].size());
      SampleRow r;
      r.row = row + static_cast<int32_t>(toks[i].size()) - 1;
      in.samples.push_back(r);
      if (hint) in.shared_prefix.push_back(2 * kB);
    }
    std::vector<float> logits;
    EXPECT_TRUE(b.logits(in, logits).ok());
    if (keep) keep->insert(keep->end(), logits.begin(), logits.end());
  };
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i)
    prompt.push_back((i * 31 + 5) % vocab);
  step({0}, {prompt}, false, nullptr);
  len[1] = len[2] = len[3] = len[4] = 2 * kB;  // the shared blocks: sequence 0's positions 0..31
  for (int s = 1; s < 4; ++s) {
    std::vector<int32_t> own;
    for (int i = 0; i < 5; ++i)
      own.push_back((s * 13 + i * 7) % vocab);
    step({s}, {own}, true, nullptr);
  }
  std::vector<float> all;
  for (int t = 0; t < 6; ++t) {
    std::vector<int> seqs = {0, 1, 2, 3};
    std::vector<std::vector<int32_t>> toks;
    for (int s = 0; s < 4; ++s)
      toks.push_back({(t * 17 + s * 5 + 3) % vocab});
    if (t == 2) toks.push_back({9, 19, 29, 39, 49});  // sequence 4's prompt: a mixed step
    if (t > 2) toks.push_back({(t * 11 + 1) % vocab});
    if (t >= 2) seqs.push_back(4);
    step(seqs, toks, true, &all);
  }
  return all;
}

std::vector<float> run_gpu(const Model& m, int32_t cascade_min_prefix) {
  cuda::CudaOptions o = gpu_test::small_backend_options();
  o.cascade_min_prefix = cascade_min_prefix;
  auto b = cuda::CudaBackend::create(m, o);
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  if (!b.ok()) return {};
  std::vector<float> out = run(**b, m.config.vocab_size);
  gpu_test::device_sync();
  return out;
}

TEST(CudaCascade, SharedPrefixDecodeMatchesTheCpu) {
  CS_REQUIRE_GPU();
  auto m = testing::random_model(testing::gpu_test_spec());
  auto cpu = CpuBackend::create(*m, kB, KvBudget{0, 256});
  ASSERT_TRUE(cpu.ok());
  const std::vector<float> ref = run(**cpu, m->config.vocab_size);
  ASSERT_EQ(ref.size(), static_cast<size_t>(28) * m->config.vocab_size);
  const std::vector<float> without = run_gpu(*m, 0);
  const std::vector<float> with = run_gpu(*m, 32);
  const float off = testing::max_abs_diff(ref, without);
  const float on = testing::max_abs_diff(ref, with);
  const float apart = testing::max_abs_diff(with, without);
  std::printf(
      "[cascade] max|dlogit| vs CPU fp32: cascade %.2e, without %.2e (bound %.2e); apart %.2e\n",
      on, off, 2.f * off + 1e-3f, apart);
  EXPECT_LE(on, 2.f * off + 1e-3f);
  // The two runs take different kernels (bf16 probabilities on the prefix),
  // so identical logits would mean the cascade never ran.
  EXPECT_GT(apart, 0.f);
}

}  // namespace
}  // namespace cartserve
