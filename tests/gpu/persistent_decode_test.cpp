// CudaOptions::persistent_decode (ops::cuda::decode_layers_persistent): decode
// steps of 1..4 sequences through the persistent kernel, against the CPU's
// fp32 forward and the per-op folded GPU forward on the same random bf16
// model. Shapes: head_dim 64 with a GQA group of 4 (with and without QKV
// bias) and head_dim 128 with a group of 2. Four sequences of 70, 130, 5 and
// 190 prompt tokens, then eight decode steps over changing subsets (1, 2, 3
// (a padded bucket of 4) and 4 rows; contexts past 64 positions take several
// attention splits and the counter merge), graphs captured and replayed.
// Then on 4 CTAs: a 2200-token context, GQA groups of 16 and 1, hidden 1024.
//
// Bounds: the persistent kernel sums in another order than cuBLASLt, so its
// distance to the CPU may differ from the per-op path's, but by at most twice
// it (+1e-3); where the CPU's top-2 gap exceeds twice that distance the
// top-1 tokens agree; two runs give the same bits. Batch invariance: a
// sequence decoded alone and, with the same history and token, as the last
// of three rows reaches the LM head with the same bits (its logits then differ
// by at most 1e-5 of their size: cuBLASLt's head at 1 and at 3 rows).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <vector>

#include "gpu/backend_options.h"
#include "gpu/gpu_test_util.h"
#include "kernels/persistent_timeline.h"
#include "runtime/cpu/cpu_backend.h"
#include "runtime/cuda/cuda_backend.h"
#include "runtime/cuda/gemm.h"
#include "unit/tp/random_model.h"
#include "unit/tp/tp_check.h"

namespace cartserve {
namespace {

// Sequences, their prompts and the decode steps (the sequences each step appends to).
struct Script {
  int blocks_per_seq = 16;  // sequence i: blocks 1 + i * blocks_per_seq, ...
  std::vector<int> prompts;
  std::vector<std::vector<int>> steps;
  // A cartridge-like shared prefix: sequence 1 starts with sequence 0's first
  // `shared_blocks` blocks (written by sequence 0's prompt; its own prompt
  // follows them), and the decode steps report that prefix for both.
  int shared_blocks = 0;
  int64_t kv_tokens() const {
    return (static_cast<int64_t>(prompts.size()) * blocks_per_seq + 2) * 16;
  }
};

// Four sequences of 70, 130, 5 and 190 tokens; steps of 1, 2, 3 (a padded
// bucket of 4) and 4 rows.
Script four_sequences() {
  Script s;
  s.prompts = {70, 130, 5, 190};
  s.steps = {{0}, {0, 1}, {0, 1, 2}, {0, 1, 2, 3}, {0, 1, 2, 3}, {1, 3}, {2}, {0}};
  return s;
}

cuda::CudaOptions options(const Script& sc, bool persistent, int ctas = 0) {
  cuda::CudaOptions o = gpu_test::small_backend_options();
  o.kv_cache_tokens = sc.kv_tokens();
  o.max_model_len = sc.blocks_per_seq * 16;
  o.max_num_batched_tokens =
      std::max(256, (*std::max_element(sc.prompts.begin(), sc.prompts.end()) + 255) / 256 * 256);
  o.fold_norms = true;
  o.persistent_decode = persistent;
  o.persistent_ctas = ctas;
  o.persistent_timeline = persistent;  // (its stamps run too, under memcheck as well)
  return o;
}

// Sequences in blocks of their own.
class Seqs {
 public:
  Seqs(Backend& b, int n, int blocks_per_seq)
      : b_(b), bps_(blocks_per_seq), len_(n, 0), borrowed_(n, 0), prefix_(n, 0) {}

  // Sequence `seq` starts with `from`'s first `blocks` blocks, already
  // written; decode steps report them as a shared prefix of both.
  void share(int seq, int from, int blocks) {
    const int32_t B = b_.kv_spec().block_size;
    borrowed_[static_cast<size_t>(seq)] = blocks;
    base_from_[seq] = from;
    len_[static_cast<size_t>(seq)] = blocks * B;
    prefix_[static_cast<size_t>(seq)] = prefix_[static_cast<size_t>(from)] = blocks * B;
  }

  // Appends tokens[k] to sequence seqs[k] (one step, every row's logits).
  std::vector<float> step(const std::vector<int>& seqs,
                          const std::vector<std::vector<int32_t>>& tokens) {
    const int32_t B = b_.kv_spec().block_size;
    StepInput in;
    bool any_prefix = false;
    std::vector<int32_t> prefixes;
    for (size_t k = 0; k < seqs.size(); ++k) {
      const int32_t kv_len =
          len_[static_cast<size_t>(seqs[k])] + static_cast<int32_t>(tokens[k].size());
      in.max_blocks = std::max(in.max_blocks, (kv_len + B - 1) / B);
    }
    int32_t row = 0;
    for (size_t k = 0; k < seqs.size(); ++k) {
      const auto s = static_cast<size_t>(seqs[k]);
      std::vector<int32_t> table(static_cast<size_t>(bps_));
      for (int i = 0; i < bps_; ++i) {
        const bool borrowed = i < borrowed_[s];
        table[static_cast<size_t>(i)] = 1 + (borrowed ? base_from_[seqs[k]] : seqs[k]) * bps_ + i;
      }
      in.append_sequence(table, B, len_[s], tokens[k]);
      if (tokens[k].size() == 1) any_prefix |= prefix_[s] > 0;  // (decode rows only)
      prefixes.push_back(tokens[k].size() == 1 ? prefix_[s] : 0);
      len_[s] += static_cast<int32_t>(tokens[k].size());
      for (size_t i = 0; i < tokens[k].size(); ++i) {
        SampleRow r;
        r.row = row++;
        in.samples.push_back(r);
      }
    }
    if (any_prefix) in.shared_prefix = prefixes;
    std::vector<float> logits;
    EXPECT_TRUE(b_.logits(in, logits).ok());
    return logits;
  }

 private:
  Backend& b_;
  int bps_;
  std::vector<int32_t> len_;
  std::vector<int> borrowed_;  // leading blocks taken from another sequence
  std::map<int, int> base_from_;
  std::vector<int32_t> prefix_;  // shared prefix reported in decode steps
};

int32_t token(int seq, int i, int vocab) {
  return (seq * 37 + i * 13 + 5) % vocab;
}

// The prompts (every prompt row's logits), then the decode steps.
std::vector<float> run_script(Backend& b, const Script& sc, int vocab) {
  Seqs s(b, static_cast<int>(sc.prompts.size()), sc.blocks_per_seq);
  if (sc.shared_blocks > 0) s.share(1, 0, sc.shared_blocks);
  std::vector<float> all;
  auto add = [&](const std::vector<float>& v) { all.insert(all.end(), v.begin(), v.end()); };
  for (size_t q = 0; q < sc.prompts.size(); ++q) {
    std::vector<int32_t> p;
    for (int i = 0; i < sc.prompts[q]; ++i)
      p.push_back(token(static_cast<int>(q), i, vocab));
    add(s.step({static_cast<int>(q)}, {p}));
  }
  for (size_t k = 0; k < sc.steps.size(); ++k) {
    std::vector<std::vector<int32_t>> toks;
    for (int q : sc.steps[k])
      toks.push_back({token(q, 1000 + static_cast<int>(k), vocab)});
    add(s.step(sc.steps[k], toks));
  }
  return all;
}

// The last step's timeline: stamps in order, the step at least its CTAs'
// work (not that each phase took time: the global timer may tick in ~1 us
// steps, longer than a phase of these small models).
void expect_timeline(cuda::CudaBackend& b, int layers) {
  auto t = b.persistent_timeline();
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  const ops::PersistentTimeline s =
      ops::summarize_persistent_timeline(*t, layers, b.persistent_ctas());
  double parts = 0;
  for (const auto& ph : s.phases) {
    EXPECT_GE(ph.work_mean_us, 0.0) << ph.phase;
    EXPECT_GE(ph.work_max_us, ph.work_mean_us) << ph.phase;
    EXPECT_GE(ph.barrier_us, 0.0) << ph.phase;
    parts += ph.work_mean_us;
  }
  // Each CTA's work over the step's 5 L phases fits in the step.
  EXPECT_GE(s.step_us * (1 + 1e-6), layers * parts);
  EXPECT_GT(s.step_us, 0.0);
  EXPECT_LT(s.step_us, 1e6);  // under a second
}

std::vector<float> gpu_run(const Model& m, const Script& sc, bool persistent, int ctas = 0) {
  auto b = cuda::CudaBackend::create(m, options(sc, persistent, ctas));
  EXPECT_TRUE(b.ok()) << b.status().to_string();
  if (!b.ok()) return {};
  EXPECT_EQ((*b)->persistent_decode(), persistent);
  std::vector<float> logits = run_script(**b, sc, m.config.vocab_size);
  // Still on: no launch was refused (the per-op fallback would pass as well).
  EXPECT_EQ((*b)->persistent_decode(), persistent);
  if (persistent) expect_timeline(**b, m.config.num_layers);
  return logits;
}

// The script on the CPU (fp32), per-op and persistent (ctas) against the
// bounds of the file comment.
void check_against_cpu_and_per_op(const Model& m, const Script& sc, const char* name,
                                  int ctas = 0) {
  const int vocab = m.config.vocab_size;
  auto cpu = CpuBackend::create(m, 16, KvBudget{0, sc.kv_tokens()});
  ASSERT_TRUE(cpu.ok());
  const std::vector<float> ref = run_script(**cpu, sc, vocab);
  const std::vector<float> per_op = gpu_run(m, sc, false);
  const std::vector<float> pers = gpu_run(m, sc, true, ctas);
  ASSERT_EQ(per_op.size(), ref.size());
  ASSERT_EQ(pers.size(), ref.size());
  const float d_op = testing::max_abs_diff(ref, per_op);
  const float d_pers = testing::max_abs_diff(ref, pers);
  std::printf(
      "[persistent] %s: max|dlogit| vs CPU fp32 persistent %.3e, per-op %.3e, "
      "between them %.3e\n",
      name, d_pers, d_op, testing::max_abs_diff(per_op, pers));
  EXPECT_LE(d_pers, 2.f * d_op + 1e-3f);
  const int decided = testing::expect_decided_top1(ref, pers, vocab, 2.f * d_pers);
  std::printf("[persistent] %s: top-1 checked on %d of %zu rows\n", name, decided,
              ref.size() / vocab);
  const std::vector<float> again = gpu_run(m, sc, true, ctas);
  ASSERT_EQ(again.size(), pers.size());
  EXPECT_EQ(0, std::memcmp(again.data(), pers.data(), pers.size() * sizeof(float)));
}

struct Case {
  const char* name;
  int head_dim, heads, kv_heads;
  bool bias;
};

TEST(CudaBackendPersistent, DecodeMatchesThePerOpForwardAndTheCpu) {
  CS_REQUIRE_GPU();
  if (!cuda::Gemm::plain_by_default()) GTEST_SKIP() << "a gemv or skinny path is on: no folding";
  for (const Case& k : {Case{"d64 g4", 64, 12, 3, false}, Case{"d64 g4 bias", 64, 12, 3, true},
                        Case{"d128 g2", 128, 4, 2, false}}) {
    SCOPED_TRACE(k.name);
    testing::RandomModelSpec spec = testing::gpu_test_spec();
    spec.head_dim = k.head_dim;
    spec.heads = k.heads;
    spec.kv_heads = k.kv_heads;
    spec.bias = k.bias;
    auto m = testing::random_model(spec);
    check_against_cpu_and_per_op(*m, four_sequences(), k.name);
  }
}

// The paths the small shapes above leave out: 4 CTAs (several attention
// items and weight units per CTA, the 4-deep weight loop: 128-512 chunks per
// row), a 2200-token context (splits of 128 positions: two shared-memory
// stages each, the rescale and the next stage loaded during the first), a
// GQA group of 16 at head_dim 128 (each thread owns two (head, dim pair)
// items), and the MHA case (group 1).
TEST(CudaBackendPersistent, FewCtasLongContextsAndWideGroups) {
  CS_REQUIRE_GPU();
  if (!cuda::Gemm::plain_by_default()) GTEST_SKIP() << "a gemv or skinny path is on: no folding";
  Script sc;
  sc.blocks_per_seq = 144;  // 2304 positions
  sc.prompts = {2200, 10};
  sc.steps = {{0}, {0, 1}, {1}, {0, 1}, {0}};
  for (const Case& k : {Case{"d128 g16", 128, 32, 2, false}, Case{"d64 g1", 64, 8, 8, true}}) {
    SCOPED_TRACE(k.name);
    testing::RandomModelSpec spec = testing::gpu_test_spec();
    spec.hidden = 1024;
    spec.intermediate = 1024;
    spec.layers = 2;
    spec.head_dim = k.head_dim;
    spec.heads = k.heads;
    spec.kv_heads = k.kv_heads;
    spec.bias = k.bias;
    auto m = testing::random_model(spec);
    m->config.max_position_embeddings = 4096;
    check_against_cpu_and_per_op(*m, sc, k.name, /*ctas=*/4);
  }
}

// Decode rows over a cartridge-like shared prefix (320 positions, at least
// the per-op path's cascade threshold of 256): the persistent kernel takes
// them whole (no shared-prefix plan) and still matches the CPU and the per-op
// path, which attends the prefix with the cascade kernel.
TEST(CudaBackendPersistent, DecodesOverASharedPrefix) {
  CS_REQUIRE_GPU();
  if (!cuda::Gemm::plain_by_default()) GTEST_SKIP() << "a gemv or skinny path is on: no folding";
  Script sc;
  sc.blocks_per_seq = 32;
  sc.prompts = {330, 12, 40};  // sequence 1: 320 borrowed positions, then 12 of its own
  sc.shared_blocks = 20;
  sc.steps = {{1}, {0, 1}, {0, 1, 2}, {1, 2}, {0, 1}};
  auto m = testing::random_model(testing::gpu_test_spec());
  check_against_cpu_and_per_op(*m, sc, "shared prefix");
}

TEST(CudaBackendPersistent, ARowHasTheSameBitsAloneAndInABatch) {
  CS_REQUIRE_GPU();
  if (!cuda::Gemm::plain_by_default()) GTEST_SKIP() << "a gemv or skinny path is on: no folding";
  auto m = testing::random_model(testing::gpu_test_spec());
  const int vocab = m->config.vocab_size;
  Script sc = four_sequences();
  auto b = cuda::CudaBackend::create(*m, options(sc, true));
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  ASSERT_TRUE((*b)->persistent_decode());
  Seqs s(**b, 4, sc.blocks_per_seq);
  // Sequences 0 and 1: the same 150-token prompt (3 attention splits).
  std::vector<int32_t> p;
  for (int i = 0; i < 150; ++i)
    p.push_back(token(0, i, vocab));
  s.step({0}, {p});
  s.step({1}, {p});
  s.step({2}, {{1, 2, 3, 4, 5, 6, 7, 8, 9}});
  s.step({3}, {std::vector<int32_t>(p.begin(), p.begin() + 100)});
  const int32_t t = 42;
  for (int rep = 0; rep < 3; ++rep) {  // eager, captured, replayed
    SCOPED_TRACE(rep);
    const std::vector<float> alone = s.step({0}, {{t + rep}});
    const std::vector<float> batch = s.step({2, 3, 1}, {{7}, {8}, {t + rep}});
    ASSERT_EQ(alone.size(), static_cast<size_t>(vocab));
    ASSERT_EQ(batch.size(), static_cast<size_t>(3 * vocab));
    // The LM head is cuBLASLt's at 1 and 3 rows (its sums may differ in the
    // last fp32 bits); a residual stream off by one bf16 step would move the
    // logits by ~1e-2 of their size.
    const std::vector<float> tail(batch.begin() + 2 * vocab, batch.end());
    float big = 0.f;
    for (float v : alone)
      big = std::max(big, std::fabs(v));
    const float d = testing::max_abs_diff(alone, tail);
    std::printf("[persistent] alone vs in a batch of 3: max|dlogit| %.3e (max|logit| %.2f)\n", d,
                big);
    EXPECT_LE(d, 1e-5f * big);
  }
  EXPECT_TRUE((*b)->persistent_decode());
}

}  // namespace
}  // namespace cartserve
