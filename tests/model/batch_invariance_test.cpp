// A sequence's logits do not depend on what it is batched with (issue 13's
// flake: a greedy answer under load differed from the same request alone).
//
// Cause: the dense layers picked their kernel by the step's row count (up to
// 16 rows: a per-row kernel; more: sgemm), which sum in different orders; a
// decode token batched with a prefill chunk or with many other decodes got
// slightly different logits than alone, and near-ties flipped the greedy
// token. Now prompt rows always take sgemm and generated rows the per-row
// kernel (StepInput::prompt_rows), so the logits are bitwise equal.
//
// Checked on SmolLM2 on every CPU weight path (the default quantized one,
// fp32, bf16): a decode step alone vs in a step with 40 other decode rows and
// a 37-row prefill chunk of another sequence; and a prompt prefilled alone vs
// in one step with other sequences.
#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <vector>

#include "model/model.h"
#include "runtime/backend.h"
#include "server/serve_options.h"
#include "server/serving_stack.h"
#include "test_util.h"

namespace cartserve {
namespace {

constexpr int kB = 16;

// A step over sequences that each own blocks [first_block, first_block + 8).
struct Seq {
  std::vector<int32_t> table;
  int32_t start = 0;
  std::vector<int32_t> tokens;
  bool prompt = true;
};

StepInput step_of(const std::vector<Seq>& seqs) {
  StepInput in;
  in.max_blocks = 8;
  for (const Seq& s : seqs) {
    const int32_t first = in.append_sequence(s.table, kB, s.start, s.tokens);
    in.prompt_rows.push_back(s.prompt ? 1 : 0);
    SampleRow r;
    r.row = first + static_cast<int32_t>(s.tokens.size()) - 1;
    in.samples.push_back(r);
  }
  return in;
}

std::vector<int32_t> blocks_from(int32_t first) {
  std::vector<int32_t> t(8);
  std::iota(t.begin(), t.end(), first);
  return t;
}

std::vector<int32_t> prompt_of(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i)
    p.push_back(100 + (i * 37 + salt * 101) % 20000);
  return p;
}

class BatchInvariance : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchInvariance, LogitsOfASequenceDoNotDependOnItsBatch) {
  LoadOptions lo;
  lo.progress = false;
  auto dt = cpu_weight_dtype(GetParam());
  ASSERT_TRUE(dt.ok());
  lo.weight_dtype = *dt;  // as serving_stack.cpp loads for --dtype
  lo.keep_quantized = GetParam() == "auto";
  auto loaded = load_model(testing::test_model_path(), lo);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  const Model& model = **loaded;
  ServeOptions o;
  o.block_size = kB;
  o.kv_cache_tokens = 64 * 8 * kB;
  auto made = make_backend(model, o);
  ASSERT_TRUE(made.ok()) << made.status().to_string();
  Backend& b = **made;
  const int vocab = model.config.vocab_size;

  // Sequence A: a 21-token prompt, then decode tokens 5, 6, 7 one at a time (alone).
  const Seq a_prompt{blocks_from(1), 0, prompt_of(21, 0), true};
  std::vector<float> prefill_alone, logits;
  ASSERT_TRUE(b.logits(step_of({a_prompt}), prefill_alone).ok());
  std::vector<std::vector<float>> decode_alone;
  for (int t = 0; t < 3; ++t) {
    ASSERT_TRUE(b.logits(step_of({{blocks_from(1), 21 + t, {5 + t}, false}}), logits).ok());
    decode_alone.push_back(logits);
  }

  // Again with company: A's prompt beside two other prompts in one step.
  const Seq other1{blocks_from(9), 0, prompt_of(40, 1), true};
  const Seq other2{blocks_from(17), 0, prompt_of(3, 2), true};
  ASSERT_TRUE(b.logits(step_of({other1, a_prompt, other2}), logits).ok());
  EXPECT_EQ(std::vector<float>(logits.begin() + vocab, logits.begin() + 2 * vocab), prefill_alone)
      << "prompt logits changed in a batch";
  // A's decode steps beside 40 decode rows of other sequences and a 37-row prefill chunk.
  for (int t = 0; t < 3; ++t) {
    std::vector<Seq> batch;
    for (int s = 0; s < 20; ++s)
      batch.push_back({blocks_from(25 + (s % 4) * 8), 0, {7 + s}, false});
    batch.push_back({blocks_from(1), 21 + t, {5 + t}, false});
    for (int s = 0; s < 20; ++s)
      batch.push_back({blocks_from(57 + (s % 4) * 8), 0, {9 + s}, false});
    batch.push_back({blocks_from(9), 40, prompt_of(37, 3 + t), true});
    ASSERT_TRUE(b.logits(step_of(batch), logits).ok());
    const auto row = logits.begin() + 20 * static_cast<ptrdiff_t>(vocab);
    EXPECT_EQ(std::vector<float>(row, row + vocab), decode_alone[static_cast<size_t>(t)])
        << "decode step " << t << " changed in a batch";
  }
}

INSTANTIATE_TEST_SUITE_P(CpuWeights, BatchInvariance,
                         ::testing::Values("auto", "float32", "bfloat16"));

}  // namespace
}  // namespace cartserve
